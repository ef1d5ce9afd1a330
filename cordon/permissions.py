"""Least-privilege grants, generated from what the actions declare.

Every action declares the exact cloud permissions it needs (``Action.permissions``, the Cloud
Custodian convention). Each provider turns those declarations into the documents an administrator
applies (:attr:`cordon.providers.Provider.grants_module`: its ``DOCUMENTS``, each a
:class:`GrantDocument`), for the actions the playbooks in use actually reference (or every
registered action); this module finds them, renders them and keeps ``docs/deploy.md``'s copies in
step. It also builds the Slack app manifest (https://api.slack.com/reference/manifests) with the
scopes Cordon uses and the request URLs of ``cordon serve``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cordon.action import Action, all_actions, load_builtin_actions
from cordon.config import Config
from cordon.playbooks.schema import load_playbooks


@dataclass(frozen=True)
class GrantDocument:
    """One grant document a provider generates.

    ``name`` (``cordon permissions NAME``, the ``<!-- generated:NAME -->`` block of ``docs/deploy.md``);
    ``build(config, actions, every) -> dict`` (``actions`` the action classes in use, of every
    provider: a builder keeps its own); ``fmt`` ``json`` or ``yaml``; ``for_docs(config) -> dict``
    what the documentation embeds when it differs from ``build(config, every action, True)``
    (placeholders instead of values from this environment).
    """

    name: str
    build: Callable[[Config, list[type[Action]], bool], dict[str, Any]]
    fmt: str = "json"
    for_docs: Callable[[Config], dict[str, Any]] | None = None


def documents() -> dict[str, GrantDocument]:
    """Every provider's grant documents by name, in registry order."""
    import importlib

    from cordon.providers import providers

    found: dict[str, GrantDocument] = {}
    for provider in providers().values():
        if provider.grants_module:
            for doc in importlib.import_module(provider.grants_module).DOCUMENTS:
                found[doc.name] = doc
    return found

#: Slack bot scopes and why Cordon needs each (https://api.slack.com/scopes).
SLACK_SCOPES: dict[str, str] = {
    "chat:write": "post and update approval messages, reply in their threads",
    "commands": "the /cordon slash command",
    "users:read": "resolve the clicking user (users.info)",
    "users:read.email": "map a Slack user to a cloud identity by profile e-mail (no self-approval)",
    "usergroups:read": "resolve approver user groups (usergroups.users.list)",
}


def actions_in_use(config: Config, *, every: bool = False) -> list[type[Action]]:
    """The action classes the playbooks in ``config.playbooks_dir`` reference (enrich and contain),
    sorted by name; with ``every``, all registered actions. Raises
    :class:`cordon.playbooks.schema.PlaybookError` when a playbook does not load."""
    load_builtin_actions()
    registry = all_actions()
    if every:
        return [registry[n] for n in sorted(registry)]
    names: set[str] = set()
    for pb in load_playbooks(config.playbooks_dir):
        names.update(s.action for s in pb.enrich)
        names.update(s.action for s in pb.contain)
    return [registry[n] for n in sorted(names)]


def slack_manifest(base_url: str, *, name: str = "Cordon") -> dict[str, Any]:
    """The Slack app manifest for ``cordon serve`` reachable at ``base_url`` (https, no trailing slash).

    Raises ``ValueError`` when ``base_url`` is not an https URL (Slack refuses http request URLs).
    """
    base = base_url.rstrip("/")
    if not base.startswith("https://"):
        raise ValueError(f"base_url {base_url!r}: Slack requires an https:// request URL")
    return {
        "display_information": {"name": name,
                                "description": "Approve containment of cloud credential persistence"},
        "features": {
            "bot_user": {"display_name": name.lower(), "always_online": True},
            "slash_commands": [{"command": "/cordon", "url": f"{base}/slack/commands",
                                "description": "Run a playbook, or see a case's status",
                                "usage_hint": "run PLAYBOOK key=value... | status CASE | list | help",
                                "should_escape": False}],
        },
        "oauth_config": {"scopes": {"bot": sorted(SLACK_SCOPES)}},
        "settings": {"interactivity": {"is_enabled": True, "request_url": f"{base}/slack/interactions"},
                     "org_deploy_enabled": False, "socket_mode_enabled": False, "token_rotation_enabled": False},
    }


def generate(config: Config, name: str, *, every: bool = False) -> dict[str, Any]:
    """The grant document ``name`` (one of :func:`documents`, e.g. ``aws``, ``aws-member``, ``azure``,
    ``gcp``) from the playbooks of ``config`` (or every action). Raises ``ValueError`` naming the
    documents for another name."""
    docs = documents()
    if name not in docs:
        raise ValueError(f"no grant document {name!r}: expected one of {', '.join(docs)}")
    return docs[name].build(config, actions_in_use(config, every=every), every)


def render_document(config: Config, name: str, *, every: bool = False) -> str:
    """``generate(config, name, every=every)`` as text: JSON, or YAML where the document says."""
    import json

    import yaml

    doc = generate(config, name, every=every)
    return yaml.safe_dump(doc, sort_keys=False) if documents()[name].fmt == "yaml" else json.dumps(doc, indent=2) + "\n"


def render(config: Config, name: str) -> str:
    """The text ``cordon permissions NAME --all`` prints (JSON, or YAML where the document says), as
    ``docs/deploy.md`` embeds it (the document's ``for_docs`` form when it has one)."""
    import json

    import yaml

    doc_spec = documents()[name]
    doc = doc_spec.for_docs(config) if doc_spec.for_docs else generate(config, name, every=True)
    return yaml.safe_dump(doc, sort_keys=False) if doc_spec.fmt == "yaml" else json.dumps(doc, indent=2) + "\n"


def update_doc(path: str, config: Config) -> bool:
    """Rewrite the ``<!-- generated:NAME -->`` blocks of the Markdown file at ``path`` with
    :func:`render`; returns whether anything changed. Raises ``ValueError`` naming the file when a
    block is missing."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    new = text
    for name in documents():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n```\w+\n).*?(```\n<!-- /generated:{name} -->)", re.S)
        if not pattern.search(new):
            raise ValueError(f"{path}: no <!-- generated:{name} --> block")
        body = render(config, name)
        new = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), new)
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m cordon.permissions docs/deploy.md
    import sys

    from cordon.config import load_config

    print("updated" if update_doc(sys.argv[1] if len(sys.argv) > 1 else "docs/deploy.md", load_config())
          else "up to date")
