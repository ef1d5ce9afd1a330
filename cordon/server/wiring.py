"""Builds Cordon's server from the environment: what ``cordon serve`` runs.

Environment: ``CORDON_SLACK_SIGNING_SECRET`` (required for the Slack endpoint),
``CORDON_WEBHOOK_TOKEN`` (the detection webhook's bearer token; without it the webhook answers
401/503), ``CORDON_DATABASE_URL``, ``CORDON_CONFIG``, ``PREFECT_API_URL`` (the Prefect server the
``respond`` deployment and its workers use), ``CORDON_SLACK_API_URL`` (a Slack stand-in, for
rehearsals), ``CORDON_AUDIT_USERS`` / ``CORDON_AUDIT_PROXY_SECRET`` (who may read the audit
pages under ``/audit``: :mod:`cordon.server.pages`).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from cordon.approvals.decide import make_decider
from cordon.audit.ledger import Ledger
from cordon.server.app import create_app
from cordon.server.pages import audit_pages


def build_app(*, signing_secret: str | None = None, webhook_token: str | None = None,
              ledger: Ledger | None = None, cloud: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app with the Slack decision wired to Prefect and the webhook to the engine.

    Detections posted to the webhook are read like a file (any supported format), recorded, and
    each new case is submitted to the ``respond`` deployment with the case ID as idempotency key.
    Raises ``RuntimeError`` if no Slack signing secret is configured.
    """
    from cordon.engine import Responder

    secret = signing_secret or os.environ.get("CORDON_SLACK_SIGNING_SECRET")
    if not secret:
        raise RuntimeError("CORDON_SLACK_SIGNING_SECRET is not set: the Slack endpoint cannot verify requests")
    responder = Responder(ledger=ledger)
    slack = {"channel": responder.config.slack_channel, "base_url": os.environ.get("CORDON_SLACK_API_URL")}

    def on_detections(body: bytes, origin: str) -> dict[str, Any]:
        report = responder.intake_bytes(body, origin)
        cases = [responder.submit(t, cloud=cloud, slack=slack) for t in report.cases]
        return {"cases": [{"case_id": c["case_id"], "playbook": c["playbook"], "status": c["status"],
                           "flow_run_id": c.get("flow_run_id")} for c in cases],
                "joined": [t.case_id for t in report.joined],
                "suppressed": len(report.suppressed),
                "rejected": [r.message() for r in report.rejected]}

    slack_client = None
    if os.environ.get("CORDON_SLACK_BOT_TOKEN"):
        from cordon.approvals.slack import web_client

        slack_client = web_client(slack)

    def rollback(case_id: str, who: str) -> list[dict[str, Any]]:
        # The case's clients as its run had them: in the sandbox, the detection's own account.
        from cordon.clouds import clients_for
        from cordon.detections.model import Detection

        case = responder.ledger.case(case_id)
        if case is None:
            raise KeyError(f"no case {case_id}")
        det = Detection.model_validate_json(case["detection"])
        params = dict(cloud or {})
        if params.get("sandbox") and det.account_uid:
            params["account_id"] = det.account_uid
        return responder.rollback(case_id, clients_for(det.provider, params), who)

    app = create_app(signing_secret=secret, ledger=responder.ledger,
                     decide=make_decider(responder.ledger, responder.config, slack_client=slack_client,
                                         rollback=rollback),
                     webhook_token=webhook_token or os.environ.get("CORDON_WEBHOOK_TOKEN"),
                     on_detections=on_detections, commands=_commands(responder, slack_client, cloud, slack))
    app.include_router(audit_pages(responder.ledger))  # read-only audit pages: cordon/server/pages.py
    return app


def _commands(responder: Any, client: Any, cloud: dict[str, Any] | None, slack: dict[str, Any]) -> Any:
    """``/cordon`` and its modal: manual runs go to the ``respond`` deployment with Slack approval."""
    from cordon.approvals.commands import CommandHandler

    def start_run(playbook: str, params: dict[str, Any], requested_by: dict[str, str]) -> dict[str, Any]:
        return responder.manual(playbook, params, requested_by, approval="slack", cloud=cloud, slack=slack)

    return CommandHandler(ledger=responder.ledger, playbooks=responder.playbooks, start_run=start_run, client=client)
