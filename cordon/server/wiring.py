"""Builds Cordon's server from the environment: what ``cordon serve`` runs.

Environment: ``CORDON_SLACK_SIGNING_SECRET`` (required for the Slack endpoint),
``CORDON_WEBHOOK_TOKEN`` (the detection webhook's bearer token; without it the webhook answers
401/503), ``CORDON_DATABASE_URL``, ``CORDON_CONFIG``, ``PREFECT_API_URL`` (the Prefect server the
``respond`` deployment and its workers use), ``CORDON_SLACK_API_URL`` (a Slack stand-in, for
rehearsals).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from cordon.approvals.decide import make_decider
from cordon.audit.ledger import Ledger
from cordon.server.app import create_app


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

    return create_app(signing_secret=secret, ledger=responder.ledger,
                      decide=make_decider(responder.ledger, responder.config),
                      webhook_token=webhook_token or os.environ.get("CORDON_WEBHOOK_TOKEN"),
                      on_detections=on_detections)
