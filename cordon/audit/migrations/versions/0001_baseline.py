"""Baseline: the tables the ledger created with ``metadata.create_all`` before migrations.

A database made by that version (tables present, no ``alembic_version``) is stamped at this
revision by :func:`cordon.audit.migrations.upgrade` instead of running it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("case_id", sa.String(64), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(256), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("hash"),
    )
    op.create_index("ix_ledger_case_id", "ledger", ["case_id"])
    op.create_index("ix_ledger_kind", "ledger", ["kind"])
    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])
    op.create_table(
        "cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("case_key", sa.String(512), nullable=False),
        sa.Column("opened_at", sa.String(40), nullable=False),
        sa.Column("playbook", sa.String(128), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("plan_hash", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.String(40), nullable=True),
        sa.Column("detection", sa.Text, nullable=False),
        sa.UniqueConstraint("case_key"),
    )
    op.create_table(
        "case_detections",
        sa.Column("detection_uid", sa.String(128), primary_key=True),
        sa.Column("case_id", sa.String(64), sa.ForeignKey("cases.case_id"), nullable=False),
        sa.Column("received_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_case_detections_case_id", "case_detections", ["case_id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("origin", sa.String(1024), nullable=False),
        sa.Column("position", sa.Integer, nullable=True),
        sa.Column("field", sa.String(512), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw_text", sa.Text, nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("ix_case_detections_case_id", "case_detections")
    op.drop_table("case_detections")
    op.drop_table("cases")
    op.drop_table("ledger_head")
    op.drop_index("ix_ledger_kind", "ledger")
    op.drop_index("ix_ledger_case_id", "ledger")
    op.drop_table("ledger")
