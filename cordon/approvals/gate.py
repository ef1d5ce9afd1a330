"""What the ledger says was decided on an approval request, and whether containment may start.

Several ``cordon serve`` replicas (and the sweeper) may receive decisions on one request at the same
moment, so no process's memory decides: the ledger's single hash chain orders them. The rules:

1. **Decision claims.** Every decision that would settle a request (a Deny, the approval that reaches
   the quorum, the sweeper's expiry) is first appended as an ``approval.decision`` record
   (:data:`CLAIM_KIND`; payload: the run input ``decision``, ``approver``, ``approvers``,
   ``plan_hash``, ``decided_at``... plus ``user_id``). The *settling* decision of a run and plan is
   the first such claim (lowest ``seq``) that was not voided: a claim is voided by an
   ``approval.decision_lost`` record naming it (``decision_seq``: it lost to an earlier claim) or by
   an ``approval.resume_failed`` one (its resume was not accepted) unless an
   ``approval.decision_received`` names it too (another process delivered it). Only the owner of the
   settling claim resumes the Prefect run (:mod:`cordon.approvals.decide`).
2. **Deny wins before containment starts.** The flow calls :func:`claim_containment` once, right
   before its first containment step: it appends ``containment.started`` and reads the case back. If
   any Deny claim for the run and plan has a lower ``seq`` than the run's first
   ``containment.started``, containment is cancelled (``containment.cancelled``) and the case ends
   ``denied``: a Deny that arrives with an Approve, or after the approval was accepted but before
   containment started, wins. A Deny after ``containment.started`` is too late (use *Roll back*).
   Both sides read the same chain, so the clicker is told exactly what the flow does
   (:func:`deny_effect`).
3. **The ledger wins over the run input.** :func:`ledger_decision` is what the flow records after a
   resume: the settling claim, whatever the run input said (a resume from outside Cordon with no
   claim in the ledger is a refusal).

Pure functions over :class:`cordon.audit.ledger.LedgerRecord` lists, plus the two that append
(:func:`claim_containment`). Ledger kinds written here: ``containment.started``,
``containment.cancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cordon.audit.ledger import Ledger, LedgerRecord

#: A decision that would settle a request, appended before anything else is done about it.
CLAIM_KIND = "approval.decision"
#: The owner of the settling claim resumed the run (Prefect answered ACCEPT).
RESUMED_KIND = "approval.decision_received"
#: The owner of the settling claim could not resume the run (not ACCEPT, or an error).
RESUME_FAILED_KIND = "approval.resume_failed"
#: A claim that came after the settling one: it did not resume anything.
LOST_KIND = "approval.decision_lost"
STARTED_KIND = "containment.started"
CANCELLED_KIND = "containment.cancelled"
#: Records the flow writes once it has a decision (older ledgers, and the outcome of a resume).
FLOW_DECISION_KINDS = ("approval.given", "approval.refused", "approval.expired")

#: The run input fields of :class:`cordon.flows.respond.ApprovalInput` (what a claim carries to Prefect).
RUN_INPUT_FIELDS = ("decision", "approver", "approver_name", "team_id", "plan_hash", "decided_at", "approvers",
                    "quorum", "on_expiry")


def _for(r: LedgerRecord, run_id: str | None, plan_hash: str) -> bool:
    return r.payload.get("plan_hash") == plan_hash and (run_id is None or r.run_id == run_id)


def claims(records: Iterable[LedgerRecord], run_id: str | None, plan_hash: str) -> list[LedgerRecord]:
    """Every decision claim (``approval.decision``) for ``run_id`` and ``plan_hash``, in ``seq`` order."""
    return [r for r in records if r.kind == CLAIM_KIND and _for(r, run_id, plan_hash)]


def voided(records: Iterable[LedgerRecord]) -> set[int]:
    """The ``seq`` of claims that can no longer settle anything: named by an
    ``approval.decision_lost``, or by an ``approval.resume_failed`` with no
    ``approval.decision_received`` for the same claim."""
    lost, failed, delivered = set(), set(), set()
    for r in records:
        seq = r.payload.get("decision_seq")
        if not isinstance(seq, int):
            continue
        if r.kind == LOST_KIND:
            lost.add(seq)
        elif r.kind == RESUME_FAILED_KIND:
            failed.add(seq)
        elif r.kind == RESUMED_KIND:
            delivered.add(seq)
    return lost | (failed - delivered)


def settling_claim(records: list[LedgerRecord], run_id: str | None, plan_hash: str,
                   upto_seq: int | None = None) -> LedgerRecord | None:
    """The claim that settles ``run_id`` + ``plan_hash``: the first ``approval.decision`` not
    :func:`voided`, considering only records with ``seq <= upto_seq`` when given. ``None`` when
    nothing settles it (yet). A claim whose owner has not yet recorded the outcome counts: it is
    being resumed."""
    scope = [r for r in records if upto_seq is None or r.seq <= upto_seq]
    void = voided(scope)
    for r in claims(scope, run_id, plan_hash):
        if r.seq not in void:
            return r
    return None


def proceeds(decision: Mapping[str, Any]) -> bool:
    """Whether a decision lets containment go ahead: ``approve``, or ``expired`` when the request's
    ``on_expiry`` is ``contain``."""
    return decision.get("decision") == "approve" or (
        decision.get("decision") == "expired" and decision.get("on_expiry") == "contain")


def first_started(records: Iterable[LedgerRecord], run_id: str | None, plan_hash: str) -> LedgerRecord | None:
    """The run's first ``containment.started`` for ``plan_hash``, or ``None``."""
    return next((r for r in records if r.kind == STARTED_KIND and _for(r, run_id, plan_hash)), None)


def first_deny(records: Iterable[LedgerRecord], run_id: str | None, plan_hash: str,
               before_seq: int | None = None) -> LedgerRecord | None:
    """The first Deny claim for ``run_id`` + ``plan_hash`` (voided or not: a Deny recorded by an
    allowed approver counts even when it lost the race to resume), with ``seq < before_seq``
    when given."""
    for r in claims(records, run_id, plan_hash):
        if r.payload.get("decision") == "deny" and (before_seq is None or r.seq < before_seq):
            return r
    return None


@dataclass(frozen=True)
class DenyEffect:
    """What a Deny that lost the race to resume does (:func:`deny_effect`):
    ``stops_containment`` (no containment started before it: the flow's gate will cancel),
    ``too_late`` (``started`` is the ``containment.started`` record that came first), or
    ``already_denied`` (containment started, but an earlier Deny, ``earlier``, cancels it)."""

    effect: Literal["stops_containment", "too_late", "already_denied"]
    started: LedgerRecord | None = None
    earlier: LedgerRecord | None = None


def deny_effect(records: list[LedgerRecord], run_id: str | None, plan_hash: str, deny_seq: int) -> DenyEffect:
    """The effect of the Deny claim at ``deny_seq`` that did not settle the request: when the
    run's first ``containment.started`` has a lower ``seq``, ``already_denied`` if a Deny claim
    precedes that record (the gate cancels on it) and ``too_late`` otherwise; else
    ``stops_containment`` (true by ledger order: :func:`claim_containment` will find this Deny
    before its own record)."""
    started = first_started(records, run_id, plan_hash)
    if started is not None and started.seq < deny_seq:
        earlier = first_deny(records, run_id, plan_hash, before_seq=started.seq)
        if earlier is not None:
            return DenyEffect("already_denied", started, earlier)
        return DenyEffect("too_late", started)
    return DenyEffect("stops_containment")


@dataclass(frozen=True)
class Claim:
    """The gate's answer for one run: ``allowed`` to contain, or ``denied`` by ``denied_by`` (the
    approver, e.g. ``slack:U0BOB0002``) whose Deny claim (``deny_seq``) came before
    ``started_seq`` (the run's first ``containment.started``)."""

    outcome: Literal["allowed", "denied"]
    started_seq: int
    denied_by: str | None = None
    deny_seq: int | None = None
    decided_at: str | None = None

    @property
    def denied(self) -> bool:
        return self.outcome == "denied"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the flow's task returns and Prefect persists)."""
        return {"outcome": self.outcome, "started_seq": self.started_seq, "denied_by": self.denied_by,
                "deny_seq": self.deny_seq, "decided_at": self.decided_at}


def claim_containment(ledger: Ledger, case_id: str, run_id: str | None, plan_hash: str,
                      not_before: float | None = None) -> Claim:
    """Called once by the flow right before its first containment step: append
    ``containment.started`` (``{plan_hash}``) unless the run already has one for this plan (a
    re-executed flow), then read the case back. ``not_before`` (epoch seconds, the approving
    claim's time plus the deny window, :func:`hold_until`): the append waits until then, so a Deny
    recorded in the window sorts before it and wins. When a Deny claim for ``run_id`` + ``plan_hash``
    has a lower ``seq`` than the run's first ``containment.started``, append
    ``containment.cancelled`` (``{plan_hash, deny_seq, denied_by, started_seq}``, once) and
    answer ``denied``; else ``allowed``. Raises what :meth:`Ledger.append` raises (the database)."""
    records = list(ledger.records(case_id=case_id))
    started = first_started(records, run_id, plan_hash)
    if started is None and not_before is not None and not_before > time.time():
        time.sleep(not_before - time.time())
        records = list(ledger.records(case_id=case_id))
        started = first_started(records, run_id, plan_hash)
    if started is None:
        ledger.append(STARTED_KIND, {"plan_hash": plan_hash}, case_id=case_id, run_id=run_id, actor="cordon")
        records = list(ledger.records(case_id=case_id))
        started = first_started(records, run_id, plan_hash)
    assert started is not None  # just appended, or there before
    deny = first_deny(records, run_id, plan_hash, before_seq=started.seq)
    if deny is None:
        return Claim("allowed", started.seq)
    who = deny.payload.get("approver")
    if not any(r.kind == CANCELLED_KIND and _for(r, run_id, plan_hash) for r in records):
        ledger.append(CANCELLED_KIND, {"plan_hash": plan_hash, "deny_seq": deny.seq, "denied_by": who,
                                       "started_seq": started.seq}, case_id=case_id, run_id=run_id, actor="cordon")
    return Claim("denied", started.seq, denied_by=who, deny_seq=deny.seq, decided_at=deny.payload.get("decided_at"))


def hold_until(records: list[LedgerRecord], decision: Mapping[str, Any], window: float) -> float | None:
    """When containment may start after ``decision`` (the recorded decision, with ``ledger_seq``
    naming its claim): the claim's ledger time plus ``window`` seconds, as epoch seconds, and never
    more than ``window`` from now (clocks of the replica that recorded the claim and of this worker
    may differ). ``None`` with no window or no claim (the decision was made in-process)."""
    seq = decision.get("ledger_seq")
    claim = next((r for r in records if r.seq == seq), None) if seq else None
    if window <= 0 or claim is None:
        return None
    from datetime import datetime

    at = datetime.fromisoformat(claim.ts.replace("Z", "+00:00")).timestamp() + window
    return min(at, time.time() + window)


def run_input(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`cordon.flows.respond.ApprovalInput` fields of a claim's payload (``None`` dropped)."""
    return {k: payload[k] for k in RUN_INPUT_FIELDS if payload.get(k) is not None}


def ledger_decision(records: list[LedgerRecord], run_id: str | None, plan_hash: str,
                    given: Mapping[str, Any]) -> dict[str, Any]:
    """The decision the flow records after a resume with ``given`` (the run input): the ledger's
    settling claim for ``run_id`` + ``plan_hash``. When ``given`` agrees with it (same
    ``decision``, ``approver`` and ``decided_at``), ``given`` as is. When it disagrees, the claim's
    run input with ``overrides: {decision, approver, decided_at}`` (what the run input said) and
    ``ledger_seq``. When no claim settles the request, the claim ``given`` names (same approver,
    decision and ``decided_at``: its resume was accepted though its owner recorded a failure) with
    ``ledger_seq``; with no such claim either, a ``deny`` with ``reason`` (nobody decided this in
    Cordon's ledger: a resume from outside Cordon is not a decision)."""
    def same(p: Mapping[str, Any]) -> bool:
        return all(p.get(k) == given.get(k) for k in ("decision", "approver", "decided_at"))

    settling = settling_claim(records, run_id, plan_hash)
    if settling is not None:
        if same(settling.payload):
            return {**given, "ledger_seq": settling.seq}
        return {**run_input(settling.payload), "ledger_seq": settling.seq,
                "overrides": {k: given.get(k) for k in ("decision", "approver", "decided_at")}}
    named = next((r for r in claims(records, run_id, plan_hash) if same(r.payload)), None)
    if named is not None:
        return {**given, "ledger_seq": named.seq}
    return {**given, "decision": "deny", "plan_hash": plan_hash,
            "reason": "no decision for this run and plan in Cordon's ledger (resumed from outside Cordon?)",
            "overrides": {k: given.get(k) for k in ("decision", "approver", "decided_at")}}
