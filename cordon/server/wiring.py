"""Builds Cordon's server from the environment: what ``cordon serve`` runs.

Environment: ``CORDON_SLACK_SIGNING_SECRET`` (required for the Slack endpoint),
``CORDON_WEBHOOK_TOKEN`` (the detection webhook's bearer token; without it the webhook answers
401/503), ``CORDON_METRICS_TOKEN`` (the bearer token Prometheus presents at ``/metrics``; without
it ``/metrics`` answers 503), ``CORDON_SUBMIT_THREADS`` (a posted batch's cases submitted at once; default 8),
``CORDON_DATABASE_URL``, ``CORDON_CONFIG``, ``PREFECT_API_URL`` (the Prefect server the
``respond`` deployment and its workers use), ``CORDON_SLACK_API_URL`` (a Slack stand-in, for
rehearsals), ``CORDON_AUDIT_USERS`` / ``CORDON_AUDIT_PROXY_SECRET`` (who may read the audit
pages under ``/audit``: :mod:`cordon.server.pages`). With a ``teams`` section in ``cordon.yaml``,
``/teams/messages`` takes Microsoft Teams clicks (:mod:`cordon.teams.server`), the bot's client
secret read from the variable its ``app_password_env`` names (default ``CORDON_TEAMS_APP_PASSWORD``).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from cordon.approvals.decide import make_decider, wants_deny_reason
from cordon.approvals.policy import require_approvers
from cordon.audit.ledger import Ledger
from cordon.audit.refusals import RefusalCounter
from cordon.server.app import create_app
from cordon.server.pages import audit_pages
from cordon.server.push_auth import load_push_sources


def build_app(*, signing_secret: str | None = None, webhook_token: str | None = None,
              ledger: Ledger | None = None, cloud: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app with the Slack decision wired to Prefect and the webhook to the engine.

    Detections posted to the webhook are read like a file (any supported format), recorded, and
    each new case is submitted to the ``respond`` deployment with the case ID as idempotency key.
    Senders declared under ``webhook.sources`` in ``cordon.yaml`` push to
    ``/webhook/detections/<source>`` with their own credential (:mod:`cordon.server.push_auth`).
    Raises ``RuntimeError`` if no Slack signing secret is configured, and
    :class:`cordon.config.ConfigError` when no Slack approvers are configured
    (:func:`cordon.approvals.policy.require_approvers`) or a push source's secret is not set.
    """
    from cordon.engine import Responder

    secret = signing_secret or os.environ.get("CORDON_SLACK_SIGNING_SECRET")
    if not secret:
        raise RuntimeError("CORDON_SLACK_SIGNING_SECRET is not set: the Slack endpoint cannot verify requests")
    responder = Responder(ledger=ledger)
    # closed by default: no Slack approval path while nobody is named to approve
    require_approvers(responder.config, responder.playbooks)
    slack = {"channel": responder.config.slack_channel, "base_url": os.environ.get("CORDON_SLACK_API_URL")}
    submit_threads = max(1, int(os.environ.get("CORDON_SUBMIT_THREADS", "8") or 8))

    def on_detections(body: bytes, origin: str) -> dict[str, Any]:
        report = responder.intake_bytes(body, origin)
        cases = responder.submit_report(report, cloud=cloud, slack=slack, threads=submit_threads)
        answer = {"cases": [{"case_id": c["case_id"], "playbook": c["playbook"], "status": c["status"],
                             "flow_run_id": c.get("flow_run_id"), **({"error": c["error"]} if c.get("error") else {})}
                            for c in cases],
                  "joined": [t.case_id for t in report.joined],
                  "suppressed": len(report.suppressed),
                  "rejected": [r.message() for r in report.rejected]}
        if any(c["status"] == "submit_failed" for c in cases):
            # recorded (run.submit_failed) and recovered later; the sender may resend: the resent
            # detection joins the case and submits it again
            answer["retry_after"] = 30
        return answer

    slack_client = None
    if os.environ.get("CORDON_SLACK_BOT_TOKEN"):
        from cordon.slack.client import web_client

        slack_client = web_client(slack)

    def rollback(case_id: str, who: str) -> list[dict[str, Any]]:
        # The case's clients as its run had them (the detection's account, the case's session name).
        return responder.rollback(case_id, responder.case_clients(case_id, cloud), who)

    open_view = None
    if slack_client is not None:
        def open_view(trigger_id: str, view: dict[str, Any]) -> None:
            slack_client.views_open(trigger_id=trigger_id, view=view)  # raises SlackApiError when refused

    # one decider for both channels: a Slack and a Teams click on one case meet in one quorum
    from cordon.teams.directory import directory_for  # Teams clickers' directory groups and e-mail

    decide = make_decider(responder.ledger, responder.config, slack_client=slack_client, rollback=rollback,
                          directories={"teams": directory_for(responder.config)})
    refusals = RefusalCounter(responder.ledger)
    cards = None
    if responder.config.raw.get("teams"):  # the bot's secret (or a stand-in's token) is required to start
        from cordon.teams.channel import connector_factory, teams_settings
        from cordon.teams.client import TeamsCards

        cards = TeamsCards(responder.ledger, connector_factory(teams_settings(responder.config)))
    app = create_app(signing_secret=secret, ledger=responder.ledger, open_view=open_view,
                     wants_reason=lambda ix: wants_deny_reason(responder.ledger, ix), refusals=refusals,
                     decide=_and_refresh(decide, cards),
                     webhook_token=webhook_token or os.environ.get("CORDON_WEBHOOK_TOKEN"),
                     on_detections=on_detections, commands=_commands(responder, slack_client, cloud, slack),
                     push_sources=load_push_sources((responder.config.raw.get("webhook") or {}).get("sources"),
                                                    os.environ),
                     metrics_token=os.environ.get("CORDON_METRICS_TOKEN") or None)
    app.include_router(audit_pages(responder.ledger))  # read-only audit pages: cordon/server/pages.py
    if responder.config.raw.get("teams"):  # Microsoft Teams clicks: cordon/teams/server.py
        from cordon.teams.channel import teams_settings
        from cordon.teams.server import teams_router
        from cordon.teams.verify import InvokeVerifier

        app.include_router(teams_router(ledger=responder.ledger, verifier=InvokeVerifier(teams_settings(
            responder.config)), decide=decide, after=cards.after_decision if cards else None, refusals=refusals))
    _recover_at_start(app, responder, cloud, slack)
    return app


def _and_refresh(decide: Any, cards: Any) -> Any:
    """The Slack side's ``decide``: ``decide`` itself, and, when the case also has a Teams card
    (``approval.channel: both``), that card refreshed after an accepted click (votes so far, or who
    decided), in a background thread so Slack gets its answer in time. ``cards``: a
    :class:`cordon.teams.client.TeamsCards` or ``None`` (``decide`` is returned as it is)."""
    if cards is None:
        return decide
    import threading

    def decide_and_refresh(ix: Any) -> Any:
        outcome = decide(ix)
        if outcome.accepted and ix.decision in ("approve", "deny", "rollback"):
            threading.Thread(target=cards.after_decision, args=(ix, outcome), name="cordon-teams-refresh",
                             daemon=True).start()
        return outcome

    return decide_and_refresh


def _recover_at_start(app: FastAPI, responder: Any, cloud: dict[str, Any] | None, slack: dict[str, Any]) -> None:
    """At server start (the app's lifespan), in a background thread so start is not held up:
    submit the ledger's stranded ``slack``/``auto`` cases to the ``respond`` deployment again
    (:meth:`cordon.engine.Responder.recover_stranded`). Several replicas may do this at once:
    the ledger's claim and Prefect's idempotency key let one run each case. Errors are logged."""
    import contextlib
    import contextvars
    import logging
    import threading

    inner = app.router.lifespan_context

    def work() -> None:
        try:
            for rec in responder.recover_stranded(cloud=cloud, slack=slack):
                if rec.action != "skipped":
                    logging.getLogger("cordon.recovery").warning("stranded case %s: %s (attempt %s): %s",
                                                                 rec.case_id, rec.action, rec.attempt, rec.reason)
        except Exception:  # noqa: BLE001 - the sweep tries again later
            logging.getLogger("cordon.recovery").exception("recovery at server start failed")

    @contextlib.asynccontextmanager
    async def lifespan(a: Any):
        # the thread sees the server's context (Prefect settings set by the caller)
        threading.Thread(target=contextvars.copy_context().run, args=(work,), name="cordon-recovery",
                         daemon=True).start()
        async with inner(a) as state:
            yield state

    app.router.lifespan_context = lifespan


def _commands(responder: Any, client: Any, cloud: dict[str, Any] | None, slack: dict[str, Any]) -> Any:
    """``/cordon`` and its modal: manual runs go to the ``respond`` deployment, asking where
    ``approval.channel`` says (Slack by default)."""
    from cordon.slack.commands import CommandHandler

    def start_run(playbook: str, params: dict[str, Any], requested_by: dict[str, str]) -> dict[str, Any]:
        from cordon.approvals.modes import configured_channel

        return responder.manual(playbook, params, requested_by, approval=configured_channel(responder.config),
                                cloud=cloud, slack=slack)

    return CommandHandler(ledger=responder.ledger, playbooks=responder.playbooks, start_run=start_run, client=client)
