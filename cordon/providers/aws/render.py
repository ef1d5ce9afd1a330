"""What an approver reads of this provider's enrichment in Slack: one renderer per enrichment action,
registered in :data:`cordon.slack.render.RENDERERS` when this module is imported (the provider's
``renderers_module``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from cordon.slack.mrkdwn import code, escape
from cordon.slack.render import as_list, name_of, renderer


@renderer("aws.iam-user")
def _iam_user(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """The user's ``access_keys`` (the detection's marked), ``policies``, ``groups`` and
    ``mfa_devices``, each counted, at most 10 shown (lists or dicts of lists)."""
    lines: list[str] = []
    keys = as_list(output.get("access_keys"))
    if keys is not None:
        descs = []
        for k in keys[:10]:
            kid = name_of(k, "AccessKeyId", "access_key_id", "id")
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
        items = as_list(output.get(key))
        if items is not None:
            shown = ", ".join(code(name_of(i, *names)) for i in items[:10]) or "none"
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            lines.append(f"*{label}* ({len(items)}): {shown}{more}")
    return lines


@renderer("aws.cloudtrail-session")
def _session_activity(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """The session's ``events``: how many, and the 8 most frequent event names."""
    events = output.get("events")
    if not isinstance(events, list):
        return []
    counts = Counter(name_of(e, "eventName", "EventName", "event_name") for e in events)
    top = ", ".join(f"{escape(n)} x{c}" for n, c in counts.most_common(8))
    return [f"*Session activity*: {len(events)} CloudTrail events" + (f" ({top})" if top else "")]


@renderer("aws.key-pair")
def _key_pair(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """The key pair now under the name and whether it is the one the event created (``same_key_pair``;
    a re-created one is flagged with the reason: the guard refuses to delete it)."""
    if output.get("exists") is False:
        return [f"*Key pair now*: none named {code(output.get('key_name'))} (already deleted)"]
    if not output.get("key_pair_id") and not output.get("key_fingerprint"):
        return []
    what = f"{code(output.get('key_pair_id'))}, fingerprint {code(output.get('key_fingerprint'))}"
    if output.get("same_key_pair"):
        return [f"*Key pair now*: {what}: the one the event created"]
    return [f"*Key pair now*: {what}: *not the one the event named*: {escape(output.get('mismatch') or '')}"]


@renderer("aws.role-trust")
def _role_trust(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """Who the new trust lets in from outside the Organization, whether the role is admin, and why
    nothing is contained when it is not (``reason``)."""
    outside = as_list(output.get("outside_principals")) or []
    lines = [f"*Trusted from outside the Organization*: {', '.join(code(p) for p in outside) or 'nobody'}"]
    if output.get("exists"):
        because = as_list(output.get("admin_because")) or []
        lines.append(f"*Administrator permissions*: {escape('; '.join(map(str, because))) if because else 'none'}")
    if output.get("reason"):
        lines.append(f"*Triage only*: {escape(str(output['reason']))}")
    return lines


@renderer("aws.root-access-key")
def _root_access_key(output: Mapping[str, Any], *, credential_uid: str | None = None) -> list[str]:
    """Whether Cordon deletes the root key through centralized root access, else the steps a person takes."""
    if output.get("centralized"):
        return [f"*Root access key*: deleted through sts:AssumeRoot from management account "
                f"{code(output.get('management_account'))} (IAMDeleteRootUserCredentials); not reversible"]
    steps = [escape(str(s)) for s in as_list(output.get("manual_steps")) or []]
    return [f"*Page a human*: {escape(str(output.get('why_not') or ''))}", *steps]
