"""A case's timeline as Markdown, for the Prefect UI (a Markdown artifact on each respond run).

``markdown_timeline(ledger, case_id)`` reads the case with :func:`cordon.audit.query.timeline`
and renders a heading, the key figures (outcome, decision and approver, time to approve, time
to contain), the case's incident (its ID, lead case and the other cases with their status), why
its playbook was routed and the cases of its actor's access, when there are, and a table of every
ledger record (seq, time, step, actor, what happened).

Everything taken from the ledger is escaped for Markdown and HTML (Prefect renders artifacts as
Markdown that may contain HTML): ``& < >`` become entities, Markdown punctuation is
backslash-escaped and line breaks become spaces, so an attacker-controlled string (a user agent,
a user name) cannot inject links, images, HTML or break the table.
"""

from __future__ import annotations

import html
import re

from cordon.audit.ledger import Ledger
from cordon.audit.query import Timeline, format_seconds, timeline

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
        _decision_line(tl),
        f"- **Time to approve:** {format_seconds(s.time_to_approve)}",
        f"- **Time to contain:** {format_seconds(s.time_to_contain)}",
        *_links(tl),
        "",
        "| # | time (UTC) | step | actor | what happened |",
        "|---|---|---|---|---|",
    ]
    for e in tl.entries:
        lines.append(f"| {e.seq} | {md_escape(e.ts)} | {md_escape(e.kind)} | {md_escape(e.actor or '-', 80)} | "
                     f"{md_escape(e.text)} |")
    lines += ["", f"Ledger: {len(tl.entries)} record(s); last hash `{tl.entries[-1].hash if tl.entries else '-'}`."]
    return "\n".join(lines) + "\n"


def _decision_line(tl: Timeline) -> str:
    s, covered = tl.summary, tl.covered_by
    if covered and s.decision == "none":  # an incident member: its lead's decision covered it
        return (f"- **Decision:** {md_escape(covered.get('decision') or '-')} by "
                f"{md_escape(covered.get('approver') or '-')} on lead case {md_escape(covered.get('lead_case_id'))}")
    return f"- **Decision:** {md_escape(s.decision)} by {md_escape(s.approver or '-')}"


def incident_line(tl: Timeline) -> str | None:
    """The Markdown line naming ``tl``'s incident: its ID, the lead case (or that this case leads
    it) and each other case with its status; ``None`` when the case is in no incident."""
    inc = tl.incident
    if inc is None:
        return None
    me = tl.case["case_id"]
    lead = "this case leads it" if inc.lead_case_id == me else f"lead case {md_escape(inc.lead_case_id)}"
    others = ", ".join(f"{md_escape(c.case_id)} ({md_escape(c.status or 'unknown')})" for c in inc.others(me))
    return (f"- **Incident:** {md_escape(inc.incident_id)} ({lead}; actor {md_escape(inc.actor_name)}); "
            f"other cases: {others or 'none'}")


def _links(tl: Timeline) -> list[str]:
    lines = [line] if (line := incident_line(tl)) else []
    if tl.because:
        lines.append(f"- **Routed because:** {md_escape(tl.because)}")
    for link in tl.actor_access:
        cred = link.credential or {}
        what = md_escape(f"{cred.get('kind') or '-'} {cred.get('uid') or '-'}")
        if link.relation == "actor_access":
            lines.append(f"- **The actor's own access:** case {md_escape(link.case_id)} ({what})")
        else:
            lines.append(f"- **Opened for the actor of:** case {md_escape(link.case_id)} ({what})")
    return lines
