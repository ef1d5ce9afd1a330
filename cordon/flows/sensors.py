"""The sensors as a Prefect deployment (``prefect.yaml``: ``sensors``, every 10 minutes, one run at a
time): each run serves every sensor configured in ``cordon.yaml`` (``sensors.<name>``) for
``minutes``, then ends, and the next scheduled run takes over, so a crashed run is replaced within
an interval and each stretch is visible in Prefect's UI. The same as ``cordon sensor run NAME`` per
sensor as a served process (:mod:`cordon.sensors`). Thin: the logic is
:func:`cordon.sensors.runner.run_configured`. Environment as the respond flow (``CORDON_DATABASE_URL``,
``CORDON_CONFIG``, ``PREFECT_API_URL``, Slack) plus each cloud's credentials.
"""

import os
from typing import Any

from prefect import flow


@flow(name="sensors", log_prints=True)
def run_sensors(minutes: float = 10.0) -> dict[str, dict[str, Any]]:
    """Serve the configured sensors for ``minutes``; their cases go to the ``respond`` deployment
    with Slack approval. Returns per sensor ``{"passes", "records", "errors"}`` (``{}`` when none is
    configured). Raises :class:`cordon.config.ConfigError` when a sensor's settings are wrong or no
    Slack approvers are configured while a sensor is."""
    from cordon.approvals.policy import require_approvers
    from cordon.clouds import clients_for
    from cordon.engine import Responder
    from cordon.sensors.runner import run_configured

    responder = Responder()
    if not ((responder.config.raw or {}).get("sensors") or {}):
        print("no sensors configured (sensors: in cordon.yaml)")
        return {}
    require_approvers(responder.config, responder.playbooks)
    slack = {"channel": responder.config.slack_channel, "base_url": os.environ.get("CORDON_SLACK_API_URL")}
    tally = run_configured(responder, clients_for, minutes * 60,
                           lambda report: responder.submit_report(report, slack=slack))
    print(tally)
    return tally
