"""Read the audit ledger the way managers and auditors ask: cases, timelines, figures, streams.

Read-only: everything here SELECTs from the tables of :mod:`cordon.audit.ledger` (``ledger``,
``cases``, ``incidents``, ``incident_cases``) and never writes.

* :func:`list_cases` — cases with filters (:class:`CaseFilter`: time range, provider, account,
  principal, playbook, decision, outcome), each as a :class:`CaseSummary` with its approvals,
  *time to approve* and *time to contain*.
* :func:`timeline` — every record of one case, in ``seq`` order, with a one-line English
  description (:func:`describe`).
* :func:`metrics` — time to approve and time to contain per month and per playbook: count,
  median and p95 (nearest-rank).
* :func:`incident`, :func:`case_incident`, :func:`list_incidents` — the incidents (one actor's
  burst of cases, :meth:`cordon.audit.ledger.Ledger.assign_incident`) as :class:`Incident`, each
  with its cases' status (:class:`CaseBrief`); :func:`actor_access_links` — the cases a case is
  linked to by ``case.actor_access`` records; :func:`case_records`, :func:`case_briefs` and
  :func:`opened_hashes` — the few facts the OCSF exporter reads of a case's links.
* :func:`iter_records` — a constant-memory stream of ledger records over a time range, read in
  keyset pages (``WHERE seq > :last ORDER BY seq LIMIT :page``), which the exporters in
  :mod:`cordon.audit.export` consume.

Definitions (seconds, floats; ``None`` when the case never reached that point):

* **time to approve** = the decision's time − the time approval was asked. The decision's time
  is ``decided_at`` from the decision's payload (the moment of the Slack click, stamped by
  Cordon's server) when present, else the ledger time of the ``approval.given`` record; the ask
  is the last ``approval.asked`` before it. Only cases a person approved have one (a refusal has
  a *time to decide*, shown per approval but not aggregated; an approval by ``--approve auto`` has
  none and is counted apart, :func:`is_automatic`).
* **time to contain** = the ledger time of the last ``verify.held`` before a ``case.closed``
  whose status is ``contained`` − the ledger time of the case's first ``detection.received``
  (the case's ``opened_at`` if none). It measures Cordon plus the approver, not log delivery.

Times given to filters are ISO 8601 (``2025-01-31``, ``2025-01-31T12:00:00Z``); a time without a
zone is UTC. Bad input raises :class:`QueryError` naming the field.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from cordon.audit.ledger import (
    Ledger,
    LedgerRecord,
    cases_table,
    incident_cases_table,
    incidents_table,
    ledger_table,
)

#: Decisions a case can carry (``none``: no decision recorded yet).
DECISIONS = ("approve", "deny", "expired", "not_required", "none")

#: The record kinds the case summaries are computed from.
_FACT_KINDS = ("detection.received", "case.opened", "case.joined", "approval.asked", "approval.decision",
               "approval.given",
               "approval.refused", "approval.expired", "approval.not_required", "verify.held", "verify.failed",
               "case.closed", "run.error")


class QueryError(ValueError):
    """Bad filter input: ``field`` names the filter, the message says what was expected."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def parse_time(value: str | datetime | date | None, field_name: str = "time") -> datetime | None:
    """An aware UTC ``datetime`` from an ISO 8601 string (``2025-01-31``, ``2025-01-31T12:00``,
    ``...Z``, ``...+02:00``), a ``date`` (midnight UTC) or a ``datetime`` (naive = UTC).
    ``None`` and ``""`` give ``None``. Raises :class:`QueryError` naming ``field_name``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise QueryError(field_name, f"{value!r} is not an ISO 8601 time "
                                         "(e.g. 2025-01-31 or 2025-01-31T12:00:00Z)") from None
    else:
        raise QueryError(field_name, f"expected an ISO 8601 string or a datetime, got {type(value).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _ts(dt: datetime | None) -> str | None:
    # The ledger stores ``datetime.isoformat()`` in UTC; those strings sort as times do.
    return dt.isoformat() if dt is not None else None


def _seconds(start: str, end: str) -> float:
    """``end - start`` in seconds (exact to the microsecond: datetime arithmetic, not floats)."""
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


@dataclass(frozen=True)
class CaseFilter:
    """Which cases to list. Every field is optional; all given fields must hold.

    ``since`` / ``until``: the case's ``opened_at`` in ``[since, until)`` (aware datetimes; see
    :func:`parse_time`). ``provider`` (``aws``, ``gcp``, ``azure``) and ``account`` (account ID,
    project, tenant) match exactly. ``principal`` matches, case-insensitively as a substring, the
    actor's or the target's ``uid`` / ``name`` or the credential's owner or ID. ``playbook``
    matches exactly; ``decision`` is one of :data:`DECISIONS`; ``outcome`` the case's status
    (``contained``, ``denied``, ``expired``, ``refused``, ``failed``, ``error``, ``rolled_back``...).
    """

    since: datetime | None = None
    until: datetime | None = None
    provider: str | None = None
    account: str | None = None
    principal: str | None = None
    playbook: str | None = None
    decision: str | None = None
    outcome: str | None = None

    @classmethod
    def parse(cls, **values: Any) -> CaseFilter:
        """Build a filter from strings (query parameters, CLI options); blanks are ignored.
        Raises :class:`QueryError` for an unknown field, a bad time or an unknown decision."""
        known = {f for f in cls.__dataclass_fields__}
        for key in values:
            if key not in known:
                raise QueryError(key, f"unknown filter (known: {', '.join(sorted(known))})")
        clean = {k: (v.strip() if isinstance(v, str) else v) for k, v in values.items()}
        clean = {k: v for k, v in clean.items() if v not in (None, "")}
        for key in ("since", "until"):
            if key in clean:
                clean[key] = parse_time(clean[key], key)
        if "decision" in clean and clean["decision"] not in DECISIONS:
            raise QueryError("decision", f"{clean['decision']!r} is not one of {', '.join(DECISIONS)}")
        if clean.get("since") and clean.get("until") and clean["since"] >= clean["until"]:
            raise QueryError("until", "must be later than since")
        return cls(**clean)

    def as_params(self) -> dict[str, str]:
        """The non-empty fields as strings (for links and forms)."""
        return {k: (v.isoformat() if isinstance(v, datetime) else str(v))
                for k, v in asdict(self).items() if v not in (None, "")}


@dataclass
class Approval:
    """One decision on a case's plan, from an ``approval.*`` record.

    ``decision``: ``approve``, ``deny``, ``expired`` or ``not_required``; ``approver`` Cordon's
    approver ID (``slack:U123``, ``console:alice``, ``auto (--approve auto)``); ``approver_name``
    the Slack user name; ``team_id`` the Slack workspace; ``seconds_to_decide`` from the last
    ``approval.asked`` before it (``None`` if never asked).
    """

    seq: int
    ts: str
    kind: str
    decision: str
    approver: str | None
    approver_name: str | None
    team_id: str | None
    plan_hash: str | None
    decided_at: str
    asked_at: str | None
    seconds_to_decide: float | None
    reason: str | None = None


@dataclass
class CaseSummary:
    """One case as a manager reads it (see the module docstring for the two durations)."""

    case_id: str
    opened_at: str
    status: str
    playbook: str | None
    provider: str | None
    account: str | None
    actor: str | None
    target: str | None
    credential: str | None
    event: str | None
    severity: str | None
    technique_ids: list[str]
    received_at: str
    detections: int = 0
    errors: int = 0
    decision: str = "none"
    approver: str | None = None
    approvals: list[Approval] = field(default_factory=list)
    asked_at: str | None = None
    contained_at: str | None = None
    time_to_approve: float | None = None
    time_to_contain: float | None = None
    plan_hash: str | None = None
    #: approved by no person (``--approve auto``): no time to approve, counted apart in the metrics
    approved_automatically: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (approvals included)."""
        return asdict(self)


def is_automatic(approver: str | None) -> bool:
    """Whether an approval was given by no person: ``--approve auto`` records the approver
    ``auto (--approve auto)``. Such approvals have no time to approve (they are not 0-second human
    approvals); the metrics count them apart."""
    return bool(approver) and str(approver).startswith("auto")


def _principal_fields(det: dict[str, Any]) -> list[str]:
    actor = (det.get("actor") or {}).get("user") or {}
    target = det.get("target") or {}
    cred = det.get("credential") or {}
    owner = cred.get("owner") or {}
    return [str(v) for v in (actor.get("uid"), actor.get("name"), target.get("uid"), target.get("name"),
                             owner.get("uid"), owner.get("name"), cred.get("uid")) if v]


def _summary_from_row(row: dict[str, Any]) -> CaseSummary:
    det = json.loads(row["detection"]) if row.get("detection") else {}
    actor = (det.get("actor") or {}).get("user") or {}
    target = det.get("target") or {}
    cred = det.get("credential") or {}
    return CaseSummary(
        case_id=row["case_id"], opened_at=row["opened_at"], status=row["status"], playbook=row.get("playbook"),
        provider=det.get("provider"), account=det.get("account_uid"), actor=actor.get("uid") or actor.get("name"),
        target=target.get("uid") or target.get("name"),
        credential=f"{cred.get('kind')} {cred.get('uid')}" if cred else None,
        event=det.get("event_name") or det.get("finding_type"), severity=det.get("severity"),
        technique_ids=list(det.get("technique_ids") or []), received_at=row["opened_at"],
        plan_hash=row.get("plan_hash"))


def _apply_facts(summary: CaseSummary, records: Iterable[LedgerRecord]) -> CaseSummary:
    """Fill decision, approvals and the two durations from the case's records (in seq order)."""
    first_received: str | None = None
    last_asked: str | None = None
    last_held: str | None = None
    deny_reasons: dict[int, str] = {}  # the reason typed in Slack's Deny dialog, by claim seq
    for r in records:
        p = r.payload
        if r.kind == "approval.decision":
            if p.get("decision") == "deny" and p.get("reason"):
                deny_reasons[r.seq] = str(p["reason"])
        elif r.kind == "detection.received":
            summary.detections += 1
            first_received = first_received or r.ts
        elif r.kind == "approval.asked":
            last_asked = r.ts
            summary.asked_at = summary.asked_at or r.ts
        elif r.kind in ("approval.given", "approval.refused", "approval.expired", "approval.not_required"):
            decision = "not_required" if r.kind == "approval.not_required" else str(p.get("decision") or "")
            decided_at = p.get("decided_at") or r.ts
            asked = last_asked if r.kind != "approval.not_required" else None
            secs = _seconds(asked, decided_at) if asked else None
            summary.approvals.append(Approval(
                seq=r.seq, ts=r.ts, kind=r.kind, decision=decision, approver=p.get("approver") or r.actor,
                approver_name=p.get("approver_name"), team_id=p.get("team_id"), plan_hash=p.get("plan_hash"),
                decided_at=decided_at, asked_at=asked, seconds_to_decide=secs,
                reason=p.get("reason") or deny_reasons.get(p.get("ledger_seq"))))
            summary.decision = decision
            summary.approver = p.get("approver") or r.actor
            summary.approved_automatically = decision == "approve" and is_automatic(summary.approver)
            if decision == "approve" and secs is not None and not summary.approved_automatically:
                summary.time_to_approve = max(secs, 0.0)
            elif summary.approved_automatically:
                summary.time_to_approve = None
        elif r.kind == "verify.held":
            last_held = r.ts
        elif r.kind == "verify.failed":
            last_held = None
        elif r.kind == "case.closed":
            if p.get("status") == "contained":
                summary.contained_at = last_held or r.ts
        elif r.kind == "run.error":
            summary.errors += 1
    if first_received:
        summary.received_at = first_received
    if summary.contained_at:
        summary.time_to_contain = max(_seconds(summary.received_at, summary.contained_at), 0.0)
    return summary


def _matches_detection(row: dict[str, Any], filt: CaseFilter) -> bool:
    if filt.provider is None and filt.account is None and filt.principal is None:
        return True
    det = json.loads(row["detection"]) if row.get("detection") else {}
    if filt.provider is not None and det.get("provider") != filt.provider:
        return False
    if filt.account is not None and det.get("account_uid") != filt.account:
        return False
    if filt.principal is not None:
        needle = filt.principal.lower()
        if not any(needle in v.lower() for v in _principal_fields(det)):
            return False
    return True


def _case_rows(ledger: Ledger, filt: CaseFilter) -> Iterator[dict[str, Any]]:
    q = sa.select(cases_table).order_by(cases_table.c.opened_at.desc(), cases_table.c.case_id)
    if filt.since is not None:
        q = q.where(cases_table.c.opened_at >= _ts(filt.since))
    if filt.until is not None:
        q = q.where(cases_table.c.opened_at < _ts(filt.until))
    if filt.playbook is not None:
        q = q.where(cases_table.c.playbook == filt.playbook)
    if filt.outcome is not None:
        q = q.where(cases_table.c.status == filt.outcome)
    with ledger.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    for row in rows:
        if _matches_detection(row, filt):
            yield row


def _facts(ledger: Ledger, case_ids: list[str]) -> dict[str, list[LedgerRecord]]:
    out: dict[str, list[LedgerRecord]] = defaultdict(list)
    for i in range(0, len(case_ids), 500):
        chunk = case_ids[i:i + 500]
        q = (sa.select(ledger_table).where(ledger_table.c.case_id.in_(chunk), ledger_table.c.kind.in_(_FACT_KINDS))
             .order_by(ledger_table.c.seq))
        with ledger.engine.connect() as conn:
            for row in conn.execute(q):
                out[row.case_id].append(_record(row))
    return out


def _record(row: Any) -> LedgerRecord:
    return LedgerRecord(row.seq, row.ts, row.case_id, row.run_id, row.kind, row.actor, json.loads(row.payload),
                        row.prev_hash, row.hash)


def iter_cases(ledger: Ledger, filt: CaseFilter | None = None, *, batch: int = 200) -> Iterator[CaseSummary]:
    """Every case matching ``filt``, newest first, as :class:`CaseSummary` (facts read in
    batches of ``batch`` cases, so memory is bounded by the batch, not the ledger)."""
    filt = filt or CaseFilter()
    pending: list[dict[str, Any]] = []

    def flush() -> Iterator[CaseSummary]:
        facts = _facts(ledger, [r["case_id"] for r in pending])
        for row in pending:
            s = _apply_facts(_summary_from_row(row), facts.get(row["case_id"], []))
            if filt.decision is None or s.decision == filt.decision:
                yield s
        pending.clear()

    for row in _case_rows(ledger, filt):
        pending.append(row)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()


def list_cases(ledger: Ledger, filt: CaseFilter | None = None, *, limit: int | None = None,
               offset: int = 0) -> list[CaseSummary]:
    """Cases matching ``filt``, newest first, ``offset``/``limit`` applied after filtering.
    Raises :class:`QueryError` for a negative ``limit`` or ``offset``."""
    if limit is not None and limit < 0:
        raise QueryError("limit", "must be >= 0")
    if offset < 0:
        raise QueryError("offset", "must be >= 0")
    out: list[CaseSummary] = []
    for i, s in enumerate(iter_cases(ledger, filt)):
        if i < offset:
            continue
        if limit is not None and len(out) >= limit:
            break
        out.append(s)
    return out


def case_summary(ledger: Ledger, case_id: str) -> CaseSummary | None:
    """The :class:`CaseSummary` of one case, or ``None`` if there is no such case."""
    row = ledger.case(case_id)
    if row is None:
        return None
    return _apply_facts(_summary_from_row(row), _facts(ledger, [case_id]).get(case_id, []))


# -- the timeline ---------------------------------------------------------------------------------

@dataclass
class TimelineEntry:
    """One ledger record of a case, with ``text`` (one line of English) and ``level``
    (``info``, ``warning`` for refusals / expiries / already-contained, ``error`` for failures)."""

    seq: int
    ts: str
    kind: str
    actor: str | None
    run_id: str | None
    text: str
    level: str
    payload: dict[str, Any]
    hash: str


@dataclass
class Timeline:
    """A case (``case``: the ``cases`` row, ``summary``: its :class:`CaseSummary`), every record
    of it in ``seq`` order (``entries``) and its incident (``incident``: :class:`Incident`, ``None``
    when the case is in none)."""

    case: dict[str, Any]
    summary: CaseSummary
    entries: list[TimelineEntry]
    incident: Incident | None = None

    @property
    def because(self) -> str | None:
        """Why the case's playbook was routed to it (``case.opened``'s ``because``), if said."""
        return next((str(e.payload["because"]) for e in self.entries
                     if e.kind == "case.opened" and e.payload.get("because")), None)

    @property
    def covered_by(self) -> dict[str, Any] | None:
        """For an incident member answered by its lead's run: the newest ``approval.incident``
        payload (``{lead_case_id, incident_id, plan_hash, decision, approver, ...}``), the decision
        on the lead case that covered this case's steps (not counted in ``summary``: the metrics
        count each decision once, on the lead). ``None`` otherwise."""
        return next((e.payload for e in reversed(self.entries) if e.kind == "approval.incident"), None)

    @property
    def actor_access(self) -> list[ActorAccessLink]:
        """The cases this one is linked to by its ``case.actor_access`` records."""
        return actor_access_links(self.entries)


def _short(value: Any, n: int = 12) -> str:
    s = str(value) if value is not None else "-"
    return s[:n]


def brief_state(state: Any) -> str:
    """A short rendering of an action's ``before`` / ``after`` state (``status=Active``,
    ``absent``, or compact JSON cut at 80 characters)."""
    if state is None:
        return "absent"
    if not isinstance(state, dict):
        return str(state)[:80]
    for key in ("status", "Status", "exists", "attached", "present", "disabled", "state", "member_present"):
        if key in state:
            return f"{key}={state[key]}"
    text = json.dumps(state, default=str, sort_keys=True)
    return text if len(text) <= 80 else text[:79] + "…"


def _approval_text(kind: str, p: dict[str, Any], actor: str | None) -> str:
    who = p.get("approver") or actor or "-"
    if p.get("approver_name"):
        who = f"{who} ({p['approver_name']})"
    where = f" in Slack workspace {p['team_id']}" if p.get("team_id") else ""
    when = f" at {p['decided_at']}" if p.get("decided_at") else ""
    plan = f"; plan {_short(p.get('plan_hash'))}"
    verb = {"approval.given": "Approved", "approval.refused": "Refused", "approval.expired": "Expired"}[kind]
    if kind == "approval.expired":
        return f"Approval expired ({who}){when}{plan}"
    reason = f"; reason: {p['reason']}" if p.get("reason") else ""
    return f"{verb} by {who}{where}{when}{plan}{reason}"


def describe(record: LedgerRecord) -> str:
    """One line of English for a ledger record (unknown kinds: ``kind: key=value, ...``)."""
    k, p = record.kind, record.payload
    if k == "detection.received":
        det = p.get("detection") or {}
        ref = p.get("raw_ref") or {}
        who = ((det.get("actor") or {}).get("user") or {}).get("uid") or "-"
        ip = (det.get("actor") or {}).get("src_ip")
        cred = det.get("credential") or {}
        return (f"Detection received: {det.get('event_name') or det.get('finding_type') or '-'} "
                f"({det.get('source') or '-'}, rule {(det.get('rule') or {}).get('name') or '-'}) by {who}"
                f"{' from ' + ip if ip else ''}; credential {cred.get('kind') or '-'} {cred.get('uid') or '-'}; "
                f"raw record sha256 {ref.get('sha256') or '-'} ({ref.get('origin') or '-'} #{ref.get('position')})")
    if k == "detection.suppressed":
        return f"Detection suppressed: {p.get('reason')}"
    if k == "case.opened":
        because = f": {p['because']}" if p.get("because") else ""
        return f"Case opened (key {p.get('case_key')}, playbook {p.get('playbook') or 'none'}){because}"
    if k == "case.joined":
        dup = " (a detection seen before)" if p.get("duplicate") else ""
        return f"Detection {p.get('detection_uid')} joined the open case{dup}"
    if k == "playbook.none":
        return f"No playbook: {p.get('reason')}"
    if k == "run.started":
        return f"Run started: playbook {p.get('playbook')}, approval {p.get('approval_mode')}"
    if k in ("enrichment.completed", "enrichment.failed"):
        res = p.get("result")
        if k == "enrichment.failed":
            err = res.get("error") if isinstance(res, dict) else res
            return f"Enrichment {p.get('action')} failed: {err}"
        n = len(res) if isinstance(res, dict | list) else 0
        return f"Enrichment {p.get('action')} completed ({n} field(s))"
    if k == "guard.passed":
        return f"Guard passed (Cordon acts as {p.get('cordon_identity') or '-'})"
    if k == "guard.refused":
        return f"Guard refused containment: {p.get('reason')}"
    if k == "plan.created":
        steps = p.get("steps") or []
        calls = "; ".join(", ".join(s.get("describe") or []) or f"{s.get('action')} (nothing to do)" for s in steps)
        inc = p.get("incident") or {}
        of = f" for incident {inc.get('incident_id')} ({len(inc.get('cases') or [])} case(s))" if inc else ""
        return f"Plan {_short(p.get('hash'))} created{of}: {len(steps)} step(s): {calls or 'nothing to change'}"
    if k == "approval.asked":
        where = f" in Slack channel {p['channel']}" if p.get("channel") else ""
        exp = f", expires {p['expires_at']}" if p.get("expires_at") else ""
        return f"Approval asked ({p.get('mode')}){where} for plan {_short(p.get('plan_hash'))}{exp}"
    if k == "approval.not_required":
        return f"Approval not required by the playbook; plan {_short(p.get('plan_hash'))}"
    if k in ("approval.given", "approval.refused", "approval.expired"):
        return _approval_text(k, p, record.actor)
    if k == "approval.decision_received":
        return (f"Slack decision '{p.get('decision')}' from {p.get('approver')} (workspace {p.get('team_id') or '-'})"
                f" resumed the run; plan {_short(p.get('plan_hash'))}")
    if k == "approval.click_refused":
        return f"Slack click by {p.get('user_id')} refused: {p.get('reason')}"
    if k == "approval.escalated":
        after = f" after {p['after_seconds']} s" if p.get("after_seconds") else ""
        votes = len(p.get("votes") or [])
        return f"Approval escalated to {p.get('escalate_to') or '-'}{after} ({votes} vote(s) so far)"
    if k == "approval.reminded":
        return f"Approval reminder #{p.get('n') or '?'} sent ({len(p.get('votes') or [])} vote(s) so far)"
    if k == "approval.vote":
        name = f" ({p['user_name']})" if p.get("user_name") else ""
        return (f"Vote by {p.get('approver') or record.actor}{name}: {p.get('count')} of {p.get('quorum')}; "
                f"plan {_short(p.get('plan_hash'))}")
    if k == "manual.requested":
        return (f"Manual run of {p.get('playbook')} requested by {p.get('requested_by') or record.actor} "
                f"with {json.dumps(p.get('parameters') or {}, sort_keys=True, default=str)[:200]}")
    if k == "manual.refused":
        return f"Manual run of {p.get('playbook')} refused: {json.dumps(p.get('errors'), default=str)[:200]}"
    if k.startswith("action.") or k == "rollback.failed":
        err = f"; error: {p.get('error')}" if p.get("error") else ""
        return (f"{p.get('name')} on {p.get('target')}: {p.get('status')} "
                f"(before {brief_state(p.get('before'))} → after {brief_state(p.get('after'))}){err}")
    if k in ("verify.held", "verify.failed"):
        word = "held" if k == "verify.held" else "did NOT hold"
        return f"Verification of {p.get('action')} on {p.get('target') or '-'}: containment {word}"
    if k == "rollback.requested":
        return f"Rollback requested by {p.get('by') or record.actor}"
    if k == "rollback.not_supported":
        return f"Rollback not supported: {p.get('name')} on {p.get('target')}"
    if k == "case.closed":
        appr = p.get("approval") or {}
        inc = f"; incident {p['incident_id']}" if p.get("incident_id") else ""
        return (f"Case closed: {p.get('status')}; verified {p.get('verified')}; decision "
                f"{appr.get('decision') or '-'} by {appr.get('approver') or '-'}{inc}")
    if k == "incident.opened":
        user = (p.get("actor") or {}).get("user") or {}
        who = user.get("uid") or user.get("name") or p.get("actor_key") or "-"
        return f"Incident {p.get('incident_id')} opened, this case its lead (actor {who})"
    if k == "incident.case_added":
        lead = p.get("lead_case_id")
        role = "this case leads it" if lead == record.case_id else f"lead case {lead}"
        return f"Case added to incident {p.get('incident_id')} ({role}; actor key {p.get('actor_key')})"
    if k == "run.delegated":
        return (f"Answered by the run of lead case {p.get('lead_case_id')} of incident {p.get('incident_id')} "
                f"(attempt {p.get('attempt') or 1})")
    if k == "approval.incident":
        who = p.get("approver") or record.actor or "-"
        return (f"Covered by the decision on lead case {p.get('lead_case_id')} of incident {p.get('incident_id')}: "
                f"{p.get('decision') or '-'} by {who}; plan {_short(p.get('plan_hash'))}")
    if k == "case.actor_access":
        cred = p.get("credential") or {}
        what = f"{cred.get('kind') or '-'} {cred.get('uid') or '-'}" if cred else "-"
        if p.get("actor_case"):
            how = "opened" if p.get("opened") else "joined"
            return f"The access this case's actor signed with ({what}) is case {p['actor_case']} ({how} for it)"
        return f"Case of the access the actor of case {p.get('revealed_by_case')} signed with ({what})"
    if k == "actor_access.no_playbook":
        return f"The actor's own access is not answered: playbook {p.get('playbook')} is not loaded"
    if k == "run.requested":
        members = [str(m.get("case_id")) for m in p.get("members") or [] if isinstance(m, dict)]
        also = f"; also answers incident case(s) {', '.join(members)}" if members else ""
        why = f" ({p['reason']})" if p.get("reason") else ""
        return (f"Run requested: attempt {p.get('attempt') or 1}, approval {p.get('mode') or '-'}, "
                f"{p.get('where') or '-'}{why}{also}")
    if k == "run.error":
        return f"Error: {p.get('message') or p.get('error')}" + (f" (state {p['state']})" if p.get("state") else "")
    if k.startswith("slack."):
        bits = ", ".join(f"{key}={p[key]}" for key in ("reason", "status", "error", "message") if p.get(key))
        return f"Slack: {k.split('.', 1)[1].replace('_', ' ')}{': ' + bits if bits else ''}"
    parts = ", ".join(f"{key}={json.dumps(v, default=str)[:60]}" for key, v in sorted(p.items()))
    return f"{k}: {parts}"[:300]


def _level(kind: str) -> str:
    if kind in ("run.error", "verify.failed", "action.failed", "rollback.failed", "enrichment.failed") \
            or kind.endswith("_failed") or kind.endswith(".failed"):
        return "error"
    if kind in ("guard.refused", "approval.refused", "approval.expired", "approval.click_refused",
                "action.already_contained", "approval.escalated", "detection.suppressed", "playbook.none",
                "rollback.not_supported", "manual.refused", "actor_access.no_playbook") or kind.endswith("_refused"):
        return "warning"
    return "info"


def entry(record: LedgerRecord) -> TimelineEntry:
    """The :class:`TimelineEntry` of one record."""
    return TimelineEntry(record.seq, record.ts, record.kind, record.actor, record.run_id, describe(record),
                         _level(record.kind), record.payload, record.hash)


def timeline(ledger: Ledger, case_id: str) -> Timeline | None:
    """Every record of ``case_id`` in ``seq`` order with its one-liner, and the case's incident
    (:func:`case_incident`), or ``None`` for an unknown case."""
    row = ledger.case(case_id)
    if row is None:
        return None
    records = list(ledger.records(case_id=case_id))
    summary = _apply_facts(_summary_from_row(row), [r for r in records if r.kind in _FACT_KINDS])
    return Timeline(row, summary, [entry(r) for r in records], case_incident(ledger, case_id))


# -- incidents and the links between cases ---------------------------------------------------------

@dataclass
class CaseBrief:
    """A case as a list of linked cases shows it: ``status`` (``None`` when the ``cases`` table has
    no such case), ``playbook``, ``event``, ``credential`` (``"<kind> <uid>"``), ``target``,
    ``severity`` and ``opened_at`` (the ``cases`` row's)."""

    case_id: str
    status: str | None = None
    playbook: str | None = None
    event: str | None = None
    credential: str | None = None
    target: str | None = None
    severity: str | None = None
    opened_at: str | None = None


@dataclass
class Incident:
    """One incident: the cases of one actor's burst (:meth:`cordon.audit.ledger.Ledger.assign_incident`).

    ``actor_key`` is what correlated them (``<provider>|<account>|<principal>|<key or session>``),
    ``actor`` the actor as the first case saw it (``{user: {uid, name, ...}, session_uid, src_ip,
    ...}``), ``lead_case_id`` its lead: the case that opened it, ``cases`` every case in the order
    it was added (the lead first). The run that answers the cases of one intake together is led by
    the case whose playbook asks the strictest approval, which may be another:
    ``run.delegated`` and ``approval.incident`` name that one (:attr:`Timeline.covered_by`)."""

    incident_id: str
    actor_key: str
    provider: str | None
    opened_at: str
    last_at: str
    lead_case_id: str
    actor: dict[str, Any]
    cases: list[CaseBrief]

    @property
    def actor_name(self) -> str:
        """The actor's principal (``actor.user.uid``, else its name), else the actor key."""
        user = (self.actor or {}).get("user") or {}
        return str(user.get("uid") or user.get("name") or self.actor_key)

    def statuses(self) -> dict[str, int]:
        """How many of its cases are in each status (``unknown``: a case the ``cases`` table lacks),
        most frequent first, then by name: ``{"contained": 2, "refused": 1}``."""
        counts: dict[str, int] = defaultdict(int)
        for c in self.cases:
            counts[c.status or "unknown"] += 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def status_text(self) -> str:
        """:meth:`statuses` as ``"contained 2, refused 1"`` (``"-"`` for none)."""
        return ", ".join(f"{k} {n}" for k, n in self.statuses().items()) or "-"

    def others(self, case_id: str) -> list[CaseBrief]:
        """Its cases other than ``case_id``, in order."""
        return [c for c in self.cases if c.case_id != case_id]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: the fields above (``cases`` as dicts) and ``statuses``."""
        return {**asdict(self), "statuses": self.statuses()}


def _brief(row: dict[str, Any]) -> CaseBrief:
    s = _summary_from_row(row)
    return CaseBrief(s.case_id, s.status, s.playbook, s.event, s.credential, s.target, s.severity, s.opened_at)


def case_briefs(ledger: Ledger, case_ids: Iterable[str]) -> dict[str, CaseBrief]:
    """``{case_id: CaseBrief}`` of the cases among ``case_ids`` that the ``cases`` table holds
    (read in batches of 500 IDs)."""
    ids = sorted(set(case_ids))
    out: dict[str, CaseBrief] = {}
    for i in range(0, len(ids), 500):
        with ledger.engine.connect() as conn:
            rows = conn.execute(sa.select(cases_table).where(cases_table.c.case_id.in_(ids[i:i + 500])))
            for row in rows:
                out[row.case_id] = _brief(dict(row._mapping))
    return out


def _incidents(ledger: Ledger, rows: list[dict[str, Any]]) -> list[Incident]:
    """:class:`Incident` of ``incidents`` rows: their cases in two queries (``incident_cases``
    ordered as :meth:`cordon.audit.ledger.Ledger.incident` orders them, then the ``cases`` rows)."""
    if not rows:
        return []
    members: dict[str, list[str]] = defaultdict(list)
    ids = [r["incident_id"] for r in rows]
    with ledger.engine.connect() as conn:
        for i in range(0, len(ids), 500):
            q = (sa.select(incident_cases_table.c.incident_id, incident_cases_table.c.case_id)
                 .where(incident_cases_table.c.incident_id.in_(ids[i:i + 500]))
                 .order_by(incident_cases_table.c.added_at, incident_cases_table.c.case_id))
            for row in conn.execute(q):
                members[row.incident_id].append(row.case_id)
    briefs = case_briefs(ledger, [c for cs in members.values() for c in cs])
    return [Incident(incident_id=r["incident_id"], actor_key=r["actor_key"], provider=r.get("provider"),
                     opened_at=r["opened_at"], last_at=r["last_at"], lead_case_id=r["lead_case_id"],
                     actor=json.loads(r["actor"]) if isinstance(r.get("actor"), str) else (r.get("actor") or {}),
                     cases=[briefs.get(c) or CaseBrief(c) for c in members[r["incident_id"]]])
            for r in rows]


def incident(ledger: Ledger, incident_id: str) -> Incident | None:
    """The :class:`Incident` ``incident_id`` with each case's status, or ``None`` if there is none."""
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(incidents_table).where(incidents_table.c.incident_id == incident_id)).first()
    return _incidents(ledger, [dict(row._mapping)])[0] if row is not None else None


def case_incident(ledger: Ledger, case_id: str) -> Incident | None:
    """The :class:`Incident` ``case_id`` belongs to, or ``None``."""
    incident_id = ledger.incident_of(case_id)
    return incident(ledger, incident_id) if incident_id else None


def list_incidents(ledger: Ledger, *, limit: int | None = None, offset: int = 0) -> list[Incident]:
    """Incidents, newest first (by ``opened_at``), ``offset``/``limit`` applied in SQL. Raises
    :class:`QueryError` for a negative ``limit`` or ``offset``."""
    if limit is not None and limit < 0:
        raise QueryError("limit", "must be >= 0")
    if offset < 0:
        raise QueryError("offset", "must be >= 0")
    q = (sa.select(incidents_table)
         .order_by(incidents_table.c.opened_at.desc(), incidents_table.c.incident_id).offset(offset))
    if limit is not None:
        q = q.limit(limit)
    with ledger.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    return _incidents(ledger, rows)


@dataclass
class ActorAccessLink:
    """A link between two cases made by the actor's own access (``case.actor_access``, written on
    both cases). ``relation``: ``actor_access`` (``case_id`` is the case of the access this case's
    actor signed with; ``opened``: whether that intake opened it, not joined it) or ``revealed_by``
    (``case_id`` is the case whose actor signed with this case's credential). ``credential``:
    ``{kind, uid, owner}`` of that access. ``seq``: the record's."""

    seq: int
    case_id: str
    relation: str
    credential: dict[str, Any] | None
    opened: bool | None = None


def actor_access_links(records: Iterable[LedgerRecord | TimelineEntry]) -> list[ActorAccessLink]:
    """The :class:`ActorAccessLink` of each ``case.actor_access`` record among ``records`` (others
    are skipped), in order."""
    links = []
    for r in records:
        if r.kind != "case.actor_access":
            continue
        p = r.payload
        if p.get("actor_case"):
            links.append(ActorAccessLink(r.seq, str(p["actor_case"]), "actor_access", p.get("credential"),
                                         p.get("opened")))
        elif p.get("revealed_by_case"):
            links.append(ActorAccessLink(r.seq, str(p["revealed_by_case"]), "revealed_by", p.get("credential")))
    return links


def case_records(ledger: Ledger, case_ids: Iterable[str], kinds: Iterable[str]) -> dict[str, list[LedgerRecord]]:
    """``{case_id: [records]}``: the records of the cases ``case_ids`` whose kind is one of
    ``kinds``, in ``seq`` order (one query per 500 cases; a case without such records is absent)."""
    ids, wanted = sorted(set(case_ids)), list(kinds)
    out: dict[str, list[LedgerRecord]] = defaultdict(list)
    # ``kind || ''``: found through the case_id index (a case has tens of records), never the kind
    # index, which SQLite prefers with bound parameters and which holds a row per case per kind
    kind = ledger_table.c.kind + ""
    for i in range(0, len(ids), 500):
        q = (sa.select(ledger_table)
             .where(ledger_table.c.case_id.in_(ids[i:i + 500]), kind.in_(wanted))
             .order_by(ledger_table.c.seq))
        with ledger.engine.connect() as conn:
            for row in conn.execute(q):
                out[row.case_id].append(_record(row))
    return dict(out)


def opened_hashes(ledger: Ledger, case_ids: Iterable[str]) -> dict[str, str]:
    """``{case_id: hash}`` of each case's first ``case.opened`` record (the ``metadata.uid`` of
    the case's OCSF Create finding, :mod:`cordon.audit.export`); cases without one are absent."""
    ids = sorted(set(case_ids))
    out: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        q = (sa.select(ledger_table.c.case_id, ledger_table.c.hash)
             .where(ledger_table.c.kind == "case.opened", ledger_table.c.case_id.in_(ids[i:i + 500]))
             .order_by(ledger_table.c.seq))
        with ledger.engine.connect() as conn:
            for row in conn.execute(q):
                out.setdefault(row.case_id, row.hash)
    return out


# -- figures --------------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``: the smallest value
    with at least ``p`` % of the values at or below it; ``None`` for no values."""
    if not values:
        return None
    if not 0 < p <= 100:
        raise QueryError("p", f"percentile must be in (0, 100], got {p}")
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def median(values: list[float]) -> float | None:
    """The median (mean of the two middle values for an even count); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@dataclass
class Figures:
    """The figures of one group of cases: ``cases``, ``approved``, ``contained``, and median /
    p95 (seconds) of time to approve (``tta_*``) and time to contain (``ttc_*``)."""

    group: str
    cases: int = 0
    #: approved by a person (Slack, the console); ``auto_approved``: by ``--approve auto``
    approved: int = 0
    contained: int = 0
    tta_median: float | None = None
    tta_p95: float | None = None
    ttc_median: float | None = None
    ttc_p95: float | None = None
    auto_approved: int = 0


@dataclass
class Metrics:
    """``by_month`` (``YYYY-MM`` of ``opened_at``, newest first), ``by_playbook`` (by name) and
    ``overall``."""

    by_month: list[Figures]
    by_playbook: list[Figures]
    overall: Figures


def _figures(group: str, cases: list[tuple[float | None, float | None, str, bool]]) -> Figures:
    tta = [a for a, _, _, _ in cases if a is not None]
    ttc = [c for _, c, _, _ in cases if c is not None]
    return Figures(group, len(cases), sum(1 for _, _, d, auto in cases if d == "approve" and not auto), len(ttc),
                   median(tta), percentile(tta, 95), median(ttc), percentile(ttc, 95),
                   auto_approved=sum(1 for _, _, d, auto in cases if d == "approve" and auto))


def metrics(ledger: Ledger, filt: CaseFilter | None = None) -> Metrics:
    """Time to approve and time to contain per month and per playbook over the cases matching
    ``filt`` (see the module docstring for the definitions; p95 is nearest-rank)."""
    months: dict[str, list] = defaultdict(list)
    books: dict[str, list] = defaultdict(list)
    everything: list = []
    for s in iter_cases(ledger, filt):
        item = (s.time_to_approve, s.time_to_contain, s.decision, s.approved_automatically)
        months[s.opened_at[:7]].append(item)
        books[s.playbook or "(none)"].append(item)
        everything.append(item)
    return Metrics(by_month=[_figures(m, months[m]) for m in sorted(months, reverse=True)],
                   by_playbook=[_figures(b, books[b]) for b in sorted(books)],
                   overall=_figures("all", everything))


def format_seconds(seconds: float | None) -> str:
    """``"-"``, ``"42.0 s"``, ``"3 min 05 s"`` or ``"2 h 03 min"``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


# -- streaming --------------------------------------------------------------------------------

def iter_records(ledger: Ledger, *, since: datetime | str | None = None, until: datetime | str | None = None,
                 case_ids: Iterable[str] | None = None, kind_prefix: str | None = None,
                 page_size: int = 1000) -> Iterator[LedgerRecord]:
    """Ledger records in ``seq`` order with ``ts`` in ``[since, until)``, optionally only of
    ``case_ids`` and of kinds starting with ``kind_prefix``.

    Constant memory: records are read in pages of ``page_size`` by keyset
    (``WHERE seq > :last ... ORDER BY seq LIMIT :page_size``), each page on a short-lived
    connection, so no transaction stays open while the consumer writes. The stream stops at the
    head ``seq`` seen when it started (a consistent prefix, even while Cordon keeps appending).
    Raises :class:`QueryError` for a bad time or ``page_size < 1``.
    """
    if page_size < 1:
        raise QueryError("page_size", "must be >= 1")
    lo = _ts(parse_time(since, "since"))
    hi = _ts(parse_time(until, "until"))
    ids = set(case_ids) if case_ids is not None else None
    with ledger.engine.connect() as conn:
        head = conn.execute(sa.select(sa.func.max(ledger_table.c.seq))).scalar() or 0
    last = 0
    while last < head:
        q = sa.select(ledger_table).where(ledger_table.c.seq > last, ledger_table.c.seq <= head)
        if lo is not None:
            q = q.where(ledger_table.c.ts >= lo)
        if hi is not None:
            q = q.where(ledger_table.c.ts < hi)
        if kind_prefix:
            q = q.where(ledger_table.c.kind.startswith(kind_prefix))
        if ids is not None and len(ids) <= 500:
            q = q.where(ledger_table.c.case_id.in_(sorted(ids)))
        q = q.order_by(ledger_table.c.seq).limit(page_size)
        with ledger.engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return
        for row in rows:
            if ids is None or row.case_id in ids:
                yield _record(row)
        last = rows[-1].seq
        del rows
