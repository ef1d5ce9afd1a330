"""A case's timeline as Markdown, for the Prefect UI (a Markdown artifact on each respond run).

``markdown_timeline(ledger, case_id)`` reads the case with :func:`cordon.audit.query.timeline`
and renders a heading, the key figures (outcome, decision and approver, time to approve, time
to contain) and a table of every ledger record (seq, time, step, actor, what happened).

Everything taken from the ledger is escaped for Markdown and HTML (Prefect renders artifacts as
Markdown that may contain HTML): ``& < >`` become entities, Markdown punctuation is
backslash-escaped and line breaks become spaces, so an attacker-controlled string (a user agent,
a user name) cannot inject links, images, HTML or break the table.
"""

from __future__ import annotations

import html
import re

from cordon.audit.ledger import Ledger
from cordon.audit.query import format_seconds, timeline

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~])")


def md_escape(value: object, limit: int | None = 400) -> str:
    """``value`` as inert Markdown text on one line (HTML entities for ``& < > "``, backslash
    before Markdown punctuation, newlines as spaces), cut at ``limit`` characters."""
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def artifact_key(case_id: str) -> str:
    """A Prefect artifact key for a case: lowercase letters, digits and dashes only
    (``case-1a2b3c`` -> ``cordon-timeline-case-1a2b3c``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", case_id.lower()).strip("-")
    return f"cordon-timeline-{slug}"[:200].rstrip("-")


def markdown_timeline(ledger: Ledger, case_id: str) -> str:
    """The Markdown timeline of ``case_id`` (see the module docstring). Raises ``KeyError`` if
    the ledger has no such case."""
    tl = timeline(ledger, case_id)
    if tl is None:
        raise KeyError(f"no case {case_id} in {ledger.url}")
    s = tl.summary
    lines = [
        f"# Cordon case {md_escape(case_id)}",
        "",
        f"- **Outcome:** {md_escape(s.status)}",
        f"- **Playbook:** {md_escape(s.playbook or '-')}",
        f"- **Detection:** {md_escape(s.event or '-')} on {md_escape(s.provider or '-')} account "
        f"{md_escape(s.account or '-')}, by {md_escape(s.actor or '-')}, target {md_escape(s.target or '-')}",
        f"- **Credential:** {md_escape(s.credential or '-')}",
        f"- **Decision:** {md_escape(s.decision)} by {md_escape(s.approver or '-')}",
        f"- **Time to approve:** {format_seconds(s.time_to_approve)}",
        f"- **Time to contain:** {format_seconds(s.time_to_contain)}",
        "",
        "| # | time (UTC) | step | actor | what happened |",
        "|---|---|---|---|---|",
    ]
    for e in tl.entries:
        lines.append(f"| {e.seq} | {md_escape(e.ts)} | {md_escape(e.kind)} | {md_escape(e.actor or '-', 80)} | "
                     f"{md_escape(e.text)} |")
    lines += ["", f"Ledger: {len(tl.entries)} record(s); last hash `{tl.entries[-1].hash if tl.entries else '-'}`."]
    return "\n".join(lines) + "\n"
