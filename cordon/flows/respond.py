"""The respond flow: one playbook run for one case, as a Prefect flow.

Thin orchestration only: the order of steps, the durable wait for approval, retries. The logic is
in :mod:`cordon.respond`; every side effect (and every ledger write) is inside a task with a
persisted result, so when a run is executed again and Prefect re-runs the flow from the top,
completed steps come back from the result cache and nothing happens twice. A run resumed by a
decision does not even replay the pre-approval half: once its Slack request is out, the ledger
holds what that half settled (:meth:`cordon.respond.Prepared.from_ledger`), and the run goes on from
there (fewer task runs for the Prefect server to record: its CPU is most of a case's).

    prepare (enrich ► guard ► plan) ► approve (console | auto | Slack, durable) ► contain ► verify ► report

The flow's parameters are a case reference, never the detection: every task reads the case's
detection from the ledger (``cases.detection``, redacted by :meth:`Ledger.open_case`), so no secret
reaches Prefect's database, and task results that carry what the clouds answered (enrichment,
containment before/after, verification) are redacted (:func:`cordon.audit.ledger.redact`) before
Prefect persists them. Each time a process starts executing the flow it writes ``run.process``,
and before each containment call ``step.started``: what :mod:`cordon.recovery` reads to find a run
that died and run it again without containing twice.

Run it in-process (``cordon respond``, the embedded default) or as the deployment served by
``cordon worker`` (needed for ``--approve slack``: ``suspend_flow_run`` only works for deployment
runs, and only a suspended run survives a worker restart).
"""


import functools
import os
import sys
from typing import Any, Literal

from prefect import flow, task
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import BaseModel

from cordon.action import GuardError
from cordon.approvals.gate import proceeds
from cordon.audit.ledger import Ledger, default_database_url, redact
from cordon.clouds import clients_for
from cordon.config import load_config
from cordon.detections.model import Detection
from cordon.manual_steps import AWAITING, await_manual
from cordon.playbooks.schema import load_playbooks
from cordon.respond import (
    CaseSummary,
    GuardOutcome,
    Plan,
    PlanStep,
    Prepared,
    build_plan,
    enrich,
    guard,
    outcome_status,
    plan_hash,
    run_step,
    verify_step,
)

ApprovalMode = Literal["console", "auto", "slack", "teams", "both"]


class ApprovalInput(RunInput):
    """What resumes a suspended run: the responder's decision on exactly one plan.

    ``decision`` is ``approve``, ``deny`` or ``expired`` (the sweeper's); ``plan_hash`` must equal
    the plan the run is waiting on, else the run treats it as a refusal.
    """

    decision: Literal["approve", "deny", "expired"]
    approver: str
    approver_name: str | None = None
    team_id: str | None = None
    plan_hash: str
    decided_at: str | None = None
    #: every distinct approver that made the quorum (``slack:<user id>``), in order
    approvers: list[str] = []
    quorum: int | None = None
    #: with ``expired``: what the playbook says happens at expiry (the run re-checks the playbook)
    on_expiry: Literal["deny", "contain"] | None = None


class Member(BaseModel):
    """One case an incident's run answers: its ID, playbook and cloud parameters
    (:meth:`cordon.engine.Responder.cloud_for` of the case)."""

    case_id: str
    playbook: str
    cloud: dict[str, Any] = {}


class IncidentPrepared(BaseModel):
    """The pre-approval half of an incident's run: each case's :class:`cordon.respond.Prepared`
    (the lead's first) and the incident's plan (every case's steps with their ``case_id``, under the
    lead; ``None`` when no case has a step left to take)."""

    cases: dict[str, Prepared]
    plan: Plan | None = None
    #: where the Slack request is (``{channel, ts}``), for a run rebuilt from the ledger
    where: dict[str, Any] | None = None


@functools.lru_cache(maxsize=4)
def _ledger(url: str) -> Ledger:
    return Ledger(url)


def ledger() -> Ledger:
    """The ledger at ``CORDON_DATABASE_URL`` (one engine per process)."""
    return _ledger(default_database_url())


def _detection(case_id: str) -> Detection:
    """The case's detection as the ledger holds it (redacted at intake and by ``open_case``).
    Raises ``KeyError`` for a case the ledger does not have."""
    case = ledger().case(case_id)
    if case is None:
        raise KeyError(f"no case {case_id} in the ledger at {ledger().url}")
    return Detection.model_validate_json(case["detection"])


def _playbook(name: str):
    config = load_config()
    for pb in load_playbooks(config.playbooks_dir):
        if pb.name == name:
            return config, pb
    raise KeyError(f"playbook '{name}' not found in {config.playbooks_dir}")


def _clients(detection: Detection, cloud: dict[str, Any]):
    return clients_for(detection.provider, cloud)


def _run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


def _log(message: str, *args: Any) -> None:
    """One line on the run's Prefect logger (shown under the run in the UI and by ``prefect
    flow-run logs``); the ledger stays the record, this is what an operator reads while it runs."""
    from prefect.logging import get_run_logger

    get_run_logger().info(message, *args)


def run_name() -> str:
    """The flow run's name: ``<case ID> <playbook> <credential>``, e.g.
    ``case-4b1f… aws-iam-access-key AKIA…`` (the credential's ``uid``, else the target's name),
    so the Prefect UI lists cases rather than generated names. Reads the run's parameters
    (``prefect.runtime.flow_run.parameters``) and the case's detection from the ledger; falls back to
    what the parameters say when the case cannot be read."""
    params = flow_run.parameters or {}
    case_id, playbook = params.get("case_id") or "case?", params.get("playbook") or "playbook?"
    what = None
    try:
        det = _detection(case_id)
        what = (det.credential.uid if det.credential else None) or det.target.name or det.target.uid
    except Exception:  # noqa: BLE001 - a name is not worth failing the run over
        what = None
    return " ".join(str(x) for x in (case_id, playbook, what) if x)[:200]


def _note_process(case_id: str, attempt: int) -> None:
    """``run.process``: this process now executes the run (again after each resume), so
    :mod:`cordon.recovery` can tell a live run from one whose process died. Not a task: it must
    run every time the flow (re)starts."""
    from cordon.recovery import process_ref

    ledger().append("run.process", {"attempt": attempt, "by": process_ref()}, case_id=case_id, run_id=_run_id(),
                    actor="cordon")


@task(name="prepare", task_run_name="enrich, guard and plan {case_id}", persist_result=True)
def prepare_task(case_id: str, playbook: str, approval: str, cloud: dict[str, Any]) -> Prepared:
    """The pre-approval half in one task: :func:`_prepare`."""
    return _prepare(case_id, playbook, approval, cloud)


def _prepare(case_id: str, playbook: str, approval: str, cloud: dict[str, Any]) -> Prepared:
    """The pre-approval half of one case (one task run, one cached result to replay): record that
    this run answers the case (``run.started``, the case ``running``); run the playbook's
    enrichment and record what it found (``enrichment.completed`` / ``.failed``, redacted: the
    result is persisted by Prefect, and the ledger, Slack and the summary show the same facts);
    refuse protected principals, Cordon itself and steps not naming the exact credential
    (``guard.passed`` / ``guard.refused``); and dry-run every containment step into the exact plan,
    binding the case to its hash (``plan.created``); an action that refuses while planning
    (:class:`cordon.action.GuardError`: the object found is not the one the detection names) is a
    ``guard.refused``, not a failed run. Reads only, in the clouds: a run killed in the middle does
    it again. Returns :class:`cordon.respond.Prepared` (``plan`` ``None`` when refused)."""
    run_id = _run_id()
    config, pb = _playbook(playbook)
    detection = _detection(case_id)
    clients = _clients(detection, cloud)
    ledger().set_case(case_id, status="running", playbook=playbook, flow_run_id=run_id)
    ledger().append("run.started", {"playbook": playbook, "approval_mode": approval}, case_id=case_id,
                    run_id=run_id, actor="cordon")
    facts = redact(enrich(pb, detection, clients))
    for name, result in facts.items():
        kind = "enrichment.failed" if isinstance(result, dict) and "error" in result else "enrichment.completed"
        ledger().append(kind, {"action": name, "result": result}, case_id=case_id, run_id=run_id, actor="cordon")
        _log("enrichment %s: %s", name, "failed" if kind == "enrichment.failed" else "done")
    outcome = guard(pb, detection, config, clients, facts)
    ledger().append("guard.passed" if outcome.ok else "guard.refused", outcome.model_dump(), case_id=case_id,
                    run_id=run_id, actor="cordon")
    _log("guard %s", "passed" if outcome.ok else "refused the case")
    if not outcome.ok:
        return Prepared(run_id=run_id, enrichment=facts, guard=outcome.model_dump())
    try:
        plan = build_plan(case_id, pb, detection, clients, facts)
    except GuardError as exc:  # an action refused to plan (the object is not the one named): refused, not a crash
        refused = GuardOutcome(ok=False, reason=f"planning refused: {exc}", cordon_identity=outcome.cordon_identity)
        ledger().append("guard.refused", refused.model_dump(), case_id=case_id, run_id=run_id, actor="cordon")
        _log("guard refused the case while planning: %s", exc)
        return Prepared(run_id=run_id, enrichment=facts, guard=refused.model_dump())
    ledger().set_case(case_id, plan_hash=plan.hash)
    ledger().append("plan.created", plan.model_dump(), case_id=case_id, run_id=run_id, actor="cordon")
    _log("plan %s: %d containment step(s): %s", plan.hash[:12], len(plan.steps),
         "; ".join(f"{st.action} on {st.target}" for st in plan.steps) or "none")
    return Prepared(run_id=run_id, enrichment=facts, guard=outcome.model_dump(), plan=plan)


def _asked_before(case_id: str, approval: str) -> Prepared | None:
    """This run's pre-approval half from the ledger when its Slack request is already out: the run
    was resumed by a decision (Prefect re-executes a resumed flow from the top), so neither the
    prepare nor the ask task runs again, not even from the result cache (two task runs a case
    fewer for the Prefect server to record). ``None`` otherwise (:meth:`cordon.respond.Prepared.
    from_ledger`), and always outside Slack mode."""
    from cordon.approvals.modes import waits

    run_id = _run_id()
    if not waits(approval) or not run_id:
        return None
    case = ledger().case(case_id)
    if not case or case.get("flow_run_id") != run_id or not case.get("plan_hash"):
        return None
    return Prepared.from_ledger(ledger().records(case_id=case_id), run_id)


@task(name="ask", task_run_name="ask {case_id} ({mode})", persist_result=True)
def ask_task(case_id: str, playbook: str, enrichment: dict[str, Any], plan: Plan, mode: str,
             slack: dict[str, Any]) -> dict[str, Any]:
    """Ask the approval channel for ``mode`` (:func:`cordon.approvals.channels.channel_for`: the
    playbook's policy may require no decision; ``auto``, ``console`` decide now; ``slack`` posts the
    request once and the run then waits). Returns :meth:`cordon.approvals.channels.Asked.as_dict`."""
    from cordon.approvals.channels import AskContext, channel_for

    config, pb = _playbook(playbook)
    ctx = AskContext(ledger=ledger(), case_id=case_id, run_id=_run_id(), plan=plan, playbook=pb, config=config,
                     detection=_detection(case_id), enrichment=enrichment, slack=slack)
    asked = channel_for(mode, pb.approval.required).request(ctx)
    _log("%s", asked.said)
    return asked.as_dict()


@task(name="decide", task_run_name="decide {case_id}", persist_result=True)
def decide_task(case_id: str, plan: Plan, decision: dict[str, Any], on_expiry: str = "deny") -> dict[str, Any]:
    """Record the Slack decision and, when it proceeds, pass the containment gate, in one task.

    The decision: one for another plan counts as a refusal. The ledger wins over the run input: the
    decision recorded is the ledger's settling claim for this run and plan
    (:func:`cordon.approvals.gate.ledger_decision`; ``overrides`` says what the input said when they
    differ, and an input no claim backs is a refusal). An ``expired`` decision proceeds to
    containment only when the playbook's own ``on_expiry`` is ``contain`` (``on_expiry`` here, from
    the playbook, not from the run input); the decision then says ``proceed: true``.

    The gate, right before containment: ``containment.started`` in the ledger, no sooner than the
    approval's claim plus ``approval.deny_window`` (:func:`cordon.approvals.gate.hold_until`: Approve
    and Deny clicked at the same moment, the Deny wins), then whether a Deny came first
    (:func:`cordon.approvals.gate.claim_containment`). Returns ``{"decision": {...}, "gate":
    {"outcome": "allowed" | "denied", "denied_by", ...} | None}`` (``None`` when the decision does
    not proceed). Persisted: a re-executed run gets the same answer."""
    from cordon.approvals.gate import claim_containment, hold_until, ledger_decision
    from cordon.approvals.policy import load_settings

    records = list(ledger().records(case_id=case_id))
    decision = ledger_decision(records, _run_id(), plan.hash, decision)
    if decision["decision"] == "deny" and not decision.get("reason"):
        reason = _deny_reason(case_id, decision.get("ledger_seq"))
        decision = {**decision, "reason": reason} if reason else decision
    if decision.get("plan_hash") != plan.hash:
        decision = {**decision, "decision": "deny", "reason": "decision was for another plan"}
    if decision["decision"] == "expired":
        decision = {**decision, "on_expiry": on_expiry, "proceed": on_expiry == "contain"}
    kinds = {"approve": "approval.given", "deny": "approval.refused", "expired": "approval.expired"}
    kind = kinds[decision["decision"]]
    ledger().append(kind, decision, case_id=case_id, run_id=_run_id(), actor=decision.get("approver"))
    proceed = decision["decision"] == "approve" or decision.get("proceed")
    ledger().set_case(case_id, status="containing" if proceed else
                      ("denied" if decision["decision"] == "deny" else "expired"))
    _log("decision: %s by %s", decision["decision"], decision.get("approver"))
    if not proceed:
        return {"decision": decision, "gate": None}
    window = load_settings(load_config()).deny_window_seconds
    gate = claim_containment(ledger(), case_id, _run_id(), plan.hash, not_before=hold_until(records, decision, window))
    return {"decision": decision, "gate": gate.as_dict()}


def _deny_reason(case_id: str, seq: int | None) -> str | None:
    """The reason typed in Slack's Deny dialog, from the ledger's ``approval.decision`` claim at
    ``seq`` (the reason never travels in Prefect's run input); ``None`` when there is none."""
    if not seq:
        return None
    for r in ledger().records(case_id=case_id, kind_prefix="approval.decision"):
        if r.seq == seq:
            return str(r.payload["reason"]) if r.payload.get("reason") else None
    return None


def _interrupted(case_id: str, action: str, target: str) -> dict[str, Any] | None:
    """The newest ``step.started`` for ``action`` on ``target`` that no ``action.*`` result of the
    same run followed: the execution that wrote it died during (or just before) the call. Called
    before this execution writes its own ``step.started``, so what it finds is always an earlier
    execution's, in another run or in this same flow run executed again after a crash."""
    open_start = None
    for r in ledger().records(case_id=case_id):
        same = r.payload.get("name") == action and r.payload.get("target") == target
        if r.kind == "step.started" and same:
            open_start = r
        elif r.kind.startswith("action.") and same and open_start is not None and r.run_id == open_start.run_id:
            open_start = None
    if open_start is None:
        return None
    return {"seq": open_start.seq, "run_id": open_start.run_id, "attempt": open_start.payload.get("attempt")}


@task(name="contain", task_run_name="contain {step.action} {step.target}", persist_result=True)
def contain_task(case_id: str, step: PlanStep, cloud: dict[str, Any], attempt: int = 1,
                 approved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one containment step (idempotent) and record before and after. ``step.started`` is
    written first (write-ahead): a run killed during the call leaves it without a result, and the
    re-run's ``action.already_contained`` (or ``action.contained``) then carries
    ``interrupted: {seq, run_id, attempt}`` naming the attempt that may have made the call.

    ``approved`` (an incident member's step: ``{lead_case_id, incident_id, plan_hash, decision,
    approver, approvers}``): the decision that covers it, recorded on this case as
    ``approval.incident`` before its first step of this run, so the member's own timeline says
    who approved what it contains."""
    plan_step = step
    detection = _detection(case_id)
    if approved and not any(r.run_id == _run_id() for r in ledger().records(case_id=case_id,
                                                                            kind_prefix="approval.incident")):
        ledger().append("approval.incident", approved, case_id=case_id, run_id=_run_id(),
                        actor=approved.get("approver"))
    earlier = _interrupted(case_id, plan_step.action, plan_step.target)
    ledger().append("step.started", {"name": plan_step.action, "target": plan_step.target, "attempt": attempt,
                                     "calls": plan_step.describe}, case_id=case_id, run_id=_run_id(), actor="cordon")
    result = redact(run_step(plan_step, detection, _clients(detection, cloud)).model_dump())
    payload = {**result, "interrupted": earlier} if earlier else result
    ledger().append(f"action.{result['status']}", payload, case_id=case_id, run_id=_run_id(), actor="cordon")
    _log("%s on %s: %s%s", plan_step.action, plan_step.target, result["status"],
         f" ({result['error']})" if result.get("error") else "")
    return result


@task(name="verify", task_run_name="verify {step.action} {step.target}", persist_result=True)
def verify_task(case_id: str, step: PlanStep, cloud: dict[str, Any]) -> dict[str, Any]:
    """Read the state again and record whether containment held."""
    detection = _detection(case_id)
    outcome = redact(verify_step(step, detection, _clients(detection, cloud)))
    ledger().append("verify.held" if outcome["held"] else "verify.failed", outcome, case_id=case_id,
                    run_id=_run_id(), actor="cordon")
    _log("verify %s on %s: %s", step.action, step.target, "held" if outcome["held"] else "DID NOT HOLD")
    return outcome


@task(name="update Slack", task_run_name="update Slack {summary[case_id]}", persist_result=True)
def update_slack(slack: dict[str, Any], where: dict[str, Any], summary: dict[str, Any],
                 thread_text: str | None = None) -> bool:
    """Update the approval message with the case's state and reply ``thread_text`` in its thread
    (:func:`cordon.slack.progress.update`); a Slack failure is recorded and does not fail the run."""
    from cordon.slack import progress

    return progress.update(ledger(), slack, where, summary, thread_text, _run_id())


@task(name="update Teams", task_run_name="update Teams {summary[case_id]}", persist_result=True)
def update_teams(summary: dict[str, Any], story: str | None = None) -> bool:
    """Update the case's Teams card with its state and the run's ``story`` (one line each:
    :meth:`cordon.teams.client.TeamsCards.show_status`); a Teams failure is recorded
    (``teams.update_failed``) and does not fail the run. ``False`` when there is no card."""
    from cordon.teams.channel import cards_for

    cards = cards_for(ledger(), load_config())
    if cards is None:
        return False
    return cards.show_status(summary["case_id"], _run_id(), str(summary.get("status")),
                             (story or "").split("\n") if story else [], rollback=bool(summary.get("rollback")),
                             manual=summary.get("manual") or [] if summary.get("status") == "awaiting_manual" else [])


def _tell(approval: str, slack: dict[str, Any], where: dict[str, Any] | None, summary: dict[str, Any],
          text: str | None) -> None:
    """Show the case's state where the run asked: the Slack message (``slack`` / ``both``) and
    the Teams card (``teams`` / ``both``: :mod:`cordon.approvals.modes`)."""
    from cordon.approvals.modes import SLACK_MODES, TEAMS_MODES

    if where and approval in SLACK_MODES:
        update_slack(slack, where, summary, text)
    if approval in TEAMS_MODES:
        update_teams(summary, text)


def _rollbackable(results: list[dict[str, Any]]) -> bool:
    from cordon.action import get_action

    return any(r.get("status") == "contained" and get_action(r["name"]).rollback_supported for r in results)


def _manual_of(summary: CaseSummary) -> dict[str, Any]:
    """``{"manual": [{id, text}]}`` for a case left awaiting a person's steps, else ``{}``."""
    manual = getattr(summary, "manual", None)
    return {"manual": manual} if summary.status == AWAITING and manual else {}


@task(name="finish", task_run_name="finish {case_id}", persist_result=True)
def finish(case_id: str, summary: CaseSummary) -> dict[str, Any]:
    """Close the run: case status, a ``case.closed`` record with the outcome, and the case's
    timeline as a Markdown artifact on the run (key ``cordon-timeline-<case>``) for the Prefect UI.
    Returns the summary as printed (:meth:`cordon.respond.CaseSummary.out`)."""
    # status and case.closed in one transaction: a kill between them left a "contained" case that
    # no record closed, which recovery (reading the status) never looked at again
    ledger().close_case(case_id, summary.status, {"status": summary.status, "verified": summary.verified,
                                                  "approval": summary.approval, **_manual_of(summary)},
                        run_id=_run_id(), actor="cordon")
    _log("case %s closed: %s", case_id, summary.status)
    from prefect.artifacts import create_markdown_artifact

    from cordon.audit.report import artifact_key, markdown_timeline

    try:
        create_markdown_artifact(key=artifact_key(case_id), markdown=markdown_timeline(ledger(), case_id),
                                 description=f"Cordon audit timeline of {case_id}")
    except Exception as exc:  # noqa: BLE001 - the ledger holds the timeline; the artifact is a view of it
        from prefect.logging import get_run_logger

        get_run_logger().warning("could not attach the timeline artifact for %s: %s", case_id, exc)
    return summary.out()


@task(name="plan again", task_run_name="plan again {case_id}", persist_result=True)
def replan_task(case_id: str, summary: CaseSummary, cloud: dict[str, Any], slack: dict[str, Any],
                attempt: int, members: list[Member] | None = None,
                done: list[CaseSummary] | None = None, approval: str = "slack") -> dict[str, Any]:
    """The state changed since the plan was approved (a step is ``plan_changed``; nothing was
    done): ``case.replan`` in the ledger, the case ``replanning``, its Slack request retired (the
    next ask posts a new message), and the next attempt submitted to the ``respond`` deployment
    (:func:`cordon.recovery.rerun`), which plans from the state as it is and asks again. Not a
    ``case.closed``: the next attempt closes the case. After :func:`cordon.recovery.max_attempts`
    attempts recovery gives up and the case waits for a person (``recovery.gave_up``).

    An incident's lead: the members whose own steps ended (``done``) are closed first; the next
    attempt answers the lead and ``members`` (the rest) together again."""
    from cordon.approvals.outbox import default_outbox
    from cordon.engine import Responder
    from cordon.recovery import DEPLOYMENT, RunCheck, rerun

    for m in done or []:
        _close(m)
    changed = [a for a in summary.actions if a.get("status") == "plan_changed"]
    ledger().append("case.replan", {"attempt": attempt, "steps": changed}, case_id=case_id, run_id=_run_id(),
                    actor="cordon")
    ledger().set_case(case_id, status="replanning")
    default_outbox().retire(case_id)
    check = RunCheck(case_id=case_id, live=False, reason="the state changed since the plan was approved",
                     status="replanning", playbook=summary.playbook, attempt=attempt, started=attempt, mode=approval,
                     where=DEPLOYMENT, flow_run_id=_run_id(), cloud=cloud, slack=slack,
                     members=[m.model_dump() for m in members or []] or None)
    again = rerun(Responder(ledger=ledger()), check, where=DEPLOYMENT, modes=(approval,), cloud=cloud, slack=slack)
    _log("the state changed since approval: nothing done; attempt %s %s", again.attempt, again.action)
    return {**summary.out(), "status": "replanning", "next_attempt": again.attempt, "recovery": again.action}


# -- an incident: one run, one approval, one plan for the cases of one actor's burst ------------------
def _incident_view(case_id: str, members: list[Member], prepared: dict[str, Prepared]) -> dict[str, Any]:
    """What the approval message shows of the incident: its ID, actor key and each case."""
    incident_id = ledger().incident_of(case_id)
    info = ledger().incident(incident_id) if incident_id else None
    cases = []
    for cid, pb in [(case_id, None), *((m.case_id, m.playbook) for m in members)]:
        det = _detection(cid)
        cred = det.credential
        prep = prepared.get(cid)
        cases.append({"case_id": cid, "playbook": pb or (ledger().case(cid) or {}).get("playbook"),
                      "event_name": det.event_name or det.finding_type,
                      "credential": {"kind": cred.kind, "uid": cred.uid, "owner": cred.owner.name or cred.owner.uid}
                      if cred else None,
                      "target": det.target.name or det.target.uid,
                      "steps": len(prep.plan.steps) if prep and prep.plan else 0,
                      **({"refused": prep.guard.get("reason")} if prep and not prep.guard.get("ok") else {})})
    return {"incident_id": incident_id, "actor_key": (info or {}).get("actor_key"), "cases": cases}


def _summary_of(case_id: str, playbook: str, prep: Prepared, incident_id: str | None) -> CaseSummary:
    summary = CaseSummary.opened(case_id, playbook, _detection(case_id), flow_run_id=prep.run_id,
                                 enrichment=prep.enrichment, plan=None, incident_id=incident_id)
    if not prep.guard["ok"]:
        summary.status, summary.guard = "refused", prep.guard
    elif prep.plan is not None:
        summary.with_plan(prep.plan)
        if not prep.plan.steps:
            summary.status = "no_containment"
        elif not any(s.calls for s in prep.plan.steps) and _rereading(case_id):
            summary.status = "already_contained"  # the state read for the plan: nothing is live
    return summary


def _rereading(case_id: str) -> bool:
    """Whether a plan with no call closes the case ``already_contained`` without asking: only for a
    case linked to an earlier one (``case.linked``: the credential read again after its case
    closed) that no run began containing (a ``step.started``: a run again after one died while
    containing goes through its steps, so each says what the dead run did). Any other case with
    nothing to call still asks and records each step's ``already_contained``, as before."""
    kinds = {r.kind for r in ledger().records(case_id=case_id) if r.kind in ("case.linked", "step.started")}
    return kinds == {"case.linked"}


def _close(summary: CaseSummary) -> None:
    """Close an incident member with its own outcome (once: a case already closed is left alone)."""
    from cordon.recovery import CLOSED_STATUSES

    if (ledger().case(summary.case_id) or {}).get("status") in CLOSED_STATUSES:
        return
    ledger().close_case(summary.case_id, summary.status, {"status": summary.status, "verified": summary.verified,
                                                          "approval": summary.approval, **_manual_of(summary),
                                                          **({"incident_id": summary.incident_id}
                                                             if getattr(summary, "incident_id", None) else {})},
                        run_id=_run_id(), actor="cordon")


@task(name="prepare incident", task_run_name="enrich, guard and plan the incident of {case_id}", persist_result=True)
def prepare_incident_task(case_id: str, playbook: str, approval: str, cloud: dict[str, Any],
                          members: list[Member]) -> IncidentPrepared:
    """The pre-approval half of every case of an incident in one task (:func:`_prepare` each: its
    own enrichment, guard and plan records), then the incident's plan on the lead: every case's
    steps (``case_id`` set), hashed together, recorded as the lead's ``plan.created`` (with
    ``incident``: what the message lists) and its ``plan_hash``. A member that ends here (refused,
    nothing to contain) is closed at once; the lead, which carries the incident's approval, is
    closed with the run's end."""
    cases = _prepare_all([(case_id, playbook, cloud), *((m.case_id, m.playbook, m.cloud or cloud) for m in members)],
                         approval)
    incident_id = ledger().incident_of(case_id)
    books = {case_id: playbook, **{m.case_id: m.playbook for m in members}}
    ended = {cid for cid, prep in cases.items() if _summary_of(cid, books[cid], prep, incident_id).status}
    for m in members:
        if m.case_id in ended:
            _close(_summary_of(m.case_id, m.playbook, cases[m.case_id], incident_id))
    steps = [step.model_copy(update={"case_id": cid}) for cid, prep in cases.items()
             if cid not in ended and prep.plan is not None for step in prep.plan.steps]
    if not steps:
        return IncidentPrepared(cases=cases)
    plan = Plan(case_id=case_id, playbook=playbook, steps=steps, hash=plan_hash(case_id, playbook, steps),
                incident=_incident_view(case_id, members, cases))
    ledger().set_case(case_id, plan_hash=plan.hash)
    ledger().append("plan.created", plan.model_dump(), case_id=case_id, run_id=_run_id(), actor="cordon")
    _log("incident plan %s: %d step(s) for %d case(s)", plan.hash[:12], len(steps), len(cases))
    return IncidentPrepared(cases=cases, plan=plan)


#: how many of an incident's cases are prepared at once (each mostly waits on its cloud's API)
PREPARE_THREADS = 4


def _prepare_all(cases: list[tuple[str, str, dict[str, Any]]], approval: str) -> dict[str, Prepared]:
    """:func:`_prepare` for each ``(case_id, playbook, cloud)``, up to :data:`PREPARE_THREADS` at
    once, each thread in a copy of this task's context (its run ID, its logger); returned in the
    given order (the lead first). Raises what the first failing :func:`_prepare` raised."""
    if len(cases) == 1:
        (cid, pb, cl), = cases
        return {cid: _prepare(cid, pb, approval, cl)}
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(PREPARE_THREADS, len(cases)), thread_name_prefix="cordon-prepare") as pool:
        futures = [(cid, pool.submit(contextvars.copy_context().run, _prepare, cid, pb, approval, cl))
                   for cid, pb, cl in cases]
        return {cid: f.result() for cid, f in futures}


def _incident_from_ledger(case_id: str, approval: str, members: list[Member]) -> IncidentPrepared | None:
    """A resumed incident run's pre-approval half from the ledger (see :func:`_asked_before`): the
    lead's (its ``plan.created`` is the incident's plan) and each member's."""
    lead = _asked_before(case_id, approval)
    if lead is None or lead.plan is None:
        return None
    run_id = _run_id()
    cases = {case_id: lead}
    for m in members:
        prep = Prepared.from_ledger(ledger().records(case_id=m.case_id), run_id, asked=False)
        if prep is not None:
            cases[m.case_id] = prep
    own = Prepared.from_ledger(
        [r for r in ledger().records(case_id=case_id) if not (r.kind == "plan.created" and r.payload.get("incident"))],
        run_id, asked=False)
    cases[case_id] = own or lead.model_copy(update={"plan": None})
    return IncidentPrepared(cases=cases, plan=lead.plan.model_copy(update={"incident": lead.plan.incident}),
                            where=lead.where)


@task(name="finish incident", task_run_name="finish the incident of {case_id}", persist_result=True)
def finish_incident(case_id: str, lead: CaseSummary, members: list[CaseSummary]) -> dict[str, Any]:
    """Close each member still open (its own status, ``case.closed`` with the ``incident_id``),
    then the lead (:func:`finish`'s record and timeline artifact). Returns the lead's summary with
    ``members``: each member's, as :meth:`cordon.respond.CaseSummary.out`."""
    for m in members:
        _close(m)
    out = finish.fn(case_id, lead)
    return {**out, "members": [m.out() for m in members]}


def _respond_incident(case_id: str, playbook: str, approval: str, cloud: dict[str, Any],
                      slack: dict[str, Any] | None, attempt: int, members: list[Member]) -> dict[str, Any]:
    """The incident path of :func:`respond` (``members`` given): one prepare, one ask, one decision,
    each step contained and verified on its own case, each case closed with its own outcome."""
    from cordon.slack import progress

    _note_process(case_id, attempt)
    books = {case_id: playbook, **{m.case_id: m.playbook for m in members}}
    clouds = {case_id: cloud, **{m.case_id: (m.cloud or cloud) for m in members}}
    resumed = _incident_from_ledger(case_id, approval, members)
    prepared = resumed or prepare_incident_task(case_id, playbook, approval, cloud, members)
    incident_id = ledger().incident_of(case_id)
    summaries = {cid: _summary_of(cid, books[cid], prep, incident_id) for cid, prep in prepared.cases.items()}
    lead = summaries[case_id]
    others = [summaries[m.case_id] for m in members if m.case_id in summaries]
    plan = prepared.plan
    if plan is None:
        lead.status = lead.status or "no_containment"
        return finish_incident(case_id, lead, others)
    waiting = [s for s in summaries.values() if s.status is None or s.case_id == case_id]
    asked = {"decision": None, "where": resumed.where} if resumed else \
        ask_task(case_id, playbook, prepared.cases[case_id].enrichment, plan, approval, slack or {})
    decision, gate, where = _decision(case_id, _playbook(playbook)[1], plan, asked)
    approval_view = _approval_view(decision)
    for s in waiting:
        s.approval = approval_view
    combined = CaseSummary.opened(case_id, playbook, _detection(case_id), flow_run_id=_run_id(),
                                  incident_id=incident_id).with_plan(plan)
    combined.approval = approval_view
    if not proceeds(decision) or (gate and gate["outcome"] == "denied"):
        status = "denied" if (gate and gate["outcome"] == "denied") or decision["decision"] == "deny" else "expired"
        for s in waiting:
            s.status = s.status if s.case_id == case_id and s.status == "refused" else status
        combined.status = status
        if where:
            text = progress.cancelled(gate["denied_by"], None) if gate and gate["outcome"] == "denied" \
                else progress.not_proceeding(decision)
            _tell(approval, slack or {}, where, combined.out(), text)
        return finish_incident(case_id, lead, others)
    covered = {"lead_case_id": case_id, "incident_id": incident_id, "plan_hash": plan.hash,
               **{k: v for k, v in approval_view.items() if k != "reason"}}
    results = [contain_task(step.case_id or case_id, step, clouds.get(step.case_id or case_id, cloud), attempt,
                            covered if (step.case_id or case_id) != case_id else None)
               for step in plan.steps]
    checks = [verify_task(step.case_id or case_id, step, clouds.get(step.case_id or case_id, cloud))
              for step in plan.steps]
    for cid, s in summaries.items():
        mine = [i for i, step in enumerate(plan.steps) if (step.case_id or case_id) == cid]
        if not mine:
            continue
        s.actions = [{k: results[i].get(k) for k in ("name", "target", "status", "before", "after", "error", "calls")}
                     for i in mine]
        s.verification = [checks[i] for i in mine]
        s.verified = all(checks[i]["held"] for i in mine)
        s.status = outcome_status([results[i] for i in mine], [checks[i] for i in mine])
        s.status, manual = await_manual(s.status, _playbook(s.playbook)[1] if s.playbook else None)
        if manual:
            s.manual = manual
    combined.actions = [{k: r.get(k) for k in ("name", "target", "status", "before", "after", "error", "calls")}
                        for r in results]
    combined.verification, combined.verified = checks, all(c["held"] for c in checks)
    combined.status = outcome_status(results, checks)
    if where:
        story = [progress.proceeding(decision), *(progress.step_line(r) for r in results),
                 progress.replanning() if combined.status == "plan_changed"
                 else progress.outcome(combined.status, results, checks)]
        _tell(approval, slack or {}, where, {**combined.out(), "rollback": _rollbackable(results)}, "\n".join(story))
        if combined.status == "plan_changed":  # never what was not approved: plan and ask the whole incident again
            again = [m for m in members if summaries.get(m.case_id) and summaries[m.case_id].status in
                     (None, "plan_changed")]
            done = [s for s in others if s.case_id not in {m.case_id for m in again}]
            lead.actions = combined.actions
            return replan_task(case_id, lead, cloud, slack or {}, attempt, again, done, approval=approval)
    lead.status = lead.status or "no_containment"
    return finish_incident(case_id, lead, others)



def _decision(case_id: str, pb: Any, plan: Plan, asked: dict[str, Any]) -> tuple[dict[str, Any],
                                                                               dict[str, Any] | None,
                                                                               dict[str, Any] | None]:
    """The decision on ``plan``: the one the channel gave at once, or (the request is out) the one
    a click resumes the suspended run with, recorded and gated (:func:`decide_task`). Returns
    ``(decision, gate, where)``: ``gate`` ``None`` unless decided by a click; ``where`` the
    request's message (``{"case_id", "queued": True}`` while the outbox holds it, and in a resumed
    run: updates then name the case and the outbox's row says where its message is)."""
    if asked["decision"] is not None:
        return asked["decision"], None, None
    from cordon.approvals.policy import load_settings

    where = asked["where"] or {"case_id": case_id, "queued": True}
    # Longer than expire_after: the sweeper (cordon/flows/sweeper.py) expires the request first and
    # resumes the run with "expired"; Prefect's own timeout would only fail the run.
    grace = load_settings(load_config()).grace_seconds
    given = suspend_flow_run(wait_for_input=ApprovalInput, key=f"approval-{plan.hash[:16]}",
                             timeout=pb.approval.expire_seconds + grace)
    decided = decide_task(case_id, plan, given.model_dump(mode="json", exclude={"metadata"}), pb.approval.on_expiry)
    return decided["decision"], decided["gate"], where


def _approval_view(decision: dict[str, Any]) -> dict[str, Any]:
    """What a summary shows of a decision: who and what, and the quorum, time and reason when set."""
    return {k: decision.get(k) for k in ("decision", "approver", "approvers", "quorum", "decided_at", "reason")
            if k in ("decision", "approver") or decision.get(k)}


def _with_late(case_id: str, attempt: int, members: list[Any] | None) -> list[Any]:
    """``members`` and the cases that joined this lead's run while it was queued (sealed now, as
    it starts planning: :meth:`cordon.audit.ledger.Ledger.seal_incident_run`; the same list again
    in a resumed run)."""
    given = [m if isinstance(m, dict) else m.model_dump() for m in members or []]
    late = ledger().seal_incident_run(case_id, attempt)
    have = {m["case_id"] for m in given}
    return [*given, *(m for m in late if m["case_id"] not in have)]


def record_failure(flow, flow_run, state) -> None:
    """Prefect ``on_failure`` / ``on_crashed`` hook: the ledger says the run failed and why."""
    case_id = (flow_run.parameters or {}).get("case_id")
    message = getattr(state, "message", None) or str(state)
    ledger().append("run.error", {"state": state.type.value, "message": message,
                                  "attempt": (flow_run.parameters or {}).get("attempt") or 1}, case_id=case_id,
                    run_id=str(flow_run.id), actor="cordon")
    if case_id:
        from cordon.slack import progress

        ledger().set_case(case_id, status="error")
        progress.tell_failure(ledger(), case_id, str(flow_run.id), flow_run.parameters or {}, message)


@flow(name="respond", flow_run_name=run_name, persist_result=True, log_prints=True, on_failure=[record_failure],
      on_crashed=[record_failure])
def respond(case_id: str, playbook: str, approval: ApprovalMode = "console", cloud: dict[str, Any] | None = None,
            slack: dict[str, Any] | None = None, attempt: int = 1,
            members: list[Member] | None = None) -> dict[str, Any]:
    """Answer one case with one playbook, or (``members``) the cases of one incident together.

    ``case_id`` names a case already in the ledger (its detection is read from there, redacted);
    ``cloud`` the client parameters of :func:`cordon.clouds.clients_for`; ``slack``
    ``{"channel", "base_url"}`` for ``approval="slack"`` (the token is read from
    ``CORDON_SLACK_BOT_TOKEN``); ``attempt`` which run of the case this is (1, or more when
    :mod:`cordon.recovery` runs a stranded case again). ``members`` (an incident's other new cases,
    :meth:`cordon.engine.Responder.incident_runs`): one prepare, one approval request listing every
    credential, one plan of every case's steps under this (lead) case, each step contained on its
    own case and each case closed with its own outcome; the summary then has ``members``. Returns
    the case summary printed by ``cordon respond --output json``. Raises ``KeyError`` for a case not
    in the ledger.
    """
    from cordon.slack import progress

    cloud = cloud or {}
    members = _with_late(case_id, attempt, members)
    if members:
        return _respond_incident(case_id, playbook, approval, cloud, slack, attempt,
                                 [Member.model_validate(m) for m in members])
    _, pb = _playbook(playbook)
    detection = _detection(case_id)
    _note_process(case_id, attempt)
    resumed = _asked_before(case_id, approval)
    prepared = resumed or prepare_task(case_id, playbook, approval, cloud)
    summary = CaseSummary.opened(case_id, playbook, detection, flow_run_id=prepared.run_id,
                                 enrichment=prepared.enrichment, plan=None)
    if not prepared.guard["ok"]:
        summary.status, summary.guard = "refused", prepared.guard
        return finish(case_id, summary)
    plan = prepared.plan
    summary.with_plan(plan)
    if not plan.steps:
        summary.status = "no_containment"
        return finish(case_id, summary)
    if not any(step.calls for step in plan.steps) and _rereading(case_id):
        # nothing is live (a linked case re-reading it, a key someone else deactivated): no one to ask
        checks = [verify_task(case_id, step, cloud) for step in plan.steps]
        summary.verification, summary.verified = checks, all(c["held"] for c in checks)
        summary.status = "already_contained" if summary.verified else "not_verified"
        return finish(case_id, summary)

    asked = {"decision": None, "where": resumed.where} if resumed else \
        ask_task(case_id, playbook, prepared.enrichment, plan, approval, slack or {})
    decision, gate, where = _decision(case_id, pb, plan, asked)
    summary.approval = _approval_view(decision)
    if not proceeds(decision):
        summary.status = "denied" if decision["decision"] == "deny" else "expired"
        if where:
            _tell(approval, slack or {}, where, summary.out(), progress.not_proceeding(decision))
        return finish(case_id, summary)

    if gate and gate["outcome"] == "denied":
        # a Deny recorded before containment started wins over the approval (cordon/approvals/gate.py)
        reason = _deny_reason(case_id, gate.get("deny_seq"))
        summary.approval = {"decision": "deny", "approver": gate["denied_by"], "decided_at": gate["decided_at"],
                            "cancelled": summary.approval, **({"reason": reason} if reason else {})}
        summary.status = "denied"
        _tell(approval, slack or {}, where, summary.out(), progress.cancelled(gate["denied_by"], reason))
        return finish(case_id, summary)
    # Slack stays off the path to "verified": no update while containing; one final update, and the
    # step-by-step story as one thread reply behind it (the outbox's reply lane never delays an ask)
    results = [contain_task(case_id, step, cloud, attempt) for step in plan.steps]
    summary.actions = [{k: r.get(k) for k in ("name", "target", "status", "before", "after", "error", "calls")}
                       for r in results]
    checks = [verify_task(case_id, step, cloud) for step in plan.steps]
    summary.verification = checks
    summary.verified = all(c["held"] for c in checks)
    summary.status = outcome_status(results, checks)
    summary.status, manual = await_manual(summary.status, pb)
    if manual:  # contained, and the playbook leaves steps to a person: the case waits for them
        summary.manual = manual
    if where:
        story = [progress.proceeding(decision), *(progress.step_line(r) for r in results),
                 progress.replanning() if summary.status == "plan_changed"
                 else progress.outcome(summary.status, results, checks)]
        _tell(approval, slack or {}, where, {**summary.out(), "rollback": _rollbackable(results)}, "\n".join(story))
        if summary.status == "plan_changed":  # never what was not approved: plan and ask again
            return replan_task(case_id, summary, cloud, slack or {}, attempt, approval=approval)
    return finish(case_id, summary)

def serve(name: str = "respond", sweeper_interval: int | None = None,
          watch_interval: int | None = None) -> None:  # pragma: no cover - durability test
    """Serve the respond flow as the ``respond/<name>`` deployment (``cordon worker``); with
    ``sweeper_interval`` (seconds), also the approval sweeper as ``approval-sweeper/sweeper`` on
    that schedule, and with ``watch_interval`` the watch after containment as
    ``watch-contained/watch`` (:mod:`cordon.flows.watch`), in the same process. Blocks.

    Runs execute warm, in threads of this process (:class:`cordon.runner.WarmRunner`); with
    ``CORDON_RUNNER=process``, in a new process each as Prefect's own runner does (``flow.serve``)."""
    from cordon.approvals.outbox import start_default_sender

    start_default_sender()  # what runs left queued for a channel's rate slot
    deployments = [(respond, respond.to_deployment(name=name))]
    if sweeper_interval:
        from cordon.flows.sweeper import sweep_approvals

        deployments.append((sweep_approvals, sweep_approvals.to_deployment(name="sweeper", interval=sweeper_interval)))
    if watch_interval:
        from cordon.flows.watch import watch_contained

        deployments.append((watch_contained, watch_contained.to_deployment(name="watch", interval=watch_interval)))
    if os.environ.get("CORDON_RUNNER", "warm") == "process":
        from prefect import serve as serve_all

        os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
        serve_all(*(d for _, d in deployments))
        return
    from cordon.runner import WarmRunner

    WarmRunner(deployments).serve()


if __name__ == "__main__":  # pragma: no cover
    serve(sys.argv[1] if len(sys.argv) > 1 else "respond")
