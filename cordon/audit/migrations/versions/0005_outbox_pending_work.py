"""The Slack outbox holds work a run did not wait for.

``slack_outbox_cases`` gains what the outbox's sender (:meth:`cordon.approvals.outbox.Outbox.flush_pending`)
finishes when a run left it (the channel's rate slot was taken): ``pending`` (1 while anything
below is left), ``asked_record`` (the ``approval.asked`` record to append once the case's buttons
are in Slack) and ``asked_done``, ``request`` (the blocks and text of a case's own message not
posted yet), ``pending_update`` (the newest ``chat.update`` of the case's own
message), ``pending_replies`` (thread replies, a JSON list), ``claim_until`` / ``claim_by`` (one
sender at a time per row) and ``next_try_at`` (back-off after Slack refused).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slack_outbox_cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pending", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("request", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("asked_record", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("asked_done", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("pending_update", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("pending_replies", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("claim_until", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("claim_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("next_try_at", sa.Float(), nullable=True))
        batch_op.create_index("ix_slack_outbox_cases_pending", ["pending"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("slack_outbox_cases", schema=None) as batch_op:
        batch_op.drop_index("ix_slack_outbox_cases_pending")
        for name in ("next_try_at", "claim_by", "claim_until", "pending_replies", "pending_update", "asked_done",
                     "asked_record", "request", "pending"):
            batch_op.drop_column(name)
