"""The bot's messaging endpoint for approval clicks in Microsoft Teams.

``POST /teams/messages`` (the *Messaging endpoint* of the bot's Azure Bot registration):

1. Read the body (at most ``max_body`` bytes, else **413**) and decode it as JSON (else **400**).
2. Verify it (:meth:`cordon.teams.verify.InvokeVerifier.verify`: the Bot Framework token through
   the Teams SDK's validator, then channel, tenant, guest, the Cordon card data). A token refusal
   answers **401**; an activity Cordon does not act on answers **200** with an invoke response
   whose message says why (Teams shows it to the clicker). As with Slack's unsigned requests
   (:mod:`cordon.audit.refusals`: anyone can send them, so they are counted per window, not
   chained one by one), a body that is too large, not JSON or whose token is refused is counted
   under source ``teams`` (sample: ``reason``, ``detail``, ``remote``; never the token) and
   summarised as a ``teams.refusals`` record when its window ends; a request Teams signed but Cordon
   refuses (other tenant, guest, not a card action, a replay) is chained as ``teams.invoke_refused``.
3. Record ``teams.invoke_received`` (``activity_id``, the clicker ``teams:<object id>``, case,
   run, plan) and refuse a replay (:func:`cordon.teams.verify.find_replay`: the same activity id
   earlier in the ledger's chain): **401**, ``teams.invoke_refused`` reason ``replayed``; the
   decider is not called.
4. Call ``decide`` (the same :func:`cordon.approvals.decide.make_decider` decider as Slack's; it
   records ``approval.click_refused`` for a policy refusal) in a worker thread and answer the
   invoke with its message (``application/vnd.microsoft.activity.message``), within Teams'
   invoke time limit (the decider waits the deny window, 0.5 s by default, before resuming).
5. ``after(interaction, outcome)``, when given, runs after the answer to an accepted click (a
   counted vote or the decision; it updates the card in place:
   :meth:`cordon.teams.client.TeamsCards.after_decision`).

Sources: Universal Actions invoke response,
https://learn.microsoft.com/microsoftteams/platform/task-modules-and-cards/cards/universal-actions-for-adaptive-cards/work-with-universal-actions-for-adaptive-cards#adaptivecardaction-invoke-activity.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from cordon.audit.ledger import Ledger
from cordon.audit.refusals import RefusalCounter
from cordon.slack.verify import DecisionOutcome, Interaction
from cordon.teams.verify import RECEIVED_KIND, REFUSED_KIND, InvokeRefused, InvokeVerifier, find_replay

DEFAULT_MAX_BODY = 64 * 1024
_AUTH_REASONS = frozenset({"no_bearer", "bad_jwt"})
#: refused before the token was verified: counted (cordon.audit.refusals), not chained
_UNVERIFIED = _AUTH_REASONS | {"too_large", "malformed_body"}


def invoke_message(text: str) -> dict[str, Any]:
    """An ``adaptiveCard/action`` invoke response showing ``text`` to the clicker."""
    return {"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": text}


def teams_router(*, ledger: Ledger, verifier: InvokeVerifier, decide: Callable[[Interaction], DecisionOutcome],
                 after: Callable[[Interaction, DecisionOutcome], None] | None = None,
                 refusals: RefusalCounter | None = None, max_body: int = DEFAULT_MAX_BODY) -> APIRouter:
    """The ``/teams/messages`` endpoint (behaviour in the module docstring) as a FastAPI router,
    to include in :func:`cordon.server.app.create_app`'s app: ``app.include_router(teams_router(...))``.
    ``decide(interaction) -> DecisionOutcome`` is called once per verified, non-replayed click;
    ``refusals`` counts the unverified requests (default: a counter on ``ledger``; pass the app's
    so one closer summarises both)."""
    router = APIRouter()
    counter = refusals if refusals is not None else RefusalCounter(ledger)

    def refused(reason: str, detail: str, remote: str | None, activity: Any, **extra: Any) -> None:
        aid = activity.get("id") if isinstance(activity, dict) else None
        payload = {"reason": reason, "detail": detail[:300], "remote": remote,
                   "activity_id": aid if isinstance(aid, str) else None, **extra}
        if reason in _UNVERIFIED:
            counter.record("teams", reason, {k: v for k, v in payload.items() if k != "reason"})
            return
        ledger.append(REFUSED_KIND, payload, case_id=extra.get("case_id"), run_id=extra.get("run_id"), actor="teams")

    @router.post("/teams/messages")
    async def teams_messages(request: Request, background: BackgroundTasks) -> Response:
        remote = request.client.host if request.client else None
        declared = request.headers.get("content-length")
        body = b""
        if not (declared and declared.isdigit() and int(declared) > max_body):
            body = await request.body()
        if not body or len(body) > max_body:
            await run_in_threadpool(refused, "too_large" if body or declared else "malformed_body",
                                    f"body over {max_body} bytes or empty", remote, None)
            return JSONResponse({"error": "body too large or empty"}, status_code=413 if body or declared else 400)
        try:
            activity = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            await run_in_threadpool(refused, "malformed_body", "not JSON", remote, None)
            return JSONResponse({"error": "not JSON"}, status_code=400)
        try:
            ix = await verifier.verify(request.headers.get("authorization"), activity)
        except InvokeRefused as exc:
            await run_in_threadpool(refused, exc.reason, exc.detail, remote, activity)
            if exc.reason in _AUTH_REASONS:
                return JSONResponse({"error": "unauthorized", "reason": exc.reason}, status_code=401)
            if exc.reason == "malformed_body":
                return JSONResponse({"error": exc.detail, "reason": exc.reason}, status_code=400)
            return JSONResponse(invoke_message(f"Cordon refused this action: {exc.detail}"))
        where = {"case_id": ix.case_id, "run_id": ix.run_id}
        received = await run_in_threadpool(
            ledger.append, RECEIVED_KIND,
            {"activity_id": ix.trigger_id, "user_id": ix.user_id, "user_name": ix.user_name, "tenant_id": ix.team_id,
             "decision": ix.decision, "plan_hash": ix.plan_hash, "conversation_id": ix.channel,
             "reply_to_id": ix.message_ts, "remote": remote},
            case_id=ix.case_id, run_id=ix.run_id, actor=ix.user_id)
        original = await run_in_threadpool(find_replay, ledger, ix.trigger_id or "", received.seq, ix.case_id)
        if original is not None:
            await run_in_threadpool(refused, "replayed", f"repeats the invoke recorded at seq {original.seq}",
                                    remote, activity, user_id=ix.user_id, **where)
            return JSONResponse({"error": "replayed request", "reason": "replayed"}, status_code=401)
        outcome = await run_in_threadpool(decide, ix)
        if after is not None and outcome.accepted:  # a refused click changes nothing to show
            background.add_task(run_in_threadpool, after, ix, outcome)
        return JSONResponse(invoke_message(outcome.message))

    return router
