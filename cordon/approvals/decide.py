"""Turning a verified Slack click into a decision on a suspended run.

The server has already checked Slack's signature and timestamp; here the click is checked against
the case it names: the run it belongs to, the plan it approves (a click on a plan that has since
changed is refused), the approver policy, and the run's state. Only then is the run resumed with
:class:`flows.respond.ApprovalInput` through Prefect's ``resume_flow_run``, which the Prefect
server validates against the input schema. Every decision and refusal is written to the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cordon.approvals.slack import DecisionOutcome, Interaction
from cordon.audit.ledger import Ledger
from cordon.config import Config


def _detection_principals(case: dict[str, Any]) -> set[str]:
    import json

    det = json.loads(case["detection"])
    names: set[str] = set()
    for who in (det.get("actor", {}).get("user", {}), det.get("target", {}),
                (det.get("credential") or {}).get("owner", {})):
        for key in ("uid", "name"):
            if who.get(key):
                names.add(str(who[key]).lower())
    return names


Resume = Callable[[str, dict[str, Any]], None]


def make_decider(ledger: Ledger, config: Config,
                 resume: Resume | None = None) -> Callable[[Interaction], DecisionOutcome]:
    """A ``decide(interaction) -> DecisionOutcome`` for :func:`cordon.server.app.create_app`.

    ``resume(flow_run_id, run_input)`` defaults to Prefect's ``resume_flow_run``; it raises when
    the run is not paused (already decided, expired, or not yet waiting).

    Refuses (``accepted=False`` with the reason the clicker is shown) when: the case is unknown;
    the click's run ID is not the case's run; its plan hash is not the case's current plan; the
    clicker is not among the configured approvers (when any are configured); the clicker's Slack
    user name or e-mail local part is the actor or target under investigation; the run is not
    waiting for a decision.
    """
    if resume is None:
        from prefect.flow_runs import resume_flow_run

        def resume(run_id: str, run_input: dict[str, Any]) -> None:
            resume_flow_run(run_id, run_input=run_input)

    def refuse(ix: Interaction, reason: str) -> DecisionOutcome:
        ledger.append("approval.click_refused", {"reason": reason, "decision": ix.decision, "user_id": ix.user_id,
                                                 "user_name": ix.user_name, "team_id": ix.team_id,
                                                 "plan_hash": ix.plan_hash, "run_id": ix.run_id},
                      case_id=ix.case_id or None, run_id=ix.run_id or None, actor=f"slack:{ix.user_id}")
        return DecisionOutcome(accepted=False, message=reason)

    def decide(ix: Interaction) -> DecisionOutcome:
        case = ledger.case(ix.case_id) if ix.case_id else None
        if case is None:
            return refuse(ix, f"unknown case {ix.case_id!r}")
        if case.get("flow_run_id") != ix.run_id:
            return refuse(ix, "this message belongs to another run of the case")
        if case.get("plan_hash") != ix.plan_hash:
            return refuse(ix, "the containment plan changed since this message was posted; decide on the new one")
        if config.approvers and ix.user_id not in config.approvers:
            return refuse(ix, f"<@{ix.user_id}> is not an approver for this playbook")
        if ix.user_name and ix.user_name.lower() in _detection_principals(case):
            return refuse(ix, "no self-approval: you are a principal in this detection")
        run_input = {"decision": ix.decision, "approver": f"slack:{ix.user_id}", "approver_name": ix.user_name,
                     "team_id": ix.team_id, "plan_hash": ix.plan_hash,
                     "decided_at": datetime.now(UTC).isoformat()}
        try:
            resume(ix.run_id, run_input)
        except Exception as exc:  # noqa: BLE001 - NotPausedError, FlowPauseTimeout, a REJECT
            return refuse(ix, f"the run is not waiting for a decision ({type(exc).__name__}: {exc})")
        ledger.append("approval.decision_received", run_input, case_id=ix.case_id, run_id=ix.run_id,
                      actor=f"slack:{ix.user_id}")
        return DecisionOutcome(accepted=True, message=f"{ix.decision} recorded for {ix.case_id}")

    return decide
