"""Approval modes and where each asks: the one place that says which ``--approve`` values wait
for a person's click (and so run on the ``respond`` deployment) and which surfaces they post to.

``slack`` posts the request in Slack, ``teams`` an Adaptive Card in Microsoft Teams, ``both``
posts in each; a click in either meets the other's in one quorum (the decider is shared,
:func:`cordon.approvals.decide.make_decider`). ``console`` and ``auto`` decide at once, in
process. The server's own runs (the detection webhook, sensors, ``/cordon``) ask where
``approval.channel`` in ``cordon.yaml`` says (:func:`configured_channel`; default ``slack``).
"""

from __future__ import annotations

from typing import Any

#: Modes whose request is posted in Slack.
SLACK_MODES = frozenset({"slack", "both"})
#: Modes whose request is posted in Microsoft Teams.
TEAMS_MODES = frozenset({"teams", "both"})
#: Modes that wait for a click: the run suspends, so it runs on the ``respond`` deployment.
WAITING_MODES = SLACK_MODES | TEAMS_MODES
#: The values ``approval.channel`` may take.
CHANNEL_VALUES = ("slack", "teams", "both")


def waits(mode: str | None) -> bool:
    """Whether a run in approval ``mode`` waits for a click (Slack, Teams or both)."""
    return mode in WAITING_MODES


def configured_channel(config: Any) -> str:
    """``approval.channel`` of ``config`` (a :class:`cordon.config.Config`): ``slack`` (the
    default), ``teams`` or ``both``. The value is checked when ``cordon.yaml`` is loaded
    (:class:`cordon.config.ApprovalSection`), so this only reads it."""
    section = config.raw.get("approval") or {}
    channel = section.get("channel") if isinstance(section, dict) else None
    return channel if channel in CHANNEL_VALUES else "slack"
