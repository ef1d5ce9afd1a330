"""Expiry, reminders and escalation of approval requests (Slack and Teams): what the sweeper does.

Prefect's own pause timeout only fails a run, with no code of ours running, so Cordon keeps time
itself: ``cordon/flows/sweeper.py`` runs :func:`sweep` on a schedule. For every case whose Slack approval
request is still open (case status ``awaiting_approval`` and nothing in the ledger settled it,
:func:`cordon.approvals.decide.waiting_requests`), using the settings the run recorded in its
``approval.asked`` record (from the playbook's ``approval`` block):

* at ``expires_at``: settle the request with ``ApprovalInput(decision="expired", on_expiry=...)``
  by ledger order like a click (:func:`cordon.approvals.decide.settle`: an ``approval.decision``
  claim, approver ``cordon:sweeper``; a click's claim recorded first wins and the expiry is
  ``approval.decision_lost``), and resume the run (``cordon/flows/respond.py`` records
  ``approval.expired``, contains only when the playbook's own ``on_expiry`` is ``contain``, updates
  the message and closes the case); ``approval.decision_received`` once Prefect accepted;
* a settling claim whose owner died before resuming (no outcome after
  :data:`cordon.approvals.decide.DELIVER_AFTER`): deliver it (resume with its run input);
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
    RequestState,
    deliver_claim,
    mention,
    parse_time,
    prefect_resume,
    settle,
    undelivered_claims,
    update_safely,
    waiting_blocks,
    waiting_requests,
)
from cordon.audit.ledger import Ledger

SWEEPER = "cordon:sweeper"

Resume = Callable[[str, dict[str, Any]], None]


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(timespec="seconds") if dt else None


def _date(dt: datetime | None) -> str:
    from cordon.slack.mrkdwn import slack_date as _slack_date

    return _slack_date(_iso(dt)) or "?"


def sweep(ledger: Ledger, client: Any, *, now: datetime, resume: Resume | None = None,
          outbox: Any = None, teams: Any = None) -> list[dict[str, Any]]:
    """One pass over the open approval requests at time ``now`` (an aware datetime).

    ``client`` is a ``slack_sdk.WebClient`` (``None``: no Slack posts, the ledger records and
    resumes still happen); ``resume(flow_run_id, run_input)`` defaults to Prefect's
    ``resume_flow_run`` through :func:`cordon.approvals.decide.prefect_resume` (only ``ACCEPT``
    counts); ``outbox`` the :class:`cordon.approvals.outbox.Outbox` (default: the process's);
    ``teams`` a :class:`cordon.teams.client.TeamsCards` (``None``: no Teams): a request's card is
    refreshed in place when it is escalated, reminded or expired (and the resumed run shows its
    outcome on it). Returns one event per thing done: ``{"case_id", "event": "expired" | "expiry_failed" |
    "expiry_lost" | "delivered" | "delivery_failed" | "escalated" | "reminded", ...}``. A run that
    cannot be resumed (not paused any more) is recorded as ``approval.resume_failed`` and the case
    is set to ``error``.
    """
    resume = resume or prefect_resume
    events: list[dict[str, Any]] = []
    for case, claim in undelivered_claims(ledger, now):
        rec = deliver_claim(ledger, claim, resume, SWEEPER)
        ok = rec.payload.get("resumed") is True
        events.append({"case_id": case["case_id"], "event": "delivered" if ok else "delivery_failed",
                       "decision": claim.payload.get("decision"), "decision_seq": claim.seq})
    for case, st in waiting_requests(ledger):
        case_id = case["case_id"]
        settings = st.asked.payload
        asked_at = st.asked_at or now
        expires_at = st.expires_at
        if expires_at is not None and now >= expires_at:
            run_input = {"decision": "expired", "approver": SWEEPER, "plan_hash": st.plan_hash,
                         "decided_at": now.isoformat(), "approvers": [], "quorum": st.quorum,
                         "on_expiry": settings.get("on_expiry") or "deny"}
            s = settle(ledger, case_id=case_id, run_id=str(st.run_id), plan_hash=st.plan_hash, run_input=run_input,
                       actor=SWEEPER, resume=resume, extra={"expires_at": _iso(expires_at), "votes": st.votes})
            if s.outcome == "resume_failed":  # NotPausedError (timed out, cancelled) and the like
                ledger.set_case(case_id, status="error")
                events.append({"case_id": case_id, "event": "expiry_failed", "error": f"{s.status}: {s.error}"})
            elif s.outcome == "lost":  # a click was recorded first: it decides
                events.append({"case_id": case_id, "event": "expiry_lost",
                               "decision": s.settled_by.payload.get("decision") if s.settled_by else None})
            else:
                events.append({"case_id": case_id, "event": "expired", "on_expiry": run_input["on_expiry"]})
            if teams is not None:  # the card says so now, whatever becomes of the run
                teams.refresh(case_id, st.run_id)
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
            if teams is not None:
                teams.refresh(case_id, st.run_id)
    return events


def _show(ledger: Ledger, client: Any, case: dict[str, Any], st: RequestState, thread_text: str,
          outbox: Any = None) -> None:
    records = list(ledger.records(case_id=case["case_id"]))
    update_safely(ledger, client, st.where, case_id=case["case_id"], blocks=waiting_blocks(records, case, st),
                  text=f"Cordon: approval still needed for {case['case_id']}", thread_text=thread_text,
                  run_id=st.run_id, outbox=outbox)
