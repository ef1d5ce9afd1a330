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
  record's text (secrets in the text redacted). Each row is inserted in the same transaction as
  its chained ``intake.rejected`` record, which carries ``stored_sha256`` (of ``raw_text`` as
  stored) and ``row_sha256`` (of the whole row, :func:`dead_letter_sha256`), so an edited row
  is found by :meth:`Ledger.verify`.
* ``ledger_head`` (updated by design): a single row holding the last ``seq`` and ``hash``;
  appends lock it (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) so
  concurrent writers from several processes still produce one linear chain.
* ``cases`` (mutable state): one row per case, ``case_key`` unique (:meth:`Detection.case_key`):
  the database, not memory, decides whether a detection opens a case or joins one. ``status``
  and friends change as the case moves. Every change (:meth:`Ledger.open_case`,
  :meth:`Ledger.set_case`) appends a ``case.status`` record in the same transaction with the
  row's full state and its hash (:func:`case_state_sha256`); :meth:`Ledger.verify` compares
  each row with its last ``case.status`` and names the case that disagrees. These records have
  ``case_id`` NULL (the case is in the payload): they vouch for the row and are not steps of
  the response, so case timelines (:mod:`cordon.audit.query`) stay the story of the steps.
* ``case_detections`` (insert-only by grant): which detections joined which case
  (``detection_uid`` unique).
* ``incidents`` (mutable index) and ``incident_cases`` (insert-only by grant): cases correlated
  by their actor (:meth:`cordon.providers.Provider.actor_key`: the principal and the access key or
  session it signed with) within a window, one incident per actor burst
  (:meth:`Ledger.assign_incident`). The chain is the truth: each row is written in the same
  transaction as its ``incident.opened`` / ``incident.case_added`` record.
* ``refusal_windows`` (mutable counters): unsigned or forged requests (bad Slack signature,
  wrong webhook token, failed audit-page sign-ins) counted per (source, reason, minute) with a
  few samples, and summarised as one chained ``<source>.refusals`` record per source and window
  once the window has ended (:mod:`cordon.audit.refusals`), instead of one chained record each.

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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

import cordon.audit.migrations as _migrations
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

refusal_windows_table = sa.Table(
    "refusal_windows",
    metadata,
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
    sa.Index("ix_refusal_windows_open", "summary_seq", "window_start"),
)

incidents_table = sa.Table(
    "incidents",
    metadata,
    sa.Column("incident_id", sa.String(64), primary_key=True),
    sa.Column("actor_key", sa.String(512), nullable=False, index=True),
    sa.Column("provider", sa.String(32), nullable=True),
    sa.Column("opened_at", sa.String(40), nullable=False),
    sa.Column("last_at", sa.String(40), nullable=False),
    sa.Column("lead_case_id", sa.String(64), nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
)

incident_cases_table = sa.Table(
    "incident_cases",
    metadata,
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("incident_id", sa.String(64), nullable=False, index=True),
    sa.Column("added_at", sa.String(40), nullable=False),
)

incident_runs_table = sa.Table(
    "incident_runs",
    metadata,
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
    sa.Index("ix_incident_runs_open", "incident_id", "sealed_at"),
)

#: Tables whose rows are never updated or deleted (triggers refuse it; grants never allow it).
APPEND_ONLY_TABLES = ("ledger", "dead_letters", "ledger_checkpoints")

#: Columns of ``cases`` that a ``case.status`` record vouches for (``detection`` by its SHA-256).
CASE_STATE_FIELDS = ("case_id", "case_key", "opened_at", "playbook", "status", "flow_run_id", "plan_hash")
#: Columns :meth:`Ledger.set_case` may change (``detection`` is vouched for by its SHA-256).
CASE_SETTABLE = frozenset({"status", "playbook", "flow_run_id", "plan_hash", "detection"})


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def case_state_sha256(row: Any) -> str:
    """SHA-256 (hex) of a ``cases`` row's vouched state: :func:`canonical_json` of
    :data:`CASE_STATE_FIELDS` plus ``detection_sha256`` (the SHA-256 of the ``detection`` text as
    stored). ``row``: a mapping or SQLAlchemy row with those columns."""
    m = row._mapping if hasattr(row, "_mapping") else row
    state = {f: m[f] for f in CASE_STATE_FIELDS}
    state["detection_sha256"] = _sha256_text(m["detection"])
    return _sha256_text(canonical_json(state))


def dead_letter_sha256(row: Any) -> str:
    """SHA-256 (hex) of a ``dead_letters`` row as stored: :func:`canonical_json` of ``id``,
    ``ts``, ``origin``, ``position``, ``field``, ``reason``, ``raw_text`` and ``raw_sha256``."""
    m = row._mapping if hasattr(row, "_mapping") else row
    return _sha256_text(canonical_json({f: m[f] for f in ("id", "ts", "origin", "position", "field", "reason",
                                                          "raw_text", "raw_sha256")}))


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


#: Keys (compared lower-case, without ``_``/``-``/``.``) whose values are secrets wherever they
#: appear: AWS ``SecretAccessKey``/``SessionToken`` (IAM CreateAccessKey, STS), Graph
#: ``secretText`` (addPassword), GCP ``privateKeyData`` (serviceAccounts.keys.create), GCP HMAC
#: ``secret`` (hmacKeys.create), API Keys ``keyString``, OAuth ``access_token``/``refresh_token``
#: (Slack ``oauth.v2.access``), ``password``, ``client_secret``, HTTP ``Authorization``/``Cookie``.
SECRET_KEYS = frozenset(_norm(k) for k in (
    "secretAccessKey", "sessionToken", "password", "passwd", "ServicePassword",
    "privateKey", "privateKeyData", "private_key_id", "KeyMaterial", "secretText", "secret", "token",
    "access_token", "refresh_token", "id_token", "client_secret", "keyString", "apiKey", "x-api-key",
    "authorization", "proxy-authorization", "cookie", "set-cookie", "signing_secret", "bot_token",
    "accountKey", "primaryKey", "secondaryKey", "sharedAccessKey", "connectionString", "sasToken",
))
#: Suffixes that make a key secret (``dbPassword``, ``slackBotToken``, ``webhookSecret``,
#: ``aws_secret_access_key``) ...
SECRET_SUFFIXES = ("password", "secret", "token", "privatekey", "secretkey", "apikey", "accesskeysecret",
                   "secretaccesskey")
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
# Bounded repetitions keep every pattern linear in the text's length: an unbounded scheme
# (``[a-z0-9+.-]*``) rescanned the rest of ``a.a.a.a...`` from every word boundary (1.9 s per 64 KiB;
# issue 10, item 5). RFC 3986 sets no limit; real schemes are short, user and password under 256.
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]{0,31}://[^/\s:@]{1,256}:)([^@\s/]{1,256})@")
# A key starts where no key character precedes it: otherwise every position of a long word is tried
# as a key of up to 64 characters (about 2 s per MB of letters).
_KEY_VALUE = re.compile(
    r"""(?P<q>\\?["']|)(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z][A-Za-z0-9_.-]{0,63})(?P=q)[ \t]*[:=][ \t]*"""
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


#: Keys of a protobuf ``Value`` holding text (``{"stringValue": "..."}``): the value of a Struct
#: field as UDM's ``additional.fields`` and label lists carry it (Google SecOps detections).
_VALUE_WRAPPERS = frozenset({"stringValue", "bytesValue", "string_value", "bytes_value"})


def _wrapped_text(value: Any) -> str | None:
    """The wrapper key of a protobuf ``Value`` holding non-empty text (``{"stringValue": "s"}``), else ``None``."""
    if isinstance(value, dict) and len(value) == 1:
        (k, v), = value.items()
        if k in _VALUE_WRAPPERS and isinstance(v, str) and v:
            return k
    return None


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (JSON-like: dicts, lists, scalars) in which the value of every secret key
    (:func:`is_secret_key`, at any depth, in lists too) is ``"***redacted***"`` (empty, ``None``
    and boolean values are kept: they reveal nothing; under a key that is secret only by its
    suffix, such as ``addPassword``, a dict or list is searched rather than hidden), the ``value``
    of a ``{"name": "DB_PASSWORD", "value": ...}`` pair is hidden (also when it is a protobuf Value,
    ``{"stringValue": ...}``, as in UDM's ``additional.fields``), every value of a ``kind: Secret``
    object's ``data`` / ``stringData`` is hidden whatever its key, and every string is passed
    through
    :func:`redact_text`. Tuples come back as lists."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            # an exact secret name hides any value; a suffix match (``addPassword``) only a scalar
            secret = isinstance(k, str) and is_secret_key(k) and (
                _norm(k) in SECRET_KEYS or not isinstance(v, dict | list | tuple) or _wrapped_text(v) is not None)
            if secret and v not in (None, "") and not isinstance(v, bool):
                out[k] = REDACTED
            else:
                out[k] = redact(v)
        # an object of kind Secret (an audit Event's requestObject / responseObject, a GKE entry's
        # request with "@type": "core.k8s.io/v1.Secret"): every value of its data and stringData
        if obj.get("kind") == "Secret" or str(obj.get("@type", "")).endswith(".Secret"):
            for field in ("data", "stringData"):
                if isinstance(out.get(field), dict):
                    out[field] = {k: REDACTED if v not in (None, "") else v for k, v in out[field].items()}
        # name/value pairs: ECS/Lambda environment variables, HTTP header lists, tags
        label = next((obj[n] for n in ("name", "Name", "key", "Key") if isinstance(obj.get(n), str)), None)
        for vk in ("value", "Value"):
            if label and is_secret_key(label) and isinstance(out.get(vk), str) and out[vk]:
                out[vk] = REDACTED
            elif label and is_secret_key(label) and (wrapper := _wrapped_text(out.get(vk))):
                out[vk] = {wrapper: REDACTED}  # a protobuf Value: {"key": "secretAccessKey", "value": {"stringValue"}}
        return out
    if isinstance(obj, list | tuple):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_record_text(text: str) -> str:
    """A record's text as a dead letter keeps it: when it is JSON (an object or a list) in which
    :func:`redact` finds a secret by its structure (a secret key's value, a ``{"key", "value"}``
    pair, a protobuf Value), the redacted JSON (re-serialised, compact); otherwise the text through
    :func:`redact_text` (which sees only ``key: value`` text)."""
    if text[:1] in ("{", "[") and len(text) <= 4 * 1024 * 1024:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict | list):
            try:
                cleaned = redact(obj)
            except RecursionError:
                cleaned = obj
            if cleaned != obj:
                return redact_text(json.dumps(cleaned, ensure_ascii=False, separators=(",", ":")))
    return redact_text(text)


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
    checkpoint) without making the result fail. ``problem`` says what kind of failure it is:
    ``chain`` (a record changed, missing or out of order; the head), ``checkpoint`` (a bad
    signature, or a checkpoint the chain no longer matches or reaches), ``coverage`` (a key is
    configured but no checkpoint covers the chain), ``case`` (a ``cases`` row differs from its
    last ``case.status`` record; ``first_bad_seq`` is that record, ``None`` when the case was
    never chained) or ``dead_letter`` (a ``dead_letters`` row differs from its chained record).
    ``cases`` and ``dead_letters`` count the rows compared."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    checkpoints: int = 0
    warnings: tuple[str, ...] = ()
    problem: str | None = None
    cases: int = 0
    dead_letters: int = 0


@dataclass(frozen=True)
class IncidentAssign:
    """Result of :meth:`Ledger.assign_incident`: the case's incident, and whether this call opened
    it (``True``: the case is its first) or added the case to an open one."""

    incident_id: str
    opened: bool


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


class ChainWriter:
    """A write transaction that holds the ledger head's lock (:meth:`Ledger.chained`): other
    writes made on :attr:`conn` and the records appended with :meth:`append` commit together or
    not at all, and no other writer can append in between."""

    def __init__(self, ledger: Ledger, conn: sa.Connection):
        self.ledger = ledger
        self.conn = conn
        head = conn.execute(
            sa.select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update()
        ).one()
        self.seq: int = head.seq
        self.hash: str = head.hash

    def append(self, kind: str, payload: dict[str, Any], *, case_id: str | None = None, run_id: str | None = None,
               actor: str | None = None, ts: str | None = None) -> LedgerRecord:
        """Append one record inside this transaction (see :meth:`Ledger.append`); ``ts`` defaults
        to now. Signs a checkpoint in the same transaction when a key is configured and the
        record is the chain's first or its ``seq`` is a multiple of ``checkpoint_every``."""
        return self.append_text(kind, canonical_json(redact(payload)), case_id=case_id, run_id=run_id, actor=actor,
                                ts=ts)

    def case_row(self, case_id: str) -> dict[str, Any] | None:
        """The case row as a dict (``None`` when absent), read inside this transaction."""
        row = self.conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).first()
        return dict(row._mapping) if row else None

    def case_records(self, case_id: str) -> list[LedgerRecord]:
        """The case's records in ``seq`` order, read inside this transaction (under the head's
        lock: no other writer appends to the chain until it ends)."""
        q = sa.select(ledger_table).where(ledger_table.c.case_id == case_id).order_by(ledger_table.c.seq)
        return [LedgerRecord(r.seq, r.ts, r.case_id, r.run_id, r.kind, r.actor, json.loads(r.payload), r.prev_hash,
                             r.hash) for r in self.conn.execute(q)]

    def append_text(self, kind: str, text: str, *, case_id: str | None = None, run_id: str | None = None,
                    actor: str | None = None, ts: str | None = None) -> LedgerRecord:
        """:meth:`append` for a payload already redacted and in :func:`canonical_json` form."""
        ts = ts or now_iso()
        seq, prev = self.seq + 1, self.hash
        digest = _hash(prev, _body(seq, ts, case_id, run_id, kind, actor, text))
        self.conn.execute(ledger_table.insert().values(
            seq=seq, ts=ts, case_id=case_id, run_id=run_id, kind=kind, actor=actor, payload=text,
            prev_hash=prev, hash=digest))
        self.conn.execute(head_table.update().where(head_table.c.id == 1).values(seq=seq, hash=digest))
        self.seq, self.hash = seq, digest
        key, every = self.ledger.keyring.current, self.ledger.checkpoint_every
        if key and (seq == 1 or (every and seq % every == 0)):
            self.ledger._insert_checkpoint(self.conn, Checkpoint.sign(key, seq, digest, now_iso()))
        return LedgerRecord(seq, ts, case_id, run_id, kind, actor, json.loads(text), prev, digest)


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
        text = canonical_json(redact(payload))  # outside the transaction: the head lock is held briefly
        with self.chained() as w:
            return w.append_text(kind, text, case_id=case_id, run_id=run_id, actor=actor)

    @contextmanager
    def chained(self) -> Iterator[ChainWriter]:
        """A write transaction holding the head's lock: ``with ledger.chained() as w:`` then
        writes on ``w.conn`` and ``w.append(...)`` commit together (or roll back together when
        the block raises). Keep the block short: every other writer waits for it."""
        with self.writer.begin() as conn:
            yield ChainWriter(self, conn)

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
        """Keep a rejected record with the reason, and append its ``intake.rejected`` record to
        the chain in the same transaction (without the raw text). Secrets in ``raw_text`` and
        ``reason`` are redacted (:func:`redact_text`). The record's payload carries
        ``dead_letter_id``, ``origin``, ``position``, ``field``, ``reason``, ``raw_sha256`` (of
        the text as received, before redaction), ``stored_sha256`` (of ``raw_text`` as stored,
        after redaction) and ``row_sha256`` (:func:`dead_letter_sha256` of the stored row), so
        :meth:`verify` finds an edited row. Returns the dead letter's id."""
        sha = hashlib.sha256(raw_text.encode("utf-8", "replace")).hexdigest()
        stored_reason, stored_text = redact_text(reason), redact_record_text(raw_text)
        with self.chained() as w:
            ts = now_iso()
            values = {"ts": ts, "origin": origin, "position": position, "field": field, "reason": stored_reason,
                      "raw_text": stored_text, "raw_sha256": sha}
            dl_id = int(w.conn.execute(dead_letters_table.insert().values(**values)).inserted_primary_key[0])
            w.append("intake.rejected", {
                "dead_letter_id": dl_id, "origin": origin, "position": position, "field": field,
                "reason": stored_reason, "raw_sha256": sha, "stored_sha256": _sha256_text(stored_text),
                "row_sha256": dead_letter_sha256({"id": dl_id, **values})}, ts=ts)
        return dl_id

    @staticmethod
    def _case_status(w: ChainWriter, row: Any, changed: list[str], ts: str) -> LedgerRecord:
        m = row._mapping
        return w.append("case.status", {
            "case_id": m["case_id"], "status": m["status"], "playbook": m["playbook"],
            "flow_run_id": m["flow_run_id"], "plan_hash": m["plan_hash"], "case_key": m["case_key"],
            "opened_at": m["opened_at"], "detection_sha256": _sha256_text(m["detection"]),
            "state_sha256": case_state_sha256(row), "changed": changed}, ts=ts)

    def open_case(self, case_key: str, detection_uid: str, detection: dict[str, Any],
                  playbook: str | None) -> CaseOpen:
        """Open the case for ``case_key`` or join the open one. The unique key on
        ``cases.case_key`` decides under concurrency; a detection seen before (same
        ``detection_uid``) is reported as ``duplicate_detection``. Opening a case appends its
        ``case.status`` record (status ``open``) in the same transaction."""
        text = canonical_json(redact(detection))
        by_key = sa.select(cases_table.c.case_id).where(cases_table.c.case_key == case_key)
        try:
            # every case is opened under the head's lock, so this look-up and the insert cannot race
            with self.chained() as w:
                existing = w.conn.execute(by_key).scalar_one_or_none()
                opened = existing is None
                case_id = existing or "case-" + uuid.uuid4().hex[:12]
                if opened:
                    ts = now_iso()
                    w.conn.execute(cases_table.insert().values(
                        case_id=case_id, case_key=case_key, opened_at=ts, playbook=playbook, status="open",
                        detection=text))
                    row = w.conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).one()
                    self._case_status(w, row, ["opened"], ts)
        except IntegrityError:
            # a writer that does not take the head's lock (an older Cordon during an upgrade) won the key
            with self.engine.connect() as conn:
                existing = conn.execute(by_key).scalar_one_or_none()
            if existing is None:
                raise
            case_id, opened = existing, False
        try:
            with self.writer.begin() as conn:
                conn.execute(case_detections_table.insert().values(
                    detection_uid=detection_uid, case_id=case_id, received_at=now_iso()))
        except IntegrityError:
            return CaseOpen(case_id, opened, duplicate_detection=True)
        return CaseOpen(case_id, opened)

    def set_case(self, case_id: str, **values: Any) -> None:
        """Change a case's ``status``, ``playbook``, ``flow_run_id``, ``plan_hash`` or ``detection``
        (the redacted detection as JSON text; the caller redacts it) and append
        its ``case.status`` record (the row's full state after the change, with
        :func:`case_state_sha256`) in the same transaction. An unknown case is left alone (no
        record); another column raises ``ValueError`` naming it."""
        unknown = sorted(set(values) - CASE_SETTABLE)
        if unknown:
            allowed = ", ".join(sorted(CASE_SETTABLE))
            raise ValueError(f"set_case: {', '.join(unknown)} cannot be changed (only {allowed})")
        with self.chained() as w:
            ts = now_iso()
            res = w.conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                                 .values(updated_at=ts, **values))
            if res.rowcount == 0:
                return
            row = w.conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).one()
            self._case_status(w, row, sorted(values), ts)

    def close_case(self, case_id: str, status: str, payload: dict[str, Any], *, run_id: str | None = None,
                   actor: str | None = None) -> LedgerRecord:
        """Set the case's ``status`` (with its ``case.status`` record) and append ``case.closed``
        with ``payload``, in one transaction: a process killed in between leaves neither, never a
        case whose status says it ended without the record that closes it. Returns the
        ``case.closed`` record."""
        with self.chained() as w:
            return self.close_case_in(w, case_id, status, payload, run_id=run_id, actor=actor)

    def close_case_in(self, w: ChainWriter, case_id: str, status: str, payload: dict[str, Any], *,
                      run_id: str | None = None, actor: str | None = None) -> LedgerRecord:
        """:meth:`close_case` inside the caller's transaction ``w`` (:meth:`chained`)."""
        ts = now_iso()
        res = w.conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                             .values(updated_at=ts, status=status))
        if res.rowcount:
            row = w.conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).one()
            self._case_status(w, row, ["status"], ts)
        return w.append("case.closed", payload, case_id=case_id, run_id=run_id, actor=actor, ts=ts)

    def assign_incident(self, case_id: str, actor_key: str, *, window_seconds: float,
                        actor: dict[str, Any] | None = None, provider: str | None = None) -> IncidentAssign:
        """Put ``case_id`` in the incident of ``actor_key`` (one actor's burst: the principal and
        the access key or session it signed with, :meth:`cordon.providers.Provider.actor_key`):
        the newest incident of that key that took a case in the last ``window_seconds`` seconds,
        else a new one with this case as its lead. Appends ``incident.opened`` ``{incident_id,
        actor_key, actor}`` (a new incident) and ``incident.case_added`` ``{incident_id,
        actor_key, lead_case_id}`` on the case, in the same transaction as the rows, under the
        head's lock (two intakes never open two incidents for one burst). Idempotent: a case
        already in an incident gets that one back (``opened`` false), with no record."""
        actor_text = canonical_json(redact(actor or {}))
        with self.chained() as w:
            found = w.conn.execute(sa.select(incident_cases_table.c.incident_id)
                                   .where(incident_cases_table.c.case_id == case_id)).scalar_one_or_none()
            if found is not None:
                return IncidentAssign(found, False)
            ts = now_iso()
            since = datetime.fromtimestamp(datetime.fromisoformat(ts).timestamp() - window_seconds, UTC).isoformat()
            row = w.conn.execute(
                sa.select(incidents_table.c.incident_id, incidents_table.c.lead_case_id)
                .where(incidents_table.c.actor_key == actor_key, incidents_table.c.last_at >= since)
                .order_by(incidents_table.c.last_at.desc()).limit(1)).first()
            opened = row is None
            if opened:
                incident_id, lead = "incident-" + uuid.uuid4().hex[:12], case_id
                w.conn.execute(incidents_table.insert().values(
                    incident_id=incident_id, actor_key=actor_key, provider=provider, opened_at=ts, last_at=ts,
                    lead_case_id=case_id, actor=actor_text))
                w.append("incident.opened", {"incident_id": incident_id, "actor_key": actor_key,
                                             "actor": json.loads(actor_text)}, case_id=case_id, ts=ts)
            else:
                incident_id, lead = row.incident_id, row.lead_case_id
                w.conn.execute(incidents_table.update().where(incidents_table.c.incident_id == incident_id)
                               .values(last_at=ts))
            w.conn.execute(incident_cases_table.insert().values(case_id=case_id, incident_id=incident_id,
                                                                added_at=ts))
            w.append("incident.case_added", {"incident_id": incident_id, "actor_key": actor_key,
                                             "lead_case_id": lead}, case_id=case_id, ts=ts)
        return IncidentAssign(incident_id, opened)

    def open_incident_run(self, lead_case_id: str, attempt: int, incident_id: str, *, mode: str, where: str,
                          strictness: list[Any], conflict_keys: list[str]) -> None:
        """Open the queued run of ``lead_case_id`` (``attempt``) to late cases of ``incident_id``
        (:meth:`join_incident_run`) until it seals (:meth:`seal_incident_run`). ``strictness``: the
        lead's approval policy as :func:`cordon.engine.strictness` orders it; ``conflict_keys``: the
        objects its cases' containment rewrites (:meth:`cordon.providers.Provider.plan_conflict_key`).
        Idempotent (a row already there is left as it is)."""
        with self.writer.begin() as conn:
            there = conn.execute(sa.select(incident_runs_table.c.lead_case_id).where(
                incident_runs_table.c.lead_case_id == lead_case_id,
                incident_runs_table.c.attempt == attempt)).first()
            if there is None:
                conn.execute(incident_runs_table.insert().values(
                    lead_case_id=lead_case_id, attempt=attempt, incident_id=incident_id, mode=mode, where=where,
                    strictness=json.dumps(list(strictness)), conflict_keys=json.dumps(sorted(set(conflict_keys))),
                    joined="[]", opened_at=now_iso()))

    def join_incident_run(self, case_id: str, incident_id: str, *, mode: str, where: str, strictness: list[Any],
                          conflict_key: str | None, member: dict[str, Any], max_cases: int) -> str | None:
        """Put ``case_id`` (a new case of ``incident_id``) in a run of that incident that is
        requested and not yet planning (:meth:`open_incident_run`): the oldest with the same
        ``mode`` and ``where``, a lead's ``strictness`` at least the case's (its one approval
        request follows the lead's policy), no ``conflict_key`` already taken and fewer than
        ``max_cases`` cases. Appends ``run.delegated`` ``{attempt: 1, incident_id, lead_case_id,
        joined_queued: true}`` on the case in the same transaction (under the head's lock, as
        :meth:`seal_incident_run`: a case joins a run before it seals or not at all). ``member``:
        ``{case_id, playbook, cloud}``, what the run's flow answers it with. Returns the lead's
        case ID, or ``None`` (no such run: the case gets a run of its own)."""
        mine = list(strictness)
        with self.chained() as w:
            rows = w.conn.execute(sa.select(incident_runs_table).where(
                incident_runs_table.c.incident_id == incident_id, incident_runs_table.c.sealed_at.is_(None),
                incident_runs_table.c.mode == mode, incident_runs_table.c.where == where)
                .order_by(incident_runs_table.c.opened_at, incident_runs_table.c.lead_case_id)).all()
            for row in rows:
                joined, keys = json.loads(row.joined), json.loads(row.conflict_keys)
                if row.lead_case_id == case_id or any(j["case_id"] == case_id for j in joined):
                    return row.lead_case_id
                if json.loads(row.strictness) < mine or (conflict_key and conflict_key in keys) \
                        or len(joined) + 1 >= max_cases:
                    continue
                w.conn.execute(incident_runs_table.update().where(
                    incident_runs_table.c.lead_case_id == row.lead_case_id,
                    incident_runs_table.c.attempt == row.attempt).values(
                    joined=json.dumps([*joined, member]),
                    conflict_keys=json.dumps(sorted({*keys, *([conflict_key] if conflict_key else [])}))))
                w.append("run.delegated", {"attempt": 1, "incident_id": incident_id, "lead_case_id": row.lead_case_id,
                                           "joined_queued": True}, case_id=case_id, actor="cordon")
                return row.lead_case_id
        return None

    def seal_incident_run(self, lead_case_id: str, attempt: int) -> list[dict[str, Any]]:
        """Close ``lead_case_id``'s queued runs to late cases as its run ``attempt`` starts planning
        and return the cases that joined them (``[{case_id, playbook, cloud}]``), recorded once as
        the lead's ``run.sealed`` ``{attempt, members}``. Idempotent per attempt: a resumed run
        gets the same list back. ``[]`` (and nothing written) when no run of the lead was open."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(incident_runs_table)
                                .where(incident_runs_table.c.lead_case_id == lead_case_id)).all()
        if not rows:
            return []
        done = next((r for r in rows if r.attempt == attempt and r.sealed_at is not None), None)
        if done is not None:
            return json.loads(done.joined)
        with self.chained() as w:
            rows = w.conn.execute(sa.select(incident_runs_table)
                                  .where(incident_runs_table.c.lead_case_id == lead_case_id)).all()
            done = next((r for r in rows if r.attempt == attempt and r.sealed_at is not None), None)
            if done is not None:
                return json.loads(done.joined)
            ts = now_iso()
            joined: list[dict[str, Any]] = []
            for r in rows:
                if r.sealed_at is None:
                    joined.extend(json.loads(r.joined))
            w.conn.execute(incident_runs_table.update().where(
                incident_runs_table.c.lead_case_id == lead_case_id,
                incident_runs_table.c.sealed_at.is_(None)).values(sealed_at=ts))
            if not any(r.attempt == attempt for r in rows):
                w.conn.execute(incident_runs_table.insert().values(
                    lead_case_id=lead_case_id, attempt=attempt, incident_id=rows[0].incident_id, mode=rows[0].mode,
                    where=rows[0].where, strictness=rows[0].strictness, conflict_keys="[]", joined="[]",
                    opened_at=ts, sealed_at=ts))
            w.conn.execute(incident_runs_table.update().where(
                incident_runs_table.c.lead_case_id == lead_case_id,
                incident_runs_table.c.attempt == attempt).values(joined=json.dumps(joined)))
            w.append("run.sealed", {"attempt": attempt, "members": joined}, case_id=lead_case_id, actor="cordon")
        return joined

    def incident_of(self, case_id: str) -> str | None:
        """The incident ``case_id`` belongs to, or ``None``."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(incident_cases_table.c.incident_id)
                                .where(incident_cases_table.c.case_id == case_id)).scalar_one_or_none()

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        """The incident as a dict: ``incident_id``, ``actor_key``, ``provider``, ``opened_at``,
        ``last_at``, ``lead_case_id``, ``actor`` (dict) and ``cases`` (its case IDs, in the order
        they were added); ``None`` for an unknown incident."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(incidents_table)
                               .where(incidents_table.c.incident_id == incident_id)).first()
            if row is None:
                return None
            cases = conn.execute(sa.select(incident_cases_table.c.case_id)
                                 .where(incident_cases_table.c.incident_id == incident_id)
                                 .order_by(incident_cases_table.c.added_at, incident_cases_table.c.case_id)).scalars()
            out = dict(row._mapping)
            out["cases"] = list(cases)
        out["actor"] = json.loads(out["actor"] or "{}")
        return out

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident (as :meth:`incident` gives it), newest first."""
        with self.engine.connect() as conn:
            ids = conn.execute(sa.select(incidents_table.c.incident_id)
                               .order_by(incidents_table.c.opened_at.desc())).scalars().all()
        return [i for i in (self.incident(x) for x in ids) if i is not None]

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
        """Check the chain, the head, the signed checkpoints, and the mutable rows the chain
        vouches for; report the first problem (:class:`VerifyResult`, ``problem`` says which kind).

        Walks the records from the genesis hash: each ``seq`` must follow the last, ``prev_hash``
        must be the previous record's ``hash``, and ``hash`` must match the content. Every stored
        checkpoint (and ``anchor``, one read from a file with
        :meth:`~cordon.audit.checkpoint.Checkpoint.read_anchor`) must carry a valid signature under
        :attr:`keyring` and name a record that exists with that hash: a record rewritten with its
        hashes recomputed, or a truncated tail (records deleted and the head rewritten) is caught
        there. The head row must name a record of the chain. ``first_bad_seq`` is the first record
        found wrong (for a truncated tail, the first missing one).

        With a key configured (``CORDON_LEDGER_KEY`` / ``CORDON_LEDGER_OLD_KEYS``) a non-empty
        chain must be covered by at least one checkpoint (or ``anchor``): appends sign one at the
        chain's first record and every ``checkpoint_every``-th, so none at all means they were
        deleted (or the key was configured after the records were written: then sign the head
        with ``cordon audit checkpoint``). Without a key that is only a warning.

        Then every ``cases`` row must equal the state its last ``case.status`` record vouches for
        (:func:`case_state_sha256`), and every ``dead_letters`` row the ``row_sha256`` of its
        ``intake.rejected`` (or migration ``dead_letter.baseline``) record; a vouched row that is
        gone fails too.

        Checkpoints are read before the head and the head before the records, so appends that
        commit while this runs are not mistaken for tampering; a row that changed after the walk
        is compared with the newer ``case.status`` / ``intake.rejected`` records too. Rows stream
        (``yield_per``); memory grows with the number of cases and dead letters (one digest each).
        """
        keyring = self.keyring
        with self.engine.connect() as conn:
            cps = [Checkpoint(r.seq, r.hash, r.ts, r.key_id, r.signature, r.algorithm, r.id)
                   for r in conn.execute(sa.select(checkpoints_table).order_by(checkpoints_table.c.seq))]
            head = conn.execute(sa.select(head_table).where(head_table.c.id == 1)).one()
        if anchor is not None:
            cps.append(anchor)
        warnings: list[str] = []
        if not keyring.accepted:
            if not cps:
                warnings.append("no signed checkpoints: deleting the newest records and rewriting the head would go "
                                "unnoticed (set CORDON_LEDGER_KEY; `cordon audit checkpoint`)")
            else:
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

        def fail(checked: int, seq: int | None, reason: str, problem: str = "chain", **counts: int) -> VerifyResult:
            return VerifyResult(False, checked, seq, reason, n_cps, tuple(warnings), problem, **counts)

        for cp in by_seq.get(0, []):
            if problem := check_cp(cp, GENESIS):
                return fail(0, 0, problem, "checkpoint")
        prev = GENESIS
        expected_seq = 1
        checked = 0
        head_record_hash = GENESIS if head.seq == 0 else None
        case_state: dict[str, tuple[int, dict[str, Any]]] = {}   # case_id -> (seq, last case.status payload)
        dl_state: dict[int, tuple[int, str, str | None]] = {}   # dead letter id -> (seq, row_sha256, stored_sha256)
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
                        return fail(checked, row.seq, problem, "checkpoint")
                    last_vouched = row.seq
                if row.seq == head.seq:
                    head_record_hash = row.hash
                if row.kind in _VOUCHING_KINDS:
                    _note_vouching(row.kind, row.seq, json.loads(row.payload), case_state, dl_state)
                prev = row.hash
                expected_seq += 1
                checked += 1
        beyond = [cp for cp in cps if cp.seq > checked]
        if beyond:
            cp = min(beyond, key=lambda c: c.seq)
            n_cps += 1
            if keyring.accepted and (problem := cp.check(keyring)):
                return fail(checked, cp.seq, f"{cp.describe()}: {problem}", "checkpoint")
            return fail(checked, checked + 1,
                        f"records {checked + 1}..{cp.seq} are missing: {cp.describe()} vouches for record {cp.seq} "
                        f"but the chain ends at {checked} (the tail was truncated)", "checkpoint")
        if head.seq > checked:
            return fail(checked, checked + 1, f"head says seq {head.seq} but the chain ends at {checked} "
                                              "(the tail was truncated)")
        if head.hash != head_record_hash:
            return fail(checked, head.seq, f"head's hash for seq {head.seq} does not match record {head.seq}")
        if keyring.accepted and checked:
            covering = max((cp.seq for cp in cps), default=0)
            if covering < 1:
                return fail(checked, None,
                            f"no signed checkpoint covers the chain ({checked} record(s)) although a ledger key is "
                            f"configured: ledger_checkpoints holds none for any record, so a truncated tail or a "
                            f"rewritten chain could not be told; they were deleted, or the key was configured after "
                            f"these records were written (then sign the head: `cordon audit checkpoint`)", "coverage")
            if self.checkpoint_every and checked - covering >= self.checkpoint_every:
                warnings.append(f"records {covering + 1}..{checked} are not covered by a checkpoint (the newest is at "
                                f"seq {covering}; one is signed every {self.checkpoint_every}): recent checkpoints "
                                "may have been deleted; `cordon audit checkpoint` signs the head")
        bad, n_cases = self._verify_cases(case_state, checked)
        if bad:
            return fail(checked, bad[0], bad[1], "case", cases=n_cases)
        bad, n_dls = self._verify_dead_letters(dl_state, checked)
        if bad:
            return fail(checked, bad[0], bad[1], "dead_letter", cases=n_cases, dead_letters=n_dls)
        warnings.extend(self._refusal_warnings())
        return VerifyResult(True, checked, checkpoints=n_cps, warnings=tuple(warnings), cases=n_cases,
                            dead_letters=n_dls)

    def _newer_vouching(self, after_seq: int) -> tuple[dict[str, tuple[int, dict[str, Any]]],
                                                        dict[int, tuple[int, str, str | None]]]:
        """``case.status`` / dead-letter records appended after ``after_seq`` (while verify ran)."""
        cases: dict[str, tuple[int, dict[str, Any]]] = {}
        dls: dict[int, tuple[int, str, str | None]] = {}
        q = (sa.select(ledger_table.c.seq, ledger_table.c.kind, ledger_table.c.payload)
             .where(ledger_table.c.seq > after_seq, ledger_table.c.kind.in_(_VOUCHING_KINDS))
             .order_by(ledger_table.c.seq))
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                _note_vouching(r.kind, r.seq, json.loads(r.payload), cases, dls)
        return cases, dls

    def _verify_cases(self, state: dict[str, tuple[int, dict[str, Any]]], walked: int
                      ) -> tuple[tuple[int | None, str] | None, int]:
        """The first ``cases`` row that differs from its last ``case.status`` (seq, reason), and
        how many rows were compared."""
        newer: dict[str, tuple[int, dict[str, Any]]] | None = None
        seen: set[str] = set()
        n = 0
        q = sa.select(cases_table).order_by(cases_table.c.case_id).execution_options(yield_per=1000)
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                n += 1
                seen.add(row.case_id)
                vouched = state.get(row.case_id)
                digest = case_state_sha256(row)
                if vouched and vouched[1].get("state_sha256") == digest:
                    continue
                if newer is None:
                    newer = self._newer_vouching(walked)[0]
                later = newer.get(row.case_id)
                if later and later[1].get("state_sha256") == digest:
                    continue
                return _case_mismatch(row, vouched), n
        for case_id, (seq, _p) in state.items():
            if case_id not in seen:
                return (seq, f"case {case_id}: its cases row is gone, but case.status record {seq} vouches for "
                             "it (the row was deleted)"), n
        return None, n

    def _verify_dead_letters(self, state: dict[int, tuple[int, str, str | None]], walked: int
                             ) -> tuple[tuple[int | None, str] | None, int]:
        """The first ``dead_letters`` row that differs from its chained record (seq, reason), and
        how many rows were compared."""
        newer: dict[int, tuple[int, str, str | None]] | None = None
        seen: set[int] = set()
        n = 0
        q = sa.select(dead_letters_table).order_by(dead_letters_table.c.id).execution_options(yield_per=1000)
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                n += 1
                seen.add(row.id)
                vouched = state.get(row.id)
                if vouched is None:
                    if newer is None:
                        newer = self._newer_vouching(walked)[1]
                    vouched = newer.get(row.id)
                if vouched is None:
                    return (None, f"dead letter #{row.id} ({row.origin} record {row.position}): no intake.rejected "
                                  "record vouches for it (inserted directly, not through the ledger)"), n
                if dead_letter_sha256(row) == vouched[1]:
                    continue
                if vouched[2] and _sha256_text(row.raw_text) != vouched[2]:
                    what = "raw_text was edited (it no longer matches the chained stored_sha256)"
                else:
                    what = "a column (ts, origin, position, field, reason or raw_sha256) was edited"
                return (vouched[0], f"dead letter #{row.id} ({row.origin} record {row.position}) differs from "
                                    f"its chained record {vouched[0]}: {what}"), n
        for dl_id, (seq, _h, _s) in state.items():
            if dl_id not in seen:
                return (seq, f"dead letter #{dl_id}: its row is gone, but record {seq} vouches for it "
                             "(the row was deleted)"), n
        return None, n

    def _refusal_warnings(self, stale_after: float = 600.0) -> list[str]:
        """Refusal windows that ended more than ``stale_after`` seconds ago and are still not
        summarised in the chain (no server has been closing them)."""
        cutoff = datetime.fromtimestamp(int(datetime.now(UTC).timestamp() - stale_after), UTC).isoformat()
        t = refusal_windows_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.c.count), 0))
                               .where(t.c.summary_seq.is_(None), t.c.window_start < cutoff)).one()
        if not row[0]:
            return []
        return [f"{row[1]} refused request(s) counted in {row[0]} refusal window(s) that ended long ago are not yet "
                "summarised in the chain (`cordon serve` closes them; see cordon.audit.refusals)"]


#: Record kinds whose payload vouches for a mutable row (:meth:`Ledger.verify`).
_VOUCHING_KINDS = ("case.status", "intake.rejected", "dead_letter.baseline")


def _note_vouching(kind: str, seq: int, p: dict[str, Any], cases: dict[str, tuple[int, dict[str, Any]]],
                   dls: dict[int, tuple[int, str, str | None]]) -> None:
    if kind == "case.status":
        if isinstance(p.get("case_id"), str):
            p.pop("changed", None)
            cases[p["case_id"]] = (seq, p)
    elif isinstance(p.get("dead_letter_id"), int) and isinstance(p.get("row_sha256"), str):
        # intake.rejected records written before schema 0004 carry no row_sha256: the migration's
        # dead_letter.baseline record vouches for those rows instead
        dls[p["dead_letter_id"]] = (seq, p["row_sha256"], p.get("stored_sha256"))


def _case_mismatch(row: Any, vouched: tuple[int, dict[str, Any]] | None) -> tuple[int | None, str]:
    if vouched is None:
        return None, (f"case {row.case_id}: no case.status record vouches for its cases row (status {row.status!r}): "
                      "the row was inserted or re-keyed outside the ledger")
    seq, p = vouched
    diffs = [f"{f} is {getattr(row, f)!r} in the row but {p.get(f)!r} in the chain"
             for f in ("status", "plan_hash", "flow_run_id", "playbook", "case_key", "opened_at")
             if getattr(row, f) != p.get(f)]
    if _sha256_text(row.detection) != p.get("detection_sha256"):
        diffs.append("detection differs from the chained detection_sha256")
    return seq, (f"case {row.case_id}: the cases row differs from its last case.status record {seq}: "
                 + "; ".join(diffs or ["a vouched column differs"]))


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
