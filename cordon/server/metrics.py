"""Prometheus metrics of ``cordon serve`` (``GET /metrics``), read from the ledger's database at
scrape time, so every replica reports the same numbers and a restart loses none.

Exposition format: Prometheus text format 0.0.4, written by ``prometheus_client``
(https://prometheus.io/docs/instrumenting/exposition_formats/). Families:

- ``cordon_cases{status}`` (gauge): cases by their current status (``awaiting_approval``,
  ``contained``, ``denied``, ...).
- ``cordon_oldest_awaiting_approval_seconds`` (gauge): how long the longest-waiting case has
  waited for a decision (since its status became ``awaiting_approval``; 0 when none): what an
  on-call alert should watch.
- ``cordon_dead_letters_total`` (counter): records that could not be read (``cordon dead-letters``).
- ``cordon_ledger_records_total`` (counter): records in the hash chain (the head's ``seq``).
- ``cordon_incidents_total`` (counter): incidents opened.
- ``cordon_refusals_total{source,reason}`` (counter): refused unsigned requests (Slack signatures,
  webhook credentials), summed over the refusal windows.

- ``cordon_sensor_lag_seconds{sensor}`` (gauge): age of the oldest record a sensor had not yet
  put in the ledger at its last pass (:mod:`cordon.sensors`);
  ``cordon_sensor_records_total{sensor}`` (counter): records it put in the ledger (throughput is
  its rate); ``cordon_sensor_last_pass_timestamp_seconds{sensor}`` (gauge): when it last ran, so
  an alert sees a sensor that stopped; ``cordon_sensor_errors{sensor}`` (gauge): 1 when its last
  pass failed.

More families come from the collectors given to :func:`metrics_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from cordon.audit.ledger import (
    Ledger,
    cases_table,
    dead_letters_table,
    head_table,
    incidents_table,
    refusal_windows_table,
)
from cordon.sensors.store import state_table

#: Statuses of a case waiting for a human decision.
AWAITING = ("awaiting_approval",)

#: A collector of more metric families: ``() -> iterable of prometheus_client Metric``.
Families = Callable[[], Iterable[Any]]


class LedgerCollector:
    """A ``prometheus_client`` custom collector (``collect()`` yields metric families) over
    ``ledger``'s tables; ``extra`` collectors' families follow. ``clock()`` is the current aware
    UTC time (for the oldest-waiting age). Raises what SQLAlchemy raises when the database is
    unreachable (the scrape then fails, which Prometheus records as ``up == 0``)."""

    def __init__(self, ledger: Ledger, extra: Iterable[Families] = (),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.ledger = ledger
        self.extra = list(extra)
        self.clock = clock

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self.ledger.engine.connect() as c:
            by_status = c.execute(sa.select(cases_table.c.status, sa.func.count())
                                  .group_by(cases_table.c.status)).all()
            oldest = c.execute(sa.select(sa.func.min(cases_table.c.updated_at))
                               .where(cases_table.c.status.in_(AWAITING))).scalar()
            dead = c.execute(sa.select(sa.func.count()).select_from(dead_letters_table)).scalar() or 0
            head = c.execute(sa.select(sa.func.max(head_table.c.seq))).scalar() or 0
            incidents = c.execute(sa.select(sa.func.count()).select_from(incidents_table)).scalar() or 0
            sensors = c.execute(sa.select(state_table)).mappings().all()
            refusals = c.execute(sa.select(refusal_windows_table.c.source, refusal_windows_table.c.reason,
                                           sa.func.sum(refusal_windows_table.c.count))
                                 .group_by(refusal_windows_table.c.source, refusal_windows_table.c.reason)).all()
        cases = GaugeMetricFamily("cordon_cases", "Cases by current status", labels=["status"])
        for status, n in sorted(by_status):
            cases.add_metric([status], n)
        yield cases
        age = 0.0
        if oldest:
            at = datetime.fromisoformat(str(oldest).replace("Z", "+00:00"))
            age = max(0.0, (self.clock() - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds())
        yield GaugeMetricFamily("cordon_oldest_awaiting_approval_seconds",
                                "Age of the oldest case waiting for an approval decision", value=age)
        yield CounterMetricFamily("cordon_dead_letters", "Input records that could not be read", value=dead)
        yield CounterMetricFamily("cordon_ledger_records", "Records in the audit ledger's hash chain", value=head)
        yield CounterMetricFamily("cordon_incidents", "Incidents opened", value=incidents)
        refused = CounterMetricFamily("cordon_refusals", "Refused unsigned requests", labels=["source", "reason"])
        for source, reason, n in sorted(refusals):
            refused.add_metric([source, reason], n or 0)
        yield refused
        lag = GaugeMetricFamily("cordon_sensor_lag_seconds", "Age of the oldest record not yet in the ledger",
                                labels=["sensor"])
        done = CounterMetricFamily("cordon_sensor_records", "Records a sensor put in the ledger", labels=["sensor"])
        last = GaugeMetricFamily("cordon_sensor_last_pass_timestamp_seconds", "When the sensor last ran (Unix time)",
                                 labels=["sensor"])
        failing = GaugeMetricFamily("cordon_sensor_errors", "1 when the sensor's last pass failed", labels=["sensor"])
        for row in sorted(sensors, key=lambda r: r["name"]):
            lag.add_metric([row["name"]], row["lag_seconds"])
            done.add_metric([row["name"]], row["records_total"])
            if row["last_pass_at"]:
                last.add_metric([row["name"]], datetime.fromisoformat(row["last_pass_at"]).timestamp())
            failing.add_metric([row["name"]], 1.0 if row["last_error"] else 0.0)
        yield from (lag, done, last, failing)
        for more in self.extra:
            yield from more()


def metrics_text(ledger: Ledger, extra: Iterable[Families] = ()) -> tuple[bytes, str]:
    """The exposition of :class:`LedgerCollector` over ``ledger`` (plus ``extra``), and its
    ``Content-Type``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, extra))
    return generate_latest(registry), CONTENT_TYPE_LATEST
