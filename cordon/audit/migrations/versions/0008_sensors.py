"""Sensors' checkpoints and seen records (issue 15: detections arrive by themselves).

* ``sensor_state``: one row per sensor (``name``): its ``watermark`` (a polling sensor's read-up-to
  time, RFC 3339), counters (``records_total``, ``batches_total``), the last pass's time, records,
  seconds and lag (``lag_seconds``: how old the oldest record not yet in the ledger was when the
  pass ended), and ``last_error``.
* ``sensor_seen``: ``(sensor, record_id)`` of every record a sensor put in the ledger, with
  ``seen_at``: a record read again (an overlap window, a redelivered message) is dropped before the
  intake. Pruned by age (:meth:`cordon.sensors.store.SensorStore.prune`).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sensor_state",
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
    op.create_table(
        "sensor_seen",
        sa.Column("sensor", sa.String(64), primary_key=True),
        sa.Column("record_id", sa.String(256), primary_key=True),
        sa.Column("seen_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_sensor_seen_age", "sensor_seen", ["sensor", "seen_at"])


def downgrade() -> None:
    op.drop_index("ix_sensor_seen_age", table_name="sensor_seen")
    op.drop_table("sensor_seen")
    op.drop_table("sensor_state")
