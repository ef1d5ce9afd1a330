"""What a run says in Slack as it goes: the thread replies under the approval message and the
message when a run fails before it could ask. The flow (:mod:`cordon.flows.respond`) only decides
*when* to say it; the words and the Slack calls are here.

Every value taken from a detection, a cloud's answer or a person is escaped for mrkdwn
(:func:`cordon.slack.mrkdwn.escape`): targets and error messages can carry attacker-chosen text
(``<!channel>``, ``<https://...|links>``). Slack API: https://api.slack.com/methods/chat.postMessage ,
https://api.slack.com/methods/chat.update (through :func:`cordon.approvals.decide.update_safely`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cordon.audit.ledger import Ledger
from cordon.slack.mrkdwn import escape


def who(approval: Mapping[str, Any]) -> str:
    """The approvers of a decision (``approvers`` or ``approver``) for a thread reply: Slack users
    (``slack:U...``) as mentions, anyone else escaped; ``someone`` when none is named."""
    from cordon.approvals.decide import mention

    people = approval.get("approvers") or ([approval["approver"]] if approval.get("approver") else [])
    return ", ".join(mention(p) if str(p).startswith("slack:") else escape(p) for p in people) or "someone"


def step_line(result: Mapping[str, Any], brief: bool = False) -> str:
    """One containment step's thread reply: ``<action> on <target>: <status> (<error>)``, or with
    ``brief`` ``<action>: <error>`` (``result``: an :class:`~cordon.action.ActionResult` dump)."""
    if brief:
        return f"{escape(result['name'])}: {escape(result.get('error'))}"
    return (f"{escape(result['name'])} on {escape(result['target'])}: {escape(result['status'])}"
            + (f" ({escape(result['error'])})" if result.get("error") else ""))


def not_proceeding(decision: Mapping[str, Any]) -> str:
    """The reply when the decision stops the run: ``Denied by <who>.`` (with the Deny's reason) or
    ``Expired unanswered; nothing was changed.``"""
    if decision["decision"] == "deny":
        why = f" Reason: {escape(str(decision['reason']))}" if decision.get("reason") else ""
        return f"Denied by {who(decision)}.{why}"
    return "Expired unanswered; nothing was changed."


def cancelled(denied_by: str, reason: str | None) -> str:
    """The reply when a Deny recorded before containment started wins over an approval."""
    why = f" Reason: {escape(reason)}" if reason else ""
    return f"Denied by {who({'approver': denied_by})} before containment started; nothing was changed.{why}"


def proceeding(decision: Mapping[str, Any]) -> str:
    """The reply as containment starts: who approved, or that the playbook contains on expiry."""
    why = (f"Approved by {who(decision)}" if decision["decision"] == "approve"
           else "Expired unanswered; the playbook says contain on expiry")
    return f"{why}: containing."


def replanning() -> str:
    """The last reply when a step found the state changed since approval (``plan_changed``)."""
    return ("Nothing done: the state changed since the plan was approved. Cordon plans again from the "
            "state as it is now and asks in a new message.")


def outcome(status: str, results: Sequence[Mapping[str, Any]], checks: Sequence[Mapping[str, Any]]) -> str:
    """The last reply: verified, not verified (with how many steps hold), or which steps failed."""
    held = sum(1 for c in checks if c["held"])
    errors = "; ".join(step_line(r, brief=True) for r in results if r.get("error"))
    return {"contained": f"Verified: {held} of {len(checks)} step(s) hold.",
            "awaiting_manual": f"Verified: {held} of {len(checks)} step(s) hold. Left to a person: the manual "
                               "step(s) in the message; the case stays open until they are marked done.",
            "not_verified": f"Verification failed: {held} of {len(checks)} step(s) hold.",
            "failed": f"Containment failed: {errors or 'see the actions'}",
            "plan_changed": f"Nothing done: {errors or 'the state changed since the plan was approved'}. Run the "
                            "playbook again (cordon run / /cordon run) to plan and ask again."}[status]


def update(ledger: Ledger, settings: Mapping[str, Any], where: Mapping[str, Any], summary: Mapping[str, Any],
           thread_text: str | None, run_id: str | None) -> bool:
    """Update the approval message at ``where`` in place with the case's state (``summary``, through
    the outbox) and add ``thread_text`` as a reply. A Slack failure is recorded as
    ``slack.update_failed`` and does not fail the run; returns whether the update worked. Raises
    ``RuntimeError`` without a bot token (:func:`cordon.slack.client.web_client`)."""
    from cordon.approvals.decide import update_safely
    from cordon.slack.blocks import status_blocks
    from cordon.slack.client import web_client

    return update_safely(ledger, web_client(dict(settings)), dict(where), case_id=summary["case_id"],
                         blocks=status_blocks(summary), text=f"Cordon: {summary['case_id']} {summary['status']}",
                         thread_text=thread_text, run_id=run_id)


def tell_failure(ledger: Ledger, case_id: str, run_id: str, params: Mapping[str, Any], message: str) -> None:
    """Show a failed run in Slack: on its approval message (updated, with ``:x: The run failed``), or,
    for a Slack run that failed before asking (``/cordon run`` with no cloud credentials, say), in the
    approvers' channel, mentioning whoever requested it by hand. ``params`` are the run's parameters
    (``approval``, ``slack``). Nothing for runs that do not approve in Slack or without a bot token."""
    from cordon.approvals.decide import summary_from_ledger, update_safely
    from cordon.slack.blocks import summary_blocks
    from cordon.slack.client import web_client

    case = ledger.case(case_id)
    if case is None or params.get("approval") != "slack":
        return
    try:
        client = web_client(params.get("slack") or {})
    except RuntimeError:
        return
    asked = [r for r in ledger.records(case_id=case_id, kind_prefix="approval.asked")
             if r.payload.get("mode") == "slack" and r.run_id == run_id]
    if not asked:
        _failure_before_asking(ledger, client, case_id, case, run_id, params, message)
        return
    summary = summary_from_ledger(list(ledger.records(case_id=case_id)), case)
    summary.update(status="failed", error=message)
    where = asked[-1].payload.get("where") or {"channel": asked[-1].payload["channel"], "ts": asked[-1].payload["ts"]}
    update_safely(ledger, client, where, case_id=case_id, blocks=summary_blocks(summary),
                  text=f"Cordon: {case_id} failed", thread_text=f":x: The run failed: {escape(message)}",
                  run_id=run_id)


def _failure_before_asking(ledger: Ledger, client: Any, case_id: str, case: Mapping[str, Any], run_id: str,
                           params: Mapping[str, Any], message: str) -> None:
    """Post ``:x: case ... failed before asking for approval: <error>`` in the approvers' channel,
    mentioning the ``/cordon run`` requester if there was one; recorded as ``slack.failure_posted``
    (or ``slack.post_failed`` when Slack refuses: the run's failure is already in the ledger)."""
    channel = (params.get("slack") or {}).get("channel")
    if not channel:
        return
    requested = list(ledger.records(case_id=case_id, kind_prefix="manual.requested"))
    requester = (requested[-1].payload.get("requested_by") or {}).get("slack_user_id") if requested else None
    mention = f" <@{escape(str(requester))}>" if requester else ""
    text = (f":x: Cordon case `{case_id}` ({escape(str(case.get('playbook') or '-'))}) failed before asking for "
            f"approval; nothing was contained.{mention}\n> {escape(message)[:1500]}")
    try:
        resp = client.chat_postMessage(channel=channel, text=text, unfurl_links=False, unfurl_media=False)
        ledger.append("slack.failure_posted", {"channel": resp.get("channel") or channel, "ts": resp.get("ts"),
                                               "mention": requester}, case_id=case_id, run_id=run_id, actor="cordon")
    except Exception as exc:  # noqa: BLE001 - telling Slack is best effort; the failure itself is recorded
        ledger.append("slack.post_failed", {"channel": channel, "error": f"{type(exc).__name__}: {exc}"[:500]},
                      case_id=case_id, run_id=run_id, actor="cordon")
