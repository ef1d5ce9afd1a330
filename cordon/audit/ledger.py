"""The audit ledger: an append-only, hash-chained record of every step Cordon takes.

Tables (SQLAlchemy 2.0 Core; SQLite by default, PostgreSQL in production; the schema is made
and upgraded by the Alembic revisions in :mod:`cordon.audit.migrations`):

* ``ledger`` (append-only): one row per step. ``seq`` is gap-free and increasing; ``hash`` is
  ``sha256(prev_hash || canonical_json(body))`` where ``body`` holds every other column, so
  changing, deleting or reordering a row breaks the chain from that row on (:meth:`Ledger.verify`).
* ``ledger_checkpoints`` (append-only): HMAC-SHA256 signatures of the head, made every
  ``CORDON_LEDGER_CHECKPOINT_EVERY`` records and by :meth:`Ledger.checkpoint`, so that deleting
  the newest records, or rewriting the chain and recomputing its (unkeyed) hashes, is detected
  (:mod:`cordon.audit.checkpoint`).
* ``dead_letters`` (append-only): records that could not be parsed, with the reason and the
  record's text (secrets in the text redacted).
* ``ledger_head`` (updated by design): a single row holding the last ``seq`` and ``hash``;
  appends lock it (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) so
  concurrent writers from several processes still produce one linear chain.
* ``cases`` (mutable state): one row per case, ``case_key`` unique (:meth:`Detection.case_key`):
  the database, not memory, decides whether a detection opens a case or joins one. ``status``
  and friends change as the case moves; the history of those changes is in ``ledger``.
* ``case_detections`` (insert-only by grant): which detections joined which case
  (``detection_uid`` unique).

"Append-only" is enforced by triggers (revision 0002) that refuse UPDATE and DELETE for every
role, and on PostgreSQL by the application role's grants (:mod:`cordon.audit.migrations.grants`):
the application role gets INSERT and SELECT on the append-only tables, never UPDATE or DELETE.

Secrets never enter the ledger: payloads, case detections and dead-letter text pass through
:func:`redact` / :func:`redact_text` first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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

from cordon.audit import migrations as _migrations
from cordon.audit.checkpoint import (
    Checkpoint,
    Keyring,
    LedgerKey,
    LedgerKeyError,
    checkpoint_every_from_env,
    keyring_from_env,
)
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

checkpoints_table = sa.Table(
    "ledger_checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("seq", sa.Integer, nullable=False, index=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("algorithm", sa.String(32), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

#: Tables whose rows are never updated or deleted (triggers refuse it; grants never allow it).
APPEND_ONLY_TABLES = ("ledger", "dead_letters", "ledger_checkpoints")


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


#: Keys (compared lower-case, without ``_``/``-``/``.``) whose values are secrets wherever they
#: appear: AWS ``SecretAccessKey``/``SessionToken`` (IAM CreateAccessKey, STS), Graph
#: ``secretText`` (addPassword), GCP ``privateKeyData`` (serviceAccounts.keys.create), GCP HMAC
#: ``secret`` (hmacKeys.create), API Keys ``keyString``, OAuth ``access_token``/``refresh_token``
#: (Slack ``oauth.v2.access``), ``password``, ``client_secret``, HTTP ``Authorization``/``Cookie``.
SECRET_KEYS = frozenset(_norm(k) for k in (
    "secretAccessKey", "aws_secret_access_key", "sessionToken", "password", "passwd", "ServicePassword",
    "privateKey", "privateKeyData", "private_key_id", "KeyMaterial", "secretText", "secret", "token",
    "access_token", "refresh_token", "id_token", "client_secret", "keyString", "apiKey", "x-api-key",
    "authorization", "proxy-authorization", "cookie", "set-cookie", "signing_secret", "bot_token",
    "accountKey", "primaryKey", "secondaryKey", "sharedAccessKey", "connectionString", "sasToken",
))
#: Suffixes that make a key secret (``dbPassword``, ``slackBotToken``, ``webhookSecret``) ...
SECRET_SUFFIXES = ("password", "secret", "token", "privatekey", "secretkey", "apikey", "accesskeysecret")
#: ... except these, which are pagination or idempotency handles, not credentials.
NOT_SECRET_KEYS = frozenset(_norm(k) for k in (
    "NextToken", "nextPageToken", "pageToken", "ContinuationToken", "NextContinuationToken", "paginationToken",
    "clientRequestToken", "idempotencyToken", "syncToken", "resumptionToken", "skipToken", "next_cursor",
))
REDACTED = "***redacted***"


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (:data:`SECRET_KEYS`, :data:`SECRET_SUFFIXES`)."""
    k = _norm(key)
    if not k or k in NOT_SECRET_KEYS:
        return False
    return k in SECRET_KEYS or k.endswith(SECRET_SUFFIXES)


# Secrets recognisable inside free text (error messages, raw records, JSON carried as a string).
_PEM = re.compile(r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----)(?:.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----)|.*\Z)", re.S)
_SLACK = re.compile(r"\b(xox[a-z](?:\.xox[a-z])?-|xapp-)[A-Za-z0-9-]{6,}")
_AUTH = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)@")
_KEY_VALUE = re.compile(
    r"""(?P<q>\\?["']|)(?P<key>[A-Za-z][A-Za-z0-9_.-]{0,63})(?P=q)[ \t]*[:=][ \t]*"""
    r"""(?:(?P<vq>\\?["'])(?P<qval>.*?)(?P=vq)|(?P<val>[^\s"',;&}\]]+))""")


def _kv(m: re.Match[str]) -> str:
    value = m.group("qval") if m.group("vq") else m.group("val")
    if not value or value == REDACTED or value.lower() in ("bearer", "basic") or not is_secret_key(m.group("key")):
        return m.group(0)
    start, end = (m.span("qval") if m.group("vq") else m.span("val"))
    base = m.start(0)
    text = m.group(0)
    return text[: start - base] + REDACTED + text[end - base:]


def redact_text(text: str) -> str:
    """``text`` with recognisable secrets replaced by ``***redacted***``: PEM private keys,
    Slack tokens (``xoxb-``, ``xoxp-``, ``xapp-`` ...; the prefix is kept), ``Bearer``/``Basic``
    credentials, JWTs, passwords in URLs (``scheme://user:PASSWORD@host``), and ``key=value`` /
    ``"key": "value"`` pairs whose key is secret (:func:`is_secret_key`)."""
    if len(text) < 8:
        return text
    text = _PEM.sub(lambda m: m.group(1) + REDACTED + (m.group(2) or ""), text)
    text = _SLACK.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _KEY_VALUE.sub(_kv, text)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (JSON-like: dicts, lists, scalars) in which the value of every secret key
    (:func:`is_secret_key`, at any depth, in lists too) is ``"***redacted***"`` (empty, ``None``
    and boolean values are kept: they reveal nothing; under a key that is secret only by its
    suffix, such as ``addPassword``, a dict or list is searched rather than hidden), the ``value``
    of a ``{"name": "DB_PASSWORD", "value": ...}`` pair is hidden, and every string is passed
    through
    :func:`redact_text`. Tuples come back as lists."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            # an exact secret name hides any value; a suffix match (``addPassword``) only a scalar
            secret = isinstance(k, str) and is_secret_key(k) and (
                _norm(k) in SECRET_KEYS or not isinstance(v, dict | list | tuple))
            if secret and v not in (None, "") and not isinstance(v, bool):
                out[k] = REDACTED
            else:
                out[k] = redact(v)
        # name/value pairs: ECS/Lambda environment variables, HTTP header lists, tags
        label = next((obj[n] for n in ("name", "Name", "key", "Key") if isinstance(obj.get(n), str)), None)
        for vk in ("value", "Value"):
            if label and is_secret_key(label) and isinstance(out.get(vk), str) and out[vk]:
                out[vk] = REDACTED
        return out
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
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
    broken chain the ``seq`` of the first bad record and why. ``checkpoints`` counts the signed
    checkpoints (and anchor) compared; ``warnings`` says what could not be checked (no key, no
    checkpoint) without making the result fail."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    checkpoints: int = 0
    warnings: tuple[str, ...] = ()


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


def _keyring(key: Keyring | LedgerKey | str | None) -> Keyring:
    if key is None:
        return keyring_from_env()
    if isinstance(key, Keyring):
        return key
    if isinstance(key, str):
        key = LedgerKey.from_text(key)
    return Keyring.of(key)


class Ledger:
    """The audit ledger at a SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://...``;
    default :func:`default_database_url`).

    On construction the schema is brought to the newest Alembic revision when it is behind
    (:func:`cordon.audit.migrations.ensure_schema`: one version read per URL per process; raises
    :class:`~cordon.audit.migrations.SchemaError` when it cannot, e.g. ``migrate=False`` or
    ``CORDON_DB_AUTO_UPGRADE=0`` and the database is behind). ``key`` signs checkpoints (default:
    ``CORDON_LEDGER_KEY``/``CORDON_LEDGER_OLD_KEYS``; a bad key raises
    :class:`~cordon.audit.checkpoint.LedgerKeyError`); ``checkpoint_every`` (default
    ``CORDON_LEDGER_CHECKPOINT_EVERY`` or 100, 0 = never) makes an append whose ``seq`` is a
    multiple of it also sign a checkpoint, in the same transaction. Thread- and process-safe
    appends (see module docstring).
    """

    def __init__(self, url: str | None = None, *, key: Keyring | LedgerKey | str | None = None,
                 checkpoint_every: int | None = None, migrate: bool | None = None):
        self.url = url or default_database_url()
        self.engine: Engine = _make_engine(self.url)
        # Writes go through this view of the engine: on SQLite they BEGIN IMMEDIATE (take the
        # write lock up front); reads BEGIN DEFERRED and never block writers for long (WAL).
        self.writer: Engine = self.engine.execution_options(cordon_write=True)
        self.keyring = _keyring(key)
        self.checkpoint_every = checkpoint_every_from_env() if checkpoint_every is None else checkpoint_every
        _migrations.ensure_schema(self.engine, auto_upgrade=migrate)

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
        clean = redact(payload)
        text = canonical_json(clean)
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
            if self.keyring.current and self.checkpoint_every and seq % self.checkpoint_every == 0:
                self._insert_checkpoint(conn, Checkpoint.sign(self.keyring.current, seq, digest, now_iso()))
        return LedgerRecord(seq, ts, case_id, run_id, kind, actor, json.loads(text), head.hash, digest)

    @staticmethod
    def _insert_checkpoint(conn: sa.Connection, cp: Checkpoint) -> Checkpoint:
        res = conn.execute(checkpoints_table.insert().values(
            seq=cp.seq, hash=cp.hash, ts=cp.ts, key_id=cp.key_id, algorithm=cp.algorithm, signature=cp.signature))
        return Checkpoint(cp.seq, cp.hash, cp.ts, cp.key_id, cp.signature, cp.algorithm,
                          int(res.inserted_primary_key[0]))

    def checkpoint(self) -> Checkpoint:
        """Sign the current head now (``cordon audit checkpoint``) and store it; returns it with
        its ``id``. Raises :class:`~cordon.audit.checkpoint.LedgerKeyError` when no signing key is
        configured (``CORDON_LEDGER_KEY``)."""
        if self.keyring.current is None:
            raise LedgerKeyError("CORDON_LEDGER_KEY is not set: cannot sign a ledger checkpoint")
        with self.writer.begin() as conn:
            head = conn.execute(
                sa.select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
            ).one()
            return self._insert_checkpoint(conn, Checkpoint.sign(self.keyring.current, head.seq, head.hash,
                                                                 now_iso()))

    def dead_letter(self, origin: str, position: int | None, field: str | None, reason: str,
                    raw_text: str) -> int:
        """Keep a rejected record with the reason; also appends an ``intake.rejected`` record to
        the chain (without the raw text). Secrets in ``raw_text`` and ``reason`` are redacted
        (:func:`redact_text`); ``raw_sha256`` is of the text as received. Returns the dead
        letter's id."""
        sha = hashlib.sha256(raw_text.encode("utf-8", "replace")).hexdigest()
        with self.writer.begin() as conn:
            res = conn.execute(dead_letters_table.insert().values(
                ts=now_iso(), origin=origin, position=position, field=field, reason=redact_text(reason),
                raw_text=redact_text(raw_text), raw_sha256=sha))
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

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, by ``seq`` then ``id``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(checkpoints_table)
                                .order_by(checkpoints_table.c.seq, checkpoints_table.c.id)).all()
        return [Checkpoint(r.seq, r.hash, r.ts, r.key_id, r.signature, r.algorithm, r.id) for r in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint with the highest ``seq`` (newest on a tie), or ``None``."""
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(checkpoints_table).order_by(checkpoints_table.c.seq.desc(),
                                                                   checkpoints_table.c.id.desc()).limit(1)).first()
        return Checkpoint(r.seq, r.hash, r.ts, r.key_id, r.signature, r.algorithm, r.id) if r else None

    def verify(self, anchor: Checkpoint | None = None) -> VerifyResult:
        """Check the chain, the head and the signed checkpoints; report the first problem.

        Walks the records from the genesis hash: each ``seq`` must follow the last, ``prev_hash``
        must be the previous record's ``hash``, and ``hash`` must match the content. Every stored
        checkpoint (and ``anchor``, one read from a file with
        :meth:`~cordon.audit.checkpoint.Checkpoint.read_anchor`) must carry a valid signature under
        :attr:`keyring` and name a record that exists with that hash: a record rewritten with its
        hashes recomputed, or a truncated tail (records deleted and the head rewritten) is caught
        there. Finally the head row must name a record of the chain. ``first_bad_seq`` is the
        first record found wrong (for a truncated tail, the first missing one).

        Checkpoints are read before the head and the head before the records, so appends that
        commit while this runs are not mistaken for tampering. Rows stream (``yield_per``).
        """
        keyring = self.keyring
        with self.engine.connect() as conn:
            cps = [Checkpoint(r.seq, r.hash, r.ts, r.key_id, r.signature, r.algorithm, r.id)
                   for r in conn.execute(sa.select(checkpoints_table).order_by(checkpoints_table.c.seq))]
            head = conn.execute(sa.select(head_table).where(head_table.c.id == 1)).one()
        if anchor is not None:
            cps.append(anchor)
        warnings: list[str] = []
        if not cps:
            warnings.append("no signed checkpoints: deleting the newest records and rewriting the head would go "
                            "unnoticed (set CORDON_LEDGER_KEY; `cordon audit checkpoint`)")
        elif not keyring.accepted:
            warnings.append("checkpoint signatures not checked: no key configured (CORDON_LEDGER_KEY)")
        by_seq: dict[int, list[Checkpoint]] = {}
        for cp in cps:
            by_seq.setdefault(cp.seq, []).append(cp)
        n_cps = 0
        last_vouched = 0

        def check_cp(cp: Checkpoint, record_hash: str) -> str | None:
            nonlocal n_cps
            n_cps += 1
            if keyring.accepted:
                problem = cp.check(keyring)
                if problem:
                    return f"{cp.describe()}: {problem}"
            if cp.hash != record_hash:
                return (f"record {cp.seq} does not match {cp.describe()}: the chain was rewritten (hashes "
                        f"recomputed) somewhere in records {last_vouched + 1}..{cp.seq}")
            return None

        def fail(checked: int, seq: int, reason: str) -> VerifyResult:
            return VerifyResult(False, checked, seq, reason, n_cps, tuple(warnings))

        for cp in by_seq.get(0, []):
            if problem := check_cp(cp, GENESIS):
                return fail(0, 0, problem)
        prev = GENESIS
        expected_seq = 1
        checked = 0
        head_record_hash = GENESIS if head.seq == 0 else None
        q = sa.select(ledger_table).order_by(ledger_table.c.seq).execution_options(yield_per=1000)
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                if row.seq != expected_seq:
                    what = "missing" if row.seq > expected_seq else "out of order"
                    return fail(checked, expected_seq if row.seq > expected_seq else row.seq,
                                f"expected seq {expected_seq}, found {row.seq} (record {expected_seq} {what})")
                if row.prev_hash != prev:
                    return fail(checked, row.seq, "prev_hash does not match the record before")
                digest = _hash(prev, _body(row.seq, row.ts, row.case_id, row.run_id, row.kind, row.actor,
                                           row.payload))
                if digest != row.hash:
                    return fail(checked, row.seq, "record content does not match its hash")
                for cp in by_seq.get(row.seq, ()):
                    if problem := check_cp(cp, row.hash):
                        return fail(checked, row.seq, problem)
                    last_vouched = row.seq
                if row.seq == head.seq:
                    head_record_hash = row.hash
                prev = row.hash
                expected_seq += 1
                checked += 1
        beyond = [cp for cp in cps if cp.seq > checked]
        if beyond:
            cp = min(beyond, key=lambda c: c.seq)
            n_cps += 1
            if keyring.accepted and (problem := cp.check(keyring)):
                return fail(checked, cp.seq, f"{cp.describe()}: {problem}")
            return fail(checked, checked + 1,
                        f"records {checked + 1}..{cp.seq} are missing: {cp.describe()} vouches for record {cp.seq} "
                        f"but the chain ends at {checked} (the tail was truncated)")
        if head.seq > checked:
            return fail(checked, checked + 1, f"head says seq {head.seq} but the chain ends at {checked} "
                                              "(the tail was truncated)")
        if head.hash != head_record_hash:
            return fail(checked, head.seq, f"head's hash for seq {head.seq} does not match record {head.seq}")
        return VerifyResult(True, checked, checkpoints=n_cps, warnings=tuple(warnings))


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
