"""Block Kit for Slack approval: the approval message, its status updates and the Deny reason dialog.

The approval message (:func:`approval_blocks`) shows the detection, who acted, the target, the
exact credential, key enrichment facts (rendered by :mod:`cordon.slack.render`) and the exact plan
(every API call), with *Approve* / *Deny* buttons whose ``value`` carries the run ID, case ID and
the plan's hash; :func:`fallback_text` is the plain text sent with it. As the run goes on the
message is replaced (:func:`status_blocks`, :func:`summary_blocks`); the buttons disappear once a
decision is taken, and a finished case may offer *Roll back*. A *Deny* click opens
:func:`deny_view`. Posting and updating is :mod:`cordon.slack.client`; reading the click back
(:data:`APPROVE_ACTION_ID` and the other IDs defined here) is :mod:`cordon.slack.verify`.

Sources: Block Kit https://api.slack.com/reference/block-kit/blocks (limits: 50 blocks per
message, section ``text`` 3000 characters, section ``fields`` 10 x 2000, header 150, button text
75, button ``value`` 2000, confirm dialog text 300); mrkdwn escaping
https://api.slack.com/reference/surfaces/formatting#escaping; modals
https://api.slack.com/reference/surfaces/views.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from cordon.slack.mrkdwn import clip, code, dig, escape, slack_date
from cordon.slack.render import credential_phrases, enrichment_lines

if TYPE_CHECKING:
    from cordon.slack.verify import Interaction

#: The buttons' action IDs and their blocks' IDs (read back by :func:`cordon.slack.verify.parse_interaction`).
APPROVE_ACTION_ID = "cordon_approve"
DENY_ACTION_ID = "cordon_deny"
ROLLBACK_ACTION_ID = "cordon_rollback"
ACTIONS_BLOCK_ID = "cordon_decision"
ROLLBACK_BLOCK_ID = "cordon_rollback"
#: The *Mark done* button of a case awaiting a person's manual step (:mod:`cordon.manual_steps`).
MANUAL_DONE_ACTION_ID = "cordon_manual_done"
MANUAL_DONE_BLOCK_ID = "cordon_manual_done"
#: The Deny reason dialog (:func:`deny_view`): its ``callback_id`` and the reason input's block.
DENY_CALLBACK_ID = "cordon_deny_reason"
REASON_BLOCK_ID = "reason"
REASON_ACTION_ID = "value"
MAX_REASON = 2000

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

Decision = Literal["approve", "deny", "rollback", "manual_done"]


# -- Block Kit helpers ------------------------------------------------------------------------
def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit, "…"), "emoji": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION_TEXT)}}


def _fields(pairs: Sequence[tuple[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label, value in pairs:
        if value is None or value == "" or value == []:
            continue
        out.append({"type": "mrkdwn", "text": clip(f"*{escape(label)}*\n{value}", MAX_FIELD_TEXT)})
    return out[:MAX_FIELDS]


def _fields_section(title: str, pairs: Sequence[tuple[str, Any]]) -> dict[str, Any] | None:
    fields = _fields(pairs)
    if not fields:
        return None
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": clip(title, MAX_SECTION_TEXT)},
        "fields": fields,
    }


def _technique_links(ids: Any) -> str | None:
    if not isinstance(ids, list) or not ids:
        return None
    links = []
    for tid in ids:
        t = str(tid)
        if t.startswith("T") and t[1:].replace(".", "").isdigit():
            links.append(f"<https://attack.mitre.org/techniques/{t.replace('.', '/')}/|{t}>")
        else:
            links.append(escape(t))
    return ", ".join(links)


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
    return code(name) + (f" ({escape(p['type'])})" if p.get("type") else "")


def _id_line(det: Mapping[str, Any]) -> str | None:
    """The IDs behind the names (GUIDs, ARNs, key IDs), for the small context line under them:
    each uid not already shown as the name, once."""
    pairs: list[tuple[str, Any]] = []
    actor = dig(det, "actor", "user")
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
    if _account_label(det) and det.get("account_uid"):
        pairs.append((_account_label(det), det["account_uid"]))
    seen: set[str] = set()
    out = []
    for label, value in pairs:
        if str(value) in seen:
            continue
        seen.add(str(value))
        out.append(f"{escape(label)} {code(value)}")
    return ("IDs: " + " · ".join(out)) if out else None


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
    head = clip(f"*{index}. {escape(action)}*" + (f" on {code(target)}" if target else ""), 400, "…")
    limits = _does_not(action)
    if limits:
        head += "\n" + clip(f"_Does not {escape(limits)}_", 600, "…_")
    if not calls:
        return head + "\n_no API call: already contained_"
    room = budget - len(head) - 50  # code fences and the "more calls" line
    body_lines: list[str] = []
    used = 0
    for n, call in enumerate(calls):
        line = escape(call).replace("`", "\u02cb")
        if used + len(line) + 1 > room:
            if not body_lines:  # the first call is always shown, whole unless over 3000 characters
                body_lines.append(clip(line, MAX_SECTION_TEXT - len(head) - 50, "…"))
                n += 1
            if n < len(calls):
                body_lines.append(f"… {len(calls) - n} more call(s) not shown")
            break
        body_lines.append(line)
        used += len(line) + 1
    return head + "\n```" + "\n".join(body_lines) + "```"


def _does_not(action: str) -> str:
    """The registered action's :attr:`cordon.action.Action.does_not` (``""`` for an unknown name)."""
    from cordon.action import all_actions

    cls = all_actions().get(action)
    return getattr(cls, "does_not", "") if cls else ""


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
    footer = f"The full plan is recorded in the ledger for case {code(case_id)}."
    lines = [f"*Steps {keep + 1}-{len(steps)}, by name only (too many for Slack):*"]
    used = len(lines[0]) + len(footer) + 60
    for i, s in enumerate(steps[keep:], keep + 1):
        calls = s.get("calls") or []
        line = (f"{i}. {escape(s.get('action') or s.get('name') or '?')} on "
                f"{code(clip(str(s.get('target') or '?'), 120, '…'))}: {len(calls)} call(s)")
        if used + len(line) + 1 > MAX_SECTION_TEXT:
            lines.append(f"… and {len(steps) - i + 1} more step(s)")
            break
        lines.append(line)
        used += len(line) + 1
    lines.append(footer)
    return head + ["\n".join(lines)]


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
    :func:`~cordon.slack.render.credential_phrases`, without "New"), unknown kinds with ``_`` as spaces."""
    phrase = credential_phrases().get(str(kind))
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
        return str(det.get("event_name") or det.get("finding_type") or dig(det, "rule", "name") or "Detection")
    kind = str(cred.get("kind") or "")
    phrase, joiner = credential_phrases().get(kind, (f"New {kind.replace('_', ' ') or 'credential'}", "on"))
    whom = _owner_words(cred.get("owner")) or _owner_words(det.get("target"))
    if not whom and det.get("account_uid"):
        whom = f"account {det['account_uid']}"
    if not whom:
        return phrase
    return f"{phrase} {joiner} {whom}" if joiner else f"{phrase} {whom}"


def _detection_headline(detection: Mapping[str, Any]) -> str:
    """``<event> by <actor name>`` (plain text, not escaped)."""
    what = (
        detection.get("event_name") or detection.get("finding_type") or dig(detection, "rule", "name") or "?"
    )
    who = principal_name(dig(detection, "actor", "user")) or "unknown actor"
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
    actor = principal_name(dig(det, "actor", "user"))
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
    return clip(escape(text), MAX_FALLBACK_TEXT, "…")


# -- the approval message ---------------------------------------------------------------------
_DOCUMENTATION_NETS = tuple(ipaddress.ip_network(n) for n in
                            ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def _account_label(det: Mapping[str, Any]) -> str | None:
    """The label under which the detection's provider shows ``account_uid`` among the identifiers
    (``tenant`` for Entra ID), or ``None`` when it is an account shown beside the region
    (:attr:`cordon.providers.Provider.account_label`)."""
    from cordon.providers import get_provider

    try:
        return get_provider(str(det.get("provider"))).account_label
    except ValueError:
        return None


def place_of(actor: Mapping[str, Any]) -> str | None:
    """Where the actor's source IP is, for a human: the record's own location (``src_location``:
    city, region, country, ISP), else what the address itself says (documentation range, private,
    loopback, public with no location in the record, or not an IP at all, as the source of a call
    a cloud service made on a principal's behalf often is). ``None`` without a source IP."""
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
        return "not an IP address (a cloud service or internal caller)"
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
    return code(actor["src_ip"]) + (f" ({escape(place)})" if place else "")


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
    incident: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The approval message's blocks.

    ``incident`` (:attr:`cordon.respond.Plan.incident`: ``{incident_id, actor_key, cases: [{case_id,
    event_name, credential: {kind, uid, owner}, target, steps, refused?}]}``) makes it the request
    of one actor's incident: a section under the header lists every case, and the one decision
    answers them all (:func:`incident_section`).

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
            f"{sev_icon} *{escape(severity.upper())}* · approval needed · {escape(_detection_headline(det))}\n"
            f"Case {code(case_id)} · playbook {code(playbook)} · run {code(run_id)}"
        ),
    ]
    if incident and incident.get("cases"):
        blocks.append(_section(incident_section(incident)))
    rule = det.get("rule") if isinstance(det.get("rule"), Mapping) else {}
    rule_text = None
    if rule:
        rule_text = escape(rule.get("name") or rule.get("uid") or "?")
        rule_uid = code(rule["uid"]) if rule.get("uid") and rule.get("name") else ""
        if rule.get("type"):
            rule_text += f" ({escape(rule['type'])}{': ' + rule_uid if rule_uid else ''})"
    what = _fields_section(
        "*What happened*",
        [
            (
                "Event" if det.get("event_name") else "Finding",
                code(det.get("event_name") or det.get("finding_type") or "?")
                + (f" ({escape(det['source'])})" if det.get("source") else ""),
            ),
            ("ATT&CK", _technique_links(det.get("technique_ids"))),
            ("Severity", escape(severity)),
            ("Rule", rule_text),
            (
                "Account / region",
                " / ".join(escape(x) for x in (None if _account_label(det) else det.get("account_uid"),
                                             det.get("region")) if x) or None,
            ),
            ("Time", slack_date(det.get("time"))),
        ],
    )
    actor = det.get("actor") if isinstance(det.get("actor"), Mapping) else {}
    who = _fields_section(
        "*Who acted*",
        [
            ("Actor", _principal(actor.get("user"))),
            ("Access path", escape(actor.get("access_path")) if actor.get("access_path") else None),
            ("Source IP", _source_ip(actor)),
            ("MFA", _mfa(actor.get("mfa"))),
            (
                "User agent",
                code(clip(str(actor["user_agent"]), 300, "…")) if actor.get("user_agent") else None,
            ),
            ("Signing key", code(actor["session_uid"]) if actor.get("session_uid") else None),
            ("Session issuer", code(actor["session_issuer"]) if actor.get("session_issuer") else None),
            ("Invoked by", escape(actor["invoked_by"]) if actor.get("invoked_by") else None),
        ],
    )
    cred = det.get("credential") if isinstance(det.get("credential"), Mapping) else None
    cred_pairs: list[tuple[str, Any]] = [("Target principal", _principal(det.get("target")))]
    if cred:
        attrs = cred.get("attributes") if isinstance(cred.get("attributes"), Mapping) else {}
        shown = attrs.get("keyDisplayName") or cred.get("uid")
        cred_pairs += [
            ("Credential", f"{escape(credential_words(cred.get('kind')))} "
                           f"{code(shown) if shown else '_(no id)_'}"),
            ("Credential owner", _principal(cred.get("owner"))
             if principal_name(cred.get("owner")) != principal_name(det.get("target")) else None),
        ]
        facts = [(k, v) for k, v in attrs.items() if v not in (None, "", [], {}) and k != "keyDisplayName"]
        if facts:
            cred_pairs.append(("Credential facts", escape(", ".join(f"{k}={v}" for k, v in facts[:8]))))
    else:
        cred_pairs.append(("Credential", "_not named by the detection_"))
    target = _fields_section("*Target*", cred_pairs)
    for block in (what, who, target):
        if block is not None:
            blocks.append(block)
    ids = _id_line(det)
    if ids:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": clip(ids, MAX_SECTION_TEXT)}]})
    if det.get("suppressed"):
        blocks.append(_section(f":no_entry: *Suppressed:* {escape(det['suppressed'])}"))
    facts = enrichment_lines(enrichment, cred.get("uid") if cred else None)
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

    context = [f"Plan hash {code(plan_hash)}"]
    if expires_at:
        context.append(f"expires {slack_date(expires_at)}")
    context.append(f"case {code(case_id)}")
    context += run_links(case_id, run_id)
    waiting = [f":hourglass_flowing_sand: *Approvals {len(approvals)} of {quorum}*"
               + (f" ({', '.join(_who(u) for u in approvals)})" if approvals else "")]
    if asked_at:
        waiting.append(f"asked {slack_date(asked_at)}")
    if expires_at:
        waiting.append(f"expires {slack_date(expires_at)}")
    waiting += [str(n) for n in notes]
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": clip(" · ".join(context), MAX_SECTION_TEXT)},
                         {"type": "mrkdwn", "text": clip(" · ".join(waiting), MAX_SECTION_TEXT)}],
        }
    )

    target_name = (
        principal_name(det.get("target")) or principal_name((cred or {}).get("owner")) or (cred or {}).get("uid")
        or "the target"
    )
    confirm_text = clip(
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
    "awaiting_manual": (":hand:", "Contained; a step is left to a person"),
    "no_containment": (":information_source:", "Nothing to contain"),
    "plan_changed": (":warning:", "Not contained: the state changed since approval"),
    "replanning": (":repeat:", "Planning again: the state changed since approval"),
}
_ACTION_ICONS = {
    "contained": ":white_check_mark:",
    "already_contained": ":white_check_mark:",
    "planned": ":hourglass_flowing_sand:",
    "pending": ":hourglass_flowing_sand:",
    "running": ":gear:",
    "failed": ":x:",
    "refused": ":no_entry:",
    "plan_changed": ":warning:",
    "rolled_back": ":leftwards_arrow_with_hook:",
    "verified": ":lock:",
    "ok": ":white_check_mark:",
}


def incident_section(incident: Mapping[str, Any]) -> str:
    """The incident's section of an approval message (mrkdwn, at most Slack's section limit): its
    ID, then one line per case: case ID, event, the credential (kind, ID, owner) and how many steps
    the plan takes for it, or why it was refused."""
    cases = list(incident.get("cases") or [])
    lines = [f":link: *Incident* {code(incident.get('incident_id') or '?')}: "
             f"{len(cases)} case(s) by the actor below, answered together. One decision covers the whole plan."]
    for c in cases:
        cred = c.get("credential") if isinstance(c.get("credential"), Mapping) else None
        what = (f"{escape(credential_words(cred.get('kind')))} {code(cred.get('uid') or '(no id)')}"
                + (f" of {escape(str(cred['owner']))}" if cred.get("owner") else "")) if cred else \
            escape(str(c.get("target") or "?"))
        tail = f"refused: {escape(str(c['refused']))}" if c.get("refused") else f"{c.get('steps', 0)} step(s)"
        lines.append(f"• {code(c.get('case_id') or '?')} {code(c.get('event_name') or '?')}: {what} · {tail}")
    return clip("\n".join(lines), MAX_SECTION_TEXT)


def _who(user: str | None) -> str:
    if not user:
        return "someone"
    user = user.removeprefix("slack:")
    if user[:1] in ("U", "W") and user.isalnum() and user.upper() == user:
        return f"<@{user}>"
    return escape(user)


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
    manual: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Blocks that replace the approval message as the run goes (no buttons, except with
    ``rollback=True`` a *Roll back* button, ``action_id`` ``cordon_rollback``, whose value is the
    JSON ``{"case_id", "decision": "rollback", "plan_hash", "run_id"}``; ``decided_by`` may be a
    list of approvers, shown with the count out of ``quorum``). ``manual``: the steps left to a person
    (``[{id, text}]``), listed, with a *Mark done* button (``action_id`` ``cordon_manual_done``,
    decision ``manual_done``) for the first.

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
            f"{icon} *{escape(title)}* · {escape(_detection_headline(det))}\n"
            f"Case {code(case_id)} · playbook {code(playbook)} · run {code(run_id)}"
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
            text += f" at {slack_date(decided_at)}"
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, MAX_SECTION_TEXT)}]}
        )
    lines = []
    for step in list(actions or [])[:40]:
        status = str(step.get("status") or "pending")
        icon = _ACTION_ICONS.get(status, ":grey_question:")
        line = (
            f"{icon} {code(step.get('action') or step.get('name') or '?')}"
            + (f" on {code(step['target'])}" if step.get("target") else "")
            + f": *{escape(status)}*"
        )
        if step.get("error"):
            line += f"\n      {escape(clip(str(step['error']), 300, '…'))}"
        lines.append(line)
    if actions is not None and len(actions) > 40:
        lines.append(f"… and {len(actions) - 40} more action(s)")
    if lines:
        blocks.append(_section("*Actions*\n" + "\n".join(lines)))
    if note:
        blocks.append(_section(escape(note)))
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"Plan hash {code(plan_hash)} · case {code(case_id)}"}],
        }
    )
    if manual:
        steps = "\n".join(f"• {code(str(m.get('id')))}: {escape(clip(str(m.get('text') or ''), 600, '…'))}"
                          for m in list(manual)[:10])
        blocks.append(_section(clip("*Left to a person* (Cordon cannot do this through an API)\n" + steps,
                                    MAX_SECTION_TEXT, "…")))
        blocks.append({"type": "actions", "block_id": MANUAL_DONE_BLOCK_ID, "elements": [{
            "type": "button", "action_id": MANUAL_DONE_ACTION_ID, "style": "primary",
            "text": _plain(f"Mark {manual[0].get('id')} done", 75),
            "value": _button_value(run_id, case_id, plan_hash, "manual_done"),
            "confirm": {"title": _plain("Mark the step done?", 100),
                        "text": {"type": "plain_text", "text": clip(
                            f"You say step {manual[0].get('id')} of case {case_id} is done. It is recorded "
                            "under your name in the audit ledger.", MAX_CONFIRM_TEXT, "…")},
                        "confirm": _plain("Mark done", 30), "deny": _plain("Cancel", 30)}}]})
    if rollback:
        blocks.append({"type": "actions", "block_id": ROLLBACK_BLOCK_ID, "elements": [{
            "type": "button", "action_id": ROLLBACK_ACTION_ID, "text": _plain("Roll back", 75),
            "value": _button_value(run_id, case_id, plan_hash, "rollback"),
            "confirm": {"title": _plain("Roll back containment?", 100),
                        "text": {"type": "plain_text", "text": clip(
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
        quorum=approval.get("quorum"), rollback=bool(summary.get("rollback")),
        manual=summary.get("manual") if status == "awaiting_manual" and isinstance(summary.get("manual"), list)
        else None)


# -- the Deny reason dialog -------------------------------------------------------------------
def deny_view(ix: Interaction) -> dict[str, Any]:
    """The modal a *Deny* click opens (``views.open`` with the click's ``trigger_id``,
    https://api.slack.com/methods/views.open): one required multi-line input ``reason`` (block
    ``reason``, action ``value``, at most 2000 characters), ``callback_id`` ``cordon_deny_reason``,
    and in ``private_metadata`` the click's run, case, plan hash, message and ``response_url`` (so
    the submission settles exactly what was clicked, and the clicker can be told if someone else
    decided first). Its ``view_submission`` is read by :func:`cordon.slack.verify.parse_deny_submission`.
    Raises ``ValueError`` if the metadata would exceed Slack's 3000 characters (IDs that long are a bug)."""
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
            _section(f"Deny the containment plan of case {code(ix.case_id)}? Nothing will be changed. "
                     "Your reason is recorded in the ledger with your decision."),
            {"type": "input", "block_id": REASON_BLOCK_ID, "label": _plain("Reason", 2000),
             "element": {"type": "plain_text_input", "action_id": REASON_ACTION_ID, "multiline": True,
                         "min_length": 1, "max_length": MAX_REASON,
                         "placeholder": _plain("e.g. the key was created by the release pipeline", 150)}},
        ],
    }
