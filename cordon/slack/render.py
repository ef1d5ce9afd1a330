"""What an approver reads of the enrichment: one renderer per enrichment action, in a registry.

An enrichment action's output (its *facts*, a mapping) is turned into short mrkdwn lines by the
renderer registered for the action's name::

    @renderer("aws.iam-user")
    def _iam_user(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
        ...

``credential_uid`` is the detection's credential ID, so a renderer can mark "← *this detection*"
in a list of keys. :func:`enrichment_lines` (used by :func:`cordon.slack.blocks.approval_blocks`)
walks an enrichment mapping: a failed action (``{"error": ...}``) gets a warning line, an action
with a renderer gets its lines, any other (or output that is not a mapping) the one-line
:func:`generic` summary. Missing keys are skipped.

Also here: :data:`CREDENTIAL_PHRASES`, what a new credential of each kind is called.

Text is mrkdwn (https://api.slack.com/reference/surfaces/formatting), every value escaped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cordon.slack.mrkdwn import clip, code, escape


class Renderer(Protocol):
    """``(output, *, credential_uid=None) -> [mrkdwn line, ...]`` for one enrichment action."""

    def __call__(self, output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]: ...


#: Enrichment action name (``aws.iam-user``) -> its renderer. Filled by :func:`renderer`.
RENDERERS: dict[str, Renderer] = {}


def renderer(name: str) -> Callable[[Renderer], Renderer]:
    """Register the decorated function as the renderer of enrichment action ``name``. Raises
    ``ValueError`` if ``name`` already has one."""

    def register(fn: Renderer) -> Renderer:
        if name in RENDERERS:
            raise ValueError(f"enrichment action {name!r} already has a renderer")
        RENDERERS[name] = fn
        return fn

    return register


def enrichment_lines(enrichment: Any, credential_uid: str | None) -> list[str]:
    """Short mrkdwn lines for the enrichment facts worth seeing before approving.

    ``enrichment`` maps an enrichment action name to its output. Per action: output with an
    ``error`` gives ``:warning: `name` failed: ...``; a mapping whose action has a renderer in
    :data:`RENDERERS` gives the renderer's lines; anything else the :func:`generic` summary.
    Not a mapping at all: ``[]``.
    """
    if not isinstance(enrichment, Mapping):
        return []
    lines: list[str] = []
    for name, facts in enrichment.items():
        if isinstance(facts, Mapping) and facts.get("error"):
            lines.append(f":warning: {code(name)} failed: {escape(clip(str(facts['error']), 200))}")
            continue
        render = RENDERERS.get(name) if isinstance(facts, Mapping) else None
        lines.extend(render(facts, credential_uid=credential_uid) if render else generic(name, facts))
    return lines


def generic(name: str, output: Any) -> list[str]:
    """The one line for an action without a renderer: ``*name*: key: value; list: 3 item(s); ...``
    (at most 8 keys, 400 characters)."""
    return [f"*{escape(name)}*: {escape(_generic_summary(output))}"]


def _generic_summary(facts: Any) -> str:
    if isinstance(facts, Mapping):
        parts = []
        for k, v in list(facts.items())[:8]:
            if isinstance(v, list):
                parts.append(f"{k}: {len(v)} item(s)")
            elif isinstance(v, Mapping):
                parts.append(f"{k}: {{{len(v)} field(s)}}")
            else:
                parts.append(f"{k}: {clip(str(v), 80, '…')}")
        return clip("; ".join(parts) or "(empty)", 400, "…")
    if isinstance(facts, list):
        return f"{len(facts)} item(s)"
    return clip(str(facts), 200, "…")


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


# -- the renderers ----------------------------------------------------------------------------
@renderer("aws.iam-user")
def _iam_user(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """The user's ``access_keys`` (the detection's marked), ``policies``, ``groups`` and
    ``mfa_devices``, each counted, at most 10 shown (lists or dicts of lists)."""
    lines: list[str] = []
    keys = _as_list(output.get("access_keys"))
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
            descs.append(f"{code(kid)}{' ' + escape(', '.join(bits)) if bits else ''}{mark}")
        more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
        lines.append(f"*Access keys of the user* ({len(keys)}): " + "; ".join(descs) + more)
    for key, label, names in (
        ("policies", "Policies", ("PolicyArn", "PolicyName", "arn", "name")),
        ("groups", "Groups", ("GroupName", "name", "Arn")),
        ("mfa_devices", "MFA devices", ("SerialNumber", "serial")),
    ):
        items = _as_list(output.get(key))
        if items is not None:
            shown = ", ".join(code(_name_of(i, *names)) for i in items[:10]) or "none"
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            lines.append(f"*{label}* ({len(items)}): {shown}{more}")
    return lines


@renderer("aws.cloudtrail-session")
def _session_activity(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """The session's ``events``: how many, and the 8 most frequent event names."""
    events = output.get("events")
    if not isinstance(events, list):
        return []
    counts = Counter(_name_of(e, "eventName", "EventName", "event_name") for e in events)
    top = ", ".join(f"{escape(n)} x{c}" for n, c in counts.most_common(8))
    return [f"*Session activity*: {len(events)} CloudTrail events" + (f" ({top})" if top else "")]


@renderer("gcp.service-account")
def _service_account(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """The account (enabled or not, project), its keys with the detection's marked, its project
    and inherited roles, who can act as it. Output without ``exists`` gets the :func:`generic`
    line."""
    if not output.get("exists"):
        return generic("gcp.service-account", output)
    lines: list[str] = []
    state = "disabled" if output.get("disabled") else "enabled"
    lines.append(f"*Service account* {code(str(output.get('email')))} ({state}, project "
                 f"{escape(str(output.get('project')))})")
    keys = _as_list(output.get("keys")) or []
    descs = []
    for k in keys[:10]:
        if not isinstance(k, Mapping):
            continue
        mark = " ← *this detection*" if credential_uid and k.get("name") == credential_uid else ""
        bits = [str(k[f]) for f in ("key_type", "valid_after") if k.get(f)]
        bits.append("disabled" if k.get("disabled") else "enabled")
        descs.append(f"{code(str(k.get('key_id')))} {escape(', '.join(bits))}{mark}")
    if descs:
        lines.append(f"*Keys* ({len(keys)}): " + "; ".join(descs))
    roles = _as_list(output.get("project_roles")) or []
    shown = ", ".join(code(_name_of(r, "role")) for r in roles[:10]) or "none"
    lines.append(f"*Roles on the project* ({len(roles)}): {shown}")
    inherited = _as_list(output.get("inherited_roles")) or []
    if inherited:
        lines.append(f"*Inherited roles* ({len(inherited)}): " + ", ".join(
            f"{code(_name_of(r, 'role'))} on {escape(_name_of(r, 'resource'))}" for r in inherited[:6]))
    actors = _as_list(output.get("can_act_as")) or []
    if actors:
        who = ", ".join(f"{escape(_name_of(a, 'member'))} ({escape(_name_of(a, 'role'))})" for a in actors[:6])
        lines.append(f"*Who can act as it* ({len(actors)}): {who}")
    return lines


@renderer("azure.service-principal")
def _service_principal(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """The app and its appId, publisher verified or not, owners, the exact credential of the
    detection by keyId, risky Graph permissions, directory roles, RBAC at subscription /
    management-group scope, sign-ins, parts not read. Shape:
    :class:`cordon.providers.azure.actions.ServicePrincipalFacts`."""
    facts = output
    lines: list[str] = []
    if facts.get("exists") is False:
        return [f":warning: {escape(facts.get('object_type') or 'object')} {code(facts.get('object_id'))} "
                "does not exist (any more)"]
    sp = facts.get("service_principal") if isinstance(facts.get("service_principal"), Mapping) else {}
    pub = facts.get("publisher") if isinstance(facts.get("publisher"), Mapping) else {}
    state = "" if not sp else (" (enabled)" if sp.get("account_enabled") is not False else " (disabled)")
    who = (f"verified publisher {escape(pub.get('name'))}" if pub.get("verified")
           else f":warning: *unverified* publisher ({escape(pub.get('domain') or 'no domain')})")
    home = "" if pub.get("home_tenant", True) else (
        f", registered in another tenant {code(pub.get('app_owner_organization_id'))}")
    lines.append(f"*App* {code(facts.get('display_name'))} appId {code(facts.get('app_id'))}, "
                 f"{escape(facts.get('object_type'))} {code(facts.get('object_id'))}{state}; {who}{home}")
    found = facts.get("credential_in_detection")
    if isinstance(found, Mapping):
        span = " to ".join(str(found[k]) for k in ("start", "end") if found.get(k))
        lines.append(f"*Credential of this detection*: {escape(found.get('kind'))} keyId {code(found.get('key_id'))}"
                     f"{' ' + code(found['display_name']) if found.get('display_name') else ''} on the "
                     f"{escape(found.get('on'))}{' (' + escape(span) + ')' if span else ''}")
    elif credential_uid and facts.get("credential_in_detection_present") is False:
        lines.append(f":warning: keyId {code(credential_uid)} is on neither the application nor its service "
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
    shown = ", ".join(f"{code(_name_of(o, 'user_principal_name', 'display_name', 'id'))}"
                      + (f" ({'/'.join(o['of'])})" if o.get("of") else "") for o in owners[:6])
    lines.append(f"*Owners* ({len(owners)}): {shown or 'none'}")
    risky = [r for r in facts.get("risky_permissions") or [] if isinstance(r, Mapping)]
    if risky:
        lines.append(":rotating_light: *Dangerous Graph permissions*: " + ", ".join(
            f"{code(r.get('permission'))} ({escape(r.get('type'))})" for r in risky[:8]))
    else:
        n_app = len(facts.get("app_role_assignments") or [])
        n_del = len(facts.get("oauth2_permission_grants") or [])
        lines.append(f"*Permissions*: {n_app} application, {n_del} delegated grant(s); none dangerous")
    roles = [r for r in facts.get("directory_roles") or [] if isinstance(r, Mapping)]
    lines.append("*Directory roles*: " + (", ".join(code(_name_of(r, "display_name", "role_template_id"))
                                                    for r in roles[:6]) or "none"))
    rbac = [r for r in facts.get("rbac_role_assignments") or [] if isinstance(r, Mapping)]
    lines.append(f"*Azure RBAC* ({len(rbac)}): " + ("; ".join(
        f"{code(r.get('role_name') or _name_of(r, 'role_definition_id'))} at {escape(r.get('scope_level'))} "
        f"{code(r.get('scope'))}" for r in rbac[:5]) or "none"))
    sign_ins = facts.get("sign_ins") if isinstance(facts.get("sign_ins"), Mapping) else {}
    if sign_ins.get("available"):
        events = [e for e in sign_ins.get("events") or [] if isinstance(e, Mapping)]
        last = f" (latest {escape(events[0].get('time'))} from {code(events[0].get('ip'))})" if events else ""
        lines.append(f"*Recent sign-ins*: {len(events)}{last}")
    elif sign_ins:
        lines.append(f"*Sign-ins*: not available ({escape(clip(str(sign_ins.get('reason')), 120, '…'))})")
    for part, why in (facts.get("unavailable") or {}).items():
        lines.append(f":warning: not read: {escape(part)} ({escape(clip(str(why), 120, '…'))})")
    return lines


@renderer("azure.actor")
def _actor(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """Who acted, from where, with which user agent, whether they own the app, their directory
    roles. Shape: :class:`cordon.providers.azure.actions.ActorFacts`."""
    facts = output
    actor = facts.get("actor") if isinstance(facts.get("actor"), Mapping) else {}
    who = actor.get("name") or actor.get("uid") or "unknown"
    where = f" from {code(facts['src_ip'])}" if facts.get("src_ip") else ""
    agent = f" with {code(clip(str(facts['user_agent']), 80, '…'))}" if facts.get("user_agent") else ""
    owns = {True: "owns the app", False: "does *not* own the app", None: "ownership unknown"}.get(
        facts.get("owns_app"), "ownership unknown")
    roles = ", ".join(code(_name_of(r, "display_name")) for r in facts.get("directory_roles") or [])
    return [f"*Actor* {code(who)} ({escape(actor.get('type') or 'unknown type')}){where}{agent}; {owns}"
            + (f"; roles {roles}" if roles else "")]


# -- credential kinds -------------------------------------------------------------------------
#: What a new credential of each kind is called, and the word joining it to whom it belongs
#: (:func:`cordon.slack.blocks.what_happened`: "New client secret on payments-api"). Kinds not
#: listed read "New <kind in words> on <owner>".
CREDENTIAL_PHRASES: dict[str, tuple[str, str]] = {
    "aws_access_key": ("New access key", "for"),
    "aws_login_profile": ("New console password", "for"),
    "aws_key_pair": ("New EC2 key pair", "in"),
    "aws_service_specific_credential": ("New service-specific credential", "for"),
    "aws_federation_token": ("Federation token issued", "to"),
    "aws_iam_user": ("New IAM user", ""),
    "aws_policy_grant": ("Admin policy granted", "to"),
    "aws_ssh_public_key": ("New SSH public key", "for"),
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
