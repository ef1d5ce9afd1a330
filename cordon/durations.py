"""Durations as Cordon's YAML writes them (``90s``, ``15m``, ``4h``, ``2d``): one parser for the
playbooks (``expire_after``, ``watch``) and ``cordon.yaml`` (``incidents.window``). A leaf module:
it imports nothing of Cordon's."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> int:
    """``"90s" | "15m" | "4h" | "2d"`` -> seconds. ``ValueError`` on anything else."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"expected a duration like 30m, 4h or 2d, got {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
