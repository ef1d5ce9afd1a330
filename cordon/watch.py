"""After containment: watching the credential (issue 14, item 2).

AWS's incident-response playbooks say to watch CloudTrail for 30 minutes after revoking a credential:
an attacker with a second foothold re-enables the key, or the key is used from somewhere it was
cached. A playbook says how long with ``watch:`` (a duration; absent: not watched). While a case
closed ``contained`` is inside that window, each pass of the scheduled ``watch`` flow
(:mod:`cordon.flows.watch`) calls :func:`watch_case`:

* the state is read again with each planned step's own verification
  (:func:`cordon.respond.verify_step`: the key still inactive, the login profile still gone ...);
* the cloud's audit log is searched for use of the credential since it was contained
  (:meth:`cordon.providers.Provider.credential_usage`; AWS: CloudTrail ``LookupEvents``);
* ``watch.checked`` ``{held, checks, used (new events only), searched, since, until}`` is recorded;
  ``watch.alert`` ``{reason, not_held, used}`` when the state stopped holding (once per change) or
  the credential was used (each event once), and the case is raised in Slack
  (``slack.watch_alert_posted``: a reply broadcast to the channel in the case's approval thread, or
  a new message); ``watch.ended`` ``{checks, alerts}`` once the window is over.

Which cases are due: :func:`due`. The clients are the case's own (the cloud its run recorded,
:func:`recorded_cloud`); a case contained by an in-process sandbox run is not watched (its stand-ins
died with the run): ``watch.ended`` says so. Errors reading the cloud are recorded
(``watch.failed``) and the next pass tries again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cordon.audit.ledger import Ledger, LedgerRecord, cases_table, redact
from cordon.detections.model import Detection

#: The record kinds this module writes.
WATCH_KINDS = ("watch.checked", "watch.alert", "watch.ended", "watch.failed")


def _ts(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Due:
    """A contained case inside its watch window: ``contained_at`` (the ``case.closed`` record's
    time), ``ends_at`` (that plus the playbook's ``watch``), the playbook's name."""

    case_id: str
    playbook: str
    contained_at: datetime
    ends_at: datetime


def contained_at(records: Iterable[LedgerRecord]) -> datetime | None:
    """When the case was closed ``contained`` (its newest such ``case.closed``), or ``None``."""
    closed = [r for r in records if r.kind == "case.closed" and r.payload.get("status") == "contained"]
    return _ts(closed[-1].ts) if closed else None


def due(ledger: Ledger, windows: Mapping[str, int], now: datetime) -> list[Due]:
    """The cases to watch now: status ``contained``, playbook in ``windows`` (``{playbook name:
    watch seconds}``), contained no longer ago than its window allows, no ``watch.ended`` yet.
    Oldest first."""
    if not windows:
        return []
    since = (now - timedelta(seconds=max(windows.values()) + 3600)).isoformat()
    q = (sa.select(cases_table.c.case_id, cases_table.c.playbook)
         .where(cases_table.c.status == "contained", cases_table.c.playbook.in_(sorted(windows)),
                cases_table.c.updated_at >= since)
         .order_by(cases_table.c.updated_at))
    with ledger.engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for case_id, playbook in rows:
        records = list(ledger.records(case_id=case_id))
        if any(r.kind == "watch.ended" for r in records):
            continue
        at = contained_at(records)
        if at is None:
            continue
        out.append(Due(case_id, playbook, at, at + timedelta(seconds=windows[playbook])))
    return out


def recorded_cloud(ledger: Ledger, case_id: str, records: list[LedgerRecord]) -> tuple[dict[str, Any], str | None,
                                                                                        dict[str, Any] | None]:
    """``(cloud, where, slack)`` the case's newest run was asked with (``run.requested``), or, for
    an incident member answered by its lead's run (``run.delegated``), the lead's with the member's
    own cloud. ``({}, None, None)`` when nothing was recorded."""
    requests = [r for r in records if r.kind == "run.requested"]
    delegated = [r for r in records if r.kind == "run.delegated"]
    if delegated and (not requests or delegated[-1].seq > requests[-1].seq):
        lead = str(delegated[-1].payload.get("lead_case_id"))
        lead_requests = list(ledger.records(case_id=lead, kind_prefix="run.requested"))
        if not lead_requests:
            return {}, None, None
        p = lead_requests[-1].payload
        mine = next((m for m in p.get("members") or [] if m.get("case_id") == case_id), {})
        return mine.get("cloud") or p.get("cloud") or {}, p.get("where"), p.get("slack")
    if not requests:
        return {}, None, None
    p = requests[-1].payload
    return p.get("cloud") or {}, p.get("where"), p.get("slack")


def _steps(case_id: str, records: list[LedgerRecord]) -> list[dict[str, Any]]:
    """The steps of the case's own newest plan (an incident's plan on a lead is left out: each member
    watches its own)."""
    plans = [r.payload for r in records if r.kind == "plan.created" and r.payload.get("case_id") == case_id
             and not r.payload.get("incident")]
    return list(plans[-1]["steps"]) if plans else []


def watch_case(ledger: Ledger, item: Due, clients: Callable[..., Any], now: datetime,
               alert: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """One watch pass over ``item``'s case with ``clients`` (the case's client factory): verify,
    search, record (module docstring). ``alert(case_id, text)`` raises the case in Slack (called
    once per ``watch.alert``). Returns ``{case_id, held, used (new events), alert (bool), ended
    (bool)}``. Errors reading the cloud are recorded as ``watch.failed`` and returned with
    ``error``."""
    from cordon.providers import get_provider
    from cordon.respond import PlanStep, verify_step

    records = list(ledger.records(case_id=item.case_id))
    case = ledger.case(item.case_id) or {}
    detection = Detection.model_validate_json(case["detection"])
    try:
        checks = [redact(verify_step(PlanStep.model_validate(s), detection, clients)) for s in _steps(item.case_id,
                                                                                                       records)]
        usage = get_provider(detection.provider).credential_usage(detection, item.contained_at, clients)
    except Exception as exc:  # noqa: BLE001 - recorded; the next pass tries again
        error = f"{type(exc).__name__}: {exc}"[:500]
        ledger.append("watch.failed", {"error": error}, case_id=item.case_id, actor="cordon")
        return {"case_id": item.case_id, "held": None, "used": [], "alert": False, "ended": False, "error": error}
    seen = {e.get("event_id") for r in records if r.kind == "watch.checked" for e in r.payload.get("used") or []}
    used = [redact(e) for e in usage or [] if e.get("event_id") not in seen]
    held = all(c.get("held") for c in checks)
    earlier = [r for r in records if r.kind == "watch.checked"]
    was_held = earlier[-1].payload.get("held", True) if earlier else True
    ledger.append("watch.checked", {"held": held, "checks": checks, "used": used, "searched": usage is not None,
                                    "since": item.contained_at.isoformat(), "until": item.ends_at.isoformat()},
                  case_id=item.case_id, actor="cordon")
    raised = (not held and was_held) or bool(used)
    if raised:
        not_held = [c for c in checks if not c.get("held")]
        reason = " and ".join(x for x in ("the containment no longer holds" if not held and was_held else "",
                                          f"the credential was used {len(used)} time(s) since" if used else "") if x)
        ledger.append("watch.alert", {"reason": reason, "not_held": not_held, "used": used}, case_id=item.case_id,
                      actor="cordon")
        if alert is not None:
            alert(item.case_id, alert_text(item.case_id, case.get("playbook"), detection, reason, used))
    ended = now >= item.ends_at
    if ended:
        alerts = sum(1 for r in records if r.kind == "watch.alert") + int(raised)
        ledger.append("watch.ended", {"checks": len(earlier) + 1, "alerts": alerts}, case_id=item.case_id,
                      actor="cordon")
    return {"case_id": item.case_id, "held": held, "used": used, "alert": raised, "ended": ended}


def alert_text(case_id: str, playbook: str | None, detection: Detection, reason: str,
               used: list[dict[str, Any]]) -> str:
    """The Slack text of a watch alert (mrkdwn): the case, the credential, why, and up to 5 of the
    events that used it (time, event, source IP)."""
    from cordon.slack.mrkdwn import escape

    cred = detection.credential
    what = f"{cred.kind} `{escape(str(cred.uid))}`" if cred and cred.uid else "the credential"
    lines = [f":rotating_light: Cordon case `{case_id}` ({escape(str(playbook or '-'))}): {what}: "
             f"{escape(reason)}. The case needs a person: re-contain it with "
             f"`cordon respond` on a new detection, or `/cordon run`."]
    for e in used[:5]:
        lines.append(f"• {escape(str(e.get('event_time')))} `{escape(str(e.get('event_name')))}` from "
                     f"{escape(str(e.get('source_ip') or '?'))}")
    if len(used) > 5:
        lines.append(f"… and {len(used) - 5} more (the ledger's `watch.checked` records hold them)")
    return "\n".join(lines)


def slack_alerter(ledger: Ledger, client: Any, channel: str | None) -> Callable[[str, str], None]:
    """``alert(case_id, text)`` for :func:`watch_case`: a reply, broadcast to the channel, in the
    thread of the case's approval message when it has one, else a new message in ``channel``;
    recorded as ``slack.watch_alert_posted`` ``{channel, ts}`` (``slack.post_failed`` when Slack
    refuses: the alert itself is in the ledger)."""

    def alert(case_id: str, text: str) -> None:
        asked = [r for r in ledger.records(case_id=case_id, kind_prefix="approval.asked")
                 if r.payload.get("mode") == "slack"]
        incident_lead = [r for r in ledger.records(case_id=case_id, kind_prefix="run.delegated")]
        if not asked and incident_lead:
            lead = str(incident_lead[-1].payload.get("lead_case_id"))
            asked = [r for r in ledger.records(case_id=lead, kind_prefix="approval.asked")
                     if r.payload.get("mode") == "slack"]
        where = (asked[-1].payload.get("where") or {}) if asked else {}
        to = where.get("channel") or channel
        if not to:
            return
        kwargs: dict[str, Any] = {"channel": to, "text": text, "unfurl_links": False, "unfurl_media": False}
        if where.get("ts"):
            kwargs.update(thread_ts=where["ts"], reply_broadcast=True)
        try:
            resp = client.chat_postMessage(**kwargs)
            ledger.append("slack.watch_alert_posted", {"channel": resp.get("channel") or to, "ts": resp.get("ts"),
                                                       "thread_ts": where.get("ts")}, case_id=case_id, actor="cordon")
        except Exception as exc:  # noqa: BLE001 - best effort; the alert is in the ledger
            ledger.append("slack.post_failed", {"channel": to, "error": f"{type(exc).__name__}: {exc}"[:500]},
                          case_id=case_id, actor="cordon")

    return alert
