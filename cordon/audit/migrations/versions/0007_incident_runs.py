"""Incident runs open to late cases (issue 13: a storm of one actor's keys is one run).

* ``incident_runs``: one row per requested run of an incident's lead (``lead_case_id``,
  ``attempt``) submitted to the deployment and not yet planned. While ``sealed_at`` is empty, a
  new case of the same incident (same approval mode, an approval policy no stricter than the
  lead's, no object another case of the run already plans) joins the run instead of getting its
  own (``joined``: ``[{case_id, playbook, cloud}]``); the run seals it when it starts planning and
  answers every case that joined. ``strictness`` and ``conflict_keys`` are JSON lists.

Written in the same transaction as the chained ``run.delegated`` / ``run.sealed`` records
(:meth:`cordon.audit.ledger.Ledger.join_incident_run`, :meth:`~cordon.audit.ledger.Ledger.seal_incident_run`).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incident_runs",
        sa.Column("lead_case_id", sa.String(64), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("incident_id", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("where", sa.String(32), nullable=False),
        sa.Column("strictness", sa.Text, nullable=False),
        sa.Column("conflict_keys", sa.Text, nullable=False),
        sa.Column("joined", sa.Text, nullable=False),
        sa.Column("opened_at", sa.String(40), nullable=False),
        sa.Column("sealed_at", sa.String(40), nullable=True),
    )
    op.create_index("ix_incident_runs_open", "incident_runs", ["incident_id", "sealed_at"])


def downgrade() -> None:
    op.drop_index("ix_incident_runs_open", table_name="incident_runs")
    op.drop_table("incident_runs")
