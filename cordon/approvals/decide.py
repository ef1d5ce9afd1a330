"""Turning a verified Slack click into a decision on a suspended run (or a rollback).

The server has already checked Slack's signature and timestamp (and refused a replayed body,
:func:`find_replay`); here the click is checked against the case it names: the run it belongs
to, the plan it approves (a click on a plan that has since changed is refused), whether the
request is still open (not decided; an approval also not expired), and the approval policy
(:mod:`cordon.approvals.policy`: an allowed approver, whose identity could be resolved, never a
principal of the detection nor the person who asked for a manual run). Approvals are votes
(``approval.vote`` ledger records, one per distinct approver, with the count).

**No decision lost; the ledger decides.** A click that would settle the request (a Deny, or the
approval that reaches the quorum of distinct allowed approvers) goes through :func:`settle`: its
decision is first appended as an ``approval.decision`` claim, and only the click whose claim is the
first settling one for the run and plan (:func:`cordon.approvals.gate.settling_claim`: the single
chain orders the replicas' records) resumes the Prefect run with
:class:`cordon.flows.respond.ApprovalInput`, through Prefect's client (:func:`prefect_resume`: anything
but ``ACCEPT`` is a failure, never taken as success). Every other settling click is told, in an
ephemeral message, what happened (``already decided: approve by <@U...>``), and its
``approval.decision_lost`` record says it did not resume. A Deny that loses to an approval is not
lost: if no ``containment.started`` precedes it in the ledger, the flow's gate
(:func:`cordon.approvals.gate.claim_containment`) cancels containment, and the clicker is told
"your Deny stops the approved containment"; otherwise "too late: containment started at ...; use
Roll back". An in-process lock per case narrows the window on one replica.

The *Roll back* button of a finished case goes through the same policy and quorum
(``rollback.vote``), then :meth:`cordon.engine.Responder.rollback`. Every decision and refusal is
written to the ledger, and the message is updated through :mod:`cordon.approvals.outbox`.

Ledger kinds written here: ``approval.vote``, ``approval.decision`` (a claim),
``approval.decision_received`` (the claim's owner resumed the run: Prefect answered ACCEPT),
``approval.resume_failed`` (it did not: ``status`` ABORT / REJECT / WAIT / error and ``reason``),
``approval.decision_lost`` (an earlier claim settled it), ``approval.click_refused``,
``rollback.vote``, ``rollback.approved``, ``rollback.completed``, ``slack.update_failed``.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cordon.approvals.gate import (
    CLAIM_KIND,
    FLOW_DECISION_KINDS,
    LOST_KIND,
    RESUME_FAILED_KIND,
    RESUMED_KIND,
    DenyEffect,
    deny_effect,
    hold_until,
    proceeds,
    settling_claim,
)
from cordon.audit.ledger import Ledger, LedgerRecord
from cordon.config import Config
from cordon.slack.verify import NO_REASON, DecisionOutcome, Interaction

#: Case statuses after which a *Roll back* click is meaningful.
ROLLBACKABLE = frozenset({"contained", "not_verified", "failed"})
#: What the owner of the settling claim writes once Prefect accepted the resume ("resumed the run").
DECIDED_KIND = RESUMED_KIND
#: A claim with no outcome after this long is delivered by the sweeper (its owner died mid-way).
DELIVER_AFTER = timedelta(seconds=60)
#: How much before the end of the deny window an approval's resume is delivered (s): about the time
#: a resumed run takes to be picked up and reach its gate, which waits out what is left
RESUME_LEAD_S = 0.25
#: ``approval.asked`` modes of a request a click decides (``both`` records Slack's ``slack`` one)
ASKED_MODES = frozenset({"slack", "teams"})

#: ``resume(flow_run_id, run_input)``: returns when the run was resumed, raises otherwise
#: (:class:`ResumeRefused` for an orchestration answer other than ACCEPT).
Resume = Callable[[str, dict[str, Any]], None]
Rollback = Callable[[str, str], list[dict[str, Any]]]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default clock)."""
    return datetime.now(UTC)


def parse_time(text: str | None) -> datetime | None:
    """ISO 8601 to an aware datetime (naive is taken as UTC); ``None`` for ``None``/bad text."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def principal(user_id: str) -> str:
    """How a clicker is recorded: a Slack user ID as ``slack:<id>``; a Microsoft Teams clicker
    arrives already qualified as ``teams:<Entra object id>`` (:mod:`cordon.teams.verify`) and is
    kept as is, so votes from both channels count in one quorum without colliding."""
    return user_id if user_id.startswith("teams:") else f"slack:{user_id}"


def mention(slack_id: str | None) -> str:
    """mrkdwn mention of a Slack user (``<@U...>``) or user group (``<!subteam^S...>``); another
    channel's clicker or directory group (``teams:<object id>``, ``<directory>:<group id>``) as
    escaped text."""
    if not slack_id:
        return "someone"
    if ":" in slack_id and not slack_id.startswith("slack:"):
        from cordon.slack.mrkdwn import escape

        return escape(slack_id)
    if slack_id.startswith("S"):
        return f"<!subteam^{slack_id}>"
    return f"<@{slack_id.removeprefix('slack:')}>"


def who(approver: str | None) -> str:
    """An approver as recorded (``slack:U...``, ``cordon:sweeper``, ``console:alice``) for a
    Slack message: Slack users as mentions, anyone else as escaped text."""
    from cordon.slack.mrkdwn import escape

    if approver and approver.startswith("slack:"):
        return mention(approver)
    return escape(approver or "someone")


# -- resuming the Prefect run ------------------------------------------------------------------
class ResumeRefused(RuntimeError):
    """Prefect did not accept a resume. ``status``: the orchestration result's status
    (``ABORT``: the run is not paused, e.g. "Cannot resume a flow run that is not paused."; ``REJECT``:
    the run input failed the run's schema, or the pause timed out; ``WAIT``), ``reason`` its
    ``details.reason``."""

    def __init__(self, status: str, reason: str | None):
        super().__init__(f"{status}: {reason or 'no reason given'}")
        self.status = status
        self.reason = reason


def prefect_resume(run_id: str, run_input: dict[str, Any]) -> None:
    """Resume the paused flow run ``run_id`` with ``run_input`` through Prefect's client
    (``PrefectClient.resume_flow_run``: ``POST /flow_runs/{id}/resume``, which answers an
    ``OrchestrationResult``). Returns only when its status is ``ACCEPT``; raises
    :class:`ResumeRefused` for ``ABORT`` / ``REJECT`` / ``WAIT``, and what the client raises
    (``httpx.HTTPStatusError`` for a 404, connection errors). ``prefect.flow_runs.resume_flow_run``
    is not used: it raises only on ``REJECT`` and so takes the server's ``ABORT`` ("Cannot resume a
    flow run that is not paused", ``prefect/server/api/flow_runs.py``) for success."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus

    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(UUID(str(run_id)), run_input=run_input)
    if result.status != SetStateStatus.ACCEPT:
        raise ResumeRefused(str(result.status.value), getattr(result.details, "reason", None))


@dataclass(frozen=True)
class Settlement:
    """What :func:`settle` did with one decision. ``outcome``: ``resumed`` (this claim settled
    the request and Prefect accepted the resume), ``resume_failed`` (it settled it, but the resume
    was not accepted: ``status``, ``error``), ``lost`` (``settled_by``, an earlier claim or
    decision record, settled it; with a Deny that lost to a proceeding decision, ``effect``), or
    ``pending`` (it settles it; the resume waits for ``deliver()``, ``record`` is ``None``).
    ``claim`` is this decision's ``approval.decision`` record, ``record`` the outcome record."""

    outcome: Literal["resumed", "resume_failed", "lost", "pending"]
    claim: LedgerRecord
    record: LedgerRecord | None
    settled_by: LedgerRecord | None = None
    status: str | None = None
    error: str | None = None
    effect: DenyEffect | None = None
    #: ``pending`` (``settle(..., hold_s > 0)``): this claim settles the request; calling
    #: ``deliver()`` waits out the hold, resumes the run and returns the ``resumed`` or
    #: ``resume_failed`` Settlement
    deliver: Callable[[], Settlement] | None = field(default=None, compare=False, repr=False)


def settle(ledger: Ledger, *, case_id: str, run_id: str, plan_hash: str, run_input: dict[str, Any], actor: str,
           resume: Resume, extra: Mapping[str, Any] | None = None, hold_s: float = 0.0) -> Settlement:
    """Settle an approval request with ``run_input`` (the :class:`cordon.flows.respond.ApprovalInput`
    fields: ``decision``, ``approver``, ``plan_hash``, ``decided_at``, ...), by ledger order.

    1. Append the claim ``approval.decision`` (``run_input`` + ``extra``, e.g. ``user_id``).
    2. Read the case back: when this claim is the settling one
       (:func:`cordon.approvals.gate.settling_claim`) and no decision of the flow for the run and
       plan precedes it, call ``resume(run_id, run_input)`` and record
       ``approval.decision_received`` (``run_input`` + ``decision_seq``, ``resumed: true``,
       ``status: ACCEPT``) or, when it raises, ``approval.resume_failed`` (``decision_seq``,
       ``status``, ``reason``, ``resumed: false``).
    3. Otherwise record ``approval.decision_lost`` (``decision_seq``, ``settled_by: {seq, decision,
       approver}``, ``resumed: false``; for a Deny that lost to a proceeding decision, ``effect``
       ``stops_containment`` or ``too_late`` with ``containment_started_seq``/``_at``).

    With ``hold_s`` > 0 (an approval, ``approval.deny_window``), step 2's resume is not made here:
    a ``pending`` Settlement is returned at once and its ``deliver()`` waits until the claim's
    ledger time plus ``hold_s`` (:func:`cordon.approvals.gate.hold_until`) less
    :data:`RESUME_LEAD_S` (the resumed run takes about that long to be picked up; its gate still
    waits out the rest of the window), then resumes and records.
    The caller releases its per-case lock first, so a Deny clicked inside the window is recorded
    before the run resumes, and the resumed run does not sleep out the window in a worker slot.

    Safe with several processes settling at once: the chain gives every claim its own ``seq`` and
    all readers agree which is first. Raises only what :meth:`Ledger.append` raises.
    """
    claim = ledger.append(CLAIM_KIND, {**run_input, **dict(extra or {})}, case_id=case_id, run_id=run_id,
                          actor=actor)
    records = list(ledger.records(case_id=case_id))
    first = settling_claim(records, run_id, plan_hash)
    if first is None or first.seq == claim.seq:
        first = _flow_decision_before(records, run_id, plan_hash, claim.seq) or first
    base = {"decision_seq": claim.seq, "plan_hash": plan_hash, "decision": run_input.get("decision"),
            "approver": run_input.get("approver")}
    if extra and extra.get("reason") is not None:
        base["reason"] = extra["reason"]
    if first is not None and first.seq == claim.seq:
        def deliver() -> Settlement:
            at = hold_until([claim], {"ledger_seq": claim.seq}, hold_s)
            if at is not None:  # RESUME_LEAD_S early: the run's pick-up overlaps the window's end
                at -= min(hold_s, RESUME_LEAD_S)
            if at is not None and at > time.time():
                time.sleep(at - time.time())
            try:
                resume(run_id, run_input)
            except Exception as exc:  # noqa: BLE001 - ResumeRefused, NotPausedError, transport: recorded, told
                status = exc.status if isinstance(exc, ResumeRefused) else "error"
                reason = exc.reason if isinstance(exc, ResumeRefused) else f"{type(exc).__name__}: {exc}"
                rec = ledger.append(RESUME_FAILED_KIND, {**base, "resumed": False, "status": status,
                                                         "reason": reason}, case_id=case_id, run_id=run_id,
                                    actor=actor)
                return Settlement("resume_failed", claim, rec, status=status, error=reason)
            rec = ledger.append(RESUMED_KIND, {**run_input, **base, "resumed": True, "status": "ACCEPT"},
                                case_id=case_id, run_id=run_id, actor=actor)
            return Settlement("resumed", claim, rec, status="ACCEPT")

        return Settlement("pending", claim, None, deliver=deliver) if hold_s > 0 else deliver()
    assert first is not None  # our own claim is not void, so something settles the request
    p = first.payload
    lost: dict[str, Any] = {**base, "resumed": False,
                            "settled_by": {"seq": first.seq, "kind": first.kind, "decision": p.get("decision"),
                                           "approver": p.get("approver")}}
    effect = None
    if run_input.get("decision") == "deny" and proceeds(p):
        effect = deny_effect(records, run_id, plan_hash, claim.seq)
        lost["effect"] = effect.effect
        if effect.started is not None:
            lost.update(containment_started_seq=effect.started.seq, containment_started_at=effect.started.ts)
    rec = ledger.append(LOST_KIND, lost, case_id=case_id, run_id=run_id, actor=actor)
    return Settlement("lost", claim, rec, settled_by=first, effect=effect)


def _flow_decision_before(records: list[LedgerRecord], run_id: str, plan_hash: str, seq: int) -> LedgerRecord | None:
    """A decision the flow recorded (``approval.given`` / ``refused`` / ``expired``, or an older
    ledger's ``approval.decision_received`` without a claim) for the run and plan before ``seq``."""
    for r in records:
        if r.seq >= seq:
            break
        if r.run_id != run_id or r.payload.get("plan_hash") != plan_hash:
            continue
        if r.kind in FLOW_DECISION_KINDS or (r.kind == RESUMED_KIND and "decision_seq" not in r.payload):
            return r
    return None


# -- the state of one approval request, read back from the ledger ------------------------------
@dataclass
class RequestState:
    """One approval request (``approval.asked`` in Slack mode) and what happened to it since.

    ``votes``: distinct approvers (Slack user IDs) in order; ``decided``: the record that settled
    it, if any: the settling ``approval.decision`` claim (:func:`cordon.approvals.gate.settling_claim`,
    its resume may still be under way), else a decision the flow recorded; ``escalated`` /
    ``reminders``: the sweeper's records.
    """

    asked: LedgerRecord
    votes: list[str] = field(default_factory=list)
    decided: LedgerRecord | None = None
    escalated: LedgerRecord | None = None
    reminders: list[LedgerRecord] = field(default_factory=list)

    @property
    def plan_hash(self) -> str:
        return str(self.asked.payload.get("plan_hash"))

    @property
    def run_id(self) -> str | None:
        return self.asked.run_id

    @property
    def asked_at(self) -> datetime | None:
        return parse_time(self.asked.payload.get("asked_at")) or parse_time(self.asked.ts)

    @property
    def expires_at(self) -> datetime | None:
        return parse_time(self.asked.payload.get("expires_at"))

    @property
    def quorum(self) -> int:
        return int(self.asked.payload.get("quorum") or 1)

    @property
    def where(self) -> dict[str, Any] | None:
        p = self.asked.payload
        if p.get("where"):
            return dict(p["where"])
        if p.get("channel") and p.get("ts"):
            return {"channel": p["channel"], "ts": p["ts"], "shared": False}
        return None


def distinct_voters(records: Iterable[LedgerRecord], kind: str, run_id: str | None, plan_hash: str,
                    upto_seq: int | None = None) -> list[str]:
    """Distinct ``user_id`` of ``kind`` records (``approval.vote`` / ``rollback.vote``) for
    ``run_id`` and ``plan_hash``, in ledger order, considering only records with ``seq <=
    upto_seq`` when given. The ledger's single chain orders concurrent votes, so every process
    agrees which vote reached the quorum."""
    out: list[str] = []
    for r in records:
        if r.kind != kind or r.payload.get("plan_hash") != plan_hash or (run_id and r.run_id != run_id):
            continue
        if upto_seq is not None and r.seq > upto_seq:
            continue
        uid = r.payload.get("user_id")
        if uid and uid not in out:
            out.append(uid)
    return out


def request_state(records: list[LedgerRecord], run_id: str | None, plan_hash: str) -> RequestState | None:
    """The latest approval request (Slack's or Teams': :data:`ASKED_MODES`) of ``records`` (one
    case's) for ``run_id`` and ``plan_hash``, or ``None`` when the run never asked for that plan."""
    asked = [r for r in records if r.kind == "approval.asked" and r.payload.get("mode") in ASKED_MODES
             and r.payload.get("plan_hash") == plan_hash and (run_id is None or r.run_id == run_id)]
    if not asked:
        return None
    st = RequestState(asked=asked[-1])
    later = [r for r in records if r.seq > st.asked.seq and (r.run_id == st.asked.run_id or r.run_id is None)
             and r.payload.get("plan_hash") in (plan_hash, None)]
    # settled by the first claim not voided (gate.settling_claim), else by a decision the flow
    # recorded (or an older ledger's decision_received written without a claim)
    st.decided = settling_claim(later, st.asked.run_id, plan_hash)
    for r in later:
        if st.decided is None and (r.kind in FLOW_DECISION_KINDS
                                   or (r.kind == RESUMED_KIND and "decision_seq" not in r.payload)):
            st.decided = r
        elif r.kind == "approval.escalated" and st.escalated is None:
            st.escalated = r
        elif r.kind == "approval.reminded":
            st.reminders.append(r)
    st.votes = distinct_voters(later, "approval.vote", st.asked.run_id, plan_hash)
    return st


def _has_outcome(records: Iterable[LedgerRecord], claim_seq: int) -> bool:
    return any(r.kind in (RESUMED_KIND, RESUME_FAILED_KIND, LOST_KIND) and r.payload.get("decision_seq") == claim_seq
               for r in records)


def _awaiting(ledger: Ledger) -> Iterator[tuple[dict[str, Any], list[LedgerRecord], RequestState | None]]:
    """``(case row, its records, its current request's state)`` for every case ``awaiting_approval``
    with a plan."""
    for case in ledger.cases():
        if case.get("status") != "awaiting_approval" or not case.get("plan_hash"):
            continue
        records = list(ledger.records(case_id=case["case_id"]))
        yield case, records, request_state(records, case.get("flow_run_id"), case["plan_hash"])


def undelivered_claims(ledger: Ledger, now: datetime,
                       older_than: timedelta = DELIVER_AFTER) -> list[tuple[dict[str, Any], LedgerRecord]]:
    """Settling claims whose owner never recorded an outcome (the process died between appending
    the claim and resuming the run), older than ``older_than`` at ``now`` (aware datetime): ``(case
    row, claim)`` for cases still ``awaiting_approval``. The sweeper delivers them
    (:func:`deliver_claim`): the ledger holds the decision, so it is carried out, not forgotten."""
    out = []
    for case, records, st in _awaiting(ledger):
        claim = st.decided if st is not None else None
        if claim is None or claim.kind != CLAIM_KIND or _has_outcome(records, claim.seq):
            continue
        at = parse_time(claim.ts)
        if at is not None and at <= now - older_than:
            out.append((case, claim))
    return out


def deliver_claim(ledger: Ledger, claim: LedgerRecord, resume: Resume, actor: str) -> LedgerRecord:
    """Resume ``claim``'s run with its run input on its owner's behalf; records
    ``approval.decision_received`` (with ``delivered_by: actor``) or ``approval.resume_failed``
    and returns that record. A resume racing the owner's own is harmless: Prefect accepts one."""
    from cordon.approvals.gate import run_input

    ri = run_input(claim.payload)
    base = {"decision_seq": claim.seq, "plan_hash": ri.get("plan_hash"), "decision": ri.get("decision"),
            "approver": ri.get("approver"), "delivered_by": actor}
    try:
        resume(str(claim.run_id), ri)
    except Exception as exc:  # noqa: BLE001 - recorded
        status = exc.status if isinstance(exc, ResumeRefused) else "error"
        reason = exc.reason if isinstance(exc, ResumeRefused) else f"{type(exc).__name__}: {exc}"
        return ledger.append(RESUME_FAILED_KIND, {**base, "resumed": False, "status": status, "reason": reason},
                             case_id=claim.case_id, run_id=claim.run_id, actor=actor)
    return ledger.append(RESUMED_KIND, {**ri, **base, "resumed": True, "status": "ACCEPT"}, case_id=claim.case_id,
                         run_id=claim.run_id, actor=actor)


def waiting_requests(ledger: Ledger) -> list[tuple[dict[str, Any], RequestState]]:
    """Every case whose current Slack approval request is still open: ``(case row,
    RequestState)``, for the sweeper. A case is considered when its status is
    ``awaiting_approval``; its request is open when nothing settled it."""
    out = []
    for case, _, st in _awaiting(ledger):
        if st is not None and st.decided is None:
            out.append((case, st))
    return out


# -- rebuilding the message --------------------------------------------------------------------
def _detection_summary(case: Mapping[str, Any]) -> dict[str, Any]:
    from cordon.detections.model import Detection

    try:
        return Detection.model_validate_json(case["detection"]).summary()
    except Exception:  # noqa: BLE001 - a redacted or older record: show what there is
        return json.loads(case["detection"])


def waiting_blocks(records: list[LedgerRecord], case: Mapping[str, Any], st: RequestState,
                   notes: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The approval message as it stands: detection, enrichment and plan from the ledger, with the
    votes so far out of the quorum, the times, and ``notes`` (escalation...)."""
    from cordon.slack.blocks import approval_blocks
    from cordon.slack.mrkdwn import slack_date as _slack_date

    plans = [r.payload for r in records if r.kind == "plan.created" and r.payload.get("hash") == st.plan_hash]
    steps = [{"action": s["action"], "target": s["target"], "calls": s.get("describe") or []}
             for s in (plans[-1]["steps"] if plans else [])]
    enrichment = {r.payload.get("action"): r.payload.get("result") for r in records
                  if r.kind in ("enrichment.completed", "enrichment.failed")}
    all_notes = list(notes)
    if st.escalated is not None:
        all_notes.append(f"escalated to {mention(st.escalated.payload.get('escalate_to'))} "
                         f"{_slack_date(st.escalated.payload.get('at'))}")
    if st.reminders:
        all_notes.append(f"{len(st.reminders)} reminder(s)")
    asked_at = st.asked_at.isoformat(timespec="seconds") if st.asked_at else None
    return approval_blocks(str(case["case_id"]), str(case.get("playbook") or "-"), _detection_summary(case),
                           enrichment, steps, st.plan_hash, str(st.run_id or "-"),
                           st.asked.payload.get("expires_at"), asked_at=asked_at, quorum=st.quorum,
                           approvals=st.votes, notes=all_notes,
                           incident=plans[-1].get("incident") if plans else None)


def summary_from_ledger(records: list[LedgerRecord], case: Mapping[str, Any]) -> dict[str, Any]:
    """A case summary (the shape :func:`cordon.slack.blocks.summary_blocks` reads) from the
    ledger: the last ``case.closed`` outcome, the plan, and each action's latest result
    (containment, then rollback)."""
    closed = [r.payload for r in records if r.kind == "case.closed"]
    plans = [r.payload for r in records if r.kind == "plan.created"]
    actions: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r.kind.startswith("action.") or r.kind in ("rollback.failed", "rollback.not_supported"):
            p = r.payload
            if p.get("name") is None:
                continue
            status = p.get("status") or r.kind.split(".", 1)[1]
            if r.kind == "rollback.failed":
                status = "failed"
            actions[(p["name"], str(p.get("target")))] = {"name": p["name"], "target": p.get("target"),
                                                          "status": status, "error": p.get("error")}
    approval = dict(closed[-1].get("approval") or {}) if closed else {}
    return {"case_id": case["case_id"], "playbook": case.get("playbook"), "flow_run_id": case.get("flow_run_id"),
            "detection": _detection_summary(case), "status": case.get("status"),
            "verified": closed[-1].get("verified") if closed else None,
            "plan": {"hash": plans[-1]["hash"]} if plans else None, "approval": approval,
            "actions": list(actions.values())}


def update_safely(ledger: Ledger, client: Any, where: Mapping[str, Any] | None, *, case_id: str,
                  blocks: list[dict[str, Any]], text: str, thread_text: str | None = None,
                  run_id: str | None = None, outbox: Any = None) -> bool:
    """:func:`cordon.approvals.outbox.update_case` (through ``outbox``, default the process's),
    never waiting for a rate slot (what cannot go now, the outbox's sender sends) and never
    raising: a Slack failure is recorded as ``slack.update_failed`` (the decision or run goes
    on). Returns whether it worked."""
    if client is None or not where:
        return False
    from cordon.approvals import outbox as outbox_mod

    try:
        outbox_mod.update_case(client, dict(where), case_id=case_id, blocks=blocks, text=text,
                               thread_text=thread_text, outbox=outbox, wait=False)
        return True
    except Exception as exc:  # noqa: BLE001 - recorded; the message is cosmetic next to the decision
        ledger.append("slack.update_failed", {"error": f"{type(exc).__name__}: {exc}", "where": dict(where),
                                              "text": text}, case_id=case_id, run_id=run_id, actor="cordon")
        return False


# -- asking -----------------------------------------------------------------------------------
def request_record(config: Config, playbook: Any, detection: Any, plan: Mapping[str, Any], *, mode: str,
                   now: datetime | None = None) -> dict[str, Any]:
    """The ``approval.asked`` payload of a request for ``plan`` in ``mode`` (``slack`` | ``teams``),
    the same for every channel: ``mode``, ``plan_hash``, ``asked_at`` / ``expires_at`` (ISO 8601,
    from ``now``, default the clock, and the playbook's ``expire_after``), ``quorum`` and
    ``approvers`` (:func:`cordon.approvals.policy.policy_for` for ``playbook.approval`` and the
    detection's severity), ``remind_every`` / ``escalate_after`` (seconds), ``escalate_to``,
    ``on_expiry``. Raises :class:`cordon.config.ConfigError` for a bad ``approval`` section."""
    from datetime import timedelta

    from cordon.approvals.policy import load_settings, policy_for

    a = playbook.approval
    policy = policy_for(load_settings(config), a, detection.severity)
    asked = now or utcnow()
    return {"mode": mode, "plan_hash": plan["hash"], "asked_at": asked.isoformat(timespec="seconds"),
            "expires_at": (asked + timedelta(seconds=a.expire_seconds)).isoformat(timespec="seconds"),
            "quorum": policy.quorum, "approvers": {"users": sorted(policy.users), "groups": sorted(policy.groups)},
            "remind_every": a.remind_seconds, "escalate_after": a.escalate_seconds, "escalate_to": a.escalate_to,
            "on_expiry": a.on_expiry}


def post_request(ledger: Ledger, client: Any, *, config: Config, playbook: Any, case_id: str, run_id: str,
                 detection: Any, enrichment: Mapping[str, Any], plan: Mapping[str, Any], channel: str,
                 now: datetime | None = None, outbox: Any = None) -> dict[str, Any]:
    """Post the approval request for ``plan`` (``Plan.model_dump()``: ``hash``, ``steps`` with
    ``action``, ``target``, ``describe``) through :func:`cordon.approvals.outbox.request_approval`,
    set the case to ``awaiting_approval``, and have the outbox append the ``approval.asked`` record
    the decider and the sweeper read once the buttons are in Slack (at once when the channel's rate
    slot is free; else the outbox's sender posts it and appends the record, and the payload returned
    has ``where: None, queued: true``; the run never waits for a slot): ``mode: slack``, ``where``
    (and ``channel``/``ts``), ``plan_hash``,
    ``asked_at``/``expires_at`` (ISO 8601), ``quorum`` (:func:`cordon.approvals.policy.policy_for`
    for ``playbook.approval`` and the detection's severity), ``approvers``, ``remind_every`` /
    ``escalate_after`` (seconds), ``escalate_to``, ``on_expiry``. ``detection`` is a
    :class:`~cordon.detections.model.Detection`; ``outbox`` an
    :class:`cordon.approvals.outbox.Outbox` (default: the process's). Returns that record's payload. Raises
    ``slack_sdk.errors.SlackApiError`` when Slack refuses the post.
    """
    from cordon.approvals import outbox as outbox_mod
    from cordon.slack.blocks import approval_blocks, fallback_text

    record = request_record(config, playbook, detection, plan, mode="slack", now=now)
    asked_at, expires_at = record["asked_at"], record["expires_at"]
    blocks = approval_blocks(
        case_id=case_id, playbook=playbook.name, detection=detection.summary(), enrichment=dict(enrichment),
        plan=[{"action": s["action"], "target": s["target"], "calls": s["describe"]} for s in plan["steps"]],
        plan_hash=plan["hash"], run_id=run_id, expires_at=expires_at, asked_at=asked_at, quorum=record["quorum"],
        incident=plan.get("incident"))
    text = fallback_text(playbook.name, detection.summary(), case_id=case_id)
    ledger.set_case(case_id, status="awaiting_approval")
    # the outbox appends approval.asked (with where) once the buttons are in Slack: now, or from its
    # sender when the channel's rate slot is taken (the run does not wait for it)
    where = outbox_mod.request_approval(client, channel=channel, case_id=case_id,
                                        actor_key=detection.actor.user.uid or detection.actor.user.name,
                                        blocks=blocks, text=text, outbox=outbox,
                                        asked={"case_id": case_id, "run_id": run_id, "record": record}, wait=False)
    if where is None:
        return {**record, "channel": channel, "ts": None, "where": None, "queued": True}
    return {**record, "channel": where["channel"], "ts": where["ts"], "where": where}


# -- replays -----------------------------------------------------------------------------------
def find_replay(ledger: Ledger, ix: Interaction, seq: int) -> LedgerRecord | None:
    """The earlier ``slack.interaction_received`` record that ``ix`` (recorded at ``seq``)
    repeats, or ``None``. A click is the same click when the same user's interaction has the same
    ``trigger_id`` or the same ``action_ts`` on the same message: Slack gives every click its own,
    so only a replayed request body carries them twice. Comparing with records *before* ``seq``
    in the one ledger chain decides races between replicas the same way everywhere."""
    if not (ix.trigger_id or ix.action_ts):
        return None
    for r in ledger.records(case_id=ix.case_id or None, kind_prefix="slack.interaction_received"):
        if r.seq >= seq:
            break
        p = r.payload
        if p.get("user_id") != ix.user_id or p.get("message_ts") != ix.message_ts:
            continue
        if (ix.trigger_id and p.get("trigger_id") == ix.trigger_id) or (
                ix.action_ts and p.get("action_ts") == ix.action_ts):
            return r
    return None


# -- asking a Deny for its reason ------------------------------------------------------------------
def wants_deny_reason(ledger: Ledger, ix: Interaction) -> bool:
    """Whether a *Deny* click should open the reason dialog (:func:`cordon.slack.blocks.deny_view`)
    before it is recorded: only when the click names the case's current run and plan and the request
    is open, or settled by a decision that a Deny can still stop (an approval, before the run ended).
    Otherwise the click goes straight to the decider, which tells the clicker why it is refused (who
    decided, the plan changed...). A read of the ledger, nothing written; the decider checks again."""
    case = ledger.case(ix.case_id) if ix.case_id else None
    if case is None or case.get("flow_run_id") != ix.run_id or case.get("plan_hash") != ix.plan_hash:
        return False
    records = list(ledger.records(case_id=ix.case_id))
    st = request_state(records, ix.run_id, ix.plan_hash)
    if st is None:
        return False
    if st.decided is None:
        return True
    if not proceeds(st.decided.payload):
        return False
    return not any(r.kind == "case.closed" and r.run_id == ix.run_id for r in records)


# -- the decider -------------------------------------------------------------------------------
#: Stripes of the in-process per-case lock (bounded memory; two cases may share a stripe).
_LOCK_STRIPES = 64


def make_decider(ledger: Ledger, config: Config, resume: Resume | None = None, *, slack_client: Any = None,
                 directory: Any = None, rollback: Rollback | None = None, now: Callable[[], datetime] = utcnow,
                 outbox: Any = None,
                 directories: Mapping[str, Any] | None = None) -> Callable[[Interaction], DecisionOutcome]:
    """A ``decide(interaction) -> DecisionOutcome`` for :func:`cordon.server.app.create_app`.

    ``resume(flow_run_id, run_input)`` defaults to :func:`prefect_resume` (Prefect's client; only
    ``ACCEPT`` counts); it must raise when the run was not resumed. ``slack_client`` (a
    ``slack_sdk.WebClient``) updates the message as votes arrive; ``directory`` (a
    :class:`cordon.approvals.policy.SlackDirectory`, built from ``slack_client`` when not given)
    resolves user groups and profile e-mails (without either, only clickers with an explicit
    ``approval.identities`` entry can be checked for self-approval: the others are refused).
    ``rollback(case_id, who) -> outcomes`` undoes a case (:meth:`cordon.engine.Responder.rollback`
    with the case's clients); without it the *Roll back* button is refused. ``now()`` is the clock
    (aware UTC datetimes); ``outbox`` the :class:`cordon.approvals.outbox.Outbox` messages go
    through (default: the process's). ``directories`` maps another channel's clicker prefix to the
    directory that resolves its clickers' approver groups and e-mail (``{"teams":
    cordon.teams.directory.EntraDirectory}``: ``teams:<oid>`` clickers, ``entra:<group id>``
    groups); a clicker whose channel has none is resolved only by ``approval.approvers.users`` and
    ``approval.identities``.

    ``accepted=True`` means the click was counted (a vote short of the quorum) or resumed the run;
    otherwise the ``message`` is shown to the clicker (ephemeral). Refused, with an
    ``approval.click_refused`` record, when: the case is unknown; the click's run ID is not the
    case's run; its plan hash is not the case's current plan; the request is already decided (a
    Deny still counts while the decision lets containment go ahead: see the module docstring) or,
    for an approval, has expired; the clicker is not an allowed approver (no approver configured is
    a refusal too), cannot be identified, is a principal of the detection, or requested the run; the
    clicker already voted. A settling click that lost the race is told who settled it
    (``approval.decision_lost``); one whose resume Prefect did not accept is told why
    (``approval.resume_failed``).
    """
    from cordon.approvals.policy import SlackDirectory, check_clicker, load_settings, policy_for
    from cordon.playbooks.schema import load_playbooks

    settings = load_settings(config)
    if directory is None and slack_client is not None:
        directory = SlackDirectory(slack_client, ttl=settings.group_cache_seconds)
    playbooks = {pb.name: pb for pb in load_playbooks(config.playbooks_dir)}
    # one replica's clicks on one case run one at a time; replicas are ordered by the ledger
    locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def case_lock(case_id: str) -> threading.Lock:
        return locks[zlib.crc32(case_id.encode()) % _LOCK_STRIPES]

    if resume is None:
        resume = prefect_resume

    def refuse(ix: Interaction, reason: str) -> DecisionOutcome:
        ledger.append("approval.click_refused", {"reason": reason, "decision": ix.decision, "user_id": ix.user_id,
                                                 "user_name": ix.user_name, "team_id": ix.team_id,
                                                 "plan_hash": ix.plan_hash, "run_id": ix.run_id},
                      case_id=ix.case_id or None, run_id=ix.run_id or None, actor=principal(ix.user_id))
        return DecisionOutcome(accepted=False, message=reason)

    def policy_check(ix: Interaction, case: Mapping[str, Any], escalated: bool, recorded_quorum: int = 1):
        detection = json.loads(case["detection"])
        pb = playbooks.get(str(case.get("playbook")))
        policy = policy_for(settings, pb.approval if pb else None, detection.get("severity"))
        # another channel's clicker (teams:<id>) is resolved by that channel's directory, when given
        prefix = ix.user_id.split(":", 1)[0] if ":" in ix.user_id else "slack"
        slack_dir = directory if prefix == "slack" else (directories or {}).get(prefix)
        reason = check_clicker(ix.user_id, ix.user_name, policy=policy, settings=settings, detection=detection,
                               directory=slack_dir, escalated=escalated)
        return reason, max(policy.quorum, recorded_quorum)

    def vote(ix: Interaction, kind: str, quorum: int) -> tuple[str, list[str], int]:
        """Record ``ix``'s vote (the caller holds the case lock); returns (``reached`` |
        ``waiting`` | ``late`` | ``duplicate``, the voters up to this vote, its count). Which vote
        reached the quorum is decided by ledger order, so replicas agree."""
        records = list(ledger.records(case_id=ix.case_id))
        before = distinct_voters(records, kind, ix.run_id, ix.plan_hash)
        if ix.user_id in before:
            return "duplicate", before, len(before)
        rec = ledger.append(kind, {"plan_hash": ix.plan_hash, "user_id": ix.user_id,
                                   "approver": principal(ix.user_id), "user_name": ix.user_name,
                                   "count": len(before) + 1, "quorum": quorum},
                            case_id=ix.case_id, run_id=ix.run_id, actor=principal(ix.user_id))
        records = list(ledger.records(case_id=ix.case_id))
        upto = distinct_voters(records, kind, ix.run_id, ix.plan_hash, upto_seq=rec.seq)
        prior = distinct_voters(records, kind, ix.run_id, ix.plan_hash, upto_seq=rec.seq - 1)
        if ix.user_id in prior:
            return "duplicate", prior, len(prior)
        if len(prior) >= quorum:
            return "late", upto, len(upto)
        return ("reached" if len(upto) >= quorum else "waiting"), upto, len(upto)

    def settle_click(ix: Interaction, decision: str, approvers: list[str], quorum: int) -> DecisionOutcome | _Deferred:
        """Settle the request with ``ix``'s decision by ledger order (:func:`settle`) and tell
        the clicker what became of it."""
        run_input = {"decision": decision, "approver": principal(ix.user_id), "approver_name": ix.user_name,
                     "team_id": ix.team_id, "plan_hash": ix.plan_hash, "decided_at": now().isoformat(),
                     "approvers": [principal(u) for u in approvers], "quorum": quorum}
        extra: dict[str, Any] = {"user_id": ix.user_id}
        if decision == "deny":  # the reason typed in the Deny dialog (cordon.slack.blocks.deny_view)
            extra["reason"] = ix.reason if ix.reason else NO_REASON
        # an approval's resume waits out the deny window after the case lock is released (decide)
        hold = settings.deny_window_seconds if decision == "approve" else 0.0
        s = settle(ledger, case_id=ix.case_id, run_id=ix.run_id, plan_hash=ix.plan_hash, run_input=run_input,
                   actor=principal(ix.user_id), resume=resume, extra=extra, hold_s=hold)
        if s.outcome == "pending" and s.deliver is not None:
            deliver = s.deliver
            return _Deferred(lambda: told(ix, deliver(), decision, approvers))
        return told(ix, s, decision, approvers)

    def told(ix: Interaction, s: Settlement, decision: str, approvers: list[str]) -> DecisionOutcome:
        """What the clicker is told of the settlement ``s`` of their click."""
        if s.outcome == "resumed":
            people = ", ".join(mention(u) for u in approvers)
            return DecisionOutcome(accepted=True, message=f"{decision} recorded for {ix.case_id} ({people})")
        if s.outcome == "resume_failed":
            said = "your Deny is recorded: it stops containment if this run has not started it" \
                if decision == "deny" else "your approval did not resume it; nothing was contained on it"
            return DecisionOutcome(False, f"the run is not waiting for a decision ({s.status}: {s.error}); {said}")
        return DecisionOutcome(False, lost_message(s))

    def lost_message(s: Settlement) -> str:
        p = s.settled_by.payload if s.settled_by is not None else {}
        decided = f"{p.get('decision')} by {who(p.get('approver'))}"
        if s.effect is not None and s.effect.effect == "too_late":
            at = s.effect.started.ts if s.effect.started is not None else "?"
            return f"too late: containment started at {at} (already decided: {decided}); use Roll back"
        if s.effect is not None and s.effect.effect == "already_denied":
            by = s.effect.earlier.payload.get("approver") if s.effect.earlier is not None else None
            return f"already denied by {who(by)}: containment was cancelled"
        if s.effect is not None:
            return f"your Deny stops the approved containment (already decided: {decided}, not yet contained)"
        return f"already decided: {decided}"

    def decide_vote(ix: Interaction, case: dict[str, Any]) -> DecisionOutcome | _Deferred:
        """Approve / Deny on a waiting request (the caller holds the case lock)."""
        records = list(ledger.records(case_id=ix.case_id))
        st = request_state(records, ix.run_id, ix.plan_hash)
        if st is None:
            return refuse(ix, "this run is not waiting for a decision on this plan")
        if st.decided is not None and not (ix.decision == "deny" and proceeds(st.decided.payload)):
            p = st.decided.payload
            return refuse(ix, f"already decided: {p.get('decision')} by {who(p.get('approver'))}")
        if st.decided is not None:  # a Deny after a proceeding decision: only while the run is not over
            closed = [r for r in records if r.kind == "case.closed" and r.run_id == ix.run_id]
            if closed:
                return refuse(ix, f"too late: the run already ended ({closed[-1].payload.get('status')}); "
                                  "use Roll back if the case was contained")
        expires = st.expires_at
        if ix.decision != "deny" and expires is not None and now() >= expires:
            return refuse(ix, f"this approval request expired at {expires.isoformat(timespec='seconds')}")
        reason, quorum = policy_check(ix, case, escalated=st.escalated is not None, recorded_quorum=st.quorum)
        if reason:
            return refuse(ix, reason)
        if ix.decision == "deny":
            # a Deny settles at once, or (after an approval) stops containment not yet started
            return settle_click(ix, "deny", [ix.user_id], quorum)
        outcome, voters, count = vote(ix, "approval.vote", quorum)
        if outcome == "duplicate":
            return refuse(ix, f"you already approved this plan ({count} of {quorum}); another approver is needed")
        if outcome == "late":
            now_st = request_state(list(ledger.records(case_id=ix.case_id)), ix.run_id, ix.plan_hash)
            if now_st is not None and now_st.decided is not None:
                p = now_st.decided.payload
                return refuse(ix, f"already decided: {p.get('decision')} by {who(p.get('approver'))}")
            return refuse(ix, f"the plan already has its approvals ({quorum} of {quorum}); your vote was not needed")
        if outcome == "reached":
            return settle_click(ix, "approve", voters[:quorum], quorum)
        st.votes = voters
        records = list(ledger.records(case_id=ix.case_id))
        update_safely(ledger, slack_client, st.where, case_id=ix.case_id, blocks=waiting_blocks(records, case, st),
                      text=f"Cordon: approval {count} of {quorum} for {ix.case_id}",
                      thread_text=f"Approval {count} of {quorum} by {mention(ix.user_id)}", run_id=ix.run_id,
                      outbox=outbox)
        return DecisionOutcome(True, f"approval {count} of {quorum} recorded; waiting for {quorum - count} more")

    def decide_rollback(ix: Interaction, case: dict[str, Any]) -> DecisionOutcome:
        if rollback is None:
            return refuse(ix, "rollback is not available from this server")
        status = case.get("status")
        if status == "rolled_back":
            return refuse(ix, "this case was already rolled back")
        if status not in ROLLBACKABLE:
            return refuse(ix, f"nothing to roll back: the case is {status}")
        records = list(ledger.records(case_id=ix.case_id))
        st = request_state(records, ix.run_id, ix.plan_hash)
        reason, quorum = policy_check(ix, case, escalated=False, recorded_quorum=st.quorum if st else 1)
        if reason:
            return refuse(ix, reason)
        outcome, voters, count = vote(ix, "rollback.vote", quorum)
        if outcome == "duplicate":
            return refuse(ix, f"you already asked for this rollback ({count} of {quorum})")
        if outcome == "late":
            return DecisionOutcome(True, "the rollback already has its approvals")
        where = st.where if st else None
        summary = summary_from_ledger(records, case)
        from cordon.slack.blocks import summary_blocks

        if outcome == "waiting":
            summary["rollback"] = True
            summary["rollback_note"] = (f"Rollback requested by {', '.join(mention(u) for u in voters)} "
                                        f"({count} of {quorum} approvals)")
            update_safely(ledger, slack_client, where, case_id=ix.case_id, blocks=summary_blocks(summary),
                          text=f"Cordon: rollback of {ix.case_id}: {count} of {quorum} approvals",
                          thread_text=f"Rollback approval {count} of {quorum} by {mention(ix.user_id)}",
                          run_id=ix.run_id, outbox=outbox)
            return DecisionOutcome(True, f"rollback approval {count} of {quorum} recorded")
        who = ",".join(principal(u) for u in voters)
        ledger.append("rollback.approved", {"plan_hash": ix.plan_hash, "approvers": [principal(u) for u in voters],
                                            "quorum": quorum}, case_id=ix.case_id, run_id=ix.run_id, actor=who)
        try:
            outcomes = rollback(ix.case_id, who)
        except Exception as exc:  # noqa: BLE001 - recorded and told
            ledger.append("rollback.error", {"error": f"{type(exc).__name__}: {exc}"}, case_id=ix.case_id,
                          run_id=ix.run_id, actor=who)
            return refuse(ix, f"rollback failed: {type(exc).__name__}: {exc}")
        ok = bool(outcomes) and all(o.get("status") in ("rolled_back", "already_rolled_back") for o in outcomes)
        ledger.append("rollback.completed", {"ok": ok, "outcomes": outcomes}, case_id=ix.case_id, run_id=ix.run_id,
                      actor=who)
        case = ledger.case(ix.case_id) or case
        summary = summary_from_ledger(list(ledger.records(case_id=ix.case_id)), case)
        summary["status"] = "rolled_back" if ok else summary.get("status")
        summary["rollback_note"] = (f"Rolled back on the approval of {', '.join(mention(u) for u in voters)}"
                                    if ok else "Rollback incomplete: see each action")
        lines = [f"{o.get('name')} on {o.get('target')}: {o.get('status')}"
                 + (f" ({o['error']})" if o.get("error") else "") for o in outcomes]
        update_safely(ledger, slack_client, where, case_id=ix.case_id, blocks=summary_blocks(summary),
                      text=f"Cordon: {ix.case_id} {'rolled back' if ok else 'rollback incomplete'}",
                      thread_text="Rollback: " + ("; ".join(lines) or "nothing to undo"), run_id=ix.run_id,
                      outbox=outbox)
        return DecisionOutcome(True, f"rollback of {ix.case_id}: {'done' if ok else 'incomplete'}")

    def decide_manual(ix: Interaction, case: dict[str, Any]) -> DecisionOutcome:
        """*Mark done* on a case awaiting a person's step (:mod:`cordon.manual_steps`): whoever may
        approve the case may say it is done (the same clicker policy, quorum of one)."""
        from cordon.manual_steps import ManualStepError, mark_done
        from cordon.slack.blocks import summary_blocks

        reason, _ = policy_check(ix, case, escalated=False)
        if reason:
            return refuse(ix, reason)
        try:
            done = mark_done(ledger, ix.case_id, principal(ix.user_id))
        except ManualStepError as exc:
            return refuse(ix, str(exc))
        records = list(ledger.records(case_id=ix.case_id))
        st = request_state(records, ix.run_id, ix.plan_hash)
        summary = summary_from_ledger(records, ledger.case(ix.case_id) or case)
        if done["remaining"]:
            from cordon.manual_steps import pending

            summary.update(status="awaiting_manual", manual=pending(ledger, ix.case_id))
        update_safely(ledger, slack_client, st.where if st else None, case_id=ix.case_id,
                      blocks=summary_blocks(summary), text=f"Cordon: {ix.case_id} {done['status']}",
                      thread_text=f"Manual step {done['step']} marked done by {mention(ix.user_id)}",
                      run_id=ix.run_id, outbox=outbox)
        return DecisionOutcome(True, f"step {done['step']} of {ix.case_id} marked done"
                               + (f"; left: {', '.join(done['remaining'])}" if done["remaining"] else
                                  "; the case is closed contained"))

    def decide(ix: Interaction) -> DecisionOutcome:
        case = ledger.case(ix.case_id) if ix.case_id else None
        if case is None:
            return refuse(ix, f"unknown case {ix.case_id!r}")
        if case.get("flow_run_id") != ix.run_id:
            return refuse(ix, "this message belongs to another run of the case")
        if case.get("plan_hash") != ix.plan_hash:
            return refuse(ix, "the containment plan changed since this message was posted; decide on the new one")
        with case_lock(ix.case_id):
            if ix.decision == "rollback":
                return decide_rollback(ix, case)
            if ix.decision == "manual_done":
                return decide_manual(ix, case)
            outcome = decide_vote(ix, case)
        # an approval that settled the request: recorded under the lock, resumed after the deny
        # window outside it (a Deny on this replica is not held up behind the wait)
        return outcome.finish() if isinstance(outcome, _Deferred) else outcome

    return decide


@dataclass(frozen=True)
class _Deferred:
    """A decision whose resume is still to be delivered: ``finish()`` delivers it and returns what
    the clicker is told."""

    finish: Callable[[], DecisionOutcome]
