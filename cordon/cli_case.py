"""``cordon case``: the steps a case leaves to a person (:mod:`cordon.manual_steps`).

``cordon case pending`` lists the cases awaiting a manual step and what is left; ``cordon case done
CASE [--step ID] --by NAME`` records that a person did it (``manual.done``, actor ``cli:<NAME>``)
and, once nothing is left, closes the case ``contained``. Exit codes: 0 done, 1 refused (the reason
on stderr).
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

case_app = typer.Typer(help="Cases: the steps containment leaves to a person.", no_args_is_help=True)
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def _ledger():
    from cordon.audit.ledger import Ledger

    return Ledger()


@case_app.command("pending")
def pending_cases(output: Annotated[str, typer.Option(help="text or json")] = "text") -> None:
    """Every case awaiting a manual step: the case, its playbook and the steps left."""
    from cordon.manual_steps import AWAITING, pending

    ledger = _ledger()
    rows = [{"case_id": c["case_id"], "playbook": c.get("playbook"), "steps": pending(ledger, c["case_id"])}
            for c in ledger.cases() if c.get("status") == AWAITING]
    for r in rows:
        if output == "json":
            out.print(json.dumps(r), markup=False)
        else:
            out.print(f"{escape(r['case_id'])}  {escape(str(r['playbook']))}")
            for s in r["steps"]:
                out.print(f"  - {escape(s['id'])}: {escape(s['text'])}")
    if not rows and output != "json":
        out.print("no case awaits a manual step")


@case_app.command("done")
def done(case_id: Annotated[str, typer.Argument(help="the case id")],
         step: Annotated[str | None, typer.Option(help="the step's id (default: the only one left)")] = None,
         by: Annotated[str | None, typer.Option(help="who did it (default: $USER)")] = None,
         note: Annotated[str | None, typer.Option(help="what was done, for the record")] = None) -> None:
    """Record that a person did a case's manual step; the last one closes the case ``contained``."""
    from cordon.manual_steps import ManualStepError, mark_done

    who = by or os.environ.get("USER") or "unknown"
    try:
        result = mark_done(_ledger(), case_id, f"cli:{who}", step, note)
    except ManualStepError as exc:
        err.print(f"refused: {escape(str(exc))}")
        raise typer.Exit(1) from None
    left = result["remaining"]
    out.print(f"{escape(case_id)}: step {escape(result['step'])} done by {escape(who)}; "
              + (f"left: {escape(', '.join(left))}" if left else "the case is closed contained"))
