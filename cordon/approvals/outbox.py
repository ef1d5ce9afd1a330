"""The one way Cordon posts and updates approval messages in Slack, storm-proof.

Every approval request and every status change of a case's message goes through
:func:`request_approval` and :func:`update_case`, so that channel-level concerns live in one place.
``where`` is the locator both return / take: ``{"channel": str, "ts": str, "shared": bool}``
(``shared``: the case is one row of a summary message rather than a message of its own).

What it does about storms (Slack allows about one message per second per channel,
https://api.slack.com/apis/rate-limits#special-rate-limits; ``chat.update`` is Tier 3):

* **Grouping.** The first case of an actor (``actor_key``) in ``window`` seconds gets a message of
  its own. Further cases of the same actor within the window are rolled into a *summary* message
  ("N approval requests from <actor>"): one section per case (the fallback text, i.e. what
  happened, the credential and the playbook) and one ``actions`` block per case carrying that
  case's own buttons copied unchanged from the blocks it was given (so button values stay as
  :func:`cordon.slack.blocks._button_value` built them and a click decides the right case;
  ``block_id`` ``cordon_decision:<case_id>``). A summary holds at most ``group_size`` cases
  (2 blocks each, within Slack's 50), then a new summary starts. So a burst of N cases from A
  actors posts at most ``A * (1 + ceil((N/A - 1) / group_size))`` messages.
* **Rate limit shared across processes.** Before each Web API call the caller takes the next slot
  of the channel (``post:<channel>`` for ``chat.postMessage`` of a request, ``reply:<channel>`` for
  a thread reply, so a case's story never delays the next request, ``update:<channel>`` for
  ``chat.update``) from the table ``slack_outbox_rate`` in the ledger's database, one every
  ``post_interval`` / ``update_interval`` seconds, and sleeps until it. Flow runs are separate
  processes: the table is what they share.
* **Retry-After.** A 429 (HTTP status or ``ratelimited``) pushes the key's next slot to at least
  now + ``Retry-After`` seconds (for every process) and the call is retried, up to
  ``max_attempts``; only then is ``SlackApiError`` raised. ``slack_sdk``'s own in-process 429
  handler is left out of the client used here (5xx and connection retries stay).
* **No approval request lost.** The case's row (its text and buttons) is written to
  ``slack_outbox_cases`` before anything is posted; :func:`request_approval` returns only once the
  case's buttons are in a message Slack accepted (its own, or a summary rendered after the case
  joined it). Concurrent joiners share renders: whoever holds a group's claim
  (``slack_outbox_groups.claim_until``) renders every row joined so far; the others wait for it.
  :meth:`Outbox.flush_pending` renders any group left behind (a process killed mid-render).
* **Updates of a shared case** re-render the summary with that case's row changed (its state line;
  its buttons as given in the new blocks, so a decided case loses them) and put ``thread_text``
  in the summary's thread, prefixed with the case ID; they never replace the summary.

* **Never holding a run.** A run asks and reports with ``wait=False`` (:func:`cordon.approvals.decide.post_request`,
  :func:`cordon.approvals.decide.update_safely`): what can go now (the channel's slot is free, no
  other process holds the summary) goes now; the rest stays in the case's row (``pending``: the
  request's blocks, the ``approval.asked`` record to append once the buttons are in Slack, the
  newest update, the queued thread replies) and the call returns at once, so a suspended run
  frees its worker thread instead of sleeping for a slot. The **sender**
  (:meth:`Outbox.start_sender`, a thread of every ``cordon worker``) does the rest with
  :meth:`Outbox.flush_pending`, woken at once by its own process (:attr:`Outbox.kick`) and every
  second for work other processes left: one render of a summary carries every row joined or
  changed since the last, so a storm costs far fewer calls than cases. Whoever brings a case's
  buttons to Slack appends its ``approval.asked`` record (once: the ledger is checked first), which
  is what the decider and the sweeper read. Rows are claimed (``claim_until``; the claimant is the
  outbox *and* its thread, since a worker's runs and its sender share one outbox) so two senders
  never post the same request; a row Slack refuses is tried again after 10 s, then every 60 s.

Tables (own ``sqlalchemy.MetaData``, in :func:`cordon.audit.ledger.default_database_url`'s database,
created by the ledger's migration 0003): ``slack_outbox_rate``, ``slack_outbox_groups``, ``slack_outbox_cases``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler

from cordon.slack.blocks import ACTIONS_BLOCK_ID, MAX_SECTION_TEXT
from cordon.slack.client import ensure_retry_handlers

metadata = sa.MetaData()

rate_table = sa.Table(
    "slack_outbox_rate", metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("next_at", sa.Float, nullable=False),
)

groups_table = sa.Table(
    "slack_outbox_groups", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(100), nullable=False),
    sa.Column("actor_key", sa.String(512), nullable=False),
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("last_at", sa.Float, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("ts", sa.String(40), nullable=True),
    sa.Column("post_channel", sa.String(100), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("rendered", sa.Integer, nullable=False),
    sa.Column("claim_until", sa.Float, nullable=True),
    sa.Column("claim_by", sa.String(64), nullable=True),
    sa.Index("ix_slack_outbox_groups_actor", "channel", "actor_key", "last_at"),
)

cases_table = sa.Table(
    "slack_outbox_cases", metadata,
    sa.Column("case_id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(100), nullable=False),
    sa.Column("actor_key", sa.String(512), nullable=True),
    sa.Column("requested_at", sa.Float, nullable=False),
    sa.Column("group_id", sa.Integer, nullable=True, index=True),
    sa.Column("position", sa.Integer, nullable=True),
    sa.Column("joined_version", sa.Integer, nullable=True),
    sa.Column("ts", sa.String(40), nullable=True),
    sa.Column("post_channel", sa.String(100), nullable=True),
    sa.Column("row_text", sa.Text, nullable=False),
    sa.Column("row_state", sa.Text, nullable=True),
    sa.Column("buttons", sa.Text, nullable=False),
    # work a caller left to the sender (migration 0005; module docstring, "Never holding a run")
    sa.Column("pending", sa.Integer, nullable=False, server_default="0"),
    sa.Column("request", sa.Text, nullable=True),
    sa.Column("asked_record", sa.Text, nullable=True),
    sa.Column("asked_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pending_update", sa.Text, nullable=True),
    sa.Column("pending_replies", sa.Text, nullable=True),
    sa.Column("claim_until", sa.Float, nullable=True),
    sa.Column("claim_by", sa.String(64), nullable=True),
    sa.Column("next_try_at", sa.Float, nullable=True),
    sa.Index("ix_slack_outbox_cases_actor", "channel", "actor_key", "requested_at"),
    sa.Index("ix_slack_outbox_cases_pending", "pending"),
)

#: Table names (created by cordon/audit/migrations/versions/0003_slack_outbox.py, extended by 0005).
TABLES = tuple(metadata.tables)

log = logging.getLogger("cordon.outbox")


class NotNow(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside the outbox when a caller that does not wait (``wait=False``) finds the rate
    slot taken (or Slack answered 429): the work stays in the outbox for the sender."""


def _retry_after(exc: SlackApiError) -> float | None:
    """Seconds Slack asked to wait, when ``exc`` is a rate-limit answer; else ``None``."""
    resp = exc.response
    status = getattr(resp, "status_code", None)
    error = resp.get("error") if hasattr(resp, "get") else None
    if status != 429 and error != "ratelimited":
        return None
    headers = getattr(resp, "headers", None) or {}
    for k, v in dict(headers).items():
        if k.lower() == "retry-after":
            value = v[0] if isinstance(v, list) and v else v
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                break
    return 1.0


def _buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every button of the ``actions`` blocks in ``blocks`` (approve, deny, roll back...), as given."""
    out: list[dict[str, Any]] = []
    for block in blocks or []:
        if isinstance(block, dict) and block.get("type") == "actions":
            out.extend(el for el in block.get("elements", []) if isinstance(el, dict) and el.get("type") == "button")
    return out


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(value: Any) -> str:
    """mrkdwn-escape ``&``, ``<``, ``>``, leaving Slack's own entities as they are: a row's text is
    the approval's fallback text, already escaped (:func:`cordon.slack.blocks.fallback_text`),
    and must not show ``&amp;lt;``."""
    return re.sub(r"&(?!(?:amp|lt|gt);)", "&amp;", str(value)).replace("<", "&lt;").replace(">", "&gt;")


def summary_blocks(actor_key: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary message for ``rows`` (``case_id``, ``row_text``, ``row_state``, ``buttons``) of
    one actor: a header, a context line, then per case a section and (when it has buttons) an
    ``actions`` block with ``block_id`` ``cordon_decision:<case_id>``. 2 + 2 x rows blocks."""
    waiting = sum(1 for r in rows if r["buttons"])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(f"{len(rows)} approval requests, one actor",
                                                                        150)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(
            f"Cases from `{_esc(actor_key)}` arrived together and are grouped here; {waiting} still "
            "waiting for a decision. Each case has its own buttons; details: `cordon audit show CASE`.",
            MAX_SECTION_TEXT)}]},
    ]
    for r in rows:
        text = f"*{_esc(r['case_id'])}* · {_esc(r['row_text'])}"
        if r.get("row_state"):
            text += f"\n_{_esc(r['row_state'])}_"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, MAX_SECTION_TEXT)}})
        if r["buttons"]:
            blocks.append({"type": "actions", "block_id": f"{ACTIONS_BLOCK_ID}:{r['case_id']}"[:255],
                           "elements": r["buttons"][:25]})
    return blocks


class Outbox:
    """The outbox over one database (module docstring). ``url`` defaults to the ledger's
    (:func:`cordon.audit.ledger.default_database_url`).

    ``window`` (s): how close cases of one actor must be to be grouped; ``group_size``: cases per
    summary (at most 24: 2 blocks each within 50); ``post_interval`` / ``update_interval`` (s)
    between calls per channel; ``max_attempts``: 429s tolerated per call; ``claim_seconds``: how long
    a render claim holds before another process may take it over; ``clock`` / ``sleep``: seconds
    (``time.time`` / ``time.sleep``; tests pass a settable clock).
    """

    def __init__(self, url: str | None = None, *, window: float = 60.0, group_size: int = 20,
                 post_interval: float = 1.0, update_interval: float = 1.0, max_attempts: int = 8,
                 claim_seconds: float = 120.0, poll: float = 0.2, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        from cordon.audit.ledger import _make_engine, default_database_url
        from cordon.audit.migrations import ensure_schema

        if not 1 <= group_size <= 24:
            raise ValueError("group_size must be between 1 and 24 (2 blocks per case, 50 per message)")
        self.url = url or default_database_url()
        self.engine = _make_engine(self.url)
        self.writer = self.engine.execution_options(cordon_write=True)
        # the tables come with the ledger's migrations (revision 0003); processes that start at
        # once migrate once (see cordon.audit.migrations.ensure_schema)
        ensure_schema(self.engine)
        self.window, self.group_size = window, group_size
        self.post_interval, self.update_interval = post_interval, update_interval
        self.max_attempts, self.claim_seconds, self.poll = max_attempts, claim_seconds, poll
        self.clock, self.sleep = clock, sleep
        self.me = uuid.uuid4().hex
        #: set when a caller leaves work for the sender (:meth:`start_sender`)
        self.kick = threading.Event()
        self._sender_stop = threading.Event()
        self._ledger_obj: Any = None

    def _me(self) -> str:
        """Who holds a claim: this outbox *and thread* (a worker's run threads and its sender share
        one outbox; a claim re-entrant across them let two threads post one request twice)."""
        return f"{self.me}:{threading.get_ident()}"

    # -- rate limit --------------------------------------------------------------------------
    def _ensure_key(self, key: str) -> None:
        with self.engine.connect() as conn:
            if conn.execute(sa.select(rate_table.c.key).where(rate_table.c.key == key)).first():
                return
        try:
            with self.writer.begin() as conn:
                conn.execute(rate_table.insert().values(key=key, next_at=0.0))
        except sa.exc.IntegrityError:
            pass  # another process made it first

    def _slot(self, key: str, interval: float) -> None:
        """Take the next slot of ``key`` (row-locked) and sleep until it."""
        self._ensure_key(key)
        now = self.clock()
        with self.writer.begin() as conn:
            next_at = conn.execute(sa.select(rate_table.c.next_at).where(rate_table.c.key == key)
                                   .with_for_update()).scalar_one()
            slot = max(now, next_at)
            conn.execute(rate_table.update().where(rate_table.c.key == key).values(next_at=slot + interval))
        if slot > now:
            self.sleep(slot - now)

    def _push_back(self, key: str, seconds: float) -> None:
        self._ensure_key(key)
        until = self.clock() + seconds
        with self.writer.begin() as conn:
            next_at = conn.execute(sa.select(rate_table.c.next_at).where(rate_table.c.key == key)
                                   .with_for_update()).scalar_one()
            conn.execute(rate_table.update().where(rate_table.c.key == key).values(next_at=max(next_at, until)))

    def slot_of(self, key: str) -> float | None:
        """The next free slot of ``key`` (seconds, the outbox's clock), or ``None``."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(rate_table.c.next_at).where(rate_table.c.key == key)).scalar()

    def _try_slot(self, key: str, interval: float) -> bool:
        """Take ``key``'s slot only if it is free now (row-locked); never sleeps."""
        self._ensure_key(key)
        now = self.clock()
        with self.writer.begin() as conn:
            next_at = conn.execute(sa.select(rate_table.c.next_at).where(rate_table.c.key == key)
                                   .with_for_update()).scalar_one()
            if next_at > now:
                return False
            conn.execute(rate_table.update().where(rate_table.c.key == key).values(next_at=now + interval))
        return True

    def call(self, key: str, interval: float, fn: Callable[[], Any], *, wait: bool = True) -> Any:
        """``fn()`` in ``key``'s next slot; on a 429 push the key back by ``Retry-After`` and retry
        (``max_attempts`` in all). Raises the last ``SlackApiError``. With ``wait=False`` it never
        sleeps: :class:`NotNow` when the slot is taken or Slack answered 429."""
        for attempt in range(1, self.max_attempts + 1):
            if wait:
                self._slot(key, interval)
            elif not self._try_slot(key, interval):
                raise NotNow(key)
            try:
                return fn()
            except SlackApiError as exc:
                retry = _retry_after(exc)
                if retry is None or attempt == self.max_attempts:
                    raise
                self._push_back(key, retry)
                if not wait:
                    raise NotNow(key) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def bare(client: WebClient) -> WebClient:
        """A copy of ``client`` without ``slack_sdk``'s in-process 429 handler (the outbox honours
        ``Retry-After`` itself, across processes); 5xx and connection retries are kept."""
        if not isinstance(client, WebClient):
            return client
        ensure_retry_handlers(client)
        handlers = [h for h in client.retry_handlers if not isinstance(h, RateLimitErrorRetryHandler)]
        if not any(isinstance(h, ServerErrorRetryHandler) for h in handlers):
            handlers.append(ServerErrorRetryHandler(max_retry_count=2))
        return WebClient(token=client.token, base_url=client.base_url, timeout=client.timeout, ssl=client.ssl,
                         proxy=client.proxy, headers=dict(client.headers or {}), retry_handlers=handlers)

    def _post(self, client: WebClient, channel: str, *, wait: bool = True, **kwargs: Any) -> dict[str, Any]:
        resp = self.call(f"post:{channel}", self.post_interval, lambda: client.chat_postMessage(
            channel=channel, unfurl_links=False, unfurl_media=False, **kwargs), wait=wait)
        return dict(resp.data) if isinstance(resp.data, dict) else {}

    def _reply(self, client: WebClient, channel: str, thread_ts: str, text: str, *, wait: bool = True) -> None:
        """A thread reply, in the ``reply:<channel>`` lane: the story of a case never takes the slot
        of the next approval request (``post:<channel>``)."""
        self.call(f"reply:{channel}", self.post_interval, lambda: client.chat_postMessage(
            channel=channel, thread_ts=thread_ts, text=text, unfurl_links=False, unfurl_media=False), wait=wait)

    def _update(self, client: WebClient, channel: str, ts: str, blocks: list[dict[str, Any]], text: str, *,
                wait: bool = True) -> None:
        self.call(f"update:{channel}", self.update_interval,
                  lambda: client.chat_update(channel=channel, ts=ts, blocks=blocks, text=text), wait=wait)

    # -- the interface -----------------------------------------------------------------------
    def request_approval(self, client: WebClient, *, channel: str, case_id: str, actor_key: str | None,
                         blocks: list[dict[str, Any]], text: str, asked: dict[str, Any] | None = None,
                         wait: bool = True) -> dict[str, Any] | None:
        """:func:`request_approval` (module docstring). Idempotent per ``case_id``: asking again
        returns the same ``where`` without posting. ``asked``: ``{"case_id", "run_id", "record"}``,
        the ``approval.asked`` record appended (with ``where``) once the buttons are in Slack. With
        ``wait=False``: ``None`` when the channel's slot is taken (the sender posts it)."""
        client = self.bare(client)
        now = self.clock()
        with self.writer.begin() as conn:
            row = conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).first()
            if row is None:
                row = self._enqueue(conn, channel, case_id, actor_key, blocks, text, now, asked)
        try:
            if row.group_id is None:
                return self._post_own(client, case_id, wait=wait)
            group = self._ensure_rendered(client, row.group_id, row.joined_version, wait=wait)
        except SlackApiError:
            if not wait and row.group_id is None:  # the run fails with Slack's answer: leave nothing queued
                with self.writer.begin() as conn:
                    conn.execute(cases_table.delete().where(cases_table.c.case_id == case_id,
                                                            cases_table.c.ts.is_(None)))
            raise
        finally:
            if not wait:
                self.kick.set()
        return None if group is None else {"channel": group.post_channel, "ts": group.ts, "shared": True}

    def _enqueue(self, conn: sa.Connection, channel: str, case_id: str, actor_key: str | None,
                 blocks: list[dict[str, Any]], text: str, now: float, asked: dict[str, Any] | None = None) -> Any:
        values: dict[str, Any] = {"case_id": case_id, "channel": channel, "actor_key": actor_key,
                                  "requested_at": now, "row_text": text, "buttons": json.dumps(_buttons(blocks)),
                                  "asked_record": json.dumps(asked) if asked else None}
        recent = 0
        if actor_key and conn.dialect.name == "postgresql":
            # one enqueuer per (channel, actor) at a time (SQLite's BEGIN IMMEDIATE already serialises)
            conn.execute(sa.text("select pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{channel}|{actor_key}"})
        if actor_key:
            recent = conn.execute(sa.select(sa.func.count()).select_from(cases_table).where(
                cases_table.c.channel == channel, cases_table.c.actor_key == actor_key,
                cases_table.c.requested_at >= now - self.window)).scalar_one()
        if recent:
            group = conn.execute(sa.select(groups_table).where(
                groups_table.c.channel == channel, groups_table.c.actor_key == actor_key,
                groups_table.c.last_at >= now - self.window, groups_table.c.size < self.group_size)
                .order_by(groups_table.c.id.desc()).limit(1).with_for_update()).first()
            if group is None:
                gid = conn.execute(groups_table.insert().values(
                    channel=channel, actor_key=actor_key, opened_at=now, last_at=now, size=1, version=1,
                    rendered=0)).inserted_primary_key[0]
                position, version = 0, 1
            else:
                gid, position, version = group.id, group.size, group.version + 1
                conn.execute(groups_table.update().where(groups_table.c.id == gid).values(
                    size=group.size + 1, version=version, last_at=now))
            values.update(group_id=gid, position=position, joined_version=version, pending=1 if asked else 0)
        else:  # a message of its own: its blocks wait here until it is posted
            values.update(request=json.dumps({"blocks": blocks, "text": text}), pending=1)
        conn.execute(cases_table.insert().values(**values))
        return conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).one()

    # -- a case's own message ------------------------------------------------------------------
    def _row(self, case_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).first()

    def _take_claim(self, table: sa.Table, key: sa.ColumnElement[bool]) -> bool:
        """Claim the row of ``table`` (either: both have ``claim_until`` / ``claim_by``) that
        ``key`` selects, for this outbox and thread: free, expired, or already ours."""
        now = self.clock()
        with self.writer.begin() as conn:
            res = conn.execute(table.update().where(
                key, sa.or_(table.c.claim_until.is_(None), table.c.claim_until < now, table.c.claim_by == self._me()))
                .values(claim_until=now + self.claim_seconds, claim_by=self._me()))
            return res.rowcount == 1

    def _drop_claim(self, table: sa.Table, key: sa.ColumnElement[bool]) -> None:
        with self.writer.begin() as conn:
            conn.execute(table.update().where(key, table.c.claim_by == self._me())
                         .values(claim_until=None, claim_by=None))

    def _claim_row(self, case_id: str) -> bool:
        return self._take_claim(cases_table, cases_table.c.case_id == case_id)

    def _release_row(self, case_id: str) -> None:
        self._drop_claim(cases_table, cases_table.c.case_id == case_id)

    @staticmethod
    def _own_where(row: Any) -> dict[str, Any]:
        return {"channel": row.post_channel, "ts": row.ts, "shared": False}

    def _post_own(self, client: WebClient, case_id: str, *, wait: bool) -> dict[str, Any] | None:
        """Post the request of a case with a message of its own, once (row claim); ``None`` when
        not waiting and the slot or the claim is taken."""
        while True:
            row = self._row(case_id)
            if row.ts:
                self._settle_asked(case_id)
                return self._own_where(row)
            if self._claim_row(case_id):
                break
            if not wait:
                return None
            self.sleep(self.poll)
        try:
            row = self._row(case_id)
            if not row.ts:
                req = json.loads(row.request)
                try:
                    data = self._post(client, row.channel, blocks=req["blocks"], text=req["text"], wait=wait)
                except NotNow:
                    return None
                with self.writer.begin() as conn:
                    conn.execute(cases_table.update().where(cases_table.c.case_id == case_id).values(
                        ts=str(data["ts"]), post_channel=str(data["channel"]), request=None))
        finally:
            self._release_row(case_id)
        self._settle_asked(case_id)
        return self._own_where(self._row(case_id))

    # -- the approval.asked record, once the buttons are in Slack ------------------------------
    def _ledger(self) -> Any:
        if self._ledger_obj is None:
            from cordon.audit.ledger import Ledger

            self._ledger_obj = Ledger(self.url)
        return self._ledger_obj

    def _settle_asked(self, case_id: str) -> None:
        """Append the row's ``approval.asked`` record (``where`` filled in) if its buttons are in
        Slack and it is not in the ledger yet; then recompute ``pending``."""
        row = self._row(case_id)
        if row is None:
            return
        if row.asked_record and not row.asked_done:
            where = None
            if row.group_id is None:
                where = self._own_where(row) if row.ts else None
            else:
                group = self._group(row.group_id)
                if group.ts and group.rendered >= (row.joined_version or 0):
                    where = {"channel": group.post_channel, "ts": group.ts, "shared": True}
            if where is None:
                return
            asked = json.loads(row.asked_record)
            record = {**asked["record"], "channel": where["channel"], "ts": where["ts"], "where": where}
            ledger = self._ledger()
            done = any(r.run_id == asked.get("run_id") and r.payload.get("plan_hash") == record.get("plan_hash")
                       for r in ledger.records(case_id=asked["case_id"], kind_prefix="approval.asked"))
            if not done:
                ledger.append("approval.asked", record, case_id=asked["case_id"], run_id=asked.get("run_id"),
                              actor="cordon")
            with self.writer.begin() as conn:
                conn.execute(cases_table.update().where(cases_table.c.case_id == case_id).values(asked_done=1))
        self._recompute_pending(case_id)

    def _recompute_pending(self, case_id: str) -> None:
        row = self._row(case_id)
        if row is None:
            return
        left = ((row.group_id is None and not row.ts) or (row.asked_record and not row.asked_done)
                or row.pending_update or row.pending_replies)
        if bool(left) != bool(row.pending):
            with self.writer.begin() as conn:
                conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                             .values(pending=1 if left else 0))

    # -- summaries -----------------------------------------------------------------------------
    def _group(self, gid: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(groups_table).where(groups_table.c.id == gid)).one()

    def _ensure_rendered(self, client: WebClient, gid: int, version: int, *, wait: bool = True) -> Any:
        """Return the group once a render at ``version`` or later is in Slack; render it ourselves
        when we can claim it, else wait for the claimer (taking over an expired claim). With
        ``wait=False``: ``None`` instead of waiting (the claimer or the sender renders it)."""
        while True:
            group = self._group(gid)
            if group.ts and group.rendered >= version:
                return group
            if self._claim(gid):
                try:
                    self._render(client, gid, wait=wait)
                except NotNow:
                    return None
                finally:
                    self._release(gid)
                continue
            if not wait:
                return None
            self.sleep(self.poll)

    def _claim(self, gid: int) -> bool:
        return self._take_claim(groups_table, groups_table.c.id == gid)

    def _release(self, gid: int) -> None:
        self._drop_claim(groups_table, groups_table.c.id == gid)

    def _render(self, client: WebClient, gid: int, *, wait: bool = True) -> None:
        """Post or update the summary of group ``gid`` with every row it has now (claim held);
        then append the ``approval.asked`` records of the rows it brought to Slack."""
        with self.engine.connect() as conn:
            group = conn.execute(sa.select(groups_table).where(groups_table.c.id == gid)).one()
            rows = [dict(r._mapping) for r in conn.execute(
                sa.select(cases_table).where(cases_table.c.group_id == gid).order_by(cases_table.c.position))]
        for r in rows:
            r["buttons"] = json.loads(r["buttons"])
        blocks = summary_blocks(group.actor_key, rows)
        text = _clip(f"Cordon: {len(rows)} approval requests from {group.actor_key}", 3000)
        if group.ts is None:
            data = self._post(client, group.channel, blocks=blocks, text=text, wait=wait)
            values = {"ts": str(data["ts"]), "post_channel": str(data["channel"])}
        else:
            self._update(client, group.post_channel, group.ts, blocks, text, wait=wait)
            values = {}
        with self.writer.begin() as conn:
            conn.execute(groups_table.update().where(groups_table.c.id == gid).values(rendered=group.version,
                                                                                      **values))
            if "ts" in values:
                conn.execute(cases_table.update().where(cases_table.c.group_id == gid)
                             .values(ts=values["ts"], post_channel=values["post_channel"]))
        for r in rows:
            if r["asked_record"] and not r["asked_done"]:
                self._settle_asked(r["case_id"])

    # -- updates -------------------------------------------------------------------------------
    def update_case(self, client: WebClient, where: dict[str, Any], *, case_id: str, blocks: list[dict[str, Any]],
                    text: str, thread_text: str | None = None, wait: bool = True) -> None:
        """:func:`update_case` (module docstring)."""
        client = self.bare(client)
        row = self._row(case_id)
        shared = row.group_id is not None if row is not None else bool(where.get("shared"))
        if not shared:
            if row is None:  # a message the outbox did not post: as given, waiting for the slots
                self._update(client, where["channel"], where["ts"], blocks, text)
                if thread_text:
                    self._reply(client, where["channel"], where["ts"], thread_text)
                return
            if not wait and (not row.ts or row.pending_update or row.pending_replies):
                return self._defer(case_id, {"blocks": blocks, "text": text}, thread_text)  # keep the order
            if not row.ts:
                self._post_own(client, case_id, wait=True)
                row = self._row(case_id)
            try:
                self._update(client, row.post_channel, row.ts, blocks, text, wait=wait)
            except NotNow:
                return self._defer(case_id, {"blocks": blocks, "text": text}, thread_text)
            if thread_text:
                try:
                    self._reply(client, row.post_channel, row.ts, thread_text, wait=wait)
                except NotNow:
                    return self._defer(case_id, None, thread_text)
            return
        with self.writer.begin() as conn:
            row = conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).first()
            if row is None or row.group_id is None:
                raise KeyError(f"case {case_id} is not in a summary message of this outbox ({self.url})")
            group = conn.execute(sa.select(groups_table).where(groups_table.c.id == row.group_id)
                                 .with_for_update()).one()
            version = group.version + 1
            conn.execute(groups_table.update().where(groups_table.c.id == group.id).values(version=version))
            conn.execute(cases_table.update().where(cases_table.c.case_id == case_id).values(
                row_state=text, buttons=json.dumps(_buttons(blocks))))
        group = self._ensure_rendered(client, row.group_id, version, wait=wait)
        if not thread_text:
            if group is None:
                self.kick.set()
            return
        if group is None or row.pending_replies:
            return self._defer(case_id, None, thread_text)
        try:
            self._reply(client, group.post_channel, group.ts, f"{case_id}: {thread_text}", wait=wait)
        except NotNow:
            self._defer(case_id, None, thread_text)

    def _defer(self, case_id: str, update: dict[str, Any] | None, thread_text: str | None) -> None:
        """Leave an update (the newest replaces an older one) and a thread reply for the sender."""
        with self.writer.begin() as conn:
            row = conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)
                               .with_for_update()).one()
            values: dict[str, Any] = {"pending": 1}
            if update is not None:
                values["pending_update"] = json.dumps(update)
            if thread_text:
                values["pending_replies"] = json.dumps([*json.loads(row.pending_replies or "[]"), thread_text])
            conn.execute(cases_table.update().where(cases_table.c.case_id == case_id).values(**values))
        self.kick.set()

    def retire(self, case_id: str) -> bool:
        """Forget ``case_id``'s request so that asking again posts a new message (a new plan after
        the state changed since approval): its row is kept, renamed ``<case_id>~<8 hex>``, and no
        longer counts as its actor's (the new request is not rolled into a burst summary with the
        request it replaces). Returns whether there was one."""
        with self.writer.begin() as conn:
            done = conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                                .values(case_id=f"{case_id}~{uuid.uuid4().hex[:8]}", actor_key=None)).rowcount
        return bool(done)

    # -- the sender ----------------------------------------------------------------------------
    def flush_pending(self, client: WebClient) -> int:
        """Do what callers left: render every group whose last change is not yet in Slack (a
        caller did not wait, or a process died mid-render), post the requests, updates and thread
        replies rows hold, append the ``approval.asked`` records; waits for rate slots (this is the
        sender's thread, not a run's). A row Slack refuses is tried again later (back-off up to
        5 min), the others go on. Returns how many groups and rows it worked on."""
        client = self.bare(client)
        with self.engine.connect() as conn:
            groups = conn.execute(sa.select(groups_table.c.id, groups_table.c.version).where(
                sa.or_(groups_table.c.ts.is_(None), groups_table.c.rendered < groups_table.c.version))).all()
        for gid, version in groups:
            try:
                self._ensure_rendered(client, gid, version)
            except SlackApiError as exc:
                log.warning("Slack refused the summary of group %s: %s", gid, exc)
        self._flush_group_replies(client)
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cases_table.c.case_id, cases_table.c.next_try_at).where(
                cases_table.c.pending == 1, sa.or_(cases_table.c.next_try_at.is_(None),
                                                   cases_table.c.next_try_at <= now))
                .order_by(cases_table.c.requested_at).limit(500)).all()
        for case_id, tried in rows:
            try:
                self._drive_row(client, case_id)
            except SlackApiError as exc:
                backoff = 60.0 if tried else 10.0  # a second refusal waits longer
                log.warning("Slack refused the outbox's work for %s (again in %.0f s): %s", case_id, backoff, exc)
                with self.writer.begin() as conn:
                    conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                                 .values(next_try_at=self.clock() + backoff))
        return len(groups) + len(rows)

    def _drop_replies(self, case_id: str, n: int) -> None:
        """Drop the first ``n`` queued replies of ``case_id`` (posted), keeping any queued since."""
        with self.writer.begin() as conn:
            queued = conn.execute(sa.select(cases_table.c.pending_replies)
                                  .where(cases_table.c.case_id == case_id).with_for_update()).scalar()
            left = json.loads(queued or "[]")[n:]
            conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                         .values(pending_replies=json.dumps(left) if left else None))

    def _flush_group_replies(self, client: WebClient, limit: int = 3000) -> int:
        """The queued thread replies of a summary's cases, gathered: one reply (``<case>: <text>``
        paragraphs, split at ``limit`` characters) per summary rather than one per case, so a
        storm's stories do not trail one a second behind it. Returns the replies posted."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(cases_table.c.case_id, cases_table.c.group_id).where(
                cases_table.c.pending == 1, cases_table.c.group_id.is_not(None),
                cases_table.c.pending_replies.is_not(None)).order_by(cases_table.c.position)).all()
        by_group: dict[int, list[str]] = {}
        for case_id, gid in found:
            by_group.setdefault(gid, []).append(case_id)
        posted = 0
        for gid, case_ids in by_group.items():
            group = self._group(gid)
            if not group.ts:
                continue
            claimed = [c for c in case_ids if self._claim_row(c)]
            try:
                taken = {c: json.loads(self._row(c).pending_replies or "[]") for c in claimed}
                parts = [f"{c}: {text}" for c in claimed for text in taken[c]]
                chunks: list[str] = []
                for part in parts:
                    if chunks and len(chunks[-1]) + 2 + len(part) <= limit:
                        chunks[-1] += "\n\n" + part
                    else:
                        chunks.append(_clip(part, limit))
                for chunk in chunks:
                    self._reply(client, group.post_channel, group.ts, chunk)
                    posted += 1
                for c, done in taken.items():
                    self._drop_replies(c, len(done))
            finally:
                for c in claimed:
                    self._release_row(c)
                    self._recompute_pending(c)
        return posted

    def _drive_row(self, client: WebClient, case_id: str) -> None:
        """Everything a row has pending, in order: its request, its ``approval.asked``, its update,
        its thread replies (row claimed; another process holding it skips it)."""
        row = self._row(case_id)
        if row is None:
            return
        if row.group_id is None and not row.ts:
            self._post_own(client, case_id, wait=True)
        if not self._claim_row(case_id):
            return
        try:
            self._settle_asked(case_id)
            row = self._row(case_id)
            if row.group_id is None:
                channel, ts = row.post_channel, row.ts
            else:
                group = self._group(row.group_id)
                channel, ts = group.post_channel, group.ts
            if not ts:
                return
            if row.pending_update and row.group_id is None:
                upd = json.loads(row.pending_update)
                self._update(client, channel, ts, upd["blocks"], upd["text"])
                with self.writer.begin() as conn:
                    conn.execute(cases_table.update().where(cases_table.c.case_id == case_id,
                                                            cases_table.c.pending_update == row.pending_update)
                                 .values(pending_update=None))
            for reply in json.loads(row.pending_replies or "[]"):
                self._reply(client, channel, ts, reply if row.group_id is None else f"{case_id}: {reply}")
                self._drop_replies(case_id, 1)
        finally:
            self._release_row(case_id)
            self._recompute_pending(case_id)

    def start_sender(self, client_factory: Callable[[], WebClient], *, interval: float = 1.0) -> threading.Thread:
        """Run :meth:`flush_pending` in a daemon thread: at once when this process leaves work
        (:attr:`kick`), else every ``interval`` seconds (work other processes left). Returns the
        thread; :meth:`stop_sender` ends it."""
        def loop() -> None:
            client = None
            while not self._sender_stop.is_set():
                self.kick.clear()
                try:
                    client = client or client_factory()
                    self.flush_pending(client)
                except Exception as exc:  # noqa: BLE001 - the database or Slack may be away: try again
                    log.warning("the Slack outbox sender failed (again in %s s): %s", interval, exc)
                self.kick.wait(interval)

        thread = threading.Thread(target=loop, name="cordon-outbox-sender", daemon=True)
        thread.start()
        return thread

    def stop_sender(self) -> None:
        """Ask the sender thread to stop (after its current pass)."""
        self._sender_stop.set()
        self.kick.set()

    def stats(self) -> dict[str, int]:
        """``{"cases", "groups", "shared_cases"}`` held in the outbox tables."""
        with self.engine.connect() as conn:
            cases = conn.execute(sa.select(sa.func.count()).select_from(cases_table)).scalar_one()
            shared = conn.execute(sa.select(sa.func.count()).select_from(cases_table)
                                  .where(cases_table.c.group_id.is_not(None))).scalar_one()
            groups = conn.execute(sa.select(sa.func.count()).select_from(groups_table)).scalar_one()
        return {"cases": cases, "groups": groups, "shared_cases": shared}


def max_messages(cases_per_actor: int, actors: int, group_size: int = 20) -> int:
    """The most messages a burst of ``cases_per_actor`` cases from each of ``actors`` actors
    posts within one window: one own message plus one summary per ``group_size`` further cases."""
    if cases_per_actor <= 0:
        return 0
    return actors * (1 + math.ceil((cases_per_actor - 1) / group_size))


_outboxes: dict[str, Outbox] = {}
_lock = threading.Lock()


def default_outbox() -> Outbox:
    """The process's :class:`Outbox` over the ledger's database (one per database URL)."""
    from cordon.audit.ledger import default_database_url

    url = default_database_url()
    with _lock:
        if url not in _outboxes:
            _outboxes[url] = Outbox(url)
        return _outboxes[url]


def start_default_sender() -> threading.Thread | None:
    """The process's outbox sender (:meth:`Outbox.start_sender` on :func:`default_outbox`, the
    client from :func:`cordon.slack.client.web_client`), started by every ``cordon worker`` and
    ``cordon serve``: it posts the requests, updates and thread replies that runs and clicks left
    queued rather than wait for a channel's rate slot, in this process (at once, woken by
    :attr:`Outbox.kick`) or another (on its next poll). Several senders share the work through
    per-row claims. ``None`` (nothing started) without ``CORDON_SLACK_BOT_TOKEN``."""
    import os

    if not os.environ.get("CORDON_SLACK_BOT_TOKEN"):
        return None
    from cordon.slack.client import web_client

    return default_outbox().start_sender(lambda: web_client({}))


def request_approval(client: WebClient, *, channel: str, case_id: str, actor_key: str | None,
                     blocks: list[dict[str, Any]], text: str, outbox: Outbox | None = None,
                     asked: dict[str, Any] | None = None, wait: bool = True) -> dict[str, Any] | None:
    """Post the approval request for ``case_id`` to ``channel``; returns ``where``.

    ``actor_key`` names the principal behind the detection (for grouping bursts; ``None``: never
    grouped). ``blocks`` are the full approval message (its buttons are what a summary row
    carries), ``text`` the fallback text (a summary row's line). ``outbox`` defaults to
    :func:`default_outbox`. ``asked`` (``{"case_id", "run_id", "record"}``): the
    ``approval.asked`` record to append, with ``where``, once the buttons are in Slack (whoever
    posts them). Blocks until the buttons are in Slack (rate slots, ``Retry-After``); with
    ``wait=False`` returns ``None`` instead of waiting for a slot, and the outbox's sender
    (:meth:`Outbox.start_sender`) posts it. Raises ``slack_sdk.errors.SlackApiError`` when Slack
    refuses once retries are spent (the request stays in the outbox: asking again, or
    :meth:`Outbox.flush_pending`, completes it).
    """
    return (outbox or default_outbox()).request_approval(client, channel=channel, case_id=case_id,
                                                         actor_key=actor_key, blocks=blocks, text=text,
                                                         asked=asked, wait=wait)


def update_case(client: WebClient, where: dict[str, Any], *, case_id: str, blocks: list[dict[str, Any]],
                text: str, thread_text: str | None = None, outbox: Outbox | None = None, wait: bool = True) -> None:
    """Show the case's new state: ``chat.update`` of its message with ``blocks``; with
    ``thread_text``, also a reply in the message's thread (the channel's step-by-step history).
    For a ``shared`` case, the summary is re-rendered with this case's row changed (``text`` as its
    state line, the buttons found in ``blocks``) and the reply goes in the summary's thread.
    ``where`` may be a placeholder (no ``ts``) for a case whose request the outbox holds: the
    outbox's row says where its message is. With ``wait=False`` nothing waits for a rate slot:
    what cannot go now is left to the sender, in order (the newest update wins, replies queue).

    Raises ``slack_sdk.errors.SlackApiError`` as :func:`request_approval`; ``KeyError`` for a
    shared case this outbox does not hold.
    """
    (outbox or default_outbox()).update_case(client, where, case_id=case_id, blocks=blocks, text=text,
                                             thread_text=thread_text, wait=wait)
