"""Sensors' checkpoints and seen records, in Cordon's database (tables made by migration 0008).

A sensor's state survives its process: the watermark a polling sensor has read up to, counters
for ``cordon sensor status`` and ``/metrics``, and the IDs of the records it already put in the
ledger (so a record read twice, from an overlap window or a redelivered message, reaches the
intake once). SQLite and PostgreSQL alike (SQLAlchemy Core).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

state_table = sa.Table(
    "sensor_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("watermark", sa.String(40), nullable=True),
    sa.Column("records_total", sa.Integer, nullable=False),
    sa.Column("batches_total", sa.Integer, nullable=False),
    sa.Column("last_pass_at", sa.String(40), nullable=True),
    sa.Column("last_pass_records", sa.Integer, nullable=False),
    sa.Column("last_pass_seconds", sa.Float, nullable=False),
    sa.Column("lag_seconds", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
)

seen_table = sa.Table(
    "sensor_seen",
    metadata,
    sa.Column("sensor", sa.String(64), primary_key=True),
    sa.Column("record_id", sa.String(256), primary_key=True),
    sa.Column("seen_at", sa.String(40), nullable=False),
    sa.Index("ix_sensor_seen_age", "sensor", "seen_at"),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class SensorState:
    """One sensor's row: ``watermark`` (aware datetime or ``None``), ``records_total`` /
    ``batches_total`` (records put in the ledger, passes that read any), ``last_pass_at``,
    ``last_pass_records``, ``last_pass_seconds``, ``lag_seconds`` (age of the oldest record not
    yet in the ledger when the last pass ended; 0 when it read everything due) and ``last_error``."""

    name: str
    watermark: datetime | None = None
    records_total: int = 0
    batches_total: int = 0
    last_pass_at: datetime | None = None
    last_pass_records: int = 0
    last_pass_seconds: float = 0.0
    lag_seconds: float = 0.0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (times as RFC 3339)."""
        return {"name": self.name, "watermark": _iso(self.watermark) if self.watermark else None,
                "records_total": self.records_total, "batches_total": self.batches_total,
                "last_pass_at": _iso(self.last_pass_at) if self.last_pass_at else None,
                "last_pass_records": self.last_pass_records,
                "last_pass_seconds": round(self.last_pass_seconds, 3), "lag_seconds": round(self.lag_seconds, 3),
                "last_error": self.last_error}


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class SensorStore:
    """The sensor tables on ``engine`` (a :class:`cordon.audit.ledger.Ledger`'s, whose
    construction migrated the schema). Thread-safe as SQLAlchemy's engine is."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def state(self, name: str) -> SensorState:
        """``name``'s row, or a fresh :class:`SensorState` when it never ran."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(state_table).where(state_table.c.name == name)).mappings().first()
        return self._state(row) if row else SensorState(name=name)

    def states(self) -> list[SensorState]:
        """Every sensor that ran, by name."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(state_table).order_by(state_table.c.name)).mappings().all()
        return [self._state(r) for r in rows]

    @staticmethod
    def _state(row: Any) -> SensorState:
        return SensorState(name=row["name"], watermark=_dt(row["watermark"]), records_total=row["records_total"],
                           batches_total=row["batches_total"], last_pass_at=_dt(row["last_pass_at"]),
                           last_pass_records=row["last_pass_records"], last_pass_seconds=row["last_pass_seconds"],
                           lag_seconds=row["lag_seconds"], last_error=row["last_error"])

    def unseen(self, name: str, record_ids: Iterable[str]) -> set[str]:
        """Those of ``record_ids`` that ``name`` has not recorded as seen."""
        ids = list(dict.fromkeys(record_ids))
        seen: set[str] = set()
        with self.engine.connect() as c:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                seen.update(c.execute(sa.select(seen_table.c.record_id).where(
                    seen_table.c.sensor == name, seen_table.c.record_id.in_(chunk))).scalars())
        return set(ids) - seen

    def record_pass(self, name: str, *, seen: Iterable[str], records: int, seconds: float, lag_seconds: float,
                    watermark: datetime | None = None, error: str | None = None) -> SensorState:
        """After a pass: mark ``seen`` record IDs, add ``records`` to the counters, set the last
        pass's figures and (when given) the new ``watermark``, in one transaction. Returns the row."""
        now = _iso(_now())
        ids = list(dict.fromkeys(seen))
        with self.engine.begin() as c:
            current = c.execute(sa.select(state_table).where(state_table.c.name == name)).mappings().first()
            if ids:
                known = set(c.execute(sa.select(seen_table.c.record_id).where(
                    seen_table.c.sensor == name, seen_table.c.record_id.in_(ids))).scalars())
                fresh = [{"sensor": name, "record_id": i, "seen_at": now} for i in ids if i not in known]
                if fresh:
                    c.execute(seen_table.insert(), fresh)
            values = {"last_pass_at": now, "last_pass_records": records, "last_pass_seconds": float(seconds),
                      "lag_seconds": float(lag_seconds), "last_error": error}
            if watermark is not None:
                values["watermark"] = _iso(watermark)
            if current is None:
                c.execute(state_table.insert().values(name=name, records_total=records,
                                                      batches_total=1 if records else 0,
                                                      **({"watermark": None} | values)))
            else:
                c.execute(state_table.update().where(state_table.c.name == name).values(
                    records_total=current["records_total"] + records,
                    batches_total=current["batches_total"] + (1 if records else 0), **values))
        return self.state(name)

    def prune(self, name: str, older_than: timedelta) -> int:
        """Forget ``name``'s seen IDs older than ``older_than`` (longer than any overlap window or
        redelivery it must absorb). Returns how many rows went."""
        cut = _iso(_now() - older_than)
        with self.engine.begin() as c:
            return c.execute(seen_table.delete().where(seen_table.c.sensor == name,
                                                       seen_table.c.seen_at < cut)).rowcount or 0
