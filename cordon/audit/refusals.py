"""Counted refusals: unsigned or forged requests tallied per window, summarised in the chain.

Anyone on the network can send Cordon a request with a bad Slack signature, a stale timestamp,
a wrong webhook token or a wrong audit-page password. Chaining one ledger record for each would
let them grow the chain (and hold its lock) as fast as they can send; not recording them would
hide an attack. So each refusal increments a row of ``refusal_windows`` (one small write, no
chain lock): one row per (source, reason, window of :attr:`RefusalCounter.window_seconds`),
with the count, the first and last time and the first :attr:`RefusalCounter.max_samples`
samples (remote address, headers as sent, detail; redacted at intake). Once a window has ended
(plus a grace for requests still in flight) one chained record per source and window says what
happened:

``<source>.refusals`` (``slack.refusals``, ``webhook.refusals``, ``audit.refusals``), payload::

    {"window_start": "2026-05-01T10:00:00+00:00", "window_seconds": 60, "count": 200,
     "by_reason": {"bad_signature": 198, "stale_timestamp": 2},
     "first_ts": "...", "last_ts": "...", "samples": [{"reason": ..., "ts": ..., "remote": ...}, ...]}

and each summarised row keeps the record's ``seq`` in ``summary_seq``. Requests that were
signed (so a decision by someone Slack vouches for: a replayed click, a vote refused by policy)
are not counted here: they stay chained one by one (:mod:`cordon.server.app`,
:mod:`cordon.approvals.decide`).

Windows are closed (:meth:`RefusalCounter.close_due`) by ``cordon serve`` every
:attr:`RefusalCounter.close_every` seconds and at start and stop, and by :meth:`record` when it
runs after a window ended; several replicas may close at once: the head lock and
``summary_seq IS NULL`` make one of them write each summary. A crash loses nothing that was
counted (the rows are in the database); the summaries of a crashed server's windows are written
by the next close. ``cordon audit verify`` warns about windows that ended long ago and are still
not summarised.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from cordon.audit.ledger import Ledger, LedgerRecord, redact, refusal_windows_table

#: Where refusals come from (the record kind is ``<source>.refusals``).
SOURCES = ("slack", "webhook", "audit", "metrics", "teams")
#: Longest string kept in a sample (headers and details are attacker-chosen).
SAMPLE_TEXT_LIMIT = 200


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _window_iso(ts: float, seconds: int) -> str:
    return datetime.fromtimestamp(int(ts // seconds * seconds), UTC).isoformat()


def _clip(sample: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in sample.items():
        if isinstance(v, str) and len(v) > SAMPLE_TEXT_LIMIT:
            v = v[:SAMPLE_TEXT_LIMIT] + "…"
        out[str(k)[:64]] = v
    return redact(out)


@dataclass(frozen=True)
class RefusalWindow:
    """One ``refusal_windows`` row: ``count`` refusals of ``source``/``reason`` in the window
    starting at ``window_start`` (ISO 8601 UTC) lasting ``window_seconds``; ``samples`` the
    first few; ``summary_seq`` the chained summary's ``seq`` (``None`` while open)."""

    source: str
    reason: str
    window_start: str
    window_seconds: int
    count: int
    first_ts: str
    last_ts: str
    samples: list[dict[str, Any]]
    summary_seq: int | None


class RefusalCounter:
    """Counts refusals in the ledger's database and summarises them in its chain (module doc).

    ``window_seconds`` (default 60) is the counting window; ``max_samples`` (default 5) samples
    are kept per (source, reason, window); a window is closed ``grace_seconds`` (default 5) after
    it ends; :meth:`record` also closes due windows at most every ``close_every`` seconds.
    ``clock`` returns Unix seconds (settable for tests). Thread-safe; several processes may share
    a database.
    """

    def __init__(self, ledger: Ledger, *, window_seconds: int = 60, max_samples: int = 5,
                 grace_seconds: float = 5.0, close_every: float = 15.0, clock: Callable[[], float] = time.time):
        if window_seconds < 1:
            raise ValueError("window_seconds: must be >= 1")
        self.ledger = ledger
        self.window_seconds = int(window_seconds)
        self.max_samples = max_samples
        self.grace_seconds = grace_seconds
        self.close_every = close_every
        self.clock = clock
        self._last_close = 0.0
        self._lock = threading.Lock()

    def record(self, source: str, reason: str, sample: dict[str, Any] | None = None) -> None:
        """Count one refusal of ``source`` (:data:`SOURCES`) for ``reason`` (at most 64
        characters kept) in the current window, keeping ``sample`` (redacted, strings clipped to
        :data:`SAMPLE_TEXT_LIMIT`) while the window has fewer than ``max_samples``. One write
        transaction, no chained record. Raises ``ValueError`` for an unknown source."""
        if source not in SOURCES:
            raise ValueError(f"source: {source!r} is not one of {', '.join(SOURCES)}")
        now = self.clock()
        ts = _iso(now)
        item = _clip({"reason": reason, "ts": ts, **(sample or {})})
        reason = reason[:64]
        start = _window_iso(now, self.window_seconds)
        t = refusal_windows_table
        for _attempt in range(3):
            try:
                with self.ledger.writer.begin() as conn:
                    key = sa.and_(t.c.source == source, t.c.reason == reason, t.c.window_start == start)
                    row = conn.execute(sa.select(t.c.id, t.c.count, t.c.samples, t.c.summary_seq).where(key)
                                       .with_for_update()).first()
                    if row is not None and row.summary_seq is not None:
                        # the window was closed already (a clock behind the closer's): count it in the next one
                        start = _window_iso(datetime.fromisoformat(start).timestamp() + self.window_seconds,
                                            self.window_seconds)
                        continue
                    if row is None:
                        conn.execute(t.insert().values(
                            source=source, reason=reason, window_start=start, window_seconds=self.window_seconds,
                            count=1, first_ts=ts, last_ts=ts, samples=json.dumps([item], default=str)))
                    else:
                        values: dict[str, Any] = {"count": t.c.count + 1, "last_ts": ts}
                        if row.count < self.max_samples:
                            values["samples"] = json.dumps(json.loads(row.samples) + [item], default=str)
                        conn.execute(t.update().where(t.c.id == row.id).values(**values))
                break
            except IntegrityError:  # another process inserted the same window's row first: update it
                continue
        else:
            raise RuntimeError(f"could not count a {source} refusal ({reason}): its windows kept closing or colliding")
        if now - self._last_close >= self.close_every:
            self.close_due()

    def close_due(self, now: float | None = None) -> list[LedgerRecord]:
        """Chain one ``<source>.refusals`` record per source and ended window (ended at least
        ``grace_seconds`` before ``now``) not yet summarised, and mark the rows with its ``seq``;
        all in one transaction holding the chain's lock. Returns the records appended (none when
        nothing is due: then no lock is taken)."""
        now = self.clock() if now is None else now
        with self._lock:
            self._last_close = now
        t = refusal_windows_table
        # a window [start, start + seconds) has ended when start <= now - grace - seconds
        cutoff = _iso(int(now - self.grace_seconds - self.window_seconds))
        due = sa.and_(t.c.summary_seq.is_(None), t.c.window_start <= cutoff)
        with self.ledger.engine.connect() as conn:
            if conn.execute(sa.select(t.c.id).where(due).limit(1)).first() is None:
                return []
        out: list[LedgerRecord] = []
        with self.ledger.chained() as w:
            rows = w.conn.execute(sa.select(t).where(due).order_by(t.c.source, t.c.window_start, t.c.reason)
                                  .with_for_update()).all()
            groups: dict[tuple[str, str], list[Any]] = {}
            for r in rows:
                groups.setdefault((r.source, r.window_start), []).append(r)
            for (source, start), group in groups.items():
                samples: list[dict[str, Any]] = []
                for r in group:
                    samples.extend(json.loads(r.samples))
                samples.sort(key=lambda s: str(s.get("ts")))
                rec = w.append(f"{source}.refusals", {
                    "window_start": start, "window_seconds": group[0].window_seconds,
                    "count": sum(r.count for r in group), "by_reason": {r.reason: r.count for r in group},
                    "first_ts": min(r.first_ts for r in group), "last_ts": max(r.last_ts for r in group),
                    "samples": samples[: self.max_samples]}, actor="cordon")
                w.conn.execute(t.update().where(t.c.id.in_([r.id for r in group])).values(summary_seq=rec.seq))
                out.append(rec)
        return out

    def windows(self, source: str | None = None, *, open_only: bool = False) -> list[RefusalWindow]:
        """The counted windows, oldest first (optionally of one ``source``; ``open_only``: not
        yet summarised)."""
        t = refusal_windows_table
        q = sa.select(t).order_by(t.c.window_start, t.c.source, t.c.reason)
        if source is not None:
            q = q.where(t.c.source == source)
        if open_only:
            q = q.where(t.c.summary_seq.is_(None))
        with self.ledger.engine.connect() as conn:
            return [RefusalWindow(r.source, r.reason, r.window_start, r.window_seconds, r.count, r.first_ts,
                                  r.last_ts, json.loads(r.samples), r.summary_seq) for r in conn.execute(q)]

    def counts(self, source: str | None = None) -> dict[str, int]:
        """Refusals counted so far by reason (summarised or not), optionally of one ``source``."""
        out: dict[str, int] = {}
        for w in self.windows(source):
            out[w.reason] = out.get(w.reason, 0) + w.count
        return out

    def prune(self, older_than_days: float = 30.0) -> int:
        """Delete summarised rows whose window started more than ``older_than_days`` ago (their
        counts and samples are in the chain); returns how many."""
        t = refusal_windows_table
        cutoff = _iso(self.clock() - older_than_days * 86400)
        with self.ledger.writer.begin() as conn:
            return conn.execute(t.delete().where(t.c.summary_seq.is_not(None), t.c.window_start < cutoff)).rowcount
