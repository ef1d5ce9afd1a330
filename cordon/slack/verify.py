"""Inbound Slack requests: the signature check and reading a click or a dialog submission back.

When someone clicks *Approve* / *Deny* / *Roll back* on a message of :mod:`cordon.slack.blocks`,
Slack POSTs a signed ``block_actions`` payload to Cordon's server (:mod:`cordon.server.app`), which
checks the signature (:func:`verify_request`), parses the click (:func:`parse_interaction`) and
hands the :class:`Interaction` to the integrator's ``decide``, which answers a
:class:`DecisionOutcome`. The Deny reason dialog's ``view_submission`` is read by
:func:`parse_deny_submission`.

The HMAC and its constant-time comparison are ``slack_sdk.signature.SignatureVerifier``'s.

Sources: request signing https://api.slack.com/authentication/verifying-requests-from-slack;
interaction payloads https://api.slack.com/reference/interaction-payloads/block-actions and
https://api.slack.com/reference/interaction-payloads/views#view_submission.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import Clock, SignatureVerifier

from cordon.slack.blocks import (
    APPROVE_ACTION_ID,
    DENY_ACTION_ID,
    DENY_CALLBACK_ID,
    MANUAL_DONE_ACTION_ID,
    MAX_REASON,
    REASON_ACTION_ID,
    REASON_BLOCK_ID,
    ROLLBACK_ACTION_ID,
    Decision,
)
from cordon.slack.mrkdwn import dig

#: The reason recorded when the dialog could not be shown (no ``trigger_id``, ``views.open`` failed).
NO_REASON = "no reason given"
_DECISIONS = {APPROVE_ACTION_ID: "approve", DENY_ACTION_ID: "deny", ROLLBACK_ACTION_ID: "rollback",
              MANUAL_DONE_ACTION_ID: "manual_done"}
#: Slack rejects requests whose timestamp is more than five minutes from now.
MAX_SKEW_SECONDS = 60 * 5


# -- errors and the parsed click --------------------------------------------------------------
class SignatureError(Exception):
    """A request that cannot be shown to come from Slack.

    ``reason`` is one of ``missing_header`` (no ``X-Slack-Request-Timestamp`` or
    ``X-Slack-Signature``), ``bad_timestamp`` (not an integer), ``stale_timestamp`` (more than
    five minutes from now: a replay) or ``bad_signature`` (the HMAC does not match the body).
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class InteractionError(ValueError):
    """A signed interaction request that is not a well-formed Cordon button click.

    ``field`` names the offending field (``payload``, ``user.id``, ``actions[0].value.run_id``).
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"Slack interaction: field '{field}': {reason}")


class UnsupportedInteraction(InteractionError):
    """A well-formed interaction of a type Cordon does not act on (``view_submission``,
    ``shortcut``, ...); ``payload_type`` is Slack's ``type``. The server answers 200 and records
    it."""

    def __init__(self, payload_type: str | None):
        self.payload_type = payload_type
        super().__init__("type", f"payload type {payload_type!r} is not handled (only block_actions)")


@dataclass(frozen=True)
class Interaction:
    """One click on an approval button, from a verified ``block_actions`` payload.

    ``decision`` comes from the button's ``action_id`` (and must agree with the ``decision`` in
    its value); ``run_id`` / ``case_id`` / ``plan_hash`` from the button's value, i.e. from the
    message Cordon posted; ``user_id`` / ``user_name`` / ``team_id`` from Slack; ``channel`` and
    ``message_ts`` locate the message to update; ``response_url`` (may be ``None``) is where an
    ephemeral answer to the clicker goes; ``action_ts`` is Slack's time of the click and
    ``trigger_id`` Slack's one-off ID of it (together with the user: a replay's fingerprint).
    ``decision`` ``rollback`` comes from the *Roll back* button of a finished case's message.
    """

    decision: Decision
    user_id: str
    user_name: str
    team_id: str | None
    run_id: str
    case_id: str
    plan_hash: str
    channel: str
    message_ts: str
    response_url: str | None
    action_ts: str | None = None
    trigger_id: str | None = None
    #: a Deny's reason, from the reason dialog (:func:`~cordon.slack.blocks.deny_view`), or ``"no reason given (...)"``
    reason: str | None = None

    def ledger_payload(self) -> dict[str, Any]:
        """The interaction as a ledger payload (no ``response_url``: it is a bearer URL)."""
        extra = {"reason": self.reason} if self.reason is not None else {}
        return {**extra,
            "decision": self.decision,
            "user_id": self.user_id,
            "user_name": self.user_name,
            "team_id": self.team_id,
            "run_id": self.run_id,
            "case_id": self.case_id,
            "plan_hash": self.plan_hash,
            "channel": self.channel,
            "message_ts": self.message_ts,
            "action_ts": self.action_ts,
            "trigger_id": self.trigger_id,
        }


@dataclass(frozen=True)
class DecisionOutcome:
    """What ``decide`` made of an :class:`Interaction`: ``accepted`` (the run was resumed with the
    decision) or not, and a ``message`` for the clicker (shown ephemerally when refused)."""

    accepted: bool
    message: str


# -- inbound: signature and the click ---------------------------------------------------------
class _FixedClock(Clock):
    def __init__(self, now: float):
        self._now = now

    def now(self) -> float:
        return self._now


def verify_request(
    signing_secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> None:
    """Check that ``body`` with ``headers`` was sent by Slack; return ``None`` or raise
    :class:`SignatureError`.

    Follows https://api.slack.com/authentication/verifying-requests-from-slack: the
    ``X-Slack-Request-Timestamp`` must be within five minutes of ``now`` (default: the clock) and
    ``X-Slack-Signature`` must equal ``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}``
    keyed with the signing secret. The HMAC and the constant-time comparison are
    ``slack_sdk.signature.SignatureVerifier``'s (given a fixed clock when ``now`` is passed); this
    function only tells the reasons apart. Header names are matched case-insensitively.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ts = lowered.get("x-slack-request-timestamp")
    sig = lowered.get("x-slack-signature")
    if not ts:
        raise SignatureError("missing_header", "missing header X-Slack-Request-Timestamp")
    if not sig:
        raise SignatureError("missing_header", "missing header X-Slack-Signature")
    try:
        ts_int = int(ts.strip())
    except ValueError:
        raise SignatureError(
            "bad_timestamp", f"X-Slack-Request-Timestamp is not an integer: {ts[:40]!r}"
        ) from None
    clock: Clock = _FixedClock(now) if now is not None else Clock()
    skew = abs(clock.now() - ts_int)
    if skew > MAX_SKEW_SECONDS:
        raise SignatureError(
            "stale_timestamp",
            f"X-Slack-Request-Timestamp is {int(skew)} s from now (limit {MAX_SKEW_SECONDS} s)",
        )
    verifier = SignatureVerifier(signing_secret, clock=clock)
    try:
        valid = verifier.is_valid(body=body, timestamp=ts.strip(), signature=sig)
    except UnicodeDecodeError:
        valid = False
    if not valid:
        raise SignatureError("bad_signature", "X-Slack-Signature does not match the request body")


def _req_str(obj: Any, key: str, field: str) -> str:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, str) or not value:
        raise InteractionError(field, "missing or not a non-empty string")
    return value


def parse_interaction(form_body: bytes) -> Interaction:
    """Parse a Slack interactivity request body into an :class:`Interaction`.

    Slack sends ``application/x-www-form-urlencoded`` with one field, ``payload``, holding JSON
    (https://api.slack.com/interactivity/handling#payloads); for a button click its ``type`` is
    ``block_actions`` (https://api.slack.com/reference/interaction-payloads/block-actions).
    Read: ``user.id``, ``user.username`` (or ``user.name``), ``team.id`` (or ``user.team_id``),
    ``actions[0].action_id`` (``cordon_approve`` / ``cordon_deny`` / ``cordon_rollback``), ``trigger_id``,
    and ``actions[0].value``
    (Cordon's JSON ``{"run_id", "case_id", "plan_hash", "decision"}``), ``container.channel_id``
    and ``container.message_ts`` (or ``channel.id`` / ``message.ts``), ``response_url``.

    Raises :class:`UnsupportedInteraction` for another payload ``type`` and
    :class:`InteractionError` naming the field for anything malformed. Call it only on a body
    whose signature :func:`verify_request` accepted.
    """
    try:
        text = form_body.decode("utf-8")
    except UnicodeDecodeError:
        raise InteractionError("body", "not UTF-8") from None
    form = parse_qs(text, keep_blank_values=True)
    raw = form.get("payload")
    if not raw:
        raise InteractionError("payload", "missing form field (expected payload=<JSON>)")
    if len(raw) > 1:
        raise InteractionError("payload", "given more than once")
    try:
        payload = json.loads(raw[0])
    except json.JSONDecodeError as exc:
        raise InteractionError("payload", f"not JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(payload, dict):
        raise InteractionError("payload", "not a JSON object")
    ptype = payload.get("type")
    if ptype != "block_actions":
        raise UnsupportedInteraction(ptype if isinstance(ptype, str) else None)

    user = payload.get("user")
    if not isinstance(user, Mapping):
        raise InteractionError("user", "missing or not an object")
    user_id = _req_str(user, "id", "user.id")
    user_name = user.get("username") or user.get("name")
    if not isinstance(user_name, str) or not user_name:
        raise InteractionError("user.username", "missing (neither user.username nor user.name)")
    team = payload.get("team")
    team_id = team.get("id") if isinstance(team, Mapping) else None
    team_id = team_id or user.get("team_id")
    if team_id is not None and not isinstance(team_id, str):
        raise InteractionError("team.id", "not a string")

    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions:
        raise InteractionError("actions", "missing or empty")
    action = actions[0]
    if not isinstance(action, Mapping):
        raise InteractionError("actions[0]", "not an object")
    action_id = _req_str(action, "action_id", "actions[0].action_id")
    decision = _DECISIONS.get(action_id)
    if decision is None:
        raise InteractionError("actions[0].action_id", f"{action_id!r} is not a Cordon approval button")
    value_text = _req_str(action, "value", "actions[0].value")
    try:
        value = json.loads(value_text)
    except json.JSONDecodeError:
        raise InteractionError("actions[0].value", "not JSON") from None
    if not isinstance(value, dict):
        raise InteractionError("actions[0].value", "not a JSON object")
    run_id = _req_str(value, "run_id", "actions[0].value.run_id")
    case_id = _req_str(value, "case_id", "actions[0].value.case_id")
    plan_hash = _req_str(value, "plan_hash", "actions[0].value.plan_hash")
    if value.get("decision") != decision:
        raise InteractionError(
            "actions[0].value.decision", f"{value.get('decision')!r} disagrees with button {action_id!r}"
        )

    container = payload.get("container") if isinstance(payload.get("container"), Mapping) else {}
    channel = container.get("channel_id") or dig(payload, "channel", "id")
    if not isinstance(channel, str) or not channel:
        raise InteractionError("container.channel_id", "missing (and no channel.id)")
    message_ts = container.get("message_ts") or dig(payload, "message", "ts")
    if not isinstance(message_ts, str) or not message_ts:
        raise InteractionError("container.message_ts", "missing (and no message.ts)")
    response_url = payload.get("response_url")
    if response_url is not None and not isinstance(response_url, str):
        raise InteractionError("response_url", "not a string")
    action_ts = action.get("action_ts")
    trigger_id = payload.get("trigger_id")
    return Interaction(
        decision=decision,
        user_id=user_id,
        user_name=user_name,
        team_id=team_id,
        run_id=run_id,
        case_id=case_id,
        plan_hash=plan_hash,
        channel=channel,
        message_ts=message_ts,
        response_url=response_url or None,
        action_ts=action_ts if isinstance(action_ts, str) else None,
        trigger_id=trigger_id if isinstance(trigger_id, str) else None,
    )


def view_submission_payload(form_body: bytes) -> dict[str, Any] | None:
    """The decoded ``payload`` of a Slack interactivity body when it is a ``view_submission``
    (https://api.slack.com/reference/interaction-payloads/views#view_submission), else ``None``
    (another type, or a body that does not decode: :func:`parse_interaction` reports that)."""
    try:
        raw = parse_qs(form_body.decode("utf-8"), keep_blank_values=True).get("payload")
        payload = json.loads(raw[0]) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "view_submission":
        return None
    return payload


def parse_deny_submission(form_body: bytes) -> Interaction | None:
    """The Deny in a ``view_submission`` of :func:`cordon.slack.blocks.deny_view`
    (https://api.slack.com/reference/interaction-payloads/views#view_submission), as an
    :class:`Interaction` with ``decision`` ``deny`` and ``reason`` the text typed (stripped; may be
    empty: the caller answers with a field error), the submitter as the user, the run, case, plan
    and message from the view's ``private_metadata``, and the submission's ``trigger_id``. ``None``
    for any other payload. Raises :class:`InteractionError` naming the field for a malformed one.
    Call it only on a body whose signature was verified."""
    payload = view_submission_payload(form_body)
    if payload is None:
        return None
    view = payload.get("view")
    if not isinstance(view, Mapping) or view.get("callback_id") != DENY_CALLBACK_ID:
        return None
    user = payload.get("user")
    if not isinstance(user, Mapping):
        raise InteractionError("user", "missing or not an object")
    user_id = _req_str(user, "id", "user.id")
    user_name = user.get("username") or user.get("name") or user_id
    try:
        meta = json.loads(view.get("private_metadata") or "")
    except json.JSONDecodeError:
        raise InteractionError("view.private_metadata", "not JSON") from None
    if not isinstance(meta, Mapping):
        raise InteractionError("view.private_metadata", "not a JSON object")
    fields = {k: _req_str(meta, k, f"view.private_metadata.{k}")
              for k in ("run_id", "case_id", "plan_hash", "channel", "message_ts")}
    state = dig(view, "state", "values", REASON_BLOCK_ID, REASON_ACTION_ID)
    reason = state.get("value") if isinstance(state, Mapping) else None
    if reason is not None and not isinstance(reason, str):
        raise InteractionError("view.state.values.reason", "not a string")
    team = payload.get("team")
    team_id = (team.get("id") if isinstance(team, Mapping) else None) or user.get("team_id")
    response_url = meta.get("response_url")
    trigger_id = payload.get("trigger_id")
    return Interaction(decision="deny", user_id=user_id, user_name=str(user_name),
                       team_id=team_id if isinstance(team_id, str) else None, response_url=response_url
                       if isinstance(response_url, str) and response_url else None,
                       trigger_id=trigger_id if isinstance(trigger_id, str) else None,
                       reason=(reason or "").strip()[:MAX_REASON], **fields)
