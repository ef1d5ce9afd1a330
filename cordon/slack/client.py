"""The Slack Web API side: the bot client (with retries) and posting / updating messages.

Everything Slack already defines comes from ``slack_sdk``: the Web API client and retries on 429
(honouring ``Retry-After``) and 5xx (``slack_sdk.http_retry``). The messages themselves are built
by :mod:`cordon.slack.blocks`.

Sources: https://api.slack.com/methods/chat.postMessage, https://api.slack.com/methods/chat.update,
https://api.slack.com/docs/rate-limits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler


def ensure_retry_handlers(client: WebClient) -> WebClient:
    """Add ``slack_sdk``'s ``RateLimitErrorRetryHandler`` (429, sleeps ``Retry-After``; up to 3
    retries) and ``ServerErrorRetryHandler`` (500 / 503; up to 2 retries with backoff) to
    ``client.retry_handlers`` unless one of that class is already there. Returns ``client``."""
    for handler in (
        RateLimitErrorRetryHandler(max_retry_count=3),
        ServerErrorRetryHandler(max_retry_count=2),
    ):
        if not any(isinstance(h, type(handler)) for h in client.retry_handlers):
            client.retry_handlers.append(handler)
    return client


def make_client(token: str, *, base_url: str | None = None, timeout: int = 30) -> WebClient:
    """A ``WebClient`` for ``token`` with the retry handlers of :func:`ensure_retry_handlers`;
    ``base_url`` points it elsewhere (the sandbox's :class:`~cordon.sandbox.slack_standin.SlackStandIn`)."""
    kwargs: dict[str, Any] = {"token": token, "timeout": timeout}
    if base_url:
        kwargs["base_url"] = base_url
    return ensure_retry_handlers(WebClient(**kwargs))


def web_client(settings: Mapping[str, Any] | None = None) -> WebClient:
    """A ``WebClient`` (with the retry handlers) from the ``slack`` settings the flow passes.

    ``settings``: ``{"token"?, "base_url"?}``; the token defaults to the ``CORDON_SLACK_BOT_TOKEN``
    environment variable and ``base_url`` to ``CORDON_SLACK_API_URL`` (a stand-in), else Slack.
    Raises ``RuntimeError`` when no token is available.
    """
    settings = settings or {}
    token = settings.get("token") or os.environ.get("CORDON_SLACK_BOT_TOKEN")
    if not token:
        raise RuntimeError("no Slack bot token: set CORDON_SLACK_BOT_TOKEN")
    return make_client(token, base_url=settings.get("base_url") or os.environ.get("CORDON_SLACK_API_URL") or None)


def post_approval(
    client: WebClient, channel: str, blocks: list[dict[str, Any]], text: str
) -> tuple[str, str]:
    """Post the approval message (``chat.postMessage``, https://api.slack.com/methods/chat.postMessage)
    to ``channel`` (ID or name); returns ``(channel_id, ts)``, which locate it for updates.

    Retries on 429 / 5xx come from the handlers ensured on ``client``. Raises
    ``slack_sdk.errors.SlackApiError`` when Slack answers ``ok: false`` (``invalid_auth``,
    ``channel_not_found``, ``invalid_blocks``, or ``ratelimited`` once retries are spent)."""
    ensure_retry_handlers(client)
    resp = client.chat_postMessage(
        channel=channel, blocks=blocks, text=text, unfurl_links=False, unfurl_media=False
    )
    return str(resp["channel"]), str(resp["ts"])


def update_message(
    client: WebClient, channel: str, ts: str, blocks: list[dict[str, Any]], text: str
) -> dict[str, Any]:
    """Replace the message at ``(channel, ts)`` (``chat.update``,
    https://api.slack.com/methods/chat.update); returns Slack's answer as a dict
    (``ok, channel, ts, text, message``). Raises ``slack_sdk.errors.SlackApiError`` as
    :func:`post_approval`."""
    ensure_retry_handlers(client)
    resp = client.chat_update(channel=channel, ts=ts, blocks=blocks, text=text)
    return dict(resp.data) if isinstance(resp.data, dict) else {"ok": True}
