"""Approval channels: how a run's containment plan gets its decision, behind one interface.

A channel is asked once per run (:meth:`ApprovalChannel.request`) and answers with an
:class:`Asked`: either a decision now (``not required`` by the playbook, ``auto``, ``console`` at the
terminal), or a request that is out and will be decided later (``slack``: the message is posted, the
flow suspends until a responder's click resumes it; the ledger's settling claim decides,
:mod:`cordon.approvals.gate`). Every channel writes its own ledger records (``approval.asked``,
``approval.given`` / ``approval.refused`` / ``approval.not_required``), so the flow only orders the
steps: ``channel_for(mode, required).request(ctx)``, then wait when :attr:`Asked.waiting`.

A new channel is a class here with ``name`` and ``request``, registered in :data:`CHANNELS`:
``teams`` posts an Adaptive Card in Microsoft Teams (:mod:`cordon.teams`), ``both`` asks in Slack
and Teams at once; which modes wait for a click is :mod:`cordon.approvals.modes`.
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


def _post_card(ctx: AskContext, record: dict[str, Any]) -> dict[str, Any]:
    """Post the Teams card of ``ctx``'s request (``record``: :func:`cordon.approvals.decide.request_record`);
    returns its reference (``teams.card_posted``). Raises :class:`cordon.config.ConfigError` when
    ``cordon.yaml`` does not say where to post, ``KeyError`` without a way to get the bot's token,
    and what the connector raises."""
    from cordon.teams.channel import connector_factory, require_destination
    from cordon.teams.client import TeamsCards

    settings = require_destination(ctx.config)
    cards = TeamsCards(ctx.ledger, connector_factory(settings))
    return cards.post_request(service_url=str(settings.service_url), conversation_id=str(settings.conversation_id),
                              case_id=ctx.case_id, run_id=str(ctx.run_id), playbook=ctx.playbook.name,
                              detection=ctx.detection.summary(), plan=ctx.plan.model_dump(),
                              expires_at=record["expires_at"], quorum=record["quorum"])


class Teams:
    """``--approve teams``: the approval request as an Adaptive Card posted in Microsoft Teams
    (:mod:`cordon.teams`), then ``approval.asked`` (``mode: teams``, the same policy fields as
    Slack's); the decision arrives later as run input, from a verified ``adaptiveCard/action``
    click (:mod:`cordon.teams.server`) through the shared decider. Raises ``RuntimeError`` without
    a flow run ID, and what :func:`_post_card` raises (the run fails, recorded: nothing waits on a
    card nobody can see)."""

    name: ClassVar[str] = "teams"

    def request(self, ctx: AskContext) -> Asked:
        from cordon.approvals.decide import request_record

        if not ctx.run_id:
            raise RuntimeError("Teams approval needs a flow run ID (run the flow as a deployment: cordon worker)")
        record = request_record(ctx.config, ctx.playbook, ctx.detection, ctx.plan.model_dump(), mode="teams")
        ref = _post_card(ctx, record)
        ctx.ledger.set_case(ctx.case_id, status="awaiting_approval")
        ctx.ledger.append("approval.asked", {**record, "teams": {k: ref[k] for k in
                                                                  ("conversation_id", "activity_id", "service_url")}},
                          case_id=ctx.case_id, run_id=ctx.run_id, actor="cordon")
        return Asked(where=None, asked_at=record["asked_at"], expires_at=record["expires_at"], quorum=record["quorum"],
                     said=f"approval requested in Microsoft Teams conversation {ref['conversation_id']}; waiting "
                          f"until {record['expires_at']}")


class Both:
    """``--approve both``: the request in Slack (:class:`Slack`, whose ``approval.asked`` is the
    request's record) and as a card in Teams. A click in either counts toward one quorum; the
    first Deny in either wins. A card Teams refuses is recorded (``teams.post_failed``) and the
    run waits on Slack alone."""

    name: ClassVar[str] = "both"

    def request(self, ctx: AskContext) -> Asked:
        from cordon.approvals.decide import request_record

        asked = Slack().request(ctx)
        record = {"expires_at": asked.expires_at, "quorum": asked.quorum}
        if asked.expires_at is None:  # queued in the outbox: the same policy, computed the same way
            record = request_record(ctx.config, ctx.playbook, ctx.detection, ctx.plan.model_dump(), mode="slack")
        try:
            ref = _post_card(ctx, record)
        except Exception as exc:  # noqa: BLE001 - recorded; Slack still asks
            ctx.ledger.append("teams.post_failed", {"error": f"{type(exc).__name__}: {exc}"[:300]},
                              case_id=ctx.case_id, run_id=ctx.run_id, actor="cordon")
            return Asked(where=asked.where, asked_at=asked.asked_at, expires_at=asked.expires_at, quorum=asked.quorum,
                         said=f"{asked.said}; the Teams card could not be posted ({type(exc).__name__})")
        return Asked(where=asked.where, asked_at=asked.asked_at, expires_at=asked.expires_at, quorum=asked.quorum,
                     said=f"{asked.said}; and in Microsoft Teams conversation {ref['conversation_id']}")


#: The channels by ``--approve`` value.
CHANNELS: dict[str, ApprovalChannel] = {c.name: c for c in (Auto(), Console(), Slack(), Teams(), Both())}


def channel_for(mode: str, required: bool) -> ApprovalChannel:
    """The channel that decides a run with approval mode ``mode`` (``auto`` | ``console`` |
    ``slack`` | ``teams`` | ``both``) when the playbook's policy ``required`` a decision; :class:`NotRequired` when not.
    Raises ``KeyError`` naming the known modes for another."""
    if not required:
        return NotRequired()
    try:
        return CHANNELS[mode]
    except KeyError:
        raise KeyError(f"no approval channel '{mode}' (known: {', '.join(sorted(CHANNELS))})") from None
