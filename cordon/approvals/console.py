"""Approval at the terminal: the embedded default's stand-in for a responder in Slack."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.prompt import Confirm
from rich.table import Table


class NoTerminalError(RuntimeError):
    """``--approve console`` without a terminal to ask at."""


def ask(plan: dict[str, Any], *, console: Console | None = None) -> bool:
    """Show ``plan`` (``Plan.model_dump()``) and ask whether to contain. ``True`` means approve.

    Raises :class:`NoTerminalError` when standard input is not a terminal (CI, a pipe): use
    ``--approve auto`` or ``--approve slack`` there.
    """
    if not sys.stdin or not sys.stdin.isatty():
        raise NoTerminalError("--approve console needs a terminal; use --approve auto (rehearsal) or "
                              "--approve slack")
    console = console or Console(stderr=True)
    table = Table(title=f"Containment plan for {plan['case_id']} ({plan['playbook']})", show_lines=True)
    table.add_column("action")
    table.add_column("target")
    table.add_column("API calls")
    for step in plan["steps"]:
        table.add_row(step["action"], step["target"], "\n".join(step["describe"]) or "(already contained)")
    console.print(table)
    console.print(f"plan hash: {plan['hash']}")
    return Confirm.ask("Approve containment?", console=console, default=False)
