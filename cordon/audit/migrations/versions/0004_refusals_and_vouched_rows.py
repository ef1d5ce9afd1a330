"""Refusal counters, and a chained baseline for the mutable rows the ledger now vouches for.

* ``refusal_windows``: unsigned / forged requests counted per (source, reason, window) with a few
  samples, summarised into the chain per window (:mod:`cordon.audit.refusals`).
* Baseline records: from this revision on, every change of a ``cases`` row appends a
  ``case.status`` record and every dead letter's ``intake.rejected`` record carries the hash of the
  stored row, and ``verify`` compares the rows with them. Rows written before it have no such
  record, so this revision appends one per existing row, in the upgrade's transaction: a
  ``case.status`` record (``changed: ["baseline"]``) per case and a ``dead_letter.baseline``
  record per dead letter. They vouch for the rows as they are at upgrade time (an edit made
  before the upgrade cannot be told). The hash chain's formula is written out here, not
  imported: a revision is frozen history (it is the one in ``cordon.audit.ledger``:
  ``sha256(prev_hash + canonical_json({seq, ts, case_id, run_id, kind, actor, payload}))``).
  Offline (``cordon db upgrade --sql``) the baseline cannot be computed and is left out; upgrade
  a database that holds cases online.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def upgrade() -> None:
    op.create_table(
        "refusal_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("window_start", sa.String(40), nullable=False),
        sa.Column("window_seconds", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_ts", sa.String(40), nullable=False),
        sa.Column("last_ts", sa.String(40), nullable=False),
        sa.Column("samples", sa.Text, nullable=False),
        sa.Column("summary_seq", sa.Integer, nullable=True),
        sa.UniqueConstraint("source", "reason", "window_start", name="uq_refusal_windows_key"),
    )
    op.create_index("ix_refusal_windows_open", "refusal_windows", ["summary_seq", "window_start"])
    if op.get_context().as_sql:
        op.execute("-- cordon 0004: the baseline records of existing cases and dead letters need an online upgrade")
        return
    _baseline(op.get_bind())


def _baseline(conn: sa.Connection) -> None:
    md = sa.MetaData()
    ledger = sa.Table("ledger", md, autoload_with=conn)
    head = sa.Table("ledger_head", md, autoload_with=conn)
    cases = sa.Table("cases", md, autoload_with=conn)
    dead = sa.Table("dead_letters", md, autoload_with=conn)
    top = conn.execute(sa.select(head.c.seq, head.c.hash).where(head.c.id == 1).with_for_update()).first()
    if top is None:
        return
    seq, prev = top.seq, top.hash
    ts = datetime.now(UTC).isoformat()

    def append(kind: str, payload: dict) -> None:
        nonlocal seq, prev
        seq += 1
        text = _canonical(payload)
        body = {"seq": seq, "ts": ts, "case_id": None, "run_id": None, "kind": kind, "actor": "cordon-migration",
                "payload": text}
        digest = hashlib.sha256((prev + _canonical(body)).encode()).hexdigest()
        conn.execute(ledger.insert().values(seq=seq, ts=ts, case_id=None, run_id=None, kind=kind,
                                            actor="cordon-migration", payload=text, prev_hash=prev, hash=digest))
        prev = digest

    for r in conn.execute(sa.select(cases).order_by(cases.c.opened_at, cases.c.case_id)).mappings().all():
        state = {f: r[f] for f in ("case_id", "case_key", "opened_at", "playbook", "status", "flow_run_id",
                                   "plan_hash")}
        state["detection_sha256"] = _sha(r["detection"])
        append("case.status", {**state, "state_sha256": _sha(_canonical(state)), "changed": ["baseline"],
                               "migration": "0004"})
    for r in conn.execute(sa.select(dead).order_by(dead.c.id)).mappings().all():
        row = {f: r[f] for f in ("id", "ts", "origin", "position", "field", "reason", "raw_text", "raw_sha256")}
        append("dead_letter.baseline", {
            "dead_letter_id": r["id"], "origin": r["origin"], "position": r["position"], "field": r["field"],
            "raw_sha256": r["raw_sha256"], "stored_sha256": _sha(r["raw_text"]), "row_sha256": _sha(_canonical(row)),
            "migration": "0004"})
    if seq != top.seq:
        conn.execute(head.update().where(head.c.id == 1).values(seq=seq, hash=prev))


def downgrade() -> None:
    # the baseline records stay: the ledger is append-only
    op.drop_index("ix_refusal_windows_open", "refusal_windows")
    op.drop_table("refusal_windows")
