"""Expiry, reminders and escalation of Slack approval requests: what the sweeper does.

Prefect's own pause timeout only fails a run, with no code of ours running, so Cordon keeps time
itself: ``flows/sweeper.py`` runs :func:`sweep` on a schedule. For every case whose Slack approval
request is still open (case status ``awaiting_approval`` and nothing in the ledger settled it,
:func:`cordon.approvals.decide.waiting_requests`), using the settings the run recorded in its
``approval.asked`` record (from the playbook's ``approval`` block):

* at ``expires_at``: resume the run with ``ApprovalInput(decision="expired", on_expiry=...)``
  (``flows/respond.py`` records ``approval.expired``, contains only when the playbook's own
  ``on_expiry`` is ``contain``, updates the message and closes the case) and record
  ``approval.decision_received`` (approver ``cordon:sweeper``);
* after ``escalate_after``: once, a thread reply mentioning ``escalate_to`` (a user group
  ``<!subteam^S...>`` or a user ``<@U...>``), who may approve from then on, and an
  ``approval.escalated`` record;
* every ``remind_every``: a thread reply with the count of approvals and the expiry, and an
  ``approval.reminded`` record;

and the message is updated in place (times, count, escalation) through
:mod:`cordon.approvals.outbox`. ``now`` is a parameter, so tests set the clock instead of sleeping.
Two sweepers running at the same instant could both remind; run one (the schedule does).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from cordon.approvals.decide import (
    DECIDED_KIND,
    RequestState,
    mention,
    parse_time,
    update_safely,
    waiting_blocks,
    waiting_requests,
)
from cordon.audit.ledger import Ledger

SWEEPER = "cordon:sweeper"

Resume = Callable[[str, dict[str, Any]], None]


def _default_resume(run_id: str, run_input: dict[str, Any]) -> None:
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(run_id, run_input=run_input)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(timespec="seconds") if dt else None


def _date(dt: datetime | None) -> str:
    from cordon.approvals.slack import _slack_date

    return _slack_date(_iso(dt)) or "?"


def sweep(ledger: Ledger, client: Any, *, now: datetime, resume: Resume | None = None,
          outbox: Any = None) -> list[dict[str, Any]]:
    """One pass over the open approval requests at time ``now`` (an aware datetime).

    ``client`` is a ``slack_sdk.WebClient`` (``None``: no Slack posts, the ledger records and
    resumes still happen); ``resume(flow_run_id, run_input)`` defaults to Prefect's
    ``resume_flow_run``; ``outbox`` the :class:`cordon.approvals.outbox.Outbox` (default: the
    process's). Returns one event per thing done: ``{"case_id", "event": "expired" |
    "expiry_failed" | "escalated" | "reminded", ...}``. A run that cannot be resumed (not paused
    any more) is recorded as ``approval.expiry_failed`` and the case is set to ``error``.
    """
    resume = resume or _default_resume
    events: list[dict[str, Any]] = []
    for case, st in waiting_requests(ledger):
        case_id = case["case_id"]
        settings = st.asked.payload
        asked_at = st.asked_at or now
        expires_at = st.expires_at
        if expires_at is not None and now >= expires_at:
            run_input = {"decision": "expired", "approver": SWEEPER, "plan_hash": st.plan_hash,
                         "decided_at": now.isoformat(), "approvers": [], "quorum": st.quorum,
                         "on_expiry": settings.get("on_expiry") or "deny"}
            try:
                resume(str(st.run_id), run_input)
            except Exception as exc:  # noqa: BLE001 - NotPausedError (timed out, cancelled) and the like
                ledger.append("approval.expiry_failed", {"plan_hash": st.plan_hash,
                                                         "error": f"{type(exc).__name__}: {exc}"},
                              case_id=case_id, run_id=st.run_id, actor=SWEEPER)
                ledger.set_case(case_id, status="error")
                events.append({"case_id": case_id, "event": "expiry_failed", "error": str(exc)})
                continue
            ledger.append(DECIDED_KIND, {**run_input, "expires_at": _iso(expires_at), "votes": st.votes},
                          case_id=case_id, run_id=st.run_id, actor=SWEEPER)
            events.append({"case_id": case_id, "event": "expired", "on_expiry": run_input["on_expiry"]})
            continue
        thread: list[str] = []
        escalate_after = settings.get("escalate_after")
        escalate_to = settings.get("escalate_to")
        if (escalate_after and escalate_to and st.escalated is None
                and now >= asked_at + timedelta(seconds=int(escalate_after))):
            st.escalated = ledger.append("approval.escalated", {"plan_hash": st.plan_hash, "escalate_to": escalate_to,
                                                                "at": now.isoformat(), "after_seconds": escalate_after,
                                                                "votes": st.votes},
                                         case_id=case_id, run_id=st.run_id, actor=SWEEPER)
            thread.append(f"{mention(escalate_to)}: approval still needed for case `{case_id}` "
                          f"({len(st.votes)} of {st.quorum}), asked {_date(asked_at)}, expires {_date(expires_at)}. "
                          "You can approve or deny it now.")
            events.append({"case_id": case_id, "event": "escalated", "to": escalate_to})
        remind_every = settings.get("remind_every")
        if remind_every:
            last = max([asked_at, *[parse_time(r.payload.get("at")) or asked_at for r in st.reminders],
                        *([parse_time(st.escalated.payload.get("at")) or asked_at] if st.escalated else [])])
            if now >= last + timedelta(seconds=int(remind_every)) and not thread:
                rec = ledger.append("approval.reminded", {"plan_hash": st.plan_hash, "at": now.isoformat(),
                                                          "n": len(st.reminders) + 1, "votes": st.votes},
                                    case_id=case_id, run_id=st.run_id, actor=SWEEPER)
                st.reminders.append(rec)
                thread.append(f"Reminder: approval still needed for case `{case_id}` ({len(st.votes)} of "
                              f"{st.quorum}); expires {_date(expires_at)}.")
                events.append({"case_id": case_id, "event": "reminded", "n": len(st.reminders)})
        if thread:
            _show(ledger, client, case, st, " ".join(thread), outbox)
    return events


def _show(ledger: Ledger, client: Any, case: dict[str, Any], st: RequestState, thread_text: str,
          outbox: Any = None) -> None:
    records = list(ledger.records(case_id=case["case_id"]))
    update_safely(ledger, client, st.where, case_id=case["case_id"], blocks=waiting_blocks(records, case, st),
                  text=f"Cordon: approval still needed for {case['case_id']}", thread_text=thread_text,
                  run_id=st.run_id, outbox=outbox)
