"""The watch after containment: a scheduled Prefect flow (issue 14, item 2).

Thin: which cases are due and what one pass does are :func:`cordon.watch.due` and
:func:`cordon.watch.watch_case`; this flow gives each due case its own clients (the cloud its run
recorded) and Slack, and returns what it found. Served by ``cordon worker`` next to the respond
flow and the approval sweeper (``--watch-every``, default 60 s), or as the ``watch`` deployment of
``prefect.yaml``. ``now`` (ISO 8601) overrides the clock, for rehearsals and tests. Environment as
the respond flow: ``CORDON_DATABASE_URL``, ``CORDON_SLACK_BOT_TOKEN``, ``CORDON_SLACK_API_URL``.
"""

from datetime import UTC, datetime
from typing import Any

from prefect import flow


def watch_windows(playbooks: list[Any]) -> dict[str, int]:
    """``{playbook name: watch seconds}`` of the playbooks that say ``watch:``."""
    return {pb.name: pb.watch_seconds for pb in playbooks if pb.watch_seconds}


@flow(name="watch-contained", log_prints=True)
def watch_contained(now: str | None = None, slack: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One pass over the contained cases inside their playbook's ``watch`` window: each is verified
    again and its credential searched for in the cloud's audit log (:func:`cordon.watch.watch_case`).
    ``slack``: ``{"base_url"?, "token"?}`` as the respond flow's; without a bot token alerts are
    only recorded. Returns ``[{case_id, held, used, alert, ended}]`` (``skipped`` with the reason for
    a case whose cloud cannot be reached again: an in-process sandbox run's stand-ins)."""
    from cordon.approvals.decide import parse_time
    from cordon.audit.ledger import Ledger, default_database_url
    from cordon.clouds import clients_for, cloud_for_case
    from cordon.config import load_config
    from cordon.detections.model import Detection
    from cordon.playbooks.schema import load_playbooks
    from cordon.recovery import IN_PROCESS
    from cordon.slack.client import web_client
    from cordon.watch import due, recorded_cloud, slack_alerter, watch_case

    at = parse_time(now) if now else datetime.now(UTC)
    if at is None:
        raise ValueError(f"watch_contained: parameter 'now': not an ISO 8601 time: {now!r}")
    config = load_config()
    ledger = Ledger(default_database_url())
    try:
        client = web_client(slack or {})
    except RuntimeError:
        client = None
    alert = slack_alerter(ledger, client, config.slack_channel) if client is not None else None
    out: list[dict[str, Any]] = []
    for item in due(ledger, watch_windows(load_playbooks(config.playbooks_dir)), at):
        records = list(ledger.records(case_id=item.case_id))
        cloud, where, _ = recorded_cloud(ledger, item.case_id, records)
        if where == IN_PROCESS and cloud.get("sandbox"):
            reason = "contained by an in-process sandbox run: its stand-ins lived only as long as that run"
            ledger.append("watch.ended", {"checks": 0, "alerts": 0, "skipped": reason}, case_id=item.case_id,
                          actor="cordon")
            out.append({"case_id": item.case_id, "skipped": reason})
            continue
        detection = Detection.model_validate_json((ledger.case(item.case_id) or {})["detection"])
        clients = clients_for(detection.provider, cloud_for_case(cloud, detection, item.case_id))
        result = watch_case(ledger, item, clients, at, alert)
        out.append({**result, "used": len(result["used"])})
    for line in out:
        print(line)
    return out


def serve(interval: int = 60) -> None:  # pragma: no cover - a long-running process
    """Serve the watch as the ``watch-contained/watch`` deployment, every ``interval`` s."""
    watch_contained.serve(name="watch", interval=interval)
