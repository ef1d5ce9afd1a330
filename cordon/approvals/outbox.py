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

Tables (own ``sqlalchemy.MetaData``, in :func:`cordon.audit.ledger.default_database_url`'s database,
created by the ledger's migration 0003): ``slack_outbox_rate``, ``slack_outbox_groups``, ``slack_outbox_cases``.
"""

from __future__ import annotations

import json
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
    sa.Index("ix_slack_outbox_cases_actor", "channel", "actor_key", "requested_at"),
)

#: Table names (created by cordon/audit/migrations/versions/0003_slack_outbox.py).
TABLES = tuple(metadata.tables)


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

    def call(self, key: str, interval: float, fn: Callable[[], Any]) -> Any:
        """``fn()`` in ``key``'s next slot; on a 429 push the key back by ``Retry-After`` and retry
        (``max_attempts`` in all). Raises the last ``SlackApiError``."""
        for attempt in range(1, self.max_attempts + 1):
            self._slot(key, interval)
            try:
                return fn()
            except SlackApiError as exc:
                wait = _retry_after(exc)
                if wait is None or attempt == self.max_attempts:
                    raise
                self._push_back(key, wait)
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

    def _post(self, client: WebClient, channel: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.call(f"post:{channel}", self.post_interval, lambda: client.chat_postMessage(
            channel=channel, unfurl_links=False, unfurl_media=False, **kwargs))
        return dict(resp.data) if isinstance(resp.data, dict) else {}

    def _reply(self, client: WebClient, channel: str, thread_ts: str, text: str) -> None:
        """A thread reply, in the ``reply:<channel>`` lane: the story of a case never takes the slot
        of the next approval request (``post:<channel>``)."""
        self.call(f"reply:{channel}", self.post_interval, lambda: client.chat_postMessage(
            channel=channel, thread_ts=thread_ts, text=text, unfurl_links=False, unfurl_media=False))

    def _update(self, client: WebClient, channel: str, ts: str, blocks: list[dict[str, Any]], text: str) -> None:
        self.call(f"update:{channel}", self.update_interval,
                  lambda: client.chat_update(channel=channel, ts=ts, blocks=blocks, text=text))

    # -- the interface -----------------------------------------------------------------------
    def request_approval(self, client: WebClient, *, channel: str, case_id: str, actor_key: str | None,
                         blocks: list[dict[str, Any]], text: str) -> dict[str, Any]:
        """:func:`request_approval` (module docstring). Idempotent per ``case_id``: asking again
        returns the same ``where`` without posting."""
        client = self.bare(client)
        now = self.clock()
        with self.writer.begin() as conn:
            row = conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).first()
            if row is None:
                row = self._enqueue(conn, channel, case_id, actor_key, blocks, text, now)
        if row.group_id is None:
            if row.ts:
                return {"channel": row.post_channel, "ts": row.ts, "shared": False}
            data = self._post(client, channel, blocks=blocks, text=text)
            with self.writer.begin() as conn:
                conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                             .values(ts=str(data["ts"]), post_channel=str(data["channel"])))
            return {"channel": str(data["channel"]), "ts": str(data["ts"]), "shared": False}
        group = self._ensure_rendered(client, row.group_id, row.joined_version)
        return {"channel": group.post_channel, "ts": group.ts, "shared": True}

    def _enqueue(self, conn: sa.Connection, channel: str, case_id: str, actor_key: str | None,
                 blocks: list[dict[str, Any]], text: str, now: float) -> Any:
        values: dict[str, Any] = {"case_id": case_id, "channel": channel, "actor_key": actor_key,
                                  "requested_at": now, "row_text": text, "buttons": json.dumps(_buttons(blocks))}
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
            values.update(group_id=gid, position=position, joined_version=version)
        conn.execute(cases_table.insert().values(**values))
        return conn.execute(sa.select(cases_table).where(cases_table.c.case_id == case_id)).one()

    def _group(self, gid: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(groups_table).where(groups_table.c.id == gid)).one()

    def _ensure_rendered(self, client: WebClient, gid: int, version: int) -> Any:
        """Return the group once a render at ``version`` or later is in Slack; render it ourselves
        when we can claim it, else wait for the claimer (taking over an expired claim)."""
        while True:
            group = self._group(gid)
            if group.ts and group.rendered >= version:
                return group
            if self._claim(gid):
                try:
                    self._render(client, gid)
                finally:
                    self._release(gid)
                continue
            self.sleep(self.poll)

    def _claim(self, gid: int) -> bool:
        now = self.clock()
        with self.writer.begin() as conn:
            res = conn.execute(groups_table.update().where(
                groups_table.c.id == gid,
                sa.or_(groups_table.c.claim_until.is_(None), groups_table.c.claim_until < now,
                       groups_table.c.claim_by == self.me)).values(claim_until=now + self.claim_seconds,
                                                                    claim_by=self.me))
            return res.rowcount == 1

    def _release(self, gid: int) -> None:
        with self.writer.begin() as conn:
            conn.execute(groups_table.update().where(groups_table.c.id == gid, groups_table.c.claim_by == self.me)
                         .values(claim_until=None, claim_by=None))

    def _render(self, client: WebClient, gid: int) -> None:
        """Post or update the summary of group ``gid`` with every row it has now (claim held)."""
        with self.engine.connect() as conn:
            group = conn.execute(sa.select(groups_table).where(groups_table.c.id == gid)).one()
            rows = [dict(r._mapping) for r in conn.execute(
                sa.select(cases_table).where(cases_table.c.group_id == gid).order_by(cases_table.c.position))]
        for r in rows:
            r["buttons"] = json.loads(r["buttons"])
        blocks = summary_blocks(group.actor_key, rows)
        text = _clip(f"Cordon: {len(rows)} approval requests from {group.actor_key}", 3000)
        if group.ts is None:
            data = self._post(client, group.channel, blocks=blocks, text=text)
            values = {"ts": str(data["ts"]), "post_channel": str(data["channel"])}
        else:
            self._update(client, group.post_channel, group.ts, blocks, text)
            values = {}
        with self.writer.begin() as conn:
            conn.execute(groups_table.update().where(groups_table.c.id == gid).values(rendered=group.version,
                                                                                      **values))
            if "ts" in values:
                conn.execute(cases_table.update().where(cases_table.c.group_id == gid)
                             .values(ts=values["ts"], post_channel=values["post_channel"]))

    def update_case(self, client: WebClient, where: dict[str, Any], *, case_id: str, blocks: list[dict[str, Any]],
                    text: str, thread_text: str | None = None) -> None:
        """:func:`update_case` (module docstring)."""
        client = self.bare(client)
        if not where.get("shared"):
            self._update(client, where["channel"], where["ts"], blocks, text)
            if thread_text:
                self._reply(client, where["channel"], where["ts"], thread_text)
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
        group = self._ensure_rendered(client, row.group_id, version)
        if thread_text:
            self._reply(client, group.post_channel, group.ts, f"{case_id}: {thread_text}")

    def retire(self, case_id: str) -> bool:
        """Forget ``case_id``'s request so that asking again posts a new message (a new plan after
        the state changed since approval): its row is kept, renamed ``<case_id>~<8 hex>``, and no
        longer counts as its actor's (the new request is not rolled into a burst summary with the
        request it replaces). Returns whether there was one."""
        with self.writer.begin() as conn:
            done = conn.execute(cases_table.update().where(cases_table.c.case_id == case_id)
                                .values(case_id=f"{case_id}~{uuid.uuid4().hex[:8]}", actor_key=None)).rowcount
        return bool(done)

    def flush_pending(self, client: WebClient) -> int:
        """Render every group whose last change is not yet in Slack (a process died mid-render);
        returns how many were rendered."""
        with self.engine.connect() as conn:
            pending = conn.execute(sa.select(groups_table.c.id, groups_table.c.version).where(
                sa.or_(groups_table.c.ts.is_(None), groups_table.c.rendered < groups_table.c.version))).all()
        for gid, version in pending:
            self._ensure_rendered(self.bare(client), gid, version)
        return len(pending)

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


def request_approval(client: WebClient, *, channel: str, case_id: str, actor_key: str | None,
                     blocks: list[dict[str, Any]], text: str, outbox: Outbox | None = None) -> dict[str, Any]:
    """Post the approval request for ``case_id`` to ``channel``; returns ``where``.

    ``actor_key`` names the principal behind the detection (for grouping bursts; ``None``: never
    grouped). ``blocks`` are the full approval message (its buttons are what a summary row
    carries), ``text`` the fallback text (a summary row's line). ``outbox`` defaults to
    :func:`default_outbox`. Blocks until the buttons are in Slack (rate slots, ``Retry-After``).
    Raises ``slack_sdk.errors.SlackApiError`` when Slack refuses once retries are spent (the
    request stays in the outbox: asking again, or :meth:`Outbox.flush_pending`, completes it).
    """
    return (outbox or default_outbox()).request_approval(client, channel=channel, case_id=case_id,
                                                         actor_key=actor_key, blocks=blocks, text=text)


def update_case(client: WebClient, where: dict[str, Any], *, case_id: str, blocks: list[dict[str, Any]],
                text: str, thread_text: str | None = None, outbox: Outbox | None = None) -> None:
    """Show the case's new state: ``chat.update`` of its message with ``blocks``; with
    ``thread_text``, also a reply in the message's thread (the channel's step-by-step history).
    For a ``shared`` case, the summary is re-rendered with this case's row changed (``text`` as its
    state line, the buttons found in ``blocks``) and the reply goes in the summary's thread.

    Raises ``slack_sdk.errors.SlackApiError`` as :func:`request_approval`; ``KeyError`` for a
    shared case this outbox does not hold.
    """
    (outbox or default_outbox()).update_case(client, where, case_id=case_id, blocks=blocks, text=text,
                                             thread_text=thread_text)
