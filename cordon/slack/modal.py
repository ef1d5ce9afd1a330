"""The modal for running a playbook by hand from Slack, built from the playbook's parameter schema.

Two views (https://api.slack.com/reference/surfaces/views, opened with ``views.open``,
https://api.slack.com/methods/views.open):

* :func:`pick_view` (``callback_id`` ``cordon_run_pick``), for ``/cordon run`` alone: one input
  block ``playbook`` with a ``static_select`` of the runnable playbooks. Its ``view_submission``
  is answered with ``response_action: update`` to :func:`params_view` of the chosen playbook.
* :func:`params_view` (``callback_id`` ``cordon_run``): one input block per parameter, ``block_id``
  ``param:<name>``, ``action_id`` ``value``: a ``static_select`` for an ``enum`` or a boolean, a
  ``number_input`` for an integer, else a ``plain_text_input``; the label is the name, the hint
  the description (and pattern), ``optional`` when not required, initial values from what the
  slash command already gave. ``private_metadata`` is JSON ``{"playbook", "channel_id"}``.

A ``view_submission`` (https://api.slack.com/reference/interaction-payloads/views#view_submission)
is read by :func:`parse_view_submission`; the values live in ``view.state.values[block_id][action_id]``
(``value`` for text and number inputs, ``selected_option.value`` for selects). Validation errors go
back as ``{"response_action": "errors", "errors": {block_id: message}}``
(https://api.slack.com/surfaces/modals#displaying_errors).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cordon.playbooks.schema import Playbook
from cordon.slack.verify import InteractionError, view_submission_payload

PICK_CALLBACK_ID = "cordon_run_pick"
RUN_CALLBACK_ID = "cordon_run"
PLAYBOOK_BLOCK_ID = "playbook"
PARAM_PREFIX = "param:"
ACTION_ID = "value"

#: Slack's view limits: title / submit / close 24 characters, 100 blocks, private_metadata 3000,
#: input label 2000, hint 2000, plain_text_input initial_value 3000, static_select 100 options
#: with text 75 each. Error messages are shown under the field (kept short).
MAX_TITLE = 24
MAX_ERROR = 300


def _plain(text: str, limit: int) -> dict[str, Any]:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text, "emoji": True}


def _metadata(playbook: str | None, channel_id: str | None) -> str:
    return json.dumps({"playbook": playbook, "channel_id": channel_id}, separators=(",", ":"))


def pick_view(playbooks: Sequence[Playbook], *, channel_id: str | None = None) -> dict[str, Any]:
    """The first view of ``/cordon run`` alone: choose one of ``playbooks`` (the runnable ones,
    at most 100 shown). Raises ``ValueError`` when there are none."""
    if not playbooks:
        raise ValueError("no playbook declares parameters: nothing can be run by hand")
    options = [{"text": _plain(pb.name, 75), "value": pb.name} for pb in playbooks[:100]]
    return {
        "type": "modal",
        "callback_id": PICK_CALLBACK_ID,
        "title": _plain("Run a playbook", MAX_TITLE),
        "submit": _plain("Next", MAX_TITLE),
        "close": _plain("Cancel", MAX_TITLE),
        "private_metadata": _metadata(None, channel_id),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": (
                "Contain a credential you name. Someone else must approve the plan (you cannot approve your "
                "own run).")}},
            {"type": "input", "block_id": PLAYBOOK_BLOCK_ID, "label": _plain("Playbook", 2000),
             "element": {"type": "static_select", "action_id": ACTION_ID, "options": options,
                         "placeholder": _plain("Choose a playbook", 150)}},
        ],
    }


def _element(name: str, pb: Playbook, initial: Any) -> dict[str, Any]:
    spec = pb.parameters[name]
    values = spec.enum if spec.enum is not None else ([True, False] if spec.type == "boolean" else None)
    if values is not None:
        options = [{"text": _plain(json.dumps(v) if not isinstance(v, str) else v, 75),
                    "value": json.dumps(v) if not isinstance(v, str) else v} for v in values[:100]]
        el: dict[str, Any] = {"type": "static_select", "action_id": ACTION_ID, "options": options}
        chosen = next((o for o in options
                       if initial is not None and o["value"] in (str(initial), str(initial).lower())), None)
        if chosen:
            el["initial_option"] = chosen
        return el
    if spec.type == "integer":
        el = {"type": "number_input", "action_id": ACTION_ID, "is_decimal_allowed": False}
    else:
        el = {"type": "plain_text_input", "action_id": ACTION_ID}
    if initial not in (None, ""):
        el["initial_value"] = str(initial)[:3000]
    return el


def params_view(pb: Playbook, initial: Mapping[str, Any] | None = None, *,
                channel_id: str | None = None) -> dict[str, Any]:
    """The form for ``pb``'s parameters (module docstring), pre-filled from ``initial``."""
    initial = initial or {}
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip_mrkdwn(
            f"*{pb.name}*: {pb.description.strip()}\nSomeone else must approve the plan before anything changes.")}},
    ]
    for name, spec in list(pb.parameters.items())[:99]:
        hint = spec.description + (f" (pattern {spec.pattern})" if spec.pattern else "")
        blocks.append({"type": "input", "block_id": f"{PARAM_PREFIX}{name}", "label": _plain(name, 2000),
                       "hint": _plain(hint, 2000), "optional": not spec.required,
                       "element": _element(name, pb, initial.get(name))})
    return {
        "type": "modal",
        "callback_id": RUN_CALLBACK_ID,
        "title": _plain("Run a playbook", MAX_TITLE),
        "submit": _plain("Run", MAX_TITLE),
        "close": _plain("Cancel", MAX_TITLE),
        "private_metadata": _metadata(pb.name, channel_id),
        "blocks": blocks,
    }


def _clip_mrkdwn(text: str) -> str:
    return text if len(text) <= 3000 else text[:2999] + "…"


@dataclass(frozen=True)
class ViewSubmission:
    """A verified ``view_submission``: ``callback_id``, the submitter (``user_id``, ``user_name``,
    ``team_id``), ``values`` (``{block_id: value as a string, or None when empty}``), and
    ``playbook`` / ``channel_id`` from the view's ``private_metadata``."""

    callback_id: str
    user_id: str
    user_name: str | None
    team_id: str | None
    values: dict[str, str | None] = field(default_factory=dict)
    playbook: str | None = None
    channel_id: str | None = None

    def params(self) -> dict[str, str]:
        """The ``param:<name>`` values that were filled in, as ``{name: value}``."""
        return {k[len(PARAM_PREFIX):]: v for k, v in self.values.items()
                if k.startswith(PARAM_PREFIX) and v not in (None, "")}


def _value(state: Mapping[str, Any]) -> str | None:
    if not isinstance(state, Mapping):
        return None
    if isinstance(state.get("selected_option"), Mapping):
        return state["selected_option"].get("value")
    value = state.get("value")
    return value if isinstance(value, str) else None


def parse_view_submission(form_body: bytes) -> ViewSubmission | None:
    """The :class:`ViewSubmission` in a Slack interactivity body, or ``None`` when the payload is
    another type (``block_actions``...) or a view that is not Cordon's. Raises
    :class:`~cordon.slack.verify.InteractionError` naming the field for a malformed Cordon
    view submission. Call it only on a body whose signature was verified."""
    payload = view_submission_payload(form_body)
    if payload is None:
        return None
    view = payload.get("view")
    if not isinstance(view, Mapping):
        raise InteractionError("view", "missing or not an object")
    callback_id = view.get("callback_id")
    if callback_id not in (PICK_CALLBACK_ID, RUN_CALLBACK_ID):
        return None
    user = payload.get("user")
    if not isinstance(user, Mapping) or not isinstance(user.get("id"), str) or not user["id"]:
        raise InteractionError("user.id", "missing or not a non-empty string")
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError:
        raise InteractionError("view.private_metadata", "not JSON") from None
    if not isinstance(meta, Mapping):
        raise InteractionError("view.private_metadata", "not a JSON object")
    values = view.get("state", {}).get("values", {}) if isinstance(view.get("state"), Mapping) else {}
    if not isinstance(values, Mapping):
        raise InteractionError("view.state.values", "not an object")
    flat: dict[str, str | None] = {}
    for block_id, actions in values.items():
        if isinstance(actions, Mapping):
            flat[str(block_id)] = _value(actions.get(ACTION_ID) or next(iter(actions.values()), {}))
    team = payload.get("team")
    return ViewSubmission(
        callback_id=str(callback_id), user_id=user["id"], user_name=user.get("username") or user.get("name"),
        team_id=(team.get("id") if isinstance(team, Mapping) else None) or user.get("team_id"),
        values=flat, playbook=meta.get("playbook"), channel_id=meta.get("channel_id"))


def field_errors(errors: Mapping[str, str]) -> dict[str, Any]:
    """``{"response_action": "errors", "errors": {"param:<name>": message}}`` for ``errors``
    (parameter name -> reason)."""
    return {"response_action": "errors",
            "errors": {f"{PARAM_PREFIX}{k}": (v if len(v) <= MAX_ERROR else v[: MAX_ERROR - 1] + "…")
                       for k, v in errors.items()}}
