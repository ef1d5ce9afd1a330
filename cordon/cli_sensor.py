"""``cordon sensor``: list the sensors, run one, show their checkpoints (:mod:`cordon.sensors`).

``run`` answers the new cases as ``cordon serve``'s webhook does: each submitted to the
``respond`` deployment with Slack approval (needs ``PREFECT_API_URL`` and approvers), unless
``--record-only`` (cases opened and left for ``cordon worker``'s recovery sweep). Each pass prints
one JSON line (``--output json``) or one text line.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sensor_app = typer.Typer(help="Sensors: detections that arrive by themselves (queues, subscriptions, audit logs).",
                         no_args_is_help=True)
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


@sensor_app.command("list")
def list_sensors(output: Annotated[str, typer.Option(help="text or json")] = "text") -> None:
    """Every sensor: name, cloud, kind (queue or poll), what it reads, the permissions it needs."""
    from cordon.sensors import sensors

    rows = [{"name": n, "provider": c.provider, "kind": c.kind, "title": c.title, "permissions": list(c.permissions)}
            for n, c in sensors().items()]
    if output == "json":
        for r in rows:
            out.print(json.dumps(r), markup=False)
        return
    table = Table("sensor", "cloud", "kind", "reads", "needs")
    for r in rows:
        table.add_row(r["name"], r["provider"], r["kind"], r["title"], ", ".join(r["permissions"]))
    out.print(table)


@sensor_app.command("status")
def status(output: Annotated[str, typer.Option(help="text or json")] = "text") -> None:
    """Each sensor's checkpoint: watermark, records and batches so far, the last pass (records,
    seconds), the lag (age of the oldest record not yet in the ledger) and the last error."""
    from cordon.audit.ledger import Ledger
    from cordon.sensors import sensors
    from cordon.sensors.store import SensorState, SensorStore

    store = SensorStore(Ledger().engine)
    ran = {s.name: s for s in store.states()}
    states = [ran.get(n) or SensorState(name=n) for n in sensors()] + [s for n, s in ran.items()
                                                                         if n not in sensors()]
    if output == "json":
        for s in states:
            out.print(json.dumps(s.as_dict()), markup=False)
        return
    table = Table("sensor", "watermark", "records", "batches", "last pass", "lag s", "last error")
    for s in states:
        d = s.as_dict()
        last = f"{d['last_pass_at']} ({d['last_pass_records']} in {d['last_pass_seconds']} s)" if d["last_pass_at"] \
            else "never"
        table.add_row(s.name, d["watermark"] or "-", str(s.records_total), str(s.batches_total), last,
                      str(d["lag_seconds"]), escape(s.last_error or ""))
    out.print(table)


@sensor_app.command("run")
def run(name: Annotated[str, typer.Argument(help="The sensor (cordon sensor list).")],
        once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
        record_only: Annotated[bool, typer.Option(
            "--record-only", help="Open the cases but do not submit their runs (the worker's recovery will).")] = False,
        cloud_params: Annotated[str | None, typer.Option(
            help="JSON cloud parameters for the sensor's clients (a stand-in's, for rehearsals); "
                 "default: the cloud's own credentials from the environment.")] = None,
        output: Annotated[str, typer.Option(help="text or json")] = "text") -> None:
    """Run sensor NAME: passes until SIGTERM / Ctrl-C (or one with --once)."""
    from cordon.clouds import clients_for
    from cordon.config import ConfigError
    from cordon.engine import Responder
    from cordon.sensors import build_sensor
    from cordon.sensors.runner import PassResult, run_forever, run_pass
    from cordon.sensors.store import SensorStore

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    responder = Responder()
    cloud = json.loads(cloud_params) if cloud_params else None
    try:
        sensor = build_sensor(name, responder.config, clients_for, cloud)
    except (KeyError, ConfigError) as exc:
        err.print(f"[red]configuration error:[/red] {escape(str(exc).strip(chr(39)))}", highlight=False)
        raise typer.Exit(1) from None
    answer = None
    if not record_only:
        from cordon.approvals.policy import require_approvers

        try:
            require_approvers(responder.config, responder.playbooks)
        except ConfigError as exc:
            err.print(f"[red]configuration error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        slack = {"channel": responder.config.slack_channel, "base_url": os.environ.get("CORDON_SLACK_API_URL")}

        def answer(report: Any) -> list[dict[str, Any]]:
            return responder.submit_report(report, cloud=None, slack=slack)

    store = SensorStore(responder.ledger.engine)

    def show(r: PassResult) -> None:
        line = {"sensor": r.sensor, "read": r.read, "duplicates": r.duplicates, "rejected": r.rejected,
                "cases": [{"case_id": c.get("case_id"), "playbook": c.get("playbook"), "status": c.get("status")}
                          for c in r.cases],
                "suppressed": r.suppressed, "dead_letters": r.dead_letters, "seconds": round(r.seconds, 3),
                "lag_seconds": round(r.lag_seconds, 3), "waiting": r.waiting, "error": r.error}
        if output == "json":
            out.print(json.dumps(line), markup=False)
        elif r.read or r.rejected or r.error or r.waiting:
            out.print(escape(f"{r.sensor}: read {r.read} ({r.duplicates} seen before, {r.rejected} rejected), "
                             f"{len(r.cases)} case(s), lag {r.lag_seconds:.1f} s"
                             + (f"; waiting: {r.waiting}" if r.waiting else "")
                             + (f"; error: {r.error}" if r.error else "")))

    if once:
        result = run_pass(sensor, store, responder, answer)
        show(result)
        raise typer.Exit(1 if result.error else 0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_forever(sensor, store, responder, answer, stop=stop, on_pass=show)
    except KeyboardInterrupt:
        stop.set()

