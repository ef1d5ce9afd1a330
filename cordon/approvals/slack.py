"""Slack approval: the Block Kit message, posting / updating it, and reading the click back.

The approval message (:func:`approval_blocks`) shows the detection, who acted, the target, the
exact credential, key enrichment facts and the exact plan (every API call), with *Approve* /
*Deny* buttons whose ``value`` carries the run ID, case ID and the plan's hash. When someone
clicks, Slack POSTs a signed ``block_actions`` payload to Cordon's server
(:mod:`cordon.server.app`), which checks the signature (:func:`verify_request`), parses the click
(:func:`parse_interaction`) and hands the :class:`Interaction` to the integrator's ``decide``. As
the run goes on the message is updated in place (:func:`status_blocks`, :func:`update_message`);
the buttons disappear once a decision is taken.

Everything Slack already defines comes from ``slack_sdk``: the Web API client, retries on 429
(honouring ``Retry-After``) and 5xx (``slack_sdk.http_retry``), the signature check
(``slack_sdk.signature.SignatureVerifier``) and the response-URL client
(``slack_sdk.webhook.WebhookClient``, used by the server).

Sources: Block Kit https://api.slack.com/reference/block-kit/blocks (limits: 50 blocks per
message, section ``text`` 3000 characters, section ``fields`` 10 x 2000, header 150, button text
75, button ``value`` 2000, confirm dialog text 300); mrkdwn escaping
https://api.slack.com/reference/surfaces/formatting#escaping; interaction payloads
https://api.slack.com/reference/interaction-payloads/block-actions; request signing
https://api.slack.com/authentication/verifying-requests-from-slack.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qs

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler
from slack_sdk.signature import Clock, SignatureVerifier

APPROVE_ACTION_ID = "cordon_approve"
DENY_ACTION_ID = "cordon_deny"
ROLLBACK_ACTION_ID = "cordon_rollback"
ACTIONS_BLOCK_ID = "cordon_decision"
ROLLBACK_BLOCK_ID = "cordon_rollback"
#: The Deny reason dialog (:func:`deny_view`): its ``callback_id`` and the reason input's block.
DENY_CALLBACK_ID = "cordon_deny_reason"
REASON_BLOCK_ID = "reason"
REASON_ACTION_ID = "value"
MAX_REASON = 2000
#: The reason recorded when the dialog could not be shown (no ``trigger_id``, ``views.open`` failed).
NO_REASON = "no reason given"
_DECISIONS = {APPROVE_ACTION_ID: "approve", DENY_ACTION_ID: "deny", ROLLBACK_ACTION_ID: "rollback"}

#: Slack's limits (https://api.slack.com/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS = 10
MAX_HEADER_TEXT = 150
MAX_BUTTON_VALUE = 2000
MAX_CONFIRM_TEXT = 300
#: Sections given to the plan: 4 x 3000 characters. Slack rejects a message whose blocks are
#: too long in total (``msg_blocks_too_long``, chat.postMessage) without documenting the figure.
MAX_PLAN_SECTIONS = 4
#: Fallback ``text`` kept well under chat.postMessage's 40,000 (Slack truncates beyond 4,000).
MAX_FALLBACK_TEXT = 3000
#: Slack rejects requests whose timestamp is more than five minutes from now.
MAX_SKEW_SECONDS = 60 * 5

Decision = Literal["approve", "deny", "rollback"]


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
    #: a Deny's reason, from the reason dialog (:func:`deny_view`), or ``"no reason given (...)"``
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


# -- Block Kit helpers ------------------------------------------------------------------------
def _esc(value: Any) -> str:
    """mrkdwn-escape ``&``, ``<``, ``>`` (Slack's three control characters)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape(value: Any) -> str:
    """``value`` as text safe inside Slack mrkdwn (``&``, ``<``, ``>`` escaped as Slack's
    formatting reference asks, https://api.slack.com/reference/surfaces/formatting#escaping), so
    an attacker-controlled string (a principal name, an error message) cannot mention
    ``<!channel>``, a user, or make a link. For text built outside this module (thread replies)."""
    return _esc(value)


def _code(value: Any) -> str:
    """Inline code; a backtick inside would end the span, so it becomes U+02CB."""
    return "`" + _esc(value).replace("`", "\u02cb") + "`"


def _clip(text: str, limit: int, suffix: str = "… (truncated)") -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(suffix))] + suffix


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(text, limit, "…"), "emoji": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, MAX_SECTION_TEXT)}}


def _fields(pairs: Sequence[tuple[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label, value in pairs:
        if value is None or value == "" or value == []:
            continue
        out.append({"type": "mrkdwn", "text": _clip(f"*{_esc(label)}*\n{value}", MAX_FIELD_TEXT)})
    return out[:MAX_FIELDS]


def _fields_section(title: str, pairs: Sequence[tuple[str, Any]]) -> dict[str, Any] | None:
    fields = _fields(pairs)
    if not fields:
        return None
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _clip(title, MAX_SECTION_TEXT)},
        "fields": fields,
    }


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


def _technique_links(ids: Any) -> str | None:
    if not isinstance(ids, list) or not ids:
        return None
    links = []
    for tid in ids:
        t = str(tid)
        if t.startswith("T") and t[1:].replace(".", "").isdigit():
            links.append(f"<https://attack.mitre.org/techniques/{t.replace('.', '/')}/|{t}>")
        else:
            links.append(_esc(t))
    return ", ".join(links)


def _slack_date(iso: str | None) -> str | None:
    """``<!date^...>`` so each reader sees their own time zone, with the ISO text as fallback
    (https://api.slack.com/reference/surfaces/formatting#date-formatting)."""
    if not iso:
        return None
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return _esc(iso)
    if dt.tzinfo is None:
        return _esc(iso)
    return f"<!date^{int(dt.timestamp())}^{{date_short_pretty}} {{time_secs}}|{_esc(iso)}>"


def _mfa(value: Any) -> str | None:
    if value is True:
        return "yes"
    if value is False:
        return "*no*"
    return None


def _principal(p: Any) -> str | None:
    """A principal for a field, name first (:func:`principal_name`) with its type; its IDs go to
    the message's ID line (:func:`_id_line`)."""
    name = principal_name(p)
    if not name:
        return None
    return _code(name) + (f" ({_esc(p['type'])})" if p.get("type") else "")


def _id_line(det: Mapping[str, Any]) -> str | None:
    """The IDs behind the names (GUIDs, ARNs, key IDs), for the small context line under them:
    each uid not already shown as the name, once."""
    pairs: list[tuple[str, Any]] = []
    actor = _get(det, "actor", "user")
    target = det.get("target") if isinstance(det.get("target"), Mapping) else {}
    cred = det.get("credential") if isinstance(det.get("credential"), Mapping) else {}
    owner = cred.get("owner") if isinstance(cred.get("owner"), Mapping) else {}
    attrs = cred.get("attributes") if isinstance(cred.get("attributes"), Mapping) else {}
    for label, p in (("actor", actor), ("target", target), ("owner", owner)):
        if isinstance(p, Mapping) and p.get("uid") and p.get("uid") != principal_name(p):
            pairs.append((label, p["uid"]))
    if cred.get("uid") and attrs.get("keyDisplayName"):
        pairs.append(("credential", cred["uid"]))
    if attrs.get("appId"):
        pairs.append(("appId", attrs["appId"]))
    if det.get("provider") == "azure" and det.get("account_uid"):
        pairs.append(("tenant", det["account_uid"]))
    seen: set[str] = set()
    out = []
    for label, value in pairs:
        if str(value) in seen:
            continue
        seen.add(str(value))
        out.append(f"{_esc(label)} {_code(value)}")
    return ("IDs: " + " · ".join(out)) if out else None


def _name_of(item: Any, *keys: str) -> str:
    if isinstance(item, Mapping):
        for k in keys:
            if item.get(k):
                return str(item[k])
        return json.dumps(item, default=str, sort_keys=True)[:80]
    return str(item)


def _as_list(value: Any) -> list[Any] | None:
    """Lists as given; a dict of lists (``{"attached": [...], "inline": [...]}``) flattened."""
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        out: list[Any] = []
        for v in value.values():
            if isinstance(v, list):
                out.extend(v)
        return out
    return None


def _enrichment_lines(enrichment: Any, credential_uid: str | None) -> list[str]:
    """Short mrkdwn lines for the enrichment facts worth seeing before approving.

    Known shapes are summarised (``aws.iam-user``: ``access_keys``, ``policies``, ``groups``,
    ``mfa_devices``; ``aws.cloudtrail-session``: ``events``; ``gcp.service-account``: the account,
    its keys with the detection's marked, its project roles, who can act as it; ``azure.service-principal`` and
    ``azure.actor``: see :func:`_azure_enrichment_lines`); any other enrichment key gets a
    one-line generic summary. Anything missing or oddly shaped is skipped, never an error.
    """
    if not isinstance(enrichment, Mapping):
        return []
    lines: list[str] = []
    for name, facts in enrichment.items():
        if isinstance(facts, Mapping) and facts.get("error"):
            lines.append(f":warning: {_code(name)} failed: {_esc(_clip(str(facts['error']), 200))}")
            continue
        if isinstance(facts, Mapping) and (azure := _azure_enrichment_lines(name, facts, credential_uid)):
            lines.extend(azure)
            continue
        if name == "aws.iam-user" and isinstance(facts, Mapping):
            keys = _as_list(facts.get("access_keys"))
            if keys is not None:
                descs = []
                for k in keys[:10]:
                    kid = _name_of(k, "AccessKeyId", "access_key_id", "id")
                    bits = [
                        str(k[f])
                        for f in ("Status", "status", "CreateDate", "create_date")
                        if isinstance(k, Mapping) and k.get(f)
                    ]
                    mark = " ← *this detection*" if credential_uid and kid == credential_uid else ""
                    descs.append(f"{_code(kid)}{' ' + _esc(', '.join(bits)) if bits else ''}{mark}")
                more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                lines.append(f"*Access keys of the user* ({len(keys)}): " + "; ".join(descs) + more)
            for key, label, names in (
                ("policies", "Policies", ("PolicyArn", "PolicyName", "arn", "name")),
                ("groups", "Groups", ("GroupName", "name", "Arn")),
                ("mfa_devices", "MFA devices", ("SerialNumber", "serial")),
            ):
                items = _as_list(facts.get(key))
                if items is not None:
                    shown = ", ".join(_code(_name_of(i, *names)) for i in items[:10]) or "none"
                    more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
                    lines.append(f"*{label}* ({len(items)}): {shown}{more}")
            continue
        if name == "gcp.service-account" and isinstance(facts, Mapping) and facts.get("exists"):
            state = "disabled" if facts.get("disabled") else "enabled"
            lines.append(f"*Service account* {_code(str(facts.get('email')))} ({state}, project "
                         f"{_esc(str(facts.get('project')))})")
            keys = _as_list(facts.get("keys")) or []
            descs = []
            for k in keys[:10]:
                if not isinstance(k, Mapping):
                    continue
                mark = " ← *this detection*" if credential_uid and k.get("name") == credential_uid else ""
                bits = [str(k[f]) for f in ("key_type", "valid_after") if k.get(f)]
                bits.append("disabled" if k.get("disabled") else "enabled")
                descs.append(f"{_code(str(k.get('key_id')))} {_esc(', '.join(bits))}{mark}")
            if descs:
                lines.append(f"*Keys* ({len(keys)}): " + "; ".join(descs))
            roles = _as_list(facts.get("project_roles")) or []
            shown = ", ".join(_code(_name_of(r, "role")) for r in roles[:10]) or "none"
            lines.append(f"*Roles on the project* ({len(roles)}): {shown}")
            inherited = _as_list(facts.get("inherited_roles")) or []
            if inherited:
                lines.append(f"*Inherited roles* ({len(inherited)}): " + ", ".join(
                    f"{_code(_name_of(r, 'role'))} on {_esc(_name_of(r, 'resource'))}" for r in inherited[:6]))
            actors = _as_list(facts.get("can_act_as")) or []
            if actors:
                who = ", ".join(f"{_esc(_name_of(a, 'member'))} ({_esc(_name_of(a, 'role'))})" for a in actors[:6])
                lines.append(f"*Who can act as it* ({len(actors)}): {who}")
            continue
        if name == "aws.cloudtrail-session" and isinstance(facts, Mapping):
            events = facts.get("events")
            if isinstance(events, list):
                counts = Counter(_name_of(e, "eventName", "EventName", "event_name") for e in events)
                top = ", ".join(f"{_esc(n)} x{c}" for n, c in counts.most_common(8))
                lines.append(
                    f"*Session activity*: {len(events)} CloudTrail events" + (f" ({top})" if top else "")
                )
            continue
        lines.append(f"*{_esc(name)}*: {_esc(_generic_summary(facts))}")
    return lines


def _azure_enrichment_lines(name: str, facts: Mapping[str, Any], credential_uid: str | None) -> list[str]:
    """Lines for ``azure.service-principal`` (the app and its appId, publisher verified or not, owners,
    the exact credential of the detection by keyId, risky Graph permissions, directory roles, RBAC at
    subscription / management-group scope, sign-ins, parts not read) and ``azure.actor`` (who, from
    where, whether they own the app). Shapes: :class:`cordon.actions.azure.ServicePrincipalFacts`,
    :class:`cordon.actions.azure.ActorFacts`. Anything else gives ``[]`` (the caller summarises it)."""
    lines: list[str] = []
    if name == "azure.service-principal":
        if facts.get("exists") is False:
            return [f":warning: {_esc(facts.get('object_type') or 'object')} {_code(facts.get('object_id'))} "
                    "does not exist (any more)"]
        sp = facts.get("service_principal") if isinstance(facts.get("service_principal"), Mapping) else {}
        pub = facts.get("publisher") if isinstance(facts.get("publisher"), Mapping) else {}
        state = "" if not sp else (" (enabled)" if sp.get("account_enabled") is not False else " (disabled)")
        who = (f"verified publisher {_esc(pub.get('name'))}" if pub.get("verified")
               else f":warning: *unverified* publisher ({_esc(pub.get('domain') or 'no domain')})")
        home = "" if pub.get("home_tenant", True) else (
            f", registered in another tenant {_code(pub.get('app_owner_organization_id'))}")
        lines.append(f"*App* {_code(facts.get('display_name'))} appId {_code(facts.get('app_id'))}, "
                     f"{_esc(facts.get('object_type'))} {_code(facts.get('object_id'))}{state}; {who}{home}")
        found = facts.get("credential_in_detection")
        if isinstance(found, Mapping):
            span = " to ".join(str(found[k]) for k in ("start", "end") if found.get(k))
            lines.append(f"*Credential of this detection*: {_esc(found.get('kind'))} keyId {_code(found.get('key_id'))}"
                         f"{' ' + _code(found['display_name']) if found.get('display_name') else ''} on the "
                         f"{_esc(found.get('on'))}{' (' + _esc(span) + ')' if span else ''}")
        elif credential_uid and facts.get("credential_in_detection_present") is False:
            lines.append(f":warning: keyId {_code(credential_uid)} is on neither the application nor its service "
                         "principal (already removed?)")
        creds = []
        for holder in ("application", "service_principal"):
            obj = facts.get(holder) if isinstance(facts.get(holder), Mapping) else None
            if obj:
                n_p, n_k = len(obj.get("password_credentials") or []), len(obj.get("key_credentials") or [])
                fic = len(obj.get("federated_identity_credentials") or [])
                creds.append(f"{holder.replace('_', ' ')}: {n_p} secret(s), {n_k} certificate(s)"
                             + (f", {fic} federated" if fic else ""))
        if creds:
            lines.append("*Credentials*: " + "; ".join(creds))
        owners = [o for o in facts.get("all_owners") or facts.get("owners") or [] if isinstance(o, Mapping)]
        shown = ", ".join(f"{_code(_name_of(o, 'user_principal_name', 'display_name', 'id'))}"
                          + (f" ({'/'.join(o['of'])})" if o.get("of") else "") for o in owners[:6])
        lines.append(f"*Owners* ({len(owners)}): {shown or 'none'}")
        risky = [r for r in facts.get("risky_permissions") or [] if isinstance(r, Mapping)]
        if risky:
            lines.append(":rotating_light: *Dangerous Graph permissions*: " + ", ".join(
                f"{_code(r.get('permission'))} ({_esc(r.get('type'))})" for r in risky[:8]))
        else:
            n_app = len(facts.get("app_role_assignments") or [])
            n_del = len(facts.get("oauth2_permission_grants") or [])
            lines.append(f"*Permissions*: {n_app} application, {n_del} delegated grant(s); none dangerous")
        roles = [r for r in facts.get("directory_roles") or [] if isinstance(r, Mapping)]
        lines.append("*Directory roles*: " + (", ".join(_code(_name_of(r, "display_name", "role_template_id"))
                                                        for r in roles[:6]) or "none"))
        rbac = [r for r in facts.get("rbac_role_assignments") or [] if isinstance(r, Mapping)]
        lines.append(f"*Azure RBAC* ({len(rbac)}): " + ("; ".join(
            f"{_code(r.get('role_name') or _name_of(r, 'role_definition_id'))} at {_esc(r.get('scope_level'))} "
            f"{_code(r.get('scope'))}" for r in rbac[:5]) or "none"))
        sign_ins = facts.get("sign_ins") if isinstance(facts.get("sign_ins"), Mapping) else {}
        if sign_ins.get("available"):
            events = [e for e in sign_ins.get("events") or [] if isinstance(e, Mapping)]
            last = f" (latest {_esc(events[0].get('time'))} from {_code(events[0].get('ip'))})" if events else ""
            lines.append(f"*Recent sign-ins*: {len(events)}{last}")
        elif sign_ins:
            lines.append(f"*Sign-ins*: not available ({_esc(_clip(str(sign_ins.get('reason')), 120, '…'))})")
        for part, why in (facts.get("unavailable") or {}).items():
            lines.append(f":warning: not read: {_esc(part)} ({_esc(_clip(str(why), 120, '…'))})")
        return lines
    if name == "azure.actor":
        actor = facts.get("actor") if isinstance(facts.get("actor"), Mapping) else {}
        who = actor.get("name") or actor.get("uid") or "unknown"
        where = f" from {_code(facts['src_ip'])}" if facts.get("src_ip") else ""
        agent = f" with {_code(_clip(str(facts['user_agent']), 80, '…'))}" if facts.get("user_agent") else ""
        owns = {True: "owns the app", False: "does *not* own the app", None: "ownership unknown"}.get(
            facts.get("owns_app"), "ownership unknown")
        roles = ", ".join(_code(_name_of(r, "display_name")) for r in facts.get("directory_roles") or [])
        lines.append(f"*Actor* {_code(who)} ({_esc(actor.get('type') or 'unknown type')}){where}{agent}; {owns}"
                     + (f"; roles {roles}" if roles else ""))
        return lines
    return lines


def _generic_summary(facts: Any) -> str:
    if isinstance(facts, Mapping):
        parts = []
        for k, v in list(facts.items())[:8]:
            if isinstance(v, list):
                parts.append(f"{k}: {len(v)} item(s)")
            elif isinstance(v, Mapping):
                parts.append(f"{k}: {{{len(v)} field(s)}}")
            else:
                parts.append(f"{k}: {_clip(str(v), 80, '…')}")
        return _clip("; ".join(parts) or "(empty)", 400, "…")
    if isinstance(facts, list):
        return f"{len(facts)} item(s)"
    return _clip(str(facts), 200, "…")


def _button_value(run_id: str, case_id: str, plan_hash: str, decision: Decision) -> str:
    value = json.dumps(
        {"run_id": run_id, "case_id": case_id, "plan_hash": plan_hash, "decision": decision},
        separators=(",", ":"),
        sort_keys=True,
    )
    if len(value) > MAX_BUTTON_VALUE:
        raise ValueError(f"button value is {len(value)} characters; Slack allows {MAX_BUTTON_VALUE}")
    return value


def _plan_action_text(index: int, step: Mapping[str, Any], budget: int = MAX_SECTION_TEXT) -> str:
    """One plan step as mrkdwn: the action, its target, and its calls in a code block. Calls
    past ``budget`` characters are counted, not shown; the first call is always shown (the text
    stays under 3000 characters)."""
    action = step.get("action") or step.get("name") or "?"
    target = step.get("target")
    calls = [str(c) for c in step.get("calls") or []]
    head = _clip(f"*{index}. {_esc(action)}*" + (f" on {_code(target)}" if target else ""), 400, "…")
    if not calls:
        return head + "\n_no API call: already contained_"
    room = budget - len(head) - 50  # code fences and the "more calls" line
    body_lines: list[str] = []
    used = 0
    for n, call in enumerate(calls):
        line = _esc(call).replace("`", "\u02cb")
        if used + len(line) + 1 > room:
            if not body_lines:  # the first call is always shown, whole unless over 3000 characters
                body_lines.append(_clip(line, MAX_SECTION_TEXT - len(head) - 50, "…"))
                n += 1
            if n < len(calls):
                body_lines.append(f"… {len(calls) - n} more call(s) not shown")
            break
        body_lines.append(line)
        used += len(line) + 1
    return head + "\n```" + "\n".join(body_lines) + "```"


def _plan_sections(steps: Sequence[Mapping[str, Any]], room: int, case_id: str) -> list[str]:
    """Texts of at most ``room`` sections (each <= 3000 characters) showing the plan.

    Steps are packed several to a section; when they do not fit, each step's share of the
    space shrinks (fewer calls shown, the rest counted) down to a floor, and past that the
    remaining steps are listed by name only, then counted."""

    def pack(texts: list[str]) -> list[str]:
        sections: list[str] = []
        for t in texts:
            if sections and len(sections[-1]) + 1 + len(t) <= MAX_SECTION_TEXT:
                sections[-1] += "\n" + t
            else:
                sections.append(t)
        return sections

    budget = MAX_SECTION_TEXT
    while True:
        sections = pack([_plan_action_text(i, s, budget) for i, s in enumerate(steps, 1)])
        if len(sections) <= room:
            return sections
        if budget <= 300:
            break
        budget = max(300, int(budget * 0.7))
    # Too many steps to show calls for all: the first ones in full share, the rest by name.
    keep = max(0, (room - 1) * MAX_SECTION_TEXT // budget - 1)
    while True:
        head = pack([_plan_action_text(i, s, budget) for i, s in enumerate(steps[:keep], 1)])
        if len(head) <= room - 1 or keep == 0:
            break
        keep -= 1
    footer = f"The full plan is recorded in the ledger for case {_code(case_id)}."
    lines = [f"*Steps {keep + 1}-{len(steps)}, by name only (too many for Slack):*"]
    used = len(lines[0]) + len(footer) + 60
    for i, s in enumerate(steps[keep:], keep + 1):
        calls = s.get("calls") or []
        line = (f"{i}. {_esc(s.get('action') or s.get('name') or '?')} on "
                f"{_code(_clip(str(s.get('target') or '?'), 120, '…'))}: {len(calls)} call(s)")
        if used + len(line) + 1 > MAX_SECTION_TEXT:
            lines.append(f"… and {len(steps) - i + 1} more step(s)")
            break
        lines.append(line)
        used += len(line) + 1
    lines.append(footer)
    return head + ["\n".join(lines)]


#: What a new credential of each kind is called, and the word joining it to whom it belongs
#: (:func:`what_happened`: "New client secret on payments-api"). Kinds not listed read
#: "New <kind in words> on <owner>".
CREDENTIAL_PHRASES: dict[str, tuple[str, str]] = {
    "aws_access_key": ("New access key", "for"),
    "aws_login_profile": ("New console password", "for"),
    "aws_key_pair": ("New EC2 key pair", "in"),
    "aws_service_specific_credential": ("New service-specific credential", "for"),
    "aws_federation_token": ("Federation token issued", "to"),
    "aws_iam_user": ("New IAM user", ""),
    "aws_policy_grant": ("Admin policy granted", "to"),
    "azure_sp_password": ("New client secret", "on"),
    "azure_sp_key": ("New certificate", "on"),
    "azure_federated_credential": ("New federated credential", "on"),
    "azure_role_assignment": ("New Azure role assignment", "for"),
    "azure_directory_role": ("Directory role granted", "to"),
    "azure_app_role_assignment": ("App permission granted", "to"),
    "azure_user": ("New Entra user", ""),
    "azure_service_principal": ("New service principal", ""),
    "gcp_sa_key": ("New service-account key", "on"),
    "gcp_service_account": ("New service account", ""),
    "gcp_iam_binding": ("IAM role granted", "to"),
    "gcp_api_key": ("New API key", "in"),
    "gcp_oslogin_ssh_key": ("New OS Login SSH key", "for"),
    "gcp_hmac_key": ("New HMAC key", "for"),
}
#: Principal types worth saying before a name ("IAM user alice"); others read as the name alone.
_TYPE_WORDS = {"IAMUser": "IAM user", "AssumedRole": "role", "Role": "role", "Root": "root user",
               "FederatedUser": "federated user"}


def principal_name(p: Any) -> str | None:
    """The name a person reads for a principal (plain text, not escaped): its ``name`` (an Entra
    UPN or display name, an IAM user name, a service-account e-mail), else the resource part of an
    ARN uid (``arn:aws:iam::1:user/ops/alice`` -> ``ops/alice``), else the ``uid``; ``None`` when
    there is neither."""
    if not isinstance(p, Mapping):
        return None
    if p.get("name"):
        return str(p["name"])
    uid = p.get("uid")
    if not uid:
        return None
    uid = str(uid)
    if uid.startswith("arn:") and uid.count(":") >= 5:
        resource = uid.split(":", 5)[5]
        kind, sep, rest = resource.partition("/")
        return rest if sep and rest else resource
    return uid


def _owner_words(p: Any) -> str | None:
    name = principal_name(p)
    if not name:
        return None
    word = _TYPE_WORDS.get(str(p.get("type"))) if isinstance(p, Mapping) else None
    return f"{word} {name}" if word else name


def credential_words(kind: Any) -> str:
    """A credential kind in words: ``azure_sp_password`` -> ``client secret`` (from
    :data:`CREDENTIAL_PHRASES`, without "New"), unknown kinds with ``_`` as spaces."""
    phrase = CREDENTIAL_PHRASES.get(str(kind))
    if phrase and phrase[0].startswith("New "):
        return phrase[0][4:]
    return str(kind or "credential").replace("_", " ")


def what_happened(detection: Mapping[str, Any]) -> str:
    """What happened, in words, from the detection's credential kind and owner (plain text, not
    escaped): ``New client secret on payments-api``, ``New access key for IAM user alice``,
    ``New service-account key on sa@proj.iam.gserviceaccount.com``. The owner is the credential's,
    else the target, else the account; without a credential, the event or finding type."""
    det = detection if isinstance(detection, Mapping) else {}
    cred = det.get("credential") if isinstance(det.get("credential"), Mapping) else None
    if not cred:
        return str(det.get("event_name") or det.get("finding_type") or _get(det, "rule", "name") or "Detection")
    kind = str(cred.get("kind") or "")
    phrase, joiner = CREDENTIAL_PHRASES.get(kind, (f"New {kind.replace('_', ' ') or 'credential'}", "on"))
    whom = _owner_words(cred.get("owner")) or _owner_words(det.get("target"))
    if not whom and det.get("account_uid"):
        whom = f"account {det['account_uid']}"
    if not whom:
        return phrase
    return f"{phrase} {joiner} {whom}" if joiner else f"{phrase} {whom}"


def _detection_headline(detection: Mapping[str, Any]) -> str:
    """``<event> by <actor name>`` (plain text, not escaped)."""
    what = (
        detection.get("event_name") or detection.get("finding_type") or _get(detection, "rule", "name") or "?"
    )
    who = principal_name(_get(detection, "actor", "user")) or "unknown actor"
    return f"{what} by {who}"


def fallback_text(playbook: str, detection: Mapping[str, Any], state: str = "approval needed",
                  case_id: str | None = None) -> str:
    """The plain ``text`` sent with the blocks (notifications, screen readers), naming what
    happened, the actor, the target and the credential, mrkdwn-escaped (Slack formats this text
    too): ``Cordon: approval needed: New client secret on payments-api, by mallory@contoso.example
    (target payments-api; credential client secret e4a7...; playbook ...; case ...)``. Parts the
    detection lacks are left out."""
    det = detection if isinstance(detection, Mapping) else {}
    cred = det.get("credential") if isinstance(det.get("credential"), Mapping) else None
    actor = principal_name(_get(det, "actor", "user"))
    target = principal_name(det.get("target"))
    parts = []
    if target:
        parts.append(f"target {target}")
    if cred:
        cname = (cred.get("attributes") or {}).get("keyDisplayName") if isinstance(cred.get("attributes"),
                                                                                  Mapping) else None
        ident = " ".join(str(x) for x in (cname, cred.get("uid")) if x)
        parts.append(f"credential {credential_words(cred.get('kind'))}" + (f" {ident}" if ident else ""))
    parts.append(f"playbook {playbook}")
    if case_id:
        parts.append(f"case {case_id}")
    text = f"Cordon: {state}: {what_happened(det)}" + (f", by {actor}" if actor else "") + f" ({'; '.join(parts)})"
    return _clip(_esc(text), MAX_FALLBACK_TEXT, "…")


# -- the approval message ---------------------------------------------------------------------
_DOCUMENTATION_NETS = tuple(ipaddress.ip_network(n) for n in
                            ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def place_of(actor: Mapping[str, Any]) -> str | None:
    """Where the actor's source IP is, for a human: the record's own location (``src_location``:
    city, region, country, ISP), else what the address itself says (documentation range, private,
    loopback, public with no location in the record, or not an IP at all, as CloudTrail's
    ``sourceIPAddress`` is for a call an AWS service made). ``None`` without a source IP."""
    loc = actor.get("src_location") if isinstance(actor.get("src_location"), Mapping) else {}
    parts = [str(loc[k]) for k in ("city", "region") if loc.get(k)]
    if loc.get("country"):
        parts.append(f"{loc['desc']} ({loc['country']})" if loc.get("desc") else str(loc["country"]))
    if parts or loc.get("isp"):
        return ", ".join(parts) + (f" · {loc['isp']}" if loc.get("isp") else "")
    ip = actor.get("src_ip")
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(str(ip))
    except ValueError:
        return "not an IP address (an AWS service or internal caller)"
    if any(addr in net for net in _DOCUMENTATION_NETS):
        return "documentation range (RFC 5737 / 3849): a sample or test record"
    if addr.is_loopback:
        return "loopback"
    if addr.is_private or addr.is_link_local:
        return "private network (inside a VPC or on-premises)"
    if addr.is_global:
        return "public internet; the record gives no location"
    return "reserved range"


def _source_ip(actor: Mapping[str, Any]) -> str | None:
    if not actor.get("src_ip"):
        return None
    place = place_of(actor)
    return _code(actor["src_ip"]) + (f" ({_esc(place)})" if place else "")


def run_links(case_id: str, run_id: str | None) -> list[str]:
    """mrkdwn links an approver follows to check what they approve: the case's ledger timeline on
    Cordon's audit pages (``CORDON_PUBLIC_URL``, e.g. ``https://cordon.example.com``) and the flow
    run in Prefect's UI (``PREFECT_UI_URL``, e.g. ``https://prefect.example.com``). Empty when
    neither is configured (the case ID and plan hash are shown anyway)."""
    links = []
    public = (os.environ.get("CORDON_PUBLIC_URL") or "").rstrip("/")
    if public:
        links.append(f"<{public}/audit/cases/{urllib.parse.quote(case_id, safe='')}|ledger timeline>")
    ui = (os.environ.get("PREFECT_UI_URL") or "").rstrip("/")
    if ui and run_id:
        links.append(f"<{ui}/runs/flow-run/{urllib.parse.quote(run_id, safe='')}|Prefect run>")
    return links


def approval_blocks(
    case_id: str,
    playbook: str,
    detection: Mapping[str, Any],
    enrichment: Mapping[str, Any],
    plan: Sequence[Mapping[str, Any]],
    plan_hash: str,
    run_id: str,
    expires_at: str | None,
    *,
    asked_at: str | None = None,
    quorum: int = 1,
    approvals: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The approval message's blocks.

    The waiting state goes in the context line: ``asked_at`` (ISO 8601), the ``approvals`` given
    so far (Slack user IDs) out of ``quorum``, and ``notes`` (mrkdwn, e.g. "escalated to
    <!subteam^S1>"); the approval policy's sweeper and decider rebuild the message with these as
    the state changes.

    ``detection`` is :meth:`cordon.detections.model.Detection.summary`; ``enrichment`` maps an
    enrichment action name to its facts (may be empty); ``plan`` is a list of
    ``{"action", "target", "calls": [ApiCall.describe(), ...]}``; ``expires_at`` ISO 8601 or
    ``None``.

    Returns at most 50 blocks: a header; what happened (event or finding type, ATT&CK technique
    links, severity, rule, account / region, time); who acted (actor, access path, source IP, user
    agent, MFA, signing key); the target principal and the exact credential; key enrichment
    facts; the exact plan, one section per action listing every call in a code block; a context
    line (plan hash, expiry); and an ``actions`` block (``block_id`` ``cordon_decision``) with
    *Approve* (``action_id`` ``cordon_approve``, style ``primary``, with a confirm dialog) and
    *Deny* (``cordon_deny``, style ``danger``), each ``value`` the compact JSON
    ``{"case_id", "decision", "plan_hash", "run_id"}``. Texts over Slack's limits are truncated
    with a note; the plan gets at most 4 sections (12,000 characters): a bigger plan is packed
    several steps to a section with fewer calls shown per step (the rest counted), and past that
    later steps are listed by name and counted, with a pointer to the ledger. Raises
    ``ValueError`` if a button value would exceed 2000 characters (IDs that long are a bug).
    """
    det = detection if isinstance(detection, Mapping) else {}
    severity = str(det.get("severity") or "unknown")
    sev_icon = {
        "critical": ":red_circle:",
        "high": ":large_orange_circle:",
        "medium": ":large_yellow_circle:",
    }.get(severity, ":white_circle:")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(what_happened(det), MAX_HEADER_TEXT)},
        _section(
            f"{sev_icon} *{_esc(severity.upper())}* · approval needed · {_esc(_detection_headline(det))}\n"
            f"Case {_code(case_id)} · playbook {_code(playbook)} · run {_code(run_id)}"
        ),
    ]
    rule = det.get("rule") if isinstance(det.get("rule"), Mapping) else {}
    rule_text = None
    if rule:
        rule_text = _esc(rule.get("name") or rule.get("uid") or "?")
        rule_uid = _code(rule["uid"]) if rule.get("uid") and rule.get("name") else ""
        if rule.get("type"):
            rule_text += f" ({_esc(rule['type'])}{': ' + rule_uid if rule_uid else ''})"
    what = _fields_section(
        "*What happened*",
        [
            (
                "Event" if det.get("event_name") else "Finding",
                _code(det.get("event_name") or det.get("finding_type") or "?")
                + (f" ({_esc(det['source'])})" if det.get("source") else ""),
            ),
            ("ATT&CK", _technique_links(det.get("technique_ids"))),
            ("Severity", _esc(severity)),
            ("Rule", rule_text),
            (
                "Account / region",
                " / ".join(_esc(x) for x in (None if det.get("provider") == "azure" else det.get("account_uid"),
                                             det.get("region")) if x) or None,
            ),
            ("Time", _slack_date(det.get("time"))),
        ],
    )
    actor = det.get("actor") if isinstance(det.get("actor"), Mapping) else {}
    who = _fields_section(
        "*Who acted*",
        [
            ("Actor", _principal(actor.get("user"))),
            ("Access path", _esc(actor.get("access_path")) if actor.get("access_path") else None),
            ("Source IP", _source_ip(actor)),
            ("MFA", _mfa(actor.get("mfa"))),
            (
                "User agent",
                _code(_clip(str(actor["user_agent"]), 300, "…")) if actor.get("user_agent") else None,
            ),
            ("Signing key", _code(actor["session_uid"]) if actor.get("session_uid") else None),
            ("Session issuer", _code(actor["session_issuer"]) if actor.get("session_issuer") else None),
            ("Invoked by", _esc(actor["invoked_by"]) if actor.get("invoked_by") else None),
        ],
    )
    cred = det.get("credential") if isinstance(det.get("credential"), Mapping) else None
    cred_pairs: list[tuple[str, Any]] = [("Target principal", _principal(det.get("target")))]
    if cred:
        attrs = cred.get("attributes") if isinstance(cred.get("attributes"), Mapping) else {}
        shown = attrs.get("keyDisplayName") or cred.get("uid")
        cred_pairs += [
            ("Credential", f"{_esc(credential_words(cred.get('kind')))} "
                           f"{_code(shown) if shown else '_(no id)_'}"),
            ("Credential owner", _principal(cred.get("owner"))
             if principal_name(cred.get("owner")) != principal_name(det.get("target")) else None),
        ]
        facts = [(k, v) for k, v in attrs.items() if v not in (None, "", [], {}) and k != "keyDisplayName"]
        if facts:
            cred_pairs.append(("Credential facts", _esc(", ".join(f"{k}={v}" for k, v in facts[:8]))))
    else:
        cred_pairs.append(("Credential", "_not named by the detection_"))
    target = _fields_section("*Target*", cred_pairs)
    for block in (what, who, target):
        if block is not None:
            blocks.append(block)
    ids = _id_line(det)
    if ids:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(ids, MAX_SECTION_TEXT)}]})
    if det.get("suppressed"):
        blocks.append(_section(f":no_entry: *Suppressed:* {_esc(det['suppressed'])}"))
    facts = _enrichment_lines(enrichment, cred.get("uid") if cred else None)
    if facts:
        blocks.append(_section("*Enrichment*\n" + "\n".join(facts)))
    blocks.append({"type": "divider"})

    steps = list(plan or [])
    n_calls = sum(len(s.get("calls") or []) for s in steps)
    blocks.append(
        _section(
            f"*Plan*: {len(steps)} action(s), {n_calls} API call(s). "
            "Approving runs exactly these calls; if the plan changes before it runs, "
            "the approval is refused."
        )
    )
    tail_blocks = 2  # context + actions
    room = min(MAX_PLAN_SECTIONS, MAX_BLOCKS - len(blocks) - tail_blocks)
    for text in _plan_sections(steps, room, case_id):
        blocks.append(_section(text))
    if not steps:
        blocks.append(_section("_The plan is empty: nothing would be changed._"))

    context = [f"Plan hash {_code(plan_hash)}"]
    if expires_at:
        context.append(f"expires {_slack_date(expires_at)}")
    context.append(f"case {_code(case_id)}")
    context += run_links(case_id, run_id)
    waiting = [f":hourglass_flowing_sand: *Approvals {len(approvals)} of {quorum}*"
               + (f" ({', '.join(_who(u) for u in approvals)})" if approvals else "")]
    if asked_at:
        waiting.append(f"asked {_slack_date(asked_at)}")
    if expires_at:
        waiting.append(f"expires {_slack_date(expires_at)}")
    waiting += [str(n) for n in notes]
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _clip(" · ".join(context), MAX_SECTION_TEXT)},
                         {"type": "mrkdwn", "text": _clip(" · ".join(waiting), MAX_SECTION_TEXT)}],
        }
    )

    target_name = (
        principal_name(det.get("target")) or principal_name((cred or {}).get("owner")) or (cred or {}).get("uid")
        or "the target"
    )
    confirm_text = _clip(
        f"Cordon will make {n_calls} API call(s) against {target_name} (plan {plan_hash[:12]}). Continue?",
        MAX_CONFIRM_TEXT,
        "…",
    )
    blocks.append(
        {
            "type": "actions",
            "block_id": ACTIONS_BLOCK_ID,
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION_ID,
                    "style": "primary",
                    "text": _plain("Approve", 75),
                    "value": _button_value(run_id, case_id, plan_hash, "approve"),
                    "confirm": {
                        "title": _plain("Approve containment?", 100),
                        "text": {"type": "plain_text", "text": confirm_text},
                        "confirm": _plain("Approve", 30),
                        "deny": _plain("Cancel", 30),
                    },
                },
                {
                    "type": "button",
                    "action_id": DENY_ACTION_ID,
                    "style": "danger",
                    "text": _plain("Deny", 75),
                    "value": _button_value(run_id, case_id, plan_hash, "deny"),
                },
            ],
        }
    )
    if len(blocks) > MAX_BLOCKS:  # pragma: no cover - the budget above keeps this from happening
        raise AssertionError(f"{len(blocks)} blocks")
    return blocks


_STATE_TITLES = {
    "approved": (":white_check_mark:", "Approved"),
    "denied": (":no_entry_sign:", "Denied"),
    "expired": (":hourglass:", "Approval expired"),
    "containing": (":gear:", "Containing"),
    "contained": (":lock:", "Contained"),
    "verified": (":lock:", "Contained and verified"),
    "failed": (":x:", "Containment failed"),
    "rolled_back": (":leftwards_arrow_with_hook:", "Rolled back"),
    "refused": (":no_entry:", "Refused by the guard"),
    "not_verified": (":warning:", "Contained, but verification failed"),
    "no_containment": (":information_source:", "Nothing to contain"),
}
_ACTION_ICONS = {
    "contained": ":white_check_mark:",
    "already_contained": ":white_check_mark:",
    "planned": ":hourglass_flowing_sand:",
    "pending": ":hourglass_flowing_sand:",
    "running": ":gear:",
    "failed": ":x:",
    "refused": ":no_entry:",
    "rolled_back": ":leftwards_arrow_with_hook:",
    "verified": ":lock:",
    "ok": ":white_check_mark:",
}


def _who(user: str | None) -> str:
    if not user:
        return "someone"
    user = user.removeprefix("slack:")
    if user[:1] in ("U", "W") and user.isalnum() and user.upper() == user:
        return f"<@{user}>"
    return _esc(user)


def status_blocks(
    case_id: str | Mapping[str, Any],
    playbook: str | None = None,
    detection: Mapping[str, Any] | None = None,
    plan_hash: str | None = None,
    run_id: str | None = None,
    *,
    state: str | None = None,
    decided_by: str | Sequence[str] | None = None,
    decided_at: str | None = None,
    actions: Sequence[Mapping[str, Any]] | None = None,
    note: str | None = None,
    quorum: int | None = None,
    rollback: bool = False,
) -> list[dict[str, Any]]:
    """Blocks that replace the approval message as the run goes (no buttons, except with
    ``rollback=True`` a *Roll back* button, ``action_id`` ``cordon_rollback``, whose value is the
    JSON ``{"case_id", "decision": "rollback", "plan_hash", "run_id"}``; ``decided_by`` may be a
    list of approvers, shown with the count out of ``quorum``).

    ``state`` is one of ``approved``, ``denied``, ``expired``, ``containing``, ``contained``,
    ``verified``, ``failed``, ``rolled_back``, ``refused`` (others are shown as given);
    ``decided_by`` a Slack user ID (rendered as a mention) or a name; ``decided_at`` ISO 8601;
    ``actions`` a list of ``{"action" or "name", "target", "status", "error"?}`` (an
    :class:`~cordon.action.ActionResult` dumped fits); ``note`` free text (e.g. the verification
    outcome). Returns at most 50 blocks.

    Called with one argument, a case summary (a mapping), it is :func:`summary_blocks`.
    """
    if isinstance(case_id, Mapping):
        return summary_blocks(case_id)
    if playbook is None or state is None:
        raise TypeError("status_blocks needs case_id, playbook, ..., state= (or a single case summary)")
    plan_hash = plan_hash or "-"
    run_id = run_id or "-"
    icon, title = _STATE_TITLES.get(state, (":information_source:", state.replace("_", " ").capitalize()))
    det = detection if isinstance(detection, Mapping) else {}
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f"{title}: {what_happened(det)}", MAX_HEADER_TEXT)},
        _section(
            f"{icon} *{_esc(title)}* · {_esc(_detection_headline(det))}\n"
            f"Case {_code(case_id)} · playbook {_code(playbook)} · run {_code(run_id)}"
        ),
    ]
    if decided_by or decided_at:
        verb = {"denied": "Denied", "expired": "Expired"}.get(state, "Approved")
        if isinstance(decided_by, str) or not decided_by:
            text = f"{verb} by {_who(decided_by)}" if decided_by else verb  # type: ignore[arg-type]
        else:
            text = f"{verb} by {', '.join(_who(u) for u in decided_by)}"
            if quorum:
                text += f" ({len(decided_by)} of {quorum})"
        if decided_at:
            text += f" at {_slack_date(decided_at)}"
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text, MAX_SECTION_TEXT)}]}
        )
    lines = []
    for step in list(actions or [])[:40]:
        status = str(step.get("status") or "pending")
        icon = _ACTION_ICONS.get(status, ":grey_question:")
        line = (
            f"{icon} {_code(step.get('action') or step.get('name') or '?')}"
            + (f" on {_code(step['target'])}" if step.get("target") else "")
            + f": *{_esc(status)}*"
        )
        if step.get("error"):
            line += f"\n      {_esc(_clip(str(step['error']), 300, '…'))}"
        lines.append(line)
    if actions is not None and len(actions) > 40:
        lines.append(f"… and {len(actions) - 40} more action(s)")
    if lines:
        blocks.append(_section("*Actions*\n" + "\n".join(lines)))
    if note:
        blocks.append(_section(_esc(note)))
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"Plan hash {_code(plan_hash)} · case {_code(case_id)}"}],
        }
    )
    if rollback:
        blocks.append({"type": "actions", "block_id": ROLLBACK_BLOCK_ID, "elements": [{
            "type": "button", "action_id": ROLLBACK_ACTION_ID, "text": _plain("Roll back", 75),
            "value": _button_value(run_id, case_id, plan_hash, "rollback"),
            "confirm": {"title": _plain("Roll back containment?", 100),
                        "text": {"type": "plain_text", "text": _clip(
                            f"Cordon will undo the containment of case {case_id} where the cloud allows it. "
                            "Rollback needs the same approvals as containment.", MAX_CONFIRM_TEXT, "…")},
                        "confirm": _plain("Roll back", 30), "deny": _plain("Cancel", 30)}}]})
    return blocks


def summary_blocks(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`status_blocks` for the case summary the ``respond`` flow builds.

    Reads ``case_id``, ``playbook``, ``flow_run_id``, ``detection`` (``Detection.summary()``),
    ``plan.hash``, ``status`` (``contained``, ``not_verified``, ``failed``, ``denied``,
    ``expired``, ``refused``, ``no_containment``...), ``approval`` (``decision``, ``approver``:
    ``slack:<user id>`` is rendered as a mention, ``decided_at``), ``actions`` (``name``,
    ``target``, ``status``, ``error``), ``verified`` and ``verification`` (a list with ``held``);
    ``approval.approvers`` (a list) and ``approval.quorum`` show every approver with the count;
    ``rollback: true`` adds the *Roll back* button; ``error`` (a failed run) and a Deny's
    ``approval.reason`` are shown as a note;
    any of them may be missing.
    """
    status = str(summary.get("status") or "containing")
    verified = summary.get("verified")
    state = "verified" if status == "contained" and verified is True else status
    approval = summary.get("approval") if isinstance(summary.get("approval"), Mapping) else {}
    checks = summary.get("verification") if isinstance(summary.get("verification"), list) else []
    note = None
    if checks:
        held = sum(1 for c in checks if isinstance(c, Mapping) and c.get("held"))
        note = f"Verification: {held} of {len(checks)} step(s) hold when read back from the cloud."
    guard = summary.get("guard")
    if status == "refused" and isinstance(guard, Mapping) and guard.get("reason"):
        note = f"Guard: {guard['reason']}"
    if status == "denied" and approval.get("reason"):
        note = f"Reason: {approval['reason']}" + (f"\n{note}" if note else "")
    if summary.get("error"):
        note = f"Error: {summary['error']}" + (f"\n{note}" if note else "")
    if summary.get("rollback_note"):
        note = str(summary["rollback_note"]) + (f"\n{note}" if note else "")
    plan = summary.get("plan") if isinstance(summary.get("plan"), Mapping) else {}
    approvers = approval.get("approvers")
    decided_by = approvers if isinstance(approvers, list) and len(approvers) > 1 else approval.get("approver")
    return status_blocks(
        str(summary.get("case_id") or "-"), str(summary.get("playbook") or "-"),
        summary.get("detection") if isinstance(summary.get("detection"), Mapping) else {},
        str(plan.get("hash") or "-"), str(summary.get("flow_run_id") or "-"), state=state,
        decided_by=decided_by, decided_at=approval.get("decided_at"),
        actions=summary.get("actions") if isinstance(summary.get("actions"), list) else None, note=note,
        quorum=approval.get("quorum"), rollback=bool(summary.get("rollback")))


# -- Web API ----------------------------------------------------------------------------------
def ensure_retry_handlers(client: WebClient) -> WebClient:
    """Add ``slack_sdk``'s ``RateLimitErrorRetryHandler`` (429, sleeps ``Retry-After``; up to 3
    retries) and ``ServerErrorRetryHandler`` (500 / 503; up to 2 retries with backoff) to
    ``client.retry_handlers`` unless one of that class is already there. Returns ``client``."""
    for handler in (
        RateLimitErrorRetryHandler(max_retry_count=3),
        ServerErrorRetryHandler(max_retry_count=2),
    ):
        if not any(isinstance(h, type(handler)) for h in client.retry_handlers):
            client.retry_handlers.append(handler)
    return client


def make_client(token: str, *, base_url: str | None = None, timeout: int = 30) -> WebClient:
    """A ``WebClient`` for ``token`` with the retry handlers of :func:`ensure_retry_handlers`;
    ``base_url`` points it elsewhere (the sandbox's :class:`~cordon.sandbox.slack_standin.SlackStandIn`)."""
    kwargs: dict[str, Any] = {"token": token, "timeout": timeout}
    if base_url:
        kwargs["base_url"] = base_url
    return ensure_retry_handlers(WebClient(**kwargs))


def web_client(settings: Mapping[str, Any] | None = None) -> WebClient:
    """A ``WebClient`` (with the retry handlers) from the ``slack`` settings the flow passes.

    ``settings``: ``{"token"?, "base_url"?}``; the token defaults to the ``CORDON_SLACK_BOT_TOKEN``
    environment variable and ``base_url`` to ``CORDON_SLACK_API_URL`` (a stand-in), else Slack.
    Raises ``RuntimeError`` when no token is available.
    """
    settings = settings or {}
    token = settings.get("token") or os.environ.get("CORDON_SLACK_BOT_TOKEN")
    if not token:
        raise RuntimeError("no Slack bot token: set CORDON_SLACK_BOT_TOKEN")
    return make_client(token, base_url=settings.get("base_url") or os.environ.get("CORDON_SLACK_API_URL") or None)


def post_approval(
    client: WebClient, channel: str, blocks: list[dict[str, Any]], text: str
) -> tuple[str, str]:
    """Post the approval message (``chat.postMessage``, https://api.slack.com/methods/chat.postMessage)
    to ``channel`` (ID or name); returns ``(channel_id, ts)``, which locate it for updates.

    Retries on 429 / 5xx come from the handlers ensured on ``client``. Raises
    ``slack_sdk.errors.SlackApiError`` when Slack answers ``ok: false`` (``invalid_auth``,
    ``channel_not_found``, ``invalid_blocks``, or ``ratelimited`` once retries are spent)."""
    ensure_retry_handlers(client)
    resp = client.chat_postMessage(
        channel=channel, blocks=blocks, text=text, unfurl_links=False, unfurl_media=False
    )
    return str(resp["channel"]), str(resp["ts"])


def update_message(
    client: WebClient, channel: str, ts: str, blocks: list[dict[str, Any]], text: str
) -> dict[str, Any]:
    """Replace the message at ``(channel, ts)`` (``chat.update``,
    https://api.slack.com/methods/chat.update); returns Slack's answer as a dict
    (``ok, channel, ts, text, message``). Raises ``slack_sdk.errors.SlackApiError`` as
    :func:`post_approval`."""
    ensure_retry_handlers(client)
    resp = client.chat_update(channel=channel, ts=ts, blocks=blocks, text=text)
    return dict(resp.data) if isinstance(resp.data, dict) else {"ok": True}


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
    channel = container.get("channel_id") or _get(payload, "channel", "id")
    if not isinstance(channel, str) or not channel:
        raise InteractionError("container.channel_id", "missing (and no channel.id)")
    message_ts = container.get("message_ts") or _get(payload, "message", "ts")
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


# -- the Deny reason dialog -------------------------------------------------------------------
def deny_view(ix: Interaction) -> dict[str, Any]:
    """The modal a *Deny* click opens (``views.open`` with the click's ``trigger_id``,
    https://api.slack.com/methods/views.open): one required multi-line input ``reason`` (block
    ``reason``, action ``value``, at most 2000 characters), ``callback_id`` ``cordon_deny_reason``,
    and in ``private_metadata`` the click's run, case, plan hash, message and ``response_url`` (so
    the submission settles exactly what was clicked, and the clicker can be told if someone else
    decided first). Its ``view_submission`` is read by :func:`parse_deny_submission`."""
    meta = json.dumps({"run_id": ix.run_id, "case_id": ix.case_id, "plan_hash": ix.plan_hash,
                       "channel": ix.channel, "message_ts": ix.message_ts, "response_url": ix.response_url},
                      separators=(",", ":"), sort_keys=True)
    if len(meta) > 3000:  # Slack's private_metadata limit; IDs this long are a bug
        raise ValueError(f"private_metadata is {len(meta)} characters; Slack allows 3000")
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK_ID,
        "title": _plain("Deny containment", 24),
        "submit": _plain("Deny", 24),
        "close": _plain("Cancel", 24),
        "private_metadata": meta,
        "blocks": [
            _section(f"Deny the containment plan of case {_code(ix.case_id)}? Nothing will be changed. "
                     "Your reason is recorded in the ledger with your decision."),
            {"type": "input", "block_id": REASON_BLOCK_ID, "label": _plain("Reason", 2000),
             "element": {"type": "plain_text_input", "action_id": REASON_ACTION_ID, "multiline": True,
                         "min_length": 1, "max_length": MAX_REASON,
                         "placeholder": _plain("e.g. the key was created by the release pipeline", 150)}},
        ],
    }


def parse_deny_submission(form_body: bytes) -> Interaction | None:
    """The Deny in a ``view_submission`` of :func:`deny_view`
    (https://api.slack.com/reference/interaction-payloads/views#view_submission), as an
    :class:`Interaction` with ``decision`` ``deny`` and ``reason`` the text typed (stripped; may be
    empty: the caller answers with a field error), the submitter as the user, the run, case, plan
    and message from the view's ``private_metadata``, and the submission's ``trigger_id``. ``None``
    for any other payload. Raises :class:`InteractionError` naming the field for a malformed one.
    Call it only on a body whose signature was verified."""
    try:
        raw = parse_qs(form_body.decode("utf-8"), keep_blank_values=True).get("payload")
        payload = json.loads(raw[0]) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # parse_interaction reports it
    if not isinstance(payload, dict) or payload.get("type") != "view_submission":
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
    state = _get(view, "state", "values", REASON_BLOCK_ID, REASON_ACTION_ID)
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
