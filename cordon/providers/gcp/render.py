"""What an approver reads of this provider's enrichment in Slack: one renderer per enrichment action,
registered in :data:`cordon.slack.render.RENDERERS` when this module is imported (the provider's
``renderers_module``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cordon.slack.mrkdwn import code, escape
from cordon.slack.render import as_list, generic, name_of, renderer


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
    keys = as_list(output.get("keys")) or []
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
    roles = as_list(output.get("project_roles")) or []
    shown = ", ".join(code(name_of(r, "role")) for r in roles[:10]) or "none"
    lines.append(f"*Roles on the project* ({len(roles)}): {shown}")
    inherited = as_list(output.get("inherited_roles")) or []
    if inherited:
        lines.append(f"*Inherited roles* ({len(inherited)}): " + ", ".join(
            f"{code(name_of(r, 'role'))} on {escape(name_of(r, 'resource'))}" for r in inherited[:6]))
    actors = as_list(output.get("can_act_as")) or []
    if actors:
        who = ", ".join(f"{escape(name_of(a, 'member'))} ({escape(name_of(a, 'role'))})" for a in actors[:6])
        lines.append(f"*Who can act as it* ({len(actors)}): {who}")
    return lines
