"""Cordon's HTTP server (FastAPI): Slack interactivity, the detection webhook, a health check.

Endpoints

``POST /slack/interactions`` (Slack's *Interactivity Request URL*)
    1. Read the raw body (at most ``max_slack_body`` bytes, else **413**) and verify Slack's
       signature and timestamp (:func:`cordon.slack.verify.verify_request`). A missing header,
       a bad signature or a timestamp more than five minutes away answers **401**; nothing else
       happens. Such unsigned requests (and oversized bodies) are *counted*, not chained one by
       one: :class:`cordon.audit.refusals.RefusalCounter` tallies them per reason and minute with
       a few samples (reason, detail, remote address, the timestamp header as sent) and chains
       one ``slack.refusals`` record per window once it has ended. Anyone can send these, so one
       chained record each would let anyone grow the chain at will.
    2. Parse the click (:func:`cordon.slack.verify.parse_interaction`). Another payload type
       (``view_submission``, ``shortcut``...) answers **200** and is recorded as
       ``slack.interaction_ignored``; a malformed ``block_actions`` answers **400** and is recorded
       as ``slack.interaction_malformed`` (with the field at fault).
    3. Record ``slack.interaction_received`` (case, run, actor ``slack:<team>/<user>``) and answer
       **200 with an empty body at once**. Slack wants its 200 within 3 seconds
       (https://api.slack.com/interactivity/handling#acknowledgment_response), while ``decide``
       may take longer (it checks the approver and plan hash and resumes a Prefect run), so
       ``decide(interaction)`` runs in a Starlette ``BackgroundTask``, which Starlette starts
       only after the response has been sent (a sync function, so in the thread pool).
    3a. A *Deny* click opens a dialog asking for the reason (``views.open`` with the click's
       ``trigger_id``, before the 200: the trigger is valid for 3 seconds) and is recorded as
       ``approval.deny_reason_asked``; the dialog's ``view_submission`` (``callback_id``
       ``cordon_deny_reason``, a required reason) is recorded and decided as the Deny, with the
       reason, exactly as a click is (same ledger order, same lock). When no dialog can be opened
       the Deny is decided at once with the reason ``no reason given``.
    4. If ``decide`` returns ``DecisionOutcome(accepted=False, message)`` (or raises), the clicker
       is told: the message is posted to the interaction's ``response_url`` as
       ``{"response_type": "ephemeral", "replace_original": false, "text": message}`` with
       ``slack_sdk.webhook.WebhookClient`` (retrying 429 / 5xx / connection errors), and the
       attempt is recorded as ``slack.refusal_notified`` (status code) or
       ``slack.refusal_notify_failed``. A raising ``decide`` is recorded as
       ``slack.decide_failed``. An accepted decision posts nothing here: the integrator updates
       the approval message in place (:func:`cordon.slack.blocks.status_blocks`) and records
       ``approval.given`` / ``approval.refused`` itself.

``POST /slack/commands`` (the ``/cordon`` slash command's Request URL; with ``commands``, a
    :class:`cordon.slack.commands.CommandHandler`)
    Verified as above (401, counted as a ``slack`` refusal); answered at once with the handler's
    ephemeral acknowledgement, the work (modal, lookup, manual run) in a ``BackgroundTask``. A
    ``view_submission`` of Cordon's modal arriving at ``/slack/interactions`` goes to
    ``commands.handle_view`` and is answered with its ``response_action`` (``errors`` per field,
    ``update``, ``clear``). Without ``commands``: **503** here, and modal submissions are ignored.

``POST /webhook/detections``
    Requires ``Authorization: Bearer <webhook_token>`` (compared with :func:`hmac.compare_digest`):
    **503** if no token is configured (or no ``on_detections`` handler), **401** (with
    ``WWW-Authenticate: Bearer``; counted as a ``webhook`` refusal, reason ``no_bearer`` or
    ``wrong_bearer``, summarised as ``webhook.refusals`` per window) otherwise; a body over
    ``max_webhook_body`` bytes answers **413**. The raw body and an origin name
    ``webhook:<remote address>`` go to ``on_detections``, whose dict is answered as JSON with
    **202** (**503** with ``Retry-After`` when the dict has ``retry_after``: the detections are
    recorded but a run could not be submitted); if it raises, **500** and a ``webhook.failed`` record.

``POST /webhook/detections/{source}``
    The same for a sender declared in ``webhook.sources`` with its own credential (an EventBridge
    API destination's API key or Basic pair, a Pub/Sub push subscription's Google-signed OIDC token,
    a bearer token: :mod:`cordon.server.push_auth`): **404** for an undeclared source, **401**
    (a ``webhook`` refusal with the source and the reason: ``revoked``, ``missing_credential``,
    ``wrong_credential``, ``invalid_token``, ``wrong_audience``, ``wrong_issuer``, ``wrong_sender``,
    ``keys_unavailable``) for a credential that does not verify; the origin is
    ``webhook:<source>:<remote address>``.

``GET /metrics``
    Prometheus metrics (:mod:`cordon.server.metrics`), read from the ledger at scrape time.
    Requires ``Authorization: Bearer <metrics_token>``: **503** with no token configured, **401**
    (a ``metrics`` refusal) otherwise.

``GET /healthz``
    ``{"ok": true}``.

The remote address is the socket peer; behind a load balancer run uvicorn with
``--proxy-headers --forwarded-allow-ips=<lb>`` so it is the client's. The app holds no state
besides its arguments (refusal counts are in the database), so it can run as several replicas.
While it runs (its lifespan) it closes ended refusal windows every
:attr:`~cordon.audit.refusals.RefusalCounter.close_every` seconds, at start and at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable, Iterable, Mapping
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

from cordon.audit.ledger import Ledger
from cordon.audit.refusals import RefusalCounter
from cordon.server.push_auth import PushSource
from cordon.server.push_auth import verify as verify_push
from cordon.slack.blocks import REASON_BLOCK_ID
from cordon.slack.verify import (
    DecisionOutcome,
    Interaction,
    InteractionError,
    SignatureError,
    UnsupportedInteraction,
    parse_deny_submission,
    parse_interaction,
    verify_request,
)

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
    refusals: RefusalCounter | None = None,
    open_view: Callable[[str, dict[str, Any]], Any] | None = None,
    wants_reason: Callable[[Interaction], bool] | None = None,
    push_sources: Mapping[str, PushSource] | None = None,
    metrics_token: str | None = None,
    metrics_extra: Iterable[Any] = (),
) -> FastAPI:
    """Build the server (endpoints and their behaviour in the module docstring).

    ``signing_secret`` is the Slack app's signing secret (required, non-empty: ``ValueError``
    otherwise); ``ledger`` receives the server's records; ``decide(interaction) ->
    DecisionOutcome`` is called once per verified click, after the 200; ``webhook_token``
    enables ``/webhook/detections`` and ``on_detections(body, origin) -> dict`` handles it.
    ``refuse_replays``: a click whose ``trigger_id`` / ``action_ts`` the same user already sent
    (the same signed body again, within Slack's five minutes) answers **401** and is recorded as
    ``slack.request_refused`` with reason ``replayed``
    (:func:`cordon.approvals.decide.find_replay`); ``decide`` is not called: a replay was signed,
    so it stays chained one by one. ``refusals`` counts the unsigned refusals (default: a
    :class:`~cordon.audit.refusals.RefusalCounter` on ``ledger`` with one-minute windows).
    ``open_view(trigger_id, view)`` opens a Slack modal (``views.open``; raises when Slack refuses):
    with it, a *Deny* click for which ``wants_reason(interaction)`` is true (default: always) opens
    the reason dialog (:func:`cordon.slack.blocks.deny_view`) instead of being decided, and the
    dialog's submission is decided as the Deny, with its reason. Without it, with no ``trigger_id``,
    or when ``views.open`` fails (``slack.views_open_failed``), the Deny is decided at once with the
    reason ``no reason given``. ``push_sources`` (:func:`cordon.server.push_auth.load_push_sources`)
    enables ``/webhook/detections/{source}``, each source with its own credential;
    ``metrics_token`` enables ``/metrics`` (:mod:`cordon.server.metrics`, plus the families of the
    ``metrics_extra`` collectors).
    """
    if not isinstance(signing_secret, str) or not signing_secret.strip():
        raise ValueError("signing_secret must be a non-empty string")
    if webhook_token is not None and not webhook_token.strip():
        raise ValueError("webhook_token, when given, must be non-empty")

    counter = refusals if refusals is not None else RefusalCounter(ledger)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # close ended refusal windows (a crashed server's too) now, every close_every seconds, and at stop
        async def closer() -> None:
            while True:
                try:
                    await run_in_threadpool(counter.close_due)
                except Exception:  # noqa: BLE001 - logged; the next round tries again
                    logging.getLogger("cordon.refusals").exception("closing refusal windows failed")
                await asyncio.sleep(counter.close_every)

        task = asyncio.create_task(closer())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            with contextlib.suppress(Exception):
                await run_in_threadpool(counter.close_due)

    app = FastAPI(title="Cordon", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.refusals = counter

    async def refused(source: str, reason: str, remote: str | None, request: Request, **detail: Any) -> None:
        sample = {"remote": remote, "endpoint": request.url.path, **detail}
        if source == "slack":
            sample["timestamp_header"] = request.headers.get("x-slack-request-timestamp")
        await run_in_threadpool(counter.record, source, reason, sample)

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
            await refused("slack", "too_large", remote, request, detail=f"body over {max_slack_body} bytes")
            return JSONResponse({"error": "request body too large"}, status_code=413)
        try:
            verify_request(signing_secret, request.headers, body)
        except SignatureError as exc:
            await refused("slack", exc.reason, remote, request, detail=str(exc), body_bytes=len(body))
            return JSONResponse({"error": "invalid request signature", "reason": exc.reason}, status_code=401)
        if commands is not None:  # Cordon's run-a-playbook modal (cordon/slack/modal.py)
            from cordon.slack.modal import parse_view_submission

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
        try:  # the Deny reason dialog's submission (cordon.slack.blocks.deny_view)
            denial = parse_deny_submission(body)
        except InteractionError as exc:
            await run_in_threadpool(ledger.append, "slack.interaction_malformed",
                                    {"field": exc.field, "reason": exc.reason, "remote": remote})
            return JSONResponse({"error": str(exc)}, status_code=400)
        if denial is not None:
            if not denial.reason:
                return JSONResponse({"response_action": "errors",
                                     "errors": {REASON_BLOCK_ID: "Say why you deny the containment."}})
            replayed = await received_or_replayed(denial, remote, request)
            if replayed is not None:
                return replayed
            background.add_task(_decide_and_notify, denial)
            return Response(status_code=200)  # closes the dialog
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
        replayed = await received_or_replayed(interaction, remote, request)
        if replayed is not None:
            return replayed
        if interaction.decision == "deny":
            interaction = await ask_reason(interaction)
            if interaction is None:  # the reason dialog is open; its submission decides
                return Response(status_code=200)
        background.add_task(_decide_and_notify, interaction)
        return Response(status_code=200)

    async def received_or_replayed(interaction: Interaction, remote: str | None, request: Request) -> Response | None:
        """Record ``slack.interaction_received``; a 401 response when it replays an earlier one."""
        actor = f"slack:{interaction.team_id or '-'}/{interaction.user_id}"
        received = await run_in_threadpool(
            ledger.append,
            "slack.interaction_received",
            {**interaction.ledger_payload(), "remote": remote},
            case_id=interaction.case_id,
            run_id=interaction.run_id,
            actor=actor,
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
                    actor=actor,
                )
                return JSONResponse({"error": "replayed request", "reason": "replayed"}, status_code=401)
        return None

    async def ask_reason(interaction: Interaction) -> Interaction | None:
        """A *Deny* click: open the reason dialog and return ``None`` (recorded as
        ``approval.deny_reason_asked``), or the click to decide now, its reason saying why none was
        asked (``no reason given``: no ``open_view``, no ``trigger_id``, or ``views.open`` failed,
        recorded as ``slack.views_open_failed``). A click the decider will refuse anyway
        (``wants_reason`` false: decided, another plan...) is decided now, so its clicker is told."""
        from dataclasses import replace

        from cordon.slack.blocks import deny_view
        from cordon.slack.verify import NO_REASON

        if interaction.reason is not None:
            return interaction
        if open_view is None:
            return replace(interaction, reason=NO_REASON)
        if wants_reason is not None and not await run_in_threadpool(wants_reason, interaction):
            return interaction
        actor = f"slack:{interaction.team_id or '-'}/{interaction.user_id}"
        if not interaction.trigger_id:
            why = "the click carried no trigger_id"
        else:
            try:
                # Slack's trigger_id is valid for 3 seconds: opened before answering the click
                await run_in_threadpool(open_view, interaction.trigger_id, deny_view(interaction))
            except Exception as exc:  # noqa: BLE001 - recorded; the Deny is not lost
                why = f"views.open failed: {type(exc).__name__}: {exc}"
            else:
                await run_in_threadpool(ledger.append, "approval.deny_reason_asked",
                                        {"user_id": interaction.user_id, "plan_hash": interaction.plan_hash,
                                         "trigger_id": interaction.trigger_id},
                                        case_id=interaction.case_id, run_id=interaction.run_id, actor=actor)
                return None
        await run_in_threadpool(ledger.append, "slack.views_open_failed",
                                {"user_id": interaction.user_id, "plan_hash": interaction.plan_hash, "error": why},
                                case_id=interaction.case_id, run_id=interaction.run_id, actor=actor)
        return replace(interaction, reason=f"{NO_REASON} (the reason dialog could not be opened: {why})")

    @app.post("/slack/commands")
    async def slack_commands(request: Request, background: BackgroundTasks) -> Response:
        """``/cordon`` (cordon/slack/commands.py): verified like the interactions, answered
        with an ephemeral acknowledgement at once; the work runs after the response is sent."""
        from cordon.slack.commands import parse_slash_command

        remote = _remote(request)
        if commands is None:
            return JSONResponse({"error": "slash commands are not configured"}, status_code=503)
        try:
            body = await _read_body(request, max_slack_body)
        except _TooLarge:
            await refused("slack", "too_large", remote, request, detail=f"body over {max_slack_body} bytes")
            return JSONResponse({"error": "request body too large"}, status_code=413)
        try:
            verify_request(signing_secret, request.headers, body)
        except SignatureError as exc:
            await refused("slack", exc.reason, remote, request, detail=str(exc), body_bytes=len(body))
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
            reason, detail = ("no_bearer", "missing Authorization header") if not auth else \
                ("wrong_bearer", "wrong bearer token")
            await refused("webhook", reason, remote, request, detail=detail)
            return JSONResponse(
                {"error": "unauthorized"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="cordon"'},
            )
        return await accept_detections(request, f"webhook:{remote or 'unknown'}")

    @app.post("/webhook/detections/{source}")
    async def webhook_detections_from(source: str, request: Request) -> Response:
        remote = _remote(request)
        sender = (push_sources or {}).get(source)
        if sender is None or on_detections is None:
            what = f"no source {source!r}" if sender is None else "no detection handler"
            return JSONResponse({"error": f"detection webhook disabled: {what} configured"},
                                status_code=404 if sender is None else 503)
        verdict = await run_in_threadpool(verify_push, sender, request.headers)
        if not verdict.ok:
            await refused("webhook", verdict.reason or "refused", remote, request, sender=source,
                          detail=verdict.detail)
            return JSONResponse({"error": "unauthorized"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="cordon"'})
        return await accept_detections(request, f"webhook:{source}:{remote or 'unknown'}")

    async def accept_detections(request: Request, origin: str) -> Response:
        """The verified request's body to ``on_detections``, answered as the module docstring says."""
        try:
            body = await _read_body(request, max_webhook_body)
        except _TooLarge:
            return JSONResponse({"error": f"request body over {max_webhook_body} bytes"}, status_code=413)
        try:
            result: Any = await run_in_threadpool(on_detections, body, origin)
        except Exception as exc:  # noqa: BLE001 - recorded, answered 500
            await run_in_threadpool(
                ledger.append, "webhook.failed", {"origin": origin, "error": f"{type(exc).__name__}: {exc}"}
            )
            return JSONResponse({"error": "internal error; recorded in the ledger"}, status_code=500)
        if isinstance(result, dict) and result.get("retry_after"):
            # recorded, but a run could not be submitted (Prefect unreachable): 503, resend later
            return JSONResponse(result, status_code=503, headers={"Retry-After": str(result["retry_after"])})
        return JSONResponse(result, status_code=202)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if metrics_token is None:
            return JSONResponse({"error": "metrics disabled: no metrics token configured"}, status_code=503)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode("utf-8"),
                                                                   metrics_token.encode("utf-8"))):
            await refused("metrics", "wrong_bearer" if presented else "no_bearer", _remote(request), request)
            return JSONResponse({"error": "unauthorized"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="cordon"'})
        from cordon.server.metrics import metrics_text

        body, content_type = await run_in_threadpool(metrics_text, ledger, metrics_extra)
        return Response(body, media_type=content_type)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app
