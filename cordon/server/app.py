"""Cordon's HTTP server (FastAPI): Slack interactivity, the detection webhook, a health check.

Endpoints

``POST /slack/interactions`` (Slack's *Interactivity Request URL*)
    1. Read the raw body (at most ``max_slack_body`` bytes) and verify Slack's signature and
       timestamp (:func:`cordon.approvals.slack.verify_request`). A missing header, a bad
       signature or a timestamp more than five minutes away answers **401** and appends a
       ``slack.request_refused`` ledger record (reason, detail, remote address, the timestamp
       header as sent); nothing else happens.
    2. Parse the click (:func:`cordon.approvals.slack.parse_interaction`). Another payload type
       (``view_submission``, ``shortcut``...) answers **200** and is recorded as
       ``slack.interaction_ignored``; a malformed ``block_actions`` answers **400** and is recorded
       as ``slack.interaction_malformed`` (with the field at fault).
    3. Record ``slack.interaction_received`` (case, run, actor ``slack:<team>/<user>``) and answer
       **200 with an empty body at once**. Slack wants its 200 within 3 seconds
       (https://api.slack.com/interactivity/handling#acknowledgment_response), while ``decide``
       may take longer (it checks the approver and plan hash and resumes a Prefect run), so
       ``decide(interaction)`` runs in a Starlette ``BackgroundTask``, which Starlette starts
       only after the response has been sent (a sync function, so in the thread pool).
    4. If ``decide`` returns ``DecisionOutcome(accepted=False, message)`` (or raises), the clicker
       is told: the message is posted to the interaction's ``response_url`` as
       ``{"response_type": "ephemeral", "replace_original": false, "text": message}`` with
       ``slack_sdk.webhook.WebhookClient`` (retrying 429 / 5xx / connection errors), and the
       attempt is recorded as ``slack.refusal_notified`` (status code) or
       ``slack.refusal_notify_failed``. A raising ``decide`` is recorded as
       ``slack.decide_failed``. An accepted decision posts nothing here: the integrator updates
       the approval message in place (:func:`cordon.approvals.slack.status_blocks`) and records
       ``approval.given`` / ``approval.refused`` itself.

``POST /slack/commands`` (the ``/cordon`` slash command's Request URL; with ``commands``, a
    :class:`cordon.approvals.commands.CommandHandler`)
    Verified as above (401 + ``slack.request_refused``); answered at once with the handler's
    ephemeral acknowledgement, the work (modal, lookup, manual run) in a ``BackgroundTask``. A
    ``view_submission`` of Cordon's modal arriving at ``/slack/interactions`` goes to
    ``commands.handle_view`` and is answered with its ``response_action`` (``errors`` per field,
    ``update``, ``clear``). Without ``commands``: **503** here, and modal submissions are ignored.

``POST /webhook/detections``
    Requires ``Authorization: Bearer <webhook_token>`` (compared with :func:`hmac.compare_digest`):
    **503** if no token is configured (or no ``on_detections`` handler), **401** (with
    ``WWW-Authenticate: Bearer``, recorded as ``webhook.request_refused``) otherwise; a body over
    ``max_webhook_body`` bytes answers **413**. The raw body and an origin name
    ``webhook:<remote address>`` go to ``on_detections``, whose dict is answered as JSON with
    **202**; if it raises, **500** and a ``webhook.failed`` record.

``GET /healthz``
    ``{"ok": true}``.

The remote address is the socket peer; behind a load balancer run uvicorn with
``--proxy-headers --forwarded-allow-ips=<lb>`` so it is the client's. The app holds no state
besides its arguments, so it can run as several replicas.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient
from starlette.concurrency import run_in_threadpool

from cordon.approvals.slack import (
    DecisionOutcome,
    Interaction,
    InteractionError,
    SignatureError,
    UnsupportedInteraction,
    parse_interaction,
    verify_request,
)
from cordon.audit.ledger import Ledger

#: Interaction payloads are a few KB; anything far larger is not from Slack.
DEFAULT_MAX_SLACK_BODY = 1024 * 1024
DEFAULT_MAX_WEBHOOK_BODY = 10 * 1024 * 1024


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


def notify_refusal(response_url: str, message: str, *, timeout: int = 10) -> int:
    """Post ``message`` ephemerally (only the clicker sees it) to an interaction's
    ``response_url`` (https://api.slack.com/interactivity/handling#message_responses) with
    ``slack_sdk.webhook.WebhookClient``; returns the HTTP status. Raises what ``WebhookClient``
    raises on connection failure (after its retries)."""
    client = WebhookClient(
        response_url,
        timeout=timeout,
        retry_handlers=[
            ConnectionErrorRetryHandler(),
            RateLimitErrorRetryHandler(max_retry_count=2),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )
    resp = client.send_dict({"response_type": "ephemeral", "replace_original": False, "text": message})
    return resp.status_code


def create_app(
    *,
    signing_secret: str,
    ledger: Ledger,
    decide: Callable[[Interaction], DecisionOutcome],
    webhook_token: str | None = None,
    on_detections: Callable[[bytes, str], dict] | None = None,
    max_slack_body: int = DEFAULT_MAX_SLACK_BODY,
    max_webhook_body: int = DEFAULT_MAX_WEBHOOK_BODY,
    refuse_replays: bool = True,
    commands: Any | None = None,
) -> FastAPI:
    """Build the server (endpoints and their behaviour in the module docstring).

    ``signing_secret`` is the Slack app's signing secret (required, non-empty: ``ValueError``
    otherwise); ``ledger`` receives the server's records; ``decide(interaction) ->
    DecisionOutcome`` is called once per verified click, after the 200; ``webhook_token``
    enables ``/webhook/detections`` and ``on_detections(body, origin) -> dict`` handles it.
    ``refuse_replays``: a click whose ``trigger_id`` / ``action_ts`` the same user already sent
    (the same signed body again, within Slack's five minutes) answers **401** and is recorded as
    ``slack.request_refused`` with reason ``replayed``
    (:func:`cordon.approvals.decide.find_replay`); ``decide`` is not called.
    """
    if not isinstance(signing_secret, str) or not signing_secret.strip():
        raise ValueError("signing_secret must be a non-empty string")
    if webhook_token is not None and not webhook_token.strip():
        raise ValueError("webhook_token, when given, must be non-empty")

    app = FastAPI(title="Cordon", docs_url=None, redoc_url=None, openapi_url=None)

    def _decide_and_notify(interaction: Interaction) -> None:
        actor = f"slack:{interaction.team_id or '-'}/{interaction.user_id}"
        try:
            outcome = decide(interaction)
        except Exception as exc:  # noqa: BLE001 - recorded and told to the clicker
            ledger.append(
                "slack.decide_failed",
                {**interaction.ledger_payload(), "error": f"{type(exc).__name__}: {exc}"},
                case_id=interaction.case_id,
                run_id=interaction.run_id,
                actor=actor,
            )
            outcome = DecisionOutcome(
                False,
                "Cordon could not record your decision because of an internal "
                "error; it has been logged. Please tell the security team.",
            )
        if outcome.accepted or not interaction.response_url:
            return
        try:
            status = notify_refusal(interaction.response_url, outcome.message)
        except Exception as exc:  # noqa: BLE001
            ledger.append(
                "slack.refusal_notify_failed",
                {"error": f"{type(exc).__name__}: {exc}", "message": outcome.message},
                case_id=interaction.case_id,
                run_id=interaction.run_id,
                actor=actor,
            )
            return
        ledger.append(
            "slack.refusal_notified" if 200 <= status < 300 else "slack.refusal_notify_failed",
            {"status": status, "message": outcome.message, "user_id": interaction.user_id},
            case_id=interaction.case_id,
            run_id=interaction.run_id,
            actor=actor,
        )

    @app.post("/slack/interactions")
    async def slack_interactions(request: Request, background: BackgroundTasks) -> Response:
        remote = _remote(request)
        try:
            body = await _read_body(request, max_slack_body)
        except _TooLarge:
            await run_in_threadpool(
                ledger.append,
                "slack.request_refused",
                {
                    "reason": "too_large",
                    "detail": f"body over {max_slack_body} bytes",
                    "remote": remote,
                    "timestamp_header": request.headers.get("x-slack-request-timestamp"),
                },
            )
            return JSONResponse({"error": "request body too large"}, status_code=413)
        try:
            verify_request(signing_secret, request.headers, body)
        except SignatureError as exc:
            await run_in_threadpool(
                ledger.append,
                "slack.request_refused",
                {
                    "reason": exc.reason,
                    "detail": str(exc),
                    "remote": remote,
                    "timestamp_header": request.headers.get("x-slack-request-timestamp"),
                    "body_bytes": len(body),
                },
            )
            return JSONResponse({"error": "invalid request signature", "reason": exc.reason}, status_code=401)
        if commands is not None:  # Cordon's run-a-playbook modal (cordon/approvals/modal.py)
            from cordon.approvals.modal import parse_view_submission

            try:
                submission = parse_view_submission(body)
            except InteractionError as exc:
                await run_in_threadpool(ledger.append, "slack.interaction_malformed",
                                        {"field": exc.field, "reason": exc.reason, "remote": remote})
                return JSONResponse({"error": str(exc)}, status_code=400)
            if submission is not None:
                answer, work = await run_in_threadpool(commands.handle_view, submission)
                if work is not None:
                    background.add_task(work)
                return JSONResponse(answer) if answer else Response(status_code=200)
        try:
            interaction = parse_interaction(body)
        except UnsupportedInteraction as exc:
            await run_in_threadpool(
                ledger.append,
                "slack.interaction_ignored",
                {"payload_type": exc.payload_type, "remote": remote},
            )
            return Response(status_code=200)
        except InteractionError as exc:
            await run_in_threadpool(
                ledger.append,
                "slack.interaction_malformed",
                {"field": exc.field, "reason": exc.reason, "remote": remote},
            )
            return JSONResponse({"error": str(exc)}, status_code=400)
        received = await run_in_threadpool(
            ledger.append,
            "slack.interaction_received",
            {**interaction.ledger_payload(), "remote": remote},
            case_id=interaction.case_id,
            run_id=interaction.run_id,
            actor=f"slack:{interaction.team_id or '-'}/{interaction.user_id}",
        )
        if refuse_replays:
            from cordon.approvals.decide import find_replay

            original = await run_in_threadpool(find_replay, ledger, interaction, received.seq)
            if original is not None:
                await run_in_threadpool(
                    ledger.append,
                    "slack.request_refused",
                    {"reason": "replayed", "detail": f"repeats the interaction recorded at seq {original.seq}",
                     "remote": remote, "user_id": interaction.user_id, "action_ts": interaction.action_ts,
                     "trigger_id": interaction.trigger_id,
                     "timestamp_header": request.headers.get("x-slack-request-timestamp")},
                    case_id=interaction.case_id,
                    run_id=interaction.run_id,
                    actor=f"slack:{interaction.team_id or '-'}/{interaction.user_id}",
                )
                return JSONResponse({"error": "replayed request", "reason": "replayed"}, status_code=401)
        background.add_task(_decide_and_notify, interaction)
        return Response(status_code=200)

    @app.post("/slack/commands")
    async def slack_commands(request: Request, background: BackgroundTasks) -> Response:
        """``/cordon`` (cordon/approvals/commands.py): verified like the interactions, answered
        with an ephemeral acknowledgement at once; the work runs after the response is sent."""
        from cordon.approvals.commands import parse_slash_command

        remote = _remote(request)
        if commands is None:
            return JSONResponse({"error": "slash commands are not configured"}, status_code=503)
        try:
            body = await _read_body(request, max_slack_body)
        except _TooLarge:
            return JSONResponse({"error": "request body too large"}, status_code=413)
        try:
            verify_request(signing_secret, request.headers, body)
        except SignatureError as exc:
            await run_in_threadpool(ledger.append, "slack.request_refused", {
                "reason": exc.reason, "detail": str(exc), "remote": remote, "endpoint": "/slack/commands",
                "timestamp_header": request.headers.get("x-slack-request-timestamp"), "body_bytes": len(body)})
            return JSONResponse({"error": "invalid request signature", "reason": exc.reason}, status_code=401)
        try:
            command = parse_slash_command(body)
        except InteractionError as exc:
            await run_in_threadpool(ledger.append, "slack.interaction_malformed",
                                    {"field": exc.field, "reason": exc.reason, "remote": remote})
            return JSONResponse({"error": str(exc)}, status_code=400)
        answer, work = await run_in_threadpool(commands.handle, command)
        if work is not None:
            background.add_task(work)
        return JSONResponse(answer)

    @app.post("/webhook/detections")
    async def webhook_detections(request: Request) -> Response:
        remote = _remote(request)
        if webhook_token is None or on_detections is None:
            what = "no webhook token" if webhook_token is None else "no detection handler"
            return JSONResponse({"error": f"detection webhook disabled: {what} configured"}, status_code=503)
        auth = request.headers.get("authorization", "")
        scheme, _, presented = auth.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode("utf-8"), webhook_token.encode("utf-8")
        )
        if not ok:
            reason = "missing Authorization header" if not auth else "wrong bearer token"
            await run_in_threadpool(
                ledger.append, "webhook.request_refused", {"reason": reason, "remote": remote}
            )
            return JSONResponse(
                {"error": "unauthorized"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="cordon"'},
            )
        try:
            body = await _read_body(request, max_webhook_body)
        except _TooLarge:
            return JSONResponse({"error": f"request body over {max_webhook_body} bytes"}, status_code=413)
        origin = f"webhook:{remote or 'unknown'}"
        try:
            result: Any = await run_in_threadpool(on_detections, body, origin)
        except Exception as exc:  # noqa: BLE001 - recorded, answered 500
            await run_in_threadpool(
                ledger.append, "webhook.failed", {"origin": origin, "error": f"{type(exc).__name__}: {exc}"}
            )
            return JSONResponse({"error": "internal error; recorded in the ledger"}, status_code=500)
        return JSONResponse(result, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app
