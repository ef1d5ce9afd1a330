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

The renderers live with their providers (``cordon/providers/<cloud>/render.py``, named by
``Provider.renderers_module`` and imported on first use); so do the phrases for new credentials
(:func:`credential_phrases`).

Text is mrkdwn (https://api.slack.com/reference/surfaces/formatting), every value escaped.
"""

from __future__ import annotations

import json
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
        _load_providers()
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


def name_of(item: Any, *keys: str) -> str:
    if isinstance(item, Mapping):
        for k in keys:
            if item.get(k):
                return str(item[k])
        return json.dumps(item, default=str, sort_keys=True)[:80]
    return str(item)


def as_list(value: Any) -> list[Any] | None:
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


# -- the providers' renderers and phrases ----------------------------------------------------------
_LOADED: list[bool] = []


def _load_providers() -> None:
    """Import every provider's renderers module once (``Provider.renderers_module``), so its
    ``@renderer`` functions register."""
    if _LOADED:
        return
    import importlib

    from cordon.providers import providers

    for provider in providers().values():
        if provider.renderers_module:
            importlib.import_module(provider.renderers_module)
    _LOADED.append(True)


def credential_phrases() -> dict[str, tuple[str, str]]:
    """What a new credential of each kind is called, and the word joining it to whom it belongs
    (:func:`cordon.slack.blocks.what_happened`: "New client secret on payments-api"), from every
    provider's ``credential_phrases``. Kinds not listed read "New <kind in words> on <owner>"."""
    from cordon.providers import providers

    out: dict[str, tuple[str, str]] = {}
    for provider in providers().values():
        out.update(provider.credential_phrases)
    return out
