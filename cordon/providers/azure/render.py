"""What an approver reads of this provider's enrichment in Slack: one renderer per enrichment action,
registered in :data:`cordon.slack.render.RENDERERS` when this module is imported (the provider's
``renderers_module``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cordon.slack.mrkdwn import clip, code, escape
from cordon.slack.render import name_of, renderer


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
    shown = ", ".join(f"{code(name_of(o, 'user_principal_name', 'display_name', 'id'))}"
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
    lines.append("*Directory roles*: " + (", ".join(code(name_of(r, "display_name", "role_template_id"))
                                                    for r in roles[:6]) or "none"))
    rbac = [r for r in facts.get("rbac_role_assignments") or [] if isinstance(r, Mapping)]
    lines.append(f"*Azure RBAC* ({len(rbac)}): " + ("; ".join(
        f"{code(r.get('role_name') or name_of(r, 'role_definition_id'))} at {escape(r.get('scope_level'))} "
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
    roles = ", ".join(code(name_of(r, "display_name")) for r in facts.get("directory_roles") or [])
    return [f"*Actor* {code(who)} ({escape(actor.get('type') or 'unknown type')}){where}{agent}; {owns}"
            + (f"; roles {roles}" if roles else "")]


@renderer("azure.unnamed-credential")
def _unnamed_credential(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """Which credential a record without a KeyIdentifier added: the single one whose startDateTime
    matches the record's time (removed alone), or why none can be told apart (the service principal
    is disabled instead). Shape: :class:`cordon.providers.azure.actions.UnnamedCredentialFacts`."""
    reason = output.get("reason")
    if not reason:
        return []
    if output.get("key_id"):
        return [f"*Credential the record added* (no KeyIdentifier logged): {code(output['key_id'])}, "
                f"{escape(clip(str(reason), 400))}"]
    return [f":warning: *Credential the record added cannot be named*: {escape(clip(str(reason), 400))}"]
