"""The watch after containment, unattended (issue 14, item 2): ``cordon worker --watch-every 2`` on a
fresh install (a real Prefect server and the worker in child processes, the Slack stand-in, the AWS
sandbox and Cordon's server over real HTTP: ``tests/test_durability.py``'s ``stack``). The example's
key is contained through Slack, then used; the worker's scheduled watch finds the use by itself.
Kept apart from ``tests/test_watch.py``, whose in-process flows run on Prefect's test harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cordon.engine import Responder
from cordon.sandbox.slack_standin import block_actions_payload
from tests.helpers import wait_for
from tests.test_durability import (  # noqa: F401 - stack is a fixture
    CHANNEL,
    deployment_ready,
    flow_state,
    slack_signed,
    stack,
)
from tests.test_watch import EXAMPLE, REPO, used_by


def test_the_scheduled_watch_of_a_fresh_worker_raises_a_used_key(stack):  # noqa: F811
    """``cordon worker --watch-every 2`` on a fresh install: the example's key is contained through
    Slack, then used; the worker's scheduled watch records the use and raises it in the case's
    thread, with nobody running anything."""
    env = {**os.environ, **stack["env"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(stack["tmp"] / "worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).parent / "cordon"), "worker", "--sweep-every", "0",
                             "--watch-every", "2"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(deployment_ready, 90, "the respond deployment to be served")
        responder = Responder(ledger=stack["ledger"])
        report = responder.intake([EXAMPLE])
        slack_settings = {"channel": CHANNEL, "base_url": stack["slack_url"]}
        (submitted,) = list(responder.run_all(report, approval="slack", stand_ins=stack["aws"], slack=slack_settings))
        run_id, case_id = submitted["flow_run_id"], submitted["case_id"]
        wait_for(lambda: flow_state(run_id) == "PAUSED", 120, "the run to suspend for approval")
        (message,) = stack["slack"].messages(CHANNEL)
        payload = block_actions_payload(message, CHANNEL, "cordon_approve", user_id="U0ALICE01", user_name="alice",
                                        response_url=stack["slack"].response_url(CHANNEL, message["ts"]))
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        assert httpx.post(f"{stack['cordon_url']}/slack/interactions", content=body,
                          headers=slack_signed(body)).status_code == 200
        wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the approved run to complete")
        ledger = stack["ledger"]
        assert ledger.case(case_id)["status"] == "contained"
        wait_for(lambda: list(ledger.records(case_id=case_id, kind_prefix="watch.checked")), 120,
                 "the scheduled watch to check the contained key")
        key = submitted["detection"]["credential"]["uid"]
        user = submitted["detection"]["credential"]["owner"]["name"]
        stack["aws"].standin.add_events([used_by(key, user, datetime.now(UTC))])
        (alert,) = wait_for(lambda: list(ledger.records(case_id=case_id, kind_prefix="watch.alert")), 120,
                            "the scheduled watch to raise the use of the key")
        assert alert.payload["used"][0]["access_key_id"] == key
        wait_for(lambda: list(ledger.records(case_id=case_id, kind_prefix="slack.watch_alert_posted")), 60,
                 "the alert to be posted")
        replies = stack["slack"].replies(CHANNEL, message["ts"])
        assert any(key in r["text"] and "used 1 time(s)" in r["text"] for r in replies), replies
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
