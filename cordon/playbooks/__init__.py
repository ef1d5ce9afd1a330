"""Declarative playbooks: schema, loader (errors name file, line and field) and router."""

from cordon.playbooks.schema import (
    Playbook,
    PlaybookError,
    load_playbook_text,
    load_playbooks,
    render_params,
    route,
    template_context,
)

__all__ = ["Playbook", "PlaybookError", "load_playbook_text", "load_playbooks", "render_params", "route",
           "template_context"]
