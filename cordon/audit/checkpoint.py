"""Signed checkpoints of the ledger's head, so that truncating the tail is detected.

The hash chain alone proves order and content, but anyone who can write to the database can
delete the last records and rewrite ``ledger_head``, or rewrite a record and recompute every hash
after it: the hashes are not keyed. A checkpoint is ``HMAC-SHA256(key, message)`` over the head
(``seq``, ``hash``, time) with a key the database never sees (RFC 2104; Python's :mod:`hmac`).

``message`` is the canonical JSON (sorted keys, no spaces) of
``{"v": 1, "alg": "HMAC-SHA256", "key_id": ..., "seq": ..., "hash": ..., "ts": ...}``.

Keys come from the environment (never from files in the repository):

* ``CORDON_LEDGER_KEY``: the signing key, any text of at least 16 characters (use
  ``openssl rand -hex 32``). Its key id is a fingerprint: ``"k-"`` + the first 16 hex digits of
  ``sha256("cordon-ledger-key-id\\0" + key)``, recorded with each checkpoint.
* ``CORDON_LEDGER_OLD_KEYS``: previous keys, whitespace-separated, accepted when verifying (key
  rotation).
* ``CORDON_LEDGER_CHECKPOINT_EVERY``: sign a checkpoint inside every append whose ``seq`` is a
  multiple of this (default 100; ``0`` turns periodic checkpoints off).

An *anchor* is a checkpoint exported to a file kept outside the database (a ticket, object
storage with retention): ``cordon audit verify --anchor FILE`` checks the chain still reaches it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cordon.detections.model import canonical_json

ALGORITHM = "HMAC-SHA256"
ANCHOR_FORMAT = "cordon-ledger-anchor/1"
MIN_KEY_LENGTH = 16
DEFAULT_CHECKPOINT_EVERY = 100


class LedgerKeyError(ValueError):
    """A ledger signing key is missing or unusable; the message names the variable."""


@dataclass(frozen=True)
class LedgerKey:
    """One HMAC key: ``key_id`` (fingerprint, safe to record) and the secret bytes (not in repr)."""

    key_id: str
    secret: bytes = field(repr=False)

    @classmethod
    def from_text(cls, text: str, *, source: str = "key") -> LedgerKey:
        """A key from its text; raises :class:`LedgerKeyError` naming ``source`` when shorter than
        :data:`MIN_KEY_LENGTH` characters."""
        text = text.strip()
        if len(text) < MIN_KEY_LENGTH:
            raise LedgerKeyError(f"{source}: a ledger key needs at least {MIN_KEY_LENGTH} characters "
                                 f"(try `openssl rand -hex 32`), got {len(text)}")
        secret = text.encode("utf-8")
        return cls("k-" + hashlib.sha256(b"cordon-ledger-key-id\0" + secret).hexdigest()[:16], secret)


@dataclass(frozen=True)
class Keyring:
    """The current signing key (``None``: checkpoints cannot be signed) and every key accepted
    when verifying, by key id."""

    current: LedgerKey | None
    accepted: Mapping[str, LedgerKey]

    @classmethod
    def of(cls, current: LedgerKey | None, *old: LedgerKey) -> Keyring:
        keys = {k.key_id: k for k in old}
        if current:
            keys[current.key_id] = current
        return cls(current, keys)


def keyring_from_env(environ: Mapping[str, str] | None = None) -> Keyring:
    """The keyring from ``CORDON_LEDGER_KEY`` and ``CORDON_LEDGER_OLD_KEYS`` (see module doc).
    Raises :class:`LedgerKeyError` for a key that is too short."""
    env = os.environ if environ is None else environ
    current = None
    if env.get("CORDON_LEDGER_KEY", "").strip():
        current = LedgerKey.from_text(env["CORDON_LEDGER_KEY"], source="CORDON_LEDGER_KEY")
    old = [LedgerKey.from_text(t, source=f"CORDON_LEDGER_OLD_KEYS[{i}]")
           for i, t in enumerate(env.get("CORDON_LEDGER_OLD_KEYS", "").split())]
    return Keyring.of(current, *old)


def checkpoint_every_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``CORDON_LEDGER_CHECKPOINT_EVERY`` (default 100); raises :class:`LedgerKeyError` when it is
    not a non-negative integer."""
    env = os.environ if environ is None else environ
    raw = env.get("CORDON_LEDGER_CHECKPOINT_EVERY", "").strip()
    if not raw:
        return DEFAULT_CHECKPOINT_EVERY
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise LedgerKeyError(f"CORDON_LEDGER_CHECKPOINT_EVERY: expected a non-negative integer, got {raw!r}")
    return value


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "the ledger's record ``seq`` had hash ``hash`` at time ``ts``".

    ``id`` is the row id in ``ledger_checkpoints`` (``None`` for one read from an anchor file).
    """

    seq: int
    hash: str
    ts: str
    key_id: str
    signature: str
    algorithm: str = ALGORITHM
    id: int | None = None

    def message(self) -> bytes:
        """The bytes the signature covers (module docstring)."""
        return canonical_json({"v": 1, "alg": self.algorithm, "key_id": self.key_id, "seq": self.seq,
                               "hash": self.hash, "ts": self.ts}).encode("utf-8")

    @classmethod
    def sign(cls, key: LedgerKey, seq: int, hash_: str, ts: str) -> Checkpoint:
        """A checkpoint of (``seq``, ``hash_``, ``ts``) signed with ``key``."""
        unsigned = cls(seq, hash_, ts, key.key_id, "")
        sig = hmac.new(key.secret, unsigned.message(), hashlib.sha256).hexdigest()
        return cls(seq, hash_, ts, key.key_id, sig)

    def check(self, keyring: Keyring) -> str | None:
        """``None`` when the signature is valid under ``keyring``; else what is wrong (unknown
        algorithm, unknown key id, signature mismatch)."""
        if self.algorithm != ALGORITHM:
            return f"unknown algorithm {self.algorithm!r}"
        key = keyring.accepted.get(self.key_id)
        if key is None:
            return (f"signed with key {self.key_id}, which is not configured "
                    "(CORDON_LEDGER_KEY / CORDON_LEDGER_OLD_KEYS)")
        expected = hmac.new(key.secret, self.message(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.signature):
            return "signature does not match (the checkpoint was forged or altered)"
        return None

    def describe(self) -> str:
        where = f"checkpoint #{self.id}" if self.id is not None else "the anchor"
        return f"{where} (seq {self.seq}, signed {self.ts} with {self.key_id})"

    # -- anchors ---------------------------------------------------------------------------
    def to_anchor(self) -> dict[str, Any]:
        """The anchor file's JSON object (format :data:`ANCHOR_FORMAT`)."""
        return {"format": ANCHOR_FORMAT, "seq": self.seq, "hash": self.hash, "ts": self.ts,
                "key_id": self.key_id, "algorithm": self.algorithm, "signature": self.signature}

    def write_anchor(self, path: str | Path) -> Path:
        """Write :meth:`to_anchor` to ``path`` (JSON, one object); returns the path."""
        p = Path(path)
        p.write_text(json.dumps(self.to_anchor(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return p

    @classmethod
    def read_anchor(cls, path: str | Path) -> Checkpoint:
        """Read an anchor file; raises :class:`ValueError` naming the file and the field."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: not a readable JSON anchor: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"{p}: field 'format': expected {ANCHOR_FORMAT!r}")
        for name, typ in (("seq", int), ("hash", str), ("ts", str), ("key_id", str), ("algorithm", str),
                          ("signature", str)):
            if not isinstance(data.get(name), typ) or isinstance(data.get(name), bool):
                raise ValueError(f"{p}: field {name!r}: expected {typ.__name__}, got {data.get(name)!r}")
        return cls(data["seq"], data["hash"], data["ts"], data["key_id"], data["signature"], data["algorithm"])
