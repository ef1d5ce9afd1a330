"""Run a sensor's passes: fetch, drop what was seen, intake, answer, checkpoint, acknowledge.

One pass (:func:`run_pass`), in this order, so a crash anywhere loses nothing and doubles nothing:

1. back-pressure: while more than ``max_pending_cases`` of the ledger's cases are submitted but not
   yet asked (the engine is behind), nothing is read (the queue keeps the records);
2. :meth:`Sensor.fetch` (at most ``max_records``);
3. deliveries whose ``record_id`` the sensor has seen are dropped (an overlap window, a redelivery);
4. the rest go through the intake together (:meth:`cordon.engine.Responder.intake_records`: Sigma,
   dedup, dead letters), and the new cases to ``answer`` (the ``respond`` deployment, as the
   webhook's); the sensor's rejected deliveries (poison) become dead letters;
5. the checkpoint (:meth:`SensorStore.record_pass`: seen IDs, counters, lag, watermark);
6. :meth:`Sensor.settle` acknowledges every delivery of the pass, dropped and rejected ones too.

A crash before 5 leaves the records unacknowledged: delivered again, they are read again and the
intake joins them to the cases they opened (its own dedup); a crash between 5 and 6 drops them at
3. :func:`run_forever` repeats passes, sleeping ``interval_seconds`` after one that read nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from cordon.audit.ledger import cases_table
from cordon.sensors import Sensor
from cordon.sensors.store import SensorStore

log = logging.getLogger("cordon.sensors")

#: case statuses that mean "the engine has it but has not asked yet"
PENDING = ("open", "submitted")


@dataclass
class PassResult:
    """What one pass did: ``read`` deliveries, ``duplicates`` dropped as seen, ``rejected``
    (dead-lettered by the sensor), ``cases`` (the answer's summaries), ``suppressed`` and
    ``dead_letters`` (the intake's), ``seconds``, ``lag_seconds``, ``waiting`` (the reason nothing
    was read: back-pressure) and ``error`` (the pass failed; nothing acknowledged)."""

    sensor: str
    read: int = 0
    duplicates: int = 0
    rejected: int = 0
    cases: list[dict[str, Any]] = field(default_factory=list)
    suppressed: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    lag_seconds: float = 0.0
    waiting: str | None = None
    error: str | None = None


def pending_cases(engine: sa.Engine) -> int:
    """Cases of the ledger opened or submitted and not yet planned or asked."""
    with engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(cases_table)
                             .where(cases_table.c.status.in_(PENDING))).scalar() or 0)


def run_pass(sensor: Sensor, store: SensorStore, responder: Any,
             answer: Callable[[Any], list[dict[str, Any]]] | None, *,
             now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> PassResult:
    """One pass of ``sensor`` (module docstring). ``responder`` is a
    :class:`cordon.engine.Responder`; ``answer(report) -> summaries`` answers the intake's new
    cases (``None``: cases are opened and left to recovery, e.g. when no engine is wired). Never
    raises for a failing source: the result's ``error`` says it, and the checkpoint's
    ``last_error`` keeps it."""
    name = sensor.name
    result = PassResult(sensor=name)
    started = time.monotonic()
    pending = pending_cases(responder.ledger.engine)
    if pending > sensor.settings.max_pending_cases:
        result.waiting = f"{pending} cases wait for the engine (max_pending_cases {sensor.settings.max_pending_cases})"
        return result
    state = store.state(name)
    at = now()
    try:
        fetched = sensor.fetch(state, at)
    except Exception as exc:  # noqa: BLE001 - kept in the checkpoint; the next pass tries again
        result.error = f"{type(exc).__name__}: {exc}"
        store.record_pass(name, seen=(), records=0, seconds=time.monotonic() - started,
                          lag_seconds=state.lag_seconds, error=result.error)
        log.warning("sensor %s: fetch failed: %s", name, result.error)
        return result
    result.read = len(fetched.deliveries)
    result.rejected = len(fetched.rejected)
    fresh_ids = store.unseen(name, [d.record_id for d in fetched.deliveries])
    fresh, taken = [], set()
    for d in fetched.deliveries:
        if d.record_id in fresh_ids and d.record_id not in taken:
            fresh.append(d)
            taken.add(d.record_id)
    result.duplicates = result.read - len(fresh)
    try:
        for d, reason, fld in fetched.rejected:
            responder.ledger.dead_letter(d.origin, None, fld, reason, d.body.decode("utf-8", errors="replace"))
        bodies = [(d.origin, d.body) for d in fresh if d.body]  # an empty one (a test event) has no records
        if bodies:
            report = responder.intake_records(bodies)
            result.suppressed = len(report.suppressed)
            result.dead_letters = len(report.rejected)
            result.cases = answer(report) if answer is not None else [
                responder.summary_without_run(t) for t in report.cases]
    except Exception as exc:  # noqa: BLE001 - not acknowledged: delivered again, deduplicated then
        result.error = f"{type(exc).__name__}: {exc}"
        store.record_pass(name, seen=(), records=0, seconds=time.monotonic() - started,
                          lag_seconds=state.lag_seconds, error=result.error)
        log.warning("sensor %s: intake failed: %s", name, result.error)
        return result
    result.lag_seconds = sensor.lag_seconds(state, fetched, now())
    result.seconds = time.monotonic() - started
    every = fetched.deliveries + [d for d, _, _ in fetched.rejected]
    store.record_pass(name, seen=[d.record_id for d in every], records=len(fresh), seconds=result.seconds,
                      lag_seconds=result.lag_seconds, watermark=fetched.watermark)
    sensor.settle(every)
    return result


def run_forever(sensor: Sensor, store: SensorStore, responder: Any,
                answer: Callable[[Any], list[dict[str, Any]]] | None, *, stop: threading.Event | None = None,
                on_pass: Callable[[PassResult], None] | None = None) -> None:
    """Passes until ``stop`` is set: the next at once after one that read a full batch, else after
    ``interval_seconds``. ``on_pass(result)`` sees each pass (the CLI prints it)."""
    stop = stop or threading.Event()
    while not stop.is_set():
        result = run_pass(sensor, store, responder, answer)
        if on_pass is not None:
            on_pass(result)
        # a full batch, or a log sensor still behind (catching up window by window): go on at once
        busy = not result.error and not result.waiting and (
            result.read + result.rejected >= sensor.settings.max_records
            or (sensor.kind == "poll" and result.lag_seconds > sensor.settings.interval_seconds))
        if not busy:
            stop.wait(sensor.settings.interval_seconds)


def run_configured(responder: Any, clients_for: Callable[[str, dict[str, Any] | None], Any], seconds: float,
                   answer: Callable[[Any], list[dict[str, Any]]] | None, stop: threading.Event | None = None,
                   clouds: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Run every sensor with a ``sensors.<name>`` section in ``responder.config`` for ``seconds``,
    each in its own thread (:func:`run_forever`), with ``clouds[provider]`` (default: the cloud's
    default credentials); returns per
    sensor ``{"passes", "records", "errors"}``. Nothing configured: ``{}`` at once. Raises
    :class:`cordon.config.ConfigError` for a section its sensor's model refuses."""
    from cordon.sensors import build_sensor, sensors

    known = sensors()
    wanted = [n for n in known if n in ((responder.config.raw or {}).get("sensors") or {})]
    built = [build_sensor(n, responder.config, clients_for, (clouds or {}).get(known[n].provider)) for n in wanted]
    if not built:
        return {}
    store = SensorStore(responder.ledger.engine)
    stop = stop or threading.Event()
    tally = {s.name: {"passes": 0, "records": 0, "errors": 0} for s in built}

    def count(r: PassResult) -> None:
        t = tally[r.sensor]
        t["passes"] += 1
        t["records"] += r.read - r.duplicates
        t["errors"] += 1 if r.error else 0

    threads = [threading.Thread(target=run_forever, args=(s, store, responder, answer),
                                kwargs={"stop": stop, "on_pass": count}, name=f"sensor-{s.name}", daemon=True)
               for s in built]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    return tally
