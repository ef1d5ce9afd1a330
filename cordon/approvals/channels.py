"""Approval channels: how a run's containment plan gets its decision, behind one interface.

A channel is asked once per run (:meth:`ApprovalChannel.request`) and answers with an
:class:`Asked`: either a decision now (``not required`` by the playbook, ``auto``, ``console`` at the
terminal), or a request that is out and will be decided later (``slack``: the message is posted, the
flow suspends until a responder's click resumes it; the ledger's settling claim decides,
:mod:`cordon.approvals.gate`). Every channel writes its own ledger records (``approval.asked``,
``approval.given`` / ``approval.refused`` / ``approval.not_required``), so the flow only orders the
steps: ``channel_for(mode, required).request(ctx)``, then wait when :attr:`Asked.waiting`.

A new channel (Microsoft Teams, issue 18) is a class here with ``name`` and ``request``, registered
in :data:`CHANNELS`.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from cordon.audit.ledger import Ledger
from cordon.config import Config
from cordon.detections.model import Detection
from cordon.playbooks.schema import Playbook
from cordon.respond import Plan


@dataclass
class AskContext:
    """What a channel may need to ask: the case, its run, the plan (``Plan``: its ``hash`` binds
    the decision), the playbook and configuration, the detection and enrichment to show, and the
    Slack settings (``{"channel", "base_url"}``) for channels that post."""

    ledger: Ledger
    case_id: str
    run_id: str | None
    plan: Plan
    playbook: Playbook
    config: Config
    detection: Detection
    enrichment: dict[str, Any] = field(default_factory=dict)
    slack: dict[str, Any] = field(default_factory=dict)


@dataclass
class Asked:
    """A channel's answer. ``decision`` (``{decision: approve|deny, approver, plan_hash}``) when
    decided now; else ``None`` and ``where`` / ``expires_at`` say where the request waits and until
    when (``where`` is ``None`` while the request is queued to be posted). ``said`` is one line for
    the run's log."""

    decision: dict[str, Any] | None = None
    where: dict[str, Any] | None = None
    asked_at: str | None = None
    expires_at: str | None = None
    quorum: int | None = None
    said: str = ""

    @property
    def waiting(self) -> bool:
        """Whether the decision arrives later (the run waits for it)."""
        return self.decision is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the Prefect task's persisted result)."""
        return {"decision": self.decision, "where": self.where, "asked_at": self.asked_at,
                "expires_at": self.expires_at, "quorum": self.quorum, "said": self.said}


class ApprovalChannel(Protocol):
    """One way of getting a decision: ``name`` (the ``--approve`` value) and ``request``."""

    name: ClassVar[str]

    def request(self, ctx: AskContext) -> Asked: ...


def _decided(ctx: AskContext, decision: dict[str, Any]) -> Asked:
    kind = "approval.given" if decision["decision"] == "approve" else "approval.refused"
    ctx.ledger.append(kind, decision, case_id=ctx.case_id, run_id=ctx.run_id, actor=decision["approver"])
    verb = "approved" if decision["decision"] == "approve" else "denied"
    return Asked(decision=decision, said=f"{verb} by {decision['approver']}")


class NotRequired:
    """The playbook's approval policy does not require a decision: approved by policy."""

    name: ClassVar[str] = "not_required"

    def request(self, ctx: AskContext) -> Asked:
        decision = {"decision": "approve", "approver": "policy: approval not required", "plan_hash": ctx.plan.hash}
        ctx.ledger.append("approval.not_required", decision, case_id=ctx.case_id, run_id=ctx.run_id, actor="cordon")
        return Asked(decision=decision, said=f"approved by {decision['approver']}")


class Auto:
    """``--approve auto``: approves, and says so (rehearsals, the sandbox, trusted playbooks)."""

    name: ClassVar[str] = "auto"

    def request(self, ctx: AskContext) -> Asked:
        ctx.ledger.append("approval.asked", {"mode": self.name, "plan_hash": ctx.plan.hash}, case_id=ctx.case_id,
                          run_id=ctx.run_id, actor="cordon")
        return _decided(ctx, {"decision": "approve", "approver": "auto (--approve auto)", "plan_hash": ctx.plan.hash})


class Console:
    """``--approve console``: the plan shown at the terminal, approve or deny there
    (:func:`cordon.approvals.console.ask`; raises its ``NoTerminalError`` without a terminal)."""

    name: ClassVar[str] = "console"

    def request(self, ctx: AskContext) -> Asked:
        from cordon.approvals.console import ask

        ctx.ledger.append("approval.asked", {"mode": self.name, "plan_hash": ctx.plan.hash}, case_id=ctx.case_id,
                          run_id=ctx.run_id, actor="cordon")
        answer = ask(ctx.plan.model_dump())
        return _decided(ctx, {"decision": "approve" if answer else "deny", "approver": f"console:{getpass.getuser()}",
                              "plan_hash": ctx.plan.hash})


class Slack:
    """``--approve slack``: the approval request (Block Kit) posted once through the outbox
    (:func:`cordon.approvals.decide.post_request`); the decision arrives later as run input.
    Raises ``RuntimeError`` without a flow run ID (a waiting run must be a deployment's)."""

    name: ClassVar[str] = "slack"

    def request(self, ctx: AskContext) -> Asked:
        from cordon import slack as slack_api
        from cordon.approvals.decide import post_request

        if not ctx.run_id:
            raise RuntimeError("Slack approval needs a flow run ID (run the flow as a deployment: cordon worker)")
        record = post_request(ctx.ledger, slack_api.web_client(ctx.slack), config=ctx.config, playbook=ctx.playbook,
                              case_id=ctx.case_id, run_id=ctx.run_id, detection=ctx.detection,
                              enrichment=ctx.enrichment, plan=ctx.plan.model_dump(), channel=ctx.slack["channel"])
        where = record.get("where")  # None: queued in the outbox, its sender posts it
        how = "requested" if where else "queued (the outbox posts it when the channel's rate slot comes)"
        return Asked(where=where, asked_at=record.get("asked_at"), expires_at=record.get("expires_at"),
                     quorum=record.get("quorum"),
                     said=f"approval {how} in Slack channel {record['channel']}; waiting until "
                          f"{record.get('expires_at')}")


#: The channels by ``--approve`` value.
CHANNELS: dict[str, ApprovalChannel] = {c.name: c for c in (Auto(), Console(), Slack())}


def channel_for(mode: str, required: bool) -> ApprovalChannel:
    """The channel that decides a run with approval mode ``mode`` (``auto`` | ``console`` |
    ``slack``) when the playbook's policy ``required`` a decision; :class:`NotRequired` when not.
    Raises ``KeyError`` naming the known modes for another."""
    if not required:
        return NotRequired()
    try:
        return CHANNELS[mode]
    except KeyError:
        raise KeyError(f"no approval channel '{mode}' (known: {', '.join(sorted(CHANNELS))})") from None
