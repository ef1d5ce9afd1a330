"""Text helpers shared by the Block Kit builders (:mod:`cordon.slack.blocks`), the enrichment
renderers (:mod:`cordon.slack.render`) and the request parsers (:mod:`cordon.slack.verify`).

Slack's mrkdwn has three control characters, ``&``, ``<`` and ``>``, which must be escaped in any
text Cordon did not write itself (https://api.slack.com/reference/surfaces/formatting#escaping);
dates go out as ``<!date^...>`` so each reader sees their own time zone
(https://api.slack.com/reference/surfaces/formatting#date-formatting).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


def escape(value: Any) -> str:
    """``value`` as text safe inside Slack mrkdwn (``&``, ``<``, ``>`` escaped as Slack's
    formatting reference asks, https://api.slack.com/reference/surfaces/formatting#escaping), so
    an attacker-controlled string (a principal name, an error message) cannot mention
    ``<!channel>``, a user, or make a link. For text built outside this package (thread replies)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(value: Any) -> str:
    """Inline code (escaped); a backtick inside would end the span, so it becomes U+02CB."""
    return "`" + escape(value).replace("`", "\u02cb") + "`"


def clip(text: str, limit: int, suffix: str = "… (truncated)") -> str:
    """``text`` cut to at most ``limit`` characters, ending with ``suffix`` when it was cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(suffix))] + suffix


def slack_date(iso: str | None) -> str | None:
    """``<!date^...>`` so each reader sees their own time zone, with the ISO text as fallback
    (https://api.slack.com/reference/surfaces/formatting#date-formatting). ``None`` for no date;
    a naive or unparseable timestamp is shown escaped as given."""
    if not iso:
        return None
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return escape(iso)
    if dt.tzinfo is None:
        return escape(iso)
    return f"<!date^{int(dt.timestamp())}^{{date_short_pretty}} {{time_secs}}|{escape(iso)}>"


def dig(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, or ``None`` as soon as a level is missing or not a mapping."""
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d
