"""The audit ledger: an append-only, hash-chained record of every step Cordon takes.

Tables (SQLAlchemy 2.0 Core; SQLite by default, PostgreSQL in production):

* ``ledger``: one row per step. ``seq`` is gap-free and increasing; ``hash`` is
  ``sha256(prev_hash || canonical_json(body))`` where ``body`` holds every other column, so
  changing, deleting or reordering a row breaks the chain from that row on (:meth:`Ledger.verify`).
* ``ledger_head``: a single row holding the last ``seq`` and ``hash``; appends lock it
  (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) so concurrent writers
  from several processes still produce one linear chain.
* ``cases``: one row per open case, ``case_key`` unique (:meth:`Detection.case_key`): the
  database, not memory, decides whether a detection opens a case or joins one.
* ``case_detections``: which detections joined which case (``detection_uid`` unique).
* ``dead_letters``: records that could not be parsed, with the reason and the record's text.

Secrets never enter the ledger: payloads pass through :func:`redact` first.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cordon.detections.model import canonical_json

GENESIS = "0" * 64

metadata = sa.MetaData()

ledger_table = sa.Table(
    "ledger",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("case_id", sa.String(64), nullable=True, index=True),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("kind", sa.String(64), nullable=False, index=True),
    sa.Column("actor", sa.String(256), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
)

head_table = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

cases_table = sa.Table(
    "cases",
    metadata,
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("case_key", sa.String(512), nullable=False, unique=True),
    sa.Column("opened_at", sa.String(40), nullable=False),
    sa.Column("playbook", sa.String(128), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("plan_hash", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=True),
    sa.Column("detection", sa.Text, nullable=False),
)

case_detections_table = sa.Table(
    "case_detections",
    metadata,
    sa.Column("detection_uid", sa.String(128), primary_key=True),
    sa.Column("case_id", sa.String(64), sa.ForeignKey("cases.case_id"), nullable=False, index=True),
    sa.Column("received_at", sa.String(40), nullable=False),
)

dead_letters_table = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("origin", sa.String(1024), nullable=False),
    sa.Column("position", sa.Integer, nullable=True),
    sa.Column("field", sa.String(512), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw_text", sa.Text, nullable=False),
    sa.Column("raw_sha256", sa.String(64), nullable=False),
)

#: Keys whose values are secrets wherever they appear in an API response or raw record.
SECRET_KEYS = frozenset(
    k.lower()
    for k in (
        "secretAccessKey", "SecretAccessKey", "sessionToken", "SessionToken", "password", "Password",
        "ServicePassword", "servicePassword", "privateKey", "PrivateKey", "KeyMaterial", "keyMaterial",
        "privateKeyData", "secretText", "token", "client_secret", "clientSecret",
    )
)
REDACTED = "***redacted***"


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with the value of every key in :data:`SECRET_KEYS` (case-insensitive)
    replaced by ``"***redacted***"``, at any depth."""
    if isinstance(obj, dict):
        return {k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS and v not in (None, "")
                    else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def default_database_url() -> str:
    """``CORDON_DATABASE_URL`` if set, else a SQLite file in the user's data directory
    (``platformdirs.user_data_dir('cordon')/ledger.db``), created on first use."""
    url = os.environ.get("CORDON_DATABASE_URL")
    if url:
        return url
    import platformdirs

    path = Path(platformdirs.user_data_dir("cordon")) / "ledger.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds and ``+00:00``."""
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class LedgerRecord:
    """One ledger row as read back; ``payload`` decoded from JSON."""

    seq: int
    ts: str
    case_id: str | None
    run_id: str | None
    kind: str
    actor: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`Ledger.verify`: ``ok``, how many records were checked, and for a
    broken chain the ``seq`` of the first bad record and why."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CaseOpen:
    """Result of :meth:`Ledger.open_case`: the case, and whether this call opened it (``True``)
    or the detection joined an existing one (``False``)."""

    case_id: str
    opened: bool
    duplicate_detection: bool = False


def _hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def _body(seq: int, ts: str, case_id: str | None, run_id: str | None, kind: str, actor: str | None,
          payload: str) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "case_id": case_id, "run_id": run_id, "kind": kind, "actor": actor,
            "payload": payload}


class Ledger:
    """The audit ledger at a SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://...``).

    Creates its tables on first use. Thread- and process-safe appends (see module docstring).
    """

    def __init__(self, url: str | None = None):
        self.url = url or default_database_url()
        self.engine: Engine = _make_engine(self.url)
        # Writes go through this view of the engine: on SQLite they BEGIN IMMEDIATE (take the
        # write lock up front); reads BEGIN DEFERRED and never block writers for long (WAL).
        self.writer: Engine = self.engine.execution_options(cordon_write=True)
        metadata.create_all(self.writer)
        with self.writer.begin() as conn:
            try:
                conn.execute(head_table.insert().values(id=1, seq=0, hash=GENESIS))
            except IntegrityError:
                pass

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    # -- writing ---------------------------------------------------------------------------
    def append(self, kind: str, payload: dict[str, Any], *, case_id: str | None = None,
               run_id: str | None = None, actor: str | None = None) -> LedgerRecord:
        """Append one record; returns it with its ``seq`` and ``hash``.

        ``kind`` is a dotted step name (``detection.received``, ``approval.given``,
        ``action.contained``); ``payload`` any JSON-serialisable dict (secrets redacted here).
        """
        text = canonical_json(redact(payload))
        ts = now_iso()
        with self.writer.begin() as conn:
            head = conn.execute(
                sa.select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
            ).one()
            seq = head.seq + 1
            digest = _hash(head.hash, _body(seq, ts, case_id, run_id, kind, actor, text))
            conn.execute(ledger_table.insert().values(
                seq=seq, ts=ts, case_id=case_id, run_id=run_id, kind=kind, actor=actor, payload=text,
                prev_hash=head.hash, hash=digest))
            conn.execute(head_table.update().where(head_table.c.id == 1).values(seq=seq, hash=digest))
        return LedgerRecord(seq, ts, case_id, run_id, kind, actor, redact(payload), head.hash, digest)

    def dead_letter(self, origin: str, position: int | None, field: str | None, reason: str,
                    raw_text: str) -> int:
        """Keep a rejected record with the reason; also appends an ``intake.rejected`` record to
        the chain (without the raw text). Returns the dead letter's id."""
        sha = hashlib.sha256(raw_text.encode("utf-8", "replace")).hexdigest()
        with self.writer.begin() as conn:
            res = conn.execute(dead_letters_table.insert().values(
                ts=now_iso(), origin=origin, position=position, field=field, reason=reason,
                raw_text=raw_text, raw_sha256=sha))
            dl_id = int(res.inserted_primary_key[0])
        self.append("intake.rejected", {"dead_letter_id": dl_id, "origin": origin, "position": position,
                                        "field": field, "reason": reason, "raw_sha256": sha})
        return dl_id

    def open_case(self, case_key: str, detection_uid: str, detection: dict[str, Any],
                  playbook: str | None) -> CaseOpen:
        """Open the case for ``case_key`` or join the open one. The unique key on
        ``cases.case_key`` decides under concurrency; a detection seen before (same
        ``detection_uid``) is reported as ``duplicate_detection``."""
        ts = now_iso()
        case_id = "case-" + uuid.uuid4().hex[:12]
        opened = True
        try:
            with self.writer.begin() as conn:
                conn.execute(cases_table.insert().values(
                    case_id=case_id, case_key=case_key, opened_at=ts, playbook=playbook, status="open",
                    detection=canonical_json(redact(detection))))
        except IntegrityError:
            opened = False
            with self.engine.connect() as conn:
                case_id = conn.execute(sa.select(cases_table.c.case_id)
                                       .where(cases_table.c.case_key == case_key)).scalar_one()
        try:
            with self.writer.begin() as conn:
                conn.execute(case_detections_table.insert().values(
                    detection_uid=detection_uid, case_id=case_id, received_at=ts))
        except IntegrityError:
            return CaseOpen(case_id, opened, duplicate_detection=True)
        return CaseOpen(case_id, opened)

    def set_case(self, case_id: str, **values: Any) -> None:
        """Update a case's ``status``, ``playbook``, ``flow_run_id`` or ``plan_hash`` (cases are
        state, not history: the history is in the chain)."""
        with self.writer.begin() as conn:
            conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                         .values(updated_at=now_iso(), **values))

    # -- reading ---------------------------------------------------------------------------
    def records(self, case_id: str | None = None, kind_prefix: str | None = None) -> Iterator[LedgerRecord]:
        """Records in ``seq`` order, optionally for one case and/or kinds starting with a prefix."""
        import json

        q = sa.select(ledger_table).order_by(ledger_table.c.seq)
        if case_id is not None:
            q = q.where(ledger_table.c.case_id == case_id)
        if kind_prefix is not None:
            q = q.where(ledger_table.c.kind.startswith(kind_prefix))
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                yield LedgerRecord(row.seq, row.ts, row.case_id, row.run_id, row.kind, row.actor,
                                   json.loads(row.payload), row.prev_hash, row.hash)

    def case(self, case_id: str) -> dict[str, Any] | None:
        """The case row as a dict, or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).first()
        return dict(row._mapping) if row else None

    def cases(self) -> list[dict[str, Any]]:
        """Every case, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cases_table).order_by(cases_table.c.opened_at.desc())).all()
        return [dict(r._mapping) for r in rows]

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead-lettered record, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dead_letters_table).order_by(dead_letters_table.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def verify(self) -> VerifyResult:
        """Walk the chain from the genesis hash; report the first record whose ``seq``,
        ``prev_hash`` or ``hash`` does not follow, and check the head matches the last record
        (so a truncated tail is found too)."""
        prev = GENESIS
        expected_seq = 1
        checked = 0
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ledger_table).order_by(ledger_table.c.seq))
            for row in rows:
                if row.seq != expected_seq:
                    return VerifyResult(False, checked, row.seq, f"expected seq {expected_seq}, found {row.seq}")
                if row.prev_hash != prev:
                    return VerifyResult(False, checked, row.seq, "prev_hash does not match the record before")
                digest = _hash(prev, _body(row.seq, row.ts, row.case_id, row.run_id, row.kind, row.actor,
                                           row.payload))
                if digest != row.hash:
                    return VerifyResult(False, checked, row.seq, "record content does not match its hash")
                prev = row.hash
                expected_seq += 1
                checked += 1
            head = conn.execute(sa.select(head_table).where(head_table.c.id == 1)).one()
        if head.seq != checked or head.hash != prev:
            return VerifyResult(False, checked, checked + 1 if head.seq > checked else head.seq,
                                f"head says seq {head.seq} but the chain ends at {checked}")
        return VerifyResult(True, checked)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - driver plumbing
            dbapi_conn.isolation_level = None  # let BEGIN below control transactions
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover - driver plumbing
            # IMMEDIATE takes the write lock at BEGIN: concurrent appenders queue instead of
            # reading the same head and colliding on seq. Reads stay deferred.
            write = conn.get_execution_options().get("cordon_write")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)
