"""A local stand-in for the Slack Web API, for tests and for Cordon's sandbox mode.

It is a real HTTP server (stdlib :class:`http.server.ThreadingHTTPServer`) on ``127.0.0.1`` at a
free port, run in a background thread, so the real ``slack_sdk.WebClient`` talks to it unchanged::

    with SlackStandIn() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        client.chat_postMessage(channel="#security-approvals", text="hi")
        assert slack.messages("security-approvals")[0]["text"] == "hi"

What it follows (Slack API reference, https://api.slack.com/methods and https://api.slack.com/web):

* every Web API method arrives as ``POST /api/<method>``, body JSON
  (``Content-Type: application/json``) or form-encoded, token in ``Authorization: Bearer xoxb-...``
  (or, as Slack also accepts, a ``token`` form field);
* answers are HTTP 200 with ``{"ok": true, ...}`` or ``{"ok": false, "error": "<code>"}``; no token
  gives ``not_authed``, an unknown token ``invalid_auth``, an unknown method ``unknown_method``;
* implemented methods: ``auth.test``, ``chat.postMessage`` (``ok, channel, ts, message``),
  ``chat.update`` (``ok, channel, ts, text, message``), ``chat.postEphemeral`` (``ok, message_ts``),
  ``users.info`` (``ok, user``) over seeded users, ``usergroups.users.list`` (``ok, users``; an
  unknown group is ``no_such_subteam``) over seeded user groups, ``views.open`` (``ok, view``;
  ``trigger_id`` required, a modal over Slack's view limits answered ``invalid_arguments``; recorded
  for :meth:`SlackStandIn.views`);
* the Block Kit limits Slack enforces on a message are checked (at most 50 blocks, section text
  3000 characters, header text 150, button value 2000, ``action_id`` 255): a message over them is
  answered ``invalid_blocks`` as Slack does, so a test catches an over-long message;
* ``response_url`` (https://api.slack.com/interactivity/handling#message_responses): the stand-in
  hands out URLs ``<origin>/response/<id>`` (:meth:`SlackStandIn.response_url`) and records what is
  posted to them (:meth:`SlackStandIn.responses`); a non-ephemeral post with
  ``replace_original: true`` to a URL tied to a message replaces that message, as Slack does.

State kept for assertions: every request received (:attr:`SlackStandIn.requests`: method, path,
lower-cased headers, parsed body, the status answered), messages per channel by ``ts`` with their
latest ``text`` / ``blocks`` and an edit ``history`` (:meth:`SlackStandIn.messages` lists the
channel's top-level messages, as ``conversations.history`` does; :meth:`SlackStandIn.replies` a
thread, as ``conversations.replies``), ephemeral messages, response-URL posts.

Fault injection: :meth:`SlackStandIn.fail_next` answers the next ``times`` calls of a method with an
HTTP status (429 with ``Retry-After`` by default, or a 5xx), so retry handlers can be exercised.

Clicks are not simulated here: a test or the sandbox sends Cordon's server a signed
``block_actions`` request; :func:`block_actions_payload` and :func:`signed_headers` build one the
way Slack does.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: Users seeded when none are given: ``id``, ``name``, ``profile.email``.
DEFAULT_USERS: tuple[dict[str, Any], ...] = (
    {
        "id": "U0ALICE01",
        "name": "alice",
        "real_name": "Alice Approver",
        "profile": {"email": "alice@example.com", "real_name": "Alice Approver", "display_name": "alice"},
    },
    {
        "id": "U0BOB0002",
        "name": "bob",
        "real_name": "Bob Builder",
        "profile": {"email": "bob@example.com", "real_name": "Bob Builder", "display_name": "bob"},
    },
    {
        "id": "U0CAROL03",
        "name": "carol",
        "real_name": "Carol Oncall",
        "profile": {"email": "carol@example.com", "real_name": "Carol Oncall", "display_name": "carol"},
    },
)

#: User groups seeded when none are given: ID -> member user IDs.
DEFAULT_USERGROUPS: dict[str, list[str]] = {"S0SECOPS01": ["U0CAROL03"]}

#: Channels seeded when none are given: name -> ID.
DEFAULT_CHANNELS: dict[str, str] = {"security-approvals": "C0APPROVALS", "security-alerts": "C0ALERTS01"}

#: Form fields Slack accepts as JSON-encoded strings (parsed back to objects when recorded).
_JSON_FORM_FIELDS = frozenset({"blocks", "attachments", "metadata"})

_RATE_LIMIT_HEADERS = {"Retry-After": "0"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stand-in received.

    ``method`` is the Web API method (``chat.postMessage``) or ``response`` for a response-URL
    post; ``headers`` has lower-cased names; ``body`` the parsed body (JSON object, or the form
    fields as a dict with JSON-valued fields decoded); ``status`` the HTTP status answered.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    time: float = field(default_factory=time.time)


@dataclass
class _Fault:
    status: int
    headers: dict[str, str]
    remaining: int


class SlackStandIn:
    """The Slack Web API stand-in (see the module docstring for what it implements).

    ``tokens``: bot tokens accepted (others get ``invalid_auth``). ``users``: seeded users (dicts
    with ``id``, ``name``, ``profile.email``); ``channels``: name -> channel ID; ``usergroups``:
    user group ID -> member user IDs. Methods are thread-safe; the accessors return deep copies.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] = ("xoxb-test",),
        users: Iterable[Mapping[str, Any]] | None = None,
        channels: Mapping[str, str] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        team_id: str = "T0CORDON1",
        team: str = "cordon-sandbox",
        bot_user_id: str = "U0CORDONBT",
        bot_id: str = "B0CORDON01",
    ):
        self.tokens = set(tokens)
        self.team_id = team_id
        self.team = team
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self._users: dict[str, dict[str, Any]] = {}
        for u in users if users is not None else DEFAULT_USERS:
            self.add_user(dict(u))
        self._channels: dict[str, str] = dict(channels if channels is not None else DEFAULT_CHANNELS)
        self._usergroups: dict[str, list[str]] = {
            g: list(m) for g, m in (usergroups if usergroups is not None else DEFAULT_USERGROUPS).items()}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ts_counter = itertools.count(1)
        self._init_state()

    def _init_state(self) -> None:
        self._requests: list[RecordedRequest] = []
        self._messages: dict[str, dict[str, dict[str, Any]]] = {}
        self._ephemerals: dict[str, list[dict[str, Any]]] = {}
        self._responses: dict[str, list[dict[str, Any]]] = {}
        self._response_targets: dict[str, tuple[str, str] | None] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._views: list[dict[str, Any]] = []

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> str:
        """Start serving on ``127.0.0.1`` at a free port; returns :attr:`base_url`
        (``http://127.0.0.1:<port>/api/``, what ``WebClient(base_url=...)`` expects)."""
        if self._server is not None:
            return self.base_url
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="slack-standin", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving and close the socket (state stays readable)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> SlackStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>`` (raises ``RuntimeError`` before :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("SlackStandIn is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/api/``."""
        return self.origin + "/api/"

    # -- seeding and fault injection --------------------------------------------------------
    def add_user(self, user: dict[str, Any]) -> None:
        """Seed a user (``id`` required; ``name``, ``profile.email`` recommended)."""
        if "id" not in user:
            raise ValueError("a seeded Slack user needs an 'id'")
        user.setdefault("team_id", getattr(self, "team_id", None))
        user.setdefault("deleted", False)
        user.setdefault("is_bot", False)
        user.setdefault("profile", {})
        self._users[user["id"]] = user

    def set_usergroup(self, group_id: str, members: Iterable[str]) -> None:
        """Seed (or replace) the members of user group ``group_id`` (``S...``)."""
        with self._lock:
            self._usergroups[group_id] = list(members)

    def add_channel(self, name: str, channel_id: str | None = None) -> str:
        """Seed a channel; returns its ID (generated ``C...`` when not given)."""
        cid = channel_id or "C" + uuid.uuid4().hex[:10].upper()
        with self._lock:
            self._channels[name.lstrip("#")] = cid
        return cid

    def fail_next(
        self, method: str, status: int = 429, headers: Mapping[str, str] | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (``chat.postMessage``, or ``response``
        for response-URL posts) with HTTP ``status``. A 429 carries ``Retry-After: 0`` unless
        ``headers`` says otherwise; the body is ``{"ok": false, "error": "ratelimited"}`` for 429
        and ``{"ok": false, "error": "internal_error"}`` otherwise. The request is still
        recorded."""
        hdrs = dict(headers) if headers is not None else (dict(_RATE_LIMIT_HEADERS) if status == 429 else {})
        with self._lock:
            self._faults.setdefault(method, []).append(_Fault(status, hdrs, times))

    def response_url(self, channel: str | None = None, ts: str | None = None) -> str:
        """A new response URL ``<origin>/response/<id>``; tied to the message ``(channel, ts)``
        when given, so a ``replace_original`` post updates it."""
        rid = uuid.uuid4().hex
        with self._lock:
            self._responses[rid] = []
            self._response_targets[rid] = (self._channel_id(channel), ts) if channel and ts else None
        return f"{self.origin}/response/{rid}"

    def reset(self) -> None:
        """Forget messages, requests, faults and response URLs (seeded users and channels stay)."""
        with self._lock:
            self._init_state()

    # -- accessors --------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, method: str) -> list[RecordedRequest]:
        """The requests received for one Web API method."""
        return [r for r in self.requests if r.method == method]

    def messages(self, channel: str, *, include_replies: bool = False) -> list[dict[str, Any]]:
        """Top-level messages in ``channel`` (name, ``#name`` or ID), oldest first (thread replies
        too with ``include_replies``); each has ``ts``, ``text``, ``blocks`` (latest version) and
        ``history`` (earlier versions, oldest first)."""
        with self._lock:
            msgs = self._messages.get(self._channel_id(channel) or "", {})
            return [copy.deepcopy(msgs[ts]) for ts in sorted(msgs, key=float)
                    if include_replies or msgs[ts].get("thread_ts") in (None, ts)]

    def replies(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The replies in the thread of message ``thread_ts`` (not the parent), oldest first."""
        with self._lock:
            msgs = self._messages.get(self._channel_id(channel) or "", {})
            return [copy.deepcopy(msgs[ts]) for ts in sorted(msgs, key=float)
                    if msgs[ts].get("thread_ts") == thread_ts and ts != thread_ts]

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """One message by channel and ``ts``, or ``None``."""
        with self._lock:
            msg = self._messages.get(self._channel_id(channel) or "", {}).get(ts)
            return copy.deepcopy(msg) if msg else None

    def views(self) -> list[dict[str, Any]]:
        """Views opened with ``views.open``, oldest first: ``{"id", "trigger_id", "view"}``."""
        with self._lock:
            return copy.deepcopy(self._views)

    def ephemerals(self, channel: str) -> list[dict[str, Any]]:
        """Ephemeral messages posted in ``channel`` with ``chat.postEphemeral``."""
        with self._lock:
            return copy.deepcopy(self._ephemerals.get(self._channel_id(channel) or "", []))

    def responses(self, url_or_id: str) -> list[dict[str, Any]]:
        """Bodies posted to a response URL (given as the URL or its id), oldest first."""
        rid = url_or_id.rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            return copy.deepcopy(self._responses.get(rid, []))

    # -- request handling (called from the server threads) ----------------------------------
    def _channel_id(self, channel: str | None) -> str | None:
        if not channel:
            return None
        name = channel.lstrip("#")
        if name in self._channels:
            return self._channels[name]
        if name in self._channels.values():
            return name
        return None

    def _next_ts(self) -> str:
        # Slack's ts is "<epoch seconds>.<6 digits>" and unique per channel.
        n = next(self._ts_counter)
        return f"{int(time.time())}.{n:06d}"

    def _handle(
        self, path: str, headers: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(path)
        segs = [s for s in parts.path.split("/") if s]
        if len(segs) == 2 and segs[0] == "response":
            method = "response"
        elif len(segs) == 2 and segs[0] == "api":
            method = segs[1]
        else:
            method = parts.path
        for k, v in parse_qsl(parts.query):
            body.setdefault(k, v)
        with self._lock:
            status, out_headers, payload = self._dispatch(method, segs, headers, body)
            self._requests.append(RecordedRequest(method, parts.path, headers, body, status))
        return status, out_headers, payload

    def _dispatch(
        self, method: str, segs: list[str], headers: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, str], Any]:
        faults = self._faults.get(method)
        if faults:
            fault = faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                faults.pop(0)
            error = "ratelimited" if fault.status == 429 else "internal_error"
            return fault.status, fault.headers, {"ok": False, "error": error}
        if method == "response":
            return self._response_post(segs[1], body)
        if method.startswith("/"):
            return 404, {}, {"ok": False, "error": "not_found"}
        if method not in _METHODS:
            return 200, {}, {"ok": False, "error": "unknown_method", "req_method": method}
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else body.get("token")
        if not token:
            return 200, {}, {"ok": False, "error": "not_authed"}
        if token not in self.tokens:
            return 200, {}, {"ok": False, "error": "invalid_auth"}
        return 200, {}, _METHODS[method](self, body)

    def _response_post(self, rid: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if rid not in self._responses:
            return 404, {"Content-Type": "text/plain"}, "no_such_response_url"
        self._responses[rid].append(body)
        target = self._response_targets.get(rid)
        if target and body.get("replace_original") and body.get("response_type") != "ephemeral":
            cid, ts = target
            msg = self._messages.get(cid, {}).get(ts)
            if msg is not None:
                self._edit(msg, body.get("text"), body.get("blocks"))
        return 200, {"Content-Type": "text/plain"}, "ok"

    # -- methods ----------------------------------------------------------------------------
    def _edit(self, msg: dict[str, Any], text: Any, blocks: Any) -> None:
        msg["history"].append(
            {"text": msg.get("text"), "blocks": msg.get("blocks"), "replaced_at": time.time()}
        )
        if text is not None:
            msg["text"] = text
        if blocks is not None:
            msg["blocks"] = blocks
        msg["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}

    def _auth_test(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team}.slack.com/",
            "team": self.team,
            "user": "cordon",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _post_message(self, body: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(body.get("channel"))
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        text, blocks = body.get("text"), body.get("blocks")
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if err := _check_message(text, blocks):
            return {"ok": False, "error": err}
        ts = self._next_ts()
        msg = {
            "type": "message",
            "ts": ts,
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "team": self.team_id,
            "text": text or "",
            "blocks": blocks or [],
            "history": [],
        }
        if body.get("thread_ts"):
            parent = self._messages.get(cid, {}).get(body["thread_ts"])
            if parent is None:
                return {"ok": False, "error": "thread_not_found"}
            msg["thread_ts"] = body["thread_ts"]
            parent.setdefault("reply_count", 0)
            parent["reply_count"] += 1
        self._messages.setdefault(cid, {})[ts] = msg
        return {"ok": True, "channel": cid, "ts": ts, "message": _public(msg)}

    def _update(self, body: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(body.get("channel"))
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        ts = body.get("ts")
        msg = self._messages.get(cid, {}).get(ts) if ts else None
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if err := _check_message(body.get("text"), body.get("blocks")):
            return {"ok": False, "error": err}
        self._edit(msg, body.get("text"), body.get("blocks"))
        return {"ok": True, "channel": cid, "ts": ts, "text": msg["text"], "message": _public(msg)}

    def _post_ephemeral(self, body: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(body.get("channel"))
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        user = body.get("user")
        if user not in self._users:
            return {"ok": False, "error": "user_not_in_channel"}
        if not body.get("text") and not body.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        self._ephemerals.setdefault(cid, []).append(
            {"ts": ts, "user": user, "text": body.get("text") or "", "blocks": body.get("blocks") or []}
        )
        return {"ok": True, "message_ts": ts}

    def _views_open(self, body: dict[str, Any]) -> dict[str, Any]:
        # https://api.slack.com/methods/views.open; limits https://api.slack.com/reference/surfaces/views
        if not body.get("trigger_id"):
            return {"ok": False, "error": "invalid_arguments"}
        view = body.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except json.JSONDecodeError:
                return {"ok": False, "error": "invalid_arguments"}
        if not isinstance(view, dict) or view.get("type") != "modal":
            return {"ok": False, "error": "invalid_arguments"}
        title = (view.get("title") or {}).get("text", "")
        blocks = view.get("blocks")
        if not title or len(title) > 24 or not isinstance(blocks, list) or len(blocks) > 100:
            return {"ok": False, "error": "invalid_arguments"}
        if len(view.get("private_metadata", "")) > 3000 or len(view.get("callback_id", "")) > 255:
            return {"ok": False, "error": "invalid_arguments"}
        for block in blocks:
            if not isinstance(block, dict) or "type" not in block:
                return {"ok": False, "error": "invalid_blocks"}
            if block["type"] == "input" and (not block.get("label") or "element" not in block):
                return {"ok": False, "error": "invalid_blocks"}
        vid = "V" + uuid.uuid4().hex[:10].upper()
        self._views.append({"id": vid, "trigger_id": body["trigger_id"], "view": copy.deepcopy(view)})
        return {"ok": True, "view": {**copy.deepcopy(view), "id": vid, "team_id": self.team_id}}

    def _users_info(self, body: dict[str, Any]) -> dict[str, Any]:
        user = self._users.get(body.get("user") or "")
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": copy.deepcopy(user)}


    def _usergroups_users_list(self, body: dict[str, Any]) -> dict[str, Any]:
        gid = body.get("usergroup")
        if not gid:
            return {"ok": False, "error": "invalid_arguments"}
        if gid not in self._usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self._usergroups[gid])}


_METHODS = {
    "auth.test": SlackStandIn._auth_test,
    "chat.postMessage": SlackStandIn._post_message,
    "chat.update": SlackStandIn._update,
    "chat.postEphemeral": SlackStandIn._post_ephemeral,
    "users.info": SlackStandIn._users_info,
    "usergroups.users.list": SlackStandIn._usergroups_users_list,
    "views.open": SlackStandIn._views_open,
}


def _public(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in msg.items() if k != "history"}


def _check_message(text: Any, blocks: Any) -> str | None:
    """The Slack error code for a message over Slack's limits, or ``None``.

    Limits from https://api.slack.com/reference/block-kit/blocks and
    https://api.slack.com/methods/chat.postMessage (``msg_too_long`` over 40,000 characters).
    """
    if isinstance(text, str) and len(text) > 40000:
        return "msg_too_long"
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "invalid_blocks"
    for block in blocks:
        if not isinstance(block, dict) or "type" not in block:
            return "invalid_blocks"
        if len(block.get("block_id", "")) > 255:
            return "invalid_blocks"
        kind = block["type"]
        if kind == "header" and len(block.get("text", {}).get("text", "")) > 150:
            return "invalid_blocks"
        if kind == "section":
            if len(block.get("text", {}).get("text", "")) > 3000:
                return "invalid_blocks"
            fields = block.get("fields", [])
            if len(fields) > 10 or any(len(f.get("text", "")) > 2000 for f in fields):
                return "invalid_blocks"
        if kind == "context" and len(block.get("elements", [])) > 10:
            return "invalid_blocks"
        if kind == "actions":
            elements = block.get("elements", [])
            if len(elements) > 25:
                return "invalid_blocks"
            for el in elements:
                if len(el.get("value", "")) > 2000 or len(el.get("action_id", "")) > 255:
                    return "invalid_blocks"
                if len(el.get("text", {}).get("text", "")) > 75:
                    return "invalid_blocks"
    return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "SlackStandIn/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _answer(self, status: int, headers: Mapping[str, str], payload: Any) -> None:
        if isinstance(payload, (dict, list)):
            data = json.dumps(payload).encode()
            ctype = "application/json; charset=utf-8"
        else:
            data = str(payload).encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", headers.get("Content-Type", ctype))
        for k, v in headers.items():
            if k.lower() != "content-type":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = _parse_body(raw, headers.get("content-type", ""))
        except ValueError:
            self._answer(200, {}, {"ok": False, "error": "invalid_json"})
            return
        standin: SlackStandIn = self.server.standin  # type: ignore[attr-defined]
        status, out_headers, payload = standin._handle(self.path, headers, body)
        self._answer(status, out_headers, payload)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        # Slack answers GET too; the stand-in treats it as a POST with query-string arguments.
        headers = {k.lower(): v for k, v in self.headers.items()}
        standin: SlackStandIn = self.server.standin  # type: ignore[attr-defined]
        status, out_headers, payload = standin._handle(self.path, headers, {})
        self._answer(status, out_headers, payload)


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if not raw:
        return {}
    if "json" in content_type.lower():
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("JSON body is not an object")
        return obj
    body: dict[str, Any] = {}
    for k, v in parse_qsl(raw.decode("utf-8"), keep_blank_values=True):
        if k in _JSON_FORM_FIELDS:
            try:
                body[k] = json.loads(v)
                continue
            except json.JSONDecodeError:
                pass
        body[k] = v
    return body


# -- building clicks the way Slack sends them ----------------------------------------------
def block_actions_payload(
    message: Mapping[str, Any],
    channel_id: str,
    action_id: str,
    *,
    user_id: str,
    user_name: str,
    team_id: str = "T0CORDON1",
    response_url: str | None = None,
) -> dict[str, Any]:
    """The ``block_actions`` payload Slack sends when ``user_id`` clicks the button
    ``action_id`` of ``message`` (a message as stored by :class:`SlackStandIn`).

    Shape per https://api.slack.com/reference/interaction-payloads/block-actions: ``type``,
    ``user`` (``id``, ``username``, ``name``, ``team_id``), ``team``, ``container``
    (``type: message``, ``message_ts``, ``channel_id``), ``channel``, ``message``,
    ``response_url``, ``trigger_id`` and ``actions`` (``action_id``, ``block_id``, ``value``,
    ``type``, ``action_ts``). Raises ``KeyError`` when the message has no such button.
    """
    for block in message.get("blocks", []):
        for el in block.get("elements", []) if block.get("type") == "actions" else []:
            if el.get("action_id") == action_id:
                button = el
                block_id = block.get("block_id", "")
                break
        else:
            continue
        break
    else:
        raise KeyError(f"message {message.get('ts')} has no button with action_id {action_id!r}")
    now = f"{time.time():.6f}"
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": "A0CORDON01",
        "token": "deprecated-verification-token",
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:32]}",
        "team": {"id": team_id, "domain": "cordon-sandbox"},
        "channel": {"id": channel_id, "name": "approvals"},
        "message": {k: v for k, v in message.items() if k != "history"},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": button.get("text"),
                "value": button.get("value"),
                "style": button.get("style"),
                "type": "button",
                "action_ts": now,
            }
        ],
    }


def view_submission_payload(
    view: Mapping[str, Any],
    values: Mapping[str, str | None],
    *,
    user_id: str,
    user_name: str,
    team_id: str = "T0CORDON1",
) -> dict[str, Any]:
    """The ``view_submission`` payload Slack sends when ``user_id`` submits ``view`` (as opened
    with ``views.open``: :meth:`SlackStandIn.views`) filled with ``values`` (block_id -> text).

    Shape per https://api.slack.com/reference/interaction-payloads/views#view_submission: ``type``,
    ``team``, ``user``, ``api_app_id``, ``trigger_id`` and ``view`` with its ``callback_id``,
    ``private_metadata`` and ``state.values[block_id][action_id]`` (``{"type", "value"}`` for text
    inputs)."""
    state: dict[str, Any] = {}
    for block in view.get("blocks", []):
        if block.get("type") != "input":
            continue
        el = block["element"]
        state[block["block_id"]] = {el["action_id"]: {"type": el["type"], "value": values.get(block["block_id"])}}
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": "cordon-sandbox"},
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": "A0CORDON01",
        "token": "deprecated-verification-token",
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:32]}",
        "view": {**copy.deepcopy(dict(view)), "id": "V" + uuid.uuid4().hex[:10].upper(), "team_id": team_id,
                 "state": {"values": state}},
    }


def signed_headers(signing_secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack adds to a request it sends to an app: ``X-Slack-Request-Timestamp``
    and ``X-Slack-Signature`` = ``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}`` keyed with
    the signing secret (https://api.slack.com/authentication/verifying-requests-from-slack),
    plus the form content type."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + ts.encode() + b":" + body
    sig = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sig,
        "Content-Type": "application/x-www-form-urlencoded",
    }
