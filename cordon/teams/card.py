"""The approval request as an Adaptive Card (1.5) for Microsoft Teams, built with the Teams SDK's
card models (``microsoft_teams.cards``), with the content of the Slack message
(:func:`cordon.slack.blocks.approval_blocks`): what happened, who acted and from where, the
target and credential, the exact plan (every API call) with what each action does not do, the plan
hash, the expiry and the quorum; and *Approve* / *Deny* as ``Action.Execute`` with ``verb``
``cordon_approve`` / ``cordon_deny`` and ``data`` ``{case_id, plan_hash, run_id}``
(:mod:`cordon.teams.verify` reads them back).

Sources: Adaptive Cards 1.5 schema, https://adaptivecards.io/explorer/; Universal Actions
``Action.Execute``, https://learn.microsoft.com/microsoftteams/platform/task-modules-and-cards/cards/universal-actions-for-adaptive-cards/overview.
Teams limits a message to about 28 KB: calls past :data:`MAX_CALLS_SHOWN` per step are counted,
the full plan is in the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from microsoft_teams.cards import AdaptiveCard, ExecuteAction, Fact, FactSet, TextBlock, TextInput

from cordon.slack.blocks import place_of, principal_name, what_happened
from cordon.teams.verify import APPROVE_VERB, DENY_VERB, MANUAL_DONE_VERB, ROLLBACK_VERB

MAX_CALLS_SHOWN = 12
#: The id of the card's text input for a Deny's reason; Teams merges inputs into ``value.action.data``.
REASON_INPUT = "reason"
#: The longest reason kept (characters).
MAX_REASON = 500


def _does_not(action: str) -> str:
    from cordon.action import all_actions

    cls = all_actions().get(action)
    return getattr(cls, "does_not", "") if cls else ""


def _facts(pairs: Sequence[tuple[str, Any]]) -> FactSet | None:
    facts = [Fact(title=t, value=str(v)) for t, v in pairs if v not in (None, "")]
    return FactSet(facts=facts) if facts else None


def _body(case_id: str, playbook: str, detection: Mapping[str, Any], plan: Mapping[str, Any], run_id: str,
          state: str) -> list[Any]:
    det = detection if isinstance(detection, Mapping) else {}
    actor = det.get("actor") if isinstance(det.get("actor"), Mapping) else {}
    cred = det.get("credential") if isinstance(det.get("credential"), Mapping) else {}
    body: list[Any] = [
        TextBlock(text=what_happened(det), size="Large", weight="Bolder", wrap=True, style="heading"),
        TextBlock(text=f"{str(det.get('severity') or 'unknown').upper()} · {state}", weight="Bolder", wrap=True,
                  color="Attention"),
        _facts([("Case", case_id), ("Playbook", playbook), ("Run", run_id),
                ("Event", det.get("event_name") or det.get("finding_type")), ("Time", det.get("time")),
                ("Account", det.get("account_uid")), ("Region", det.get("region"))]),
        TextBlock(text="Who", weight="Bolder", separator=True),
        _facts([("Actor", principal_name(actor.get("user")) or "unknown actor"),
                ("Source IP", actor.get("src_ip")), ("From where", place_of(actor)),
                ("User agent", actor.get("user_agent")), ("Target", principal_name(det.get("target"))),
                ("Credential", " ".join(str(x) for x in (cred.get("kind"), cred.get("uid")) if x))]),
        TextBlock(text="The exact plan", weight="Bolder", separator=True),
    ]
    for i, step in enumerate(plan.get("steps") or [], 1):
        action = str(step.get("action") or "?")
        body.append(TextBlock(text=f"{i}. {action}" + (f" on {step['target']}" if step.get("target") else ""),
                              weight="Bolder", wrap=True))
        limits = _does_not(action)
        if limits:
            body.append(TextBlock(text=f"Does not {limits}", isSubtle=True, wrap=True))
        calls = [str(c) for c in step.get("describe") or step.get("calls") or []]
        shown = calls[:MAX_CALLS_SHOWN] or ["no API call: already contained"]
        extra = len(calls) - MAX_CALLS_SHOWN
        more = [f"… {extra} more call(s): see the ledger"] if extra > 0 else []
        body.append(TextBlock(text="\n".join(shown + more), fontType="Monospace", wrap=True))
    body.append(TextBlock(text=f"Plan hash {plan.get('hash')}", fontType="Monospace", isSubtle=True, wrap=True,
                          separator=True))
    return [b for b in body if b is not None]


def approval_card(*, case_id: str, playbook: str, detection: Mapping[str, Any], plan: Mapping[str, Any],
                  run_id: str, expires_at: str | None, quorum: int = 1,
                  approvals: Sequence[str] = (), notes: Sequence[str] = ()) -> dict[str, Any]:
    """The request card as JSON (``application/vnd.microsoft.card.adaptive`` content).

    ``detection`` is :meth:`cordon.detections.model.Detection.summary`; ``plan`` is
    ``Plan.model_dump()`` (``hash``, ``steps`` with ``action``, ``target``, ``describe``: the calls);
    ``expires_at`` ISO 8601; ``approvals`` the approvers so far (``teams:<oid>`` / ``slack:<id>``);
    ``notes`` lines the sweeper adds (escalated to whom, reminders)."""
    body = _body(case_id, playbook, detection, plan, run_id, "approval needed")
    waiting = f"Approvals {len(approvals)} of {quorum}" + (f" ({', '.join(approvals)})" if approvals else "")
    body.append(TextBlock(text=f"{waiting} · expires {expires_at or 'never'}", wrap=True, isSubtle=True))
    for note in notes:
        body.append(TextBlock(text=note, wrap=True, weight="Bolder", color="Warning"))
    body.append(TextInput(id=REASON_INPUT, label="Reason (recorded with a Deny)", is_multiline=True,
                          max_length=MAX_REASON, placeholder="why containment must not go ahead"))
    data = {"case_id": case_id, "plan_hash": str(plan.get("hash")), "run_id": run_id}
    card = AdaptiveCard(version="1.5", body=body, fallbackText=f"Cordon: approval needed for case {case_id}",
                        actions=[ExecuteAction(title="Approve", verb=APPROVE_VERB, data=data, style="positive"),
                                 ExecuteAction(title="Deny", verb=DENY_VERB, data=data, style="destructive")])
    return card.model_dump(by_alias=True, exclude_none=True)


def decided_card(*, case_id: str, playbook: str, detection: Mapping[str, Any], plan: Mapping[str, Any], run_id: str,
                 outcome: str, by: Sequence[str], at: str) -> dict[str, Any]:
    """The card after the decision, for everyone: no buttons, the ``outcome`` (``approved`` /
    ``denied`` / ``expired``), who decided (``by``) and when (``at``, ISO 8601)."""
    body = _body(case_id, playbook, detection, plan, run_id, outcome)
    body.append(TextBlock(text=f"{outcome.capitalize()} by {', '.join(by) or 'nobody'} at {at}", weight="Bolder",
                          wrap=True, color="Good" if outcome == "approved" else "Attention"))
    card = AdaptiveCard(version="1.5", body=body, fallbackText=f"Cordon: case {case_id} {outcome}")
    return card.model_dump(by_alias=True, exclude_none=True)


def status_card(*, case_id: str, playbook: str, detection: Mapping[str, Any], plan: Mapping[str, Any], run_id: str,
                status: str, story: Sequence[str] = (), rollback: bool = False,
                manual: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The card as the run goes on, for everyone: the case's ``status`` (``denied``, ``expired``,
    ``contained``, ``not_verified``, ``failed``, ``rolled_back``...) and the run's ``story`` (who
    decided, each containment step and its result, the verification), one line each; with
    ``rollback`` a *Roll back* button (``Action.Execute``, verb ``cordon_rollback``, the same
    ``data`` as the decision buttons); with ``manual`` (the steps left to a person, ``[{id, text}]``,
    :func:`cordon.manual_steps.pending`) each listed and a *Mark done* button (``cordon_manual_done``)
    for the first; else no buttons."""
    body = _body(case_id, playbook, detection, plan, run_id, status)
    good = status in ("contained", "already_contained", "awaiting_manual")
    for line in story:
        body.append(TextBlock(text=str(line), wrap=True, color="Good" if good else "Default"))
    actions = []
    data = {"case_id": case_id, "plan_hash": str(plan.get("hash")), "run_id": run_id}
    for step in manual:
        body.append(TextBlock(text=f"Left to a person ({step.get('id')}): {step.get('text')}", wrap=True,
                              weight="Bolder", color="Warning"))
    if manual:
        actions.append(ExecuteAction(title=f"Mark done: {manual[0].get('id')}", verb=MANUAL_DONE_VERB, data=data))
    if rollback:
        actions.append(ExecuteAction(title="Roll back", verb=ROLLBACK_VERB, data=data, style="destructive"))
    card = AdaptiveCard(version="1.5", body=body, fallbackText=f"Cordon: case {case_id} {status}",
                        actions=actions or None)
    return card.model_dump(by_alias=True, exclude_none=True)
