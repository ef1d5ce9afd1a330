"""Incidents: cases correlated by their actor within a window (issue 14).

* ``incidents``: one row per actor burst (``actor_key`` from
  :meth:`cordon.providers.Provider.actor_key`, the lead case, when it opened and last took a case,
  the actor as the detection described it, redacted); ``last_at`` moves as cases join.
* ``incident_cases``: which incident each case belongs to (``case_id`` unique).

Both are written in the same transaction as the chained ``incident.opened`` /
``incident.case_added`` records (:meth:`cordon.audit.ledger.Ledger.assign_incident`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("incident_id", sa.String(64), primary_key=True),
        sa.Column("actor_key", sa.String(512), nullable=False),
        sa.Column("provider", sa.String(32), nullable=True),
        sa.Column("opened_at", sa.String(40), nullable=False),
        sa.Column("last_at", sa.String(40), nullable=False),
        sa.Column("lead_case_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
    )
    op.create_index("ix_incidents_actor_key", "incidents", ["actor_key"])
    op.create_table(
        "incident_cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("incident_id", sa.String(64), nullable=False),
        sa.Column("added_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_incident_cases_incident_id", "incident_cases", ["incident_id"])


def downgrade() -> None:
    op.drop_index("ix_incident_cases_incident_id", table_name="incident_cases")
    op.drop_table("incident_cases")
    op.drop_index("ix_incidents_actor_key", table_name="incidents")
    op.drop_table("incidents")
