"""The approval sweeper: a scheduled Prefect flow that expires, reminds and escalates, and runs
stranded cases again.

Thin: the logic is :func:`cordon.approvals.expiry.sweep` and :mod:`cordon.recovery` (cases not
closed whose run is gone are submitted again to the ``respond`` deployment, one attempt more, when
they were recorded with ``--approve slack`` or ``auto``:
:meth:`cordon.engine.Responder.recover_stranded`). Serve it next to the respond worker
(``python -m cordon.flows.sweeper`` runs it every 60 seconds, or pass another interval in seconds), or
call ``sweep_approvals()`` once. ``now`` (ISO 8601) overrides the clock, for rehearsals and tests.
Environment as the respond flow: ``CORDON_DATABASE_URL``, ``CORDON_SLACK_BOT_TOKEN``,
``CORDON_SLACK_API_URL``, ``PREFECT_API_URL``.
"""

import os
import sys
from datetime import UTC, datetime
from typing import Any

from prefect import flow


@flow(name="approval-sweeper", log_prints=True)
def sweep_approvals(now: str | None = None, slack: dict[str, Any] | None = None,
                    recover: bool = True) -> list[dict[str, Any]]:
    """One sweep over open approval requests (Slack's and Teams'); returns what was done (see
    :func:`cordon.approvals.expiry.sweep`). ``slack``: ``{"base_url"?, "token"?}`` as the respond
    flow's; without a bot token nothing is posted, but expiries still resume their runs. With
    ``recover``, stranded cases are then run again (``{"case_id", "event": "recovery", "action":
    "submitted" | "gave_up" | "lost", "attempt", "reason", "flow_run_id"}`` per case acted on;
    cases left to other modes are not listed, nor those this pass resumed: :func:`settled_cases`)."""
    from cordon.approvals.decide import parse_time
    from cordon.approvals.expiry import sweep
    from cordon.audit.ledger import Ledger, default_database_url
    from cordon.slack.client import web_client

    at = parse_time(now) if now else datetime.now(UTC)
    if at is None:
        raise ValueError(f"sweep_approvals: parameter 'now': not an ISO 8601 time: {now!r}")
    try:
        client = web_client(slack or {})
    except RuntimeError:
        client = None
    ledger = Ledger(default_database_url())
    events = sweep(ledger, client, now=at, teams=_teams_cards(ledger))
    if recover:
        from cordon.engine import Responder

        # a run this pass resumed (or saw settled by a click) is starting again: its state and
        # process records are in flux now, so recovery judges it on the next pass, not this one
        for rec in Responder(ledger=ledger).recover_stranded(exclude=settled_cases(events)):
            if rec.action != "skipped":
                events.append({"case_id": rec.case_id, "event": "recovery", "action": rec.action,
                               "attempt": rec.attempt, "reason": rec.reason,
                               "flow_run_id": (rec.summary or {}).get("flow_run_id")})
    for e in events:
        print(e)
    return events


def _teams_cards(ledger: Any) -> Any:
    """The Teams cards to refresh (:func:`cordon.teams.channel.cards_for`), or ``None`` without a
    usable ``teams`` section: the sweep still expires and escalates, the ledger records it."""
    from cordon.config import ConfigError, load_config
    from cordon.teams.channel import cards_for

    try:
        return cards_for(ledger, load_config())
    except ConfigError:
        return None


#: Sweep events after which the case's run was resumed in this pass (or is being resumed by
#: the click that settled it first).
SETTLED_EVENTS = frozenset({"expired", "delivered", "expiry_lost"})


def settled_cases(events: list[dict[str, Any]]) -> set[str]:
    """The cases whose run the sweep's ``events`` resumed (or saw settled by a click): left out of
    the same pass's recovery (``exclude``), since a run just resumed may be PENDING/RUNNING before
    its new process has recorded itself."""
    return {e["case_id"] for e in events if e.get("event") in SETTLED_EVENTS}


def serve(interval: int = 60) -> None:  # pragma: no cover - a long-running process
    """Serve the sweeper as the ``approval-sweeper/sweeper`` deployment, every ``interval`` s."""
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    sweep_approvals.serve(name="sweeper", interval=interval)


if __name__ == "__main__":  # pragma: no cover
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
