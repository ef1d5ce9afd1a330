"""An incident through the production shape (issue 14, item 1): a real Prefect server and a worker
in child processes, the Slack stand-in, the AWS sandbox and Cordon's server over real HTTP
(``tests/test_durability.py``'s ``stack``). The burst is Stratus Red Team's
``aws.persistence.iam-create-admin-user`` detonation log, read in place from ``../shared/data/real``.
Kept apart from ``tests/test_incidents.py``: that module's in-process flows run on Prefect's test
harness, and this test points Prefect at a server of its own."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
import yaml

from cordon.engine import Responder
from cordon.sandbox.slack_standin import block_actions_payload
from tests.conftest import SHARED_DATA, stratus_events
from tests.helpers import wait_for
from tests.test_actor_access import ADMIN_USER_LOG
from tests.test_durability import (  # noqa: F401 - stack is a fixture
    CHANNEL,
    REPO,
    Worker,
    deployment_ready,
    flow_state,
    slack_signed,
    stack,
)

needs_corpus = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason=f"{SHARED_DATA} is absent (../shared not beside the repo)")


# -- the production shape: one Slack message, a worker killed while it waits, one click -------------------
@needs_corpus
def test_an_incident_is_one_slack_request_and_survives_its_worker(stack):  # noqa: F811
    """The burst through the Slack path: one run, one message listing the three cases and the case
    of the key that made them (``actor_access``, on by default), the worker SIGKILLed while the run
    waits, the approvers' clicks (as many as the lead's quorum), a new worker finishes it: each
    credential contained once, each case closed with its own record, the message updated in place
    with the outcome."""
    tmp, env = stack["tmp"], stack["env"]
    # the shipped default (the stack's configuration, tests.helpers.config_with_approvers, pins it off)
    cfg = tmp / "config" / "cordon.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "actor_access": True}))
    w1 = Worker(env, tmp / "worker1.log", cwd=REPO).start()
    stack["workers"].append(w1)
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    responder = Responder(ledger=stack["ledger"])
    log = tmp / "admin-user.json"
    log.write_text(json.dumps(stratus_events(ADMIN_USER_LOG)))
    report = responder.intake([log])
    slack_settings = {"channel": CHANNEL, "base_url": stack["slack_url"]}
    submitted = list(responder.run_all(report, approval="slack", stand_ins=stack["aws"], slack=slack_settings))
    assert len(submitted) == 4 and {s["status"] for s in submitted} == {"awaiting_approval"}
    identity = stratus_events(ADMIN_USER_LOG)[0]["userIdentity"]
    (actor_case,) = [t.case_id for t in report.cases if t.detection.credential.uid == identity["accessKeyId"]]
    (run_id,) = {s["flow_run_id"] for s in submitted}
    wait_for(lambda: flow_state(run_id) == "PAUSED", 120, "the incident's run to suspend for approval")
    (message,) = stack["slack"].messages(CHANNEL)  # one request for the four cases
    text = json.dumps(message["blocks"])
    for t in report.cases:
        assert t.case_id in text
    assert identity["accessKeyId"] in text  # the actor's key is listed with what it made
    assert "iam:UpdateAccessKey" in text and "iam:DetachUserPolicy" in text
    (asked,) = list(stack["ledger"].records(kind_prefix="approval.asked"))
    lead = asked.case_id

    w1.kill()  # the runner dies while the run waits
    for user_id, name in [("U0ALICE01", "alice"), ("U0BOB0002", "bob")][:asked.payload["quorum"]]:
        payload = block_actions_payload(message, CHANNEL, "cordon_approve", user_id=user_id, user_name=name,
                                        response_url=stack["slack"].response_url(CHANNEL, message["ts"]))
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        ok = httpx.post(f"{stack['cordon_url']}/slack/interactions", content=body, headers=slack_signed(body))
        assert ok.status_code == 200
    wait_for(lambda: flow_state(run_id) not in ("PAUSED", None), 30, "the run to leave PAUSED")
    w2 = Worker(env, tmp / "worker2.log", cwd=REPO).start()
    stack["workers"].append(w2)
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the resumed incident run to complete")

    ledger = stack["ledger"]
    for t in report.cases:
        kinds = [r.kind for r in ledger.records(case_id=t.case_id)]
        assert kinds[-1] == "case.closed" and kinds.count("case.closed") == 1, kinds
        assert kinds.count("step.started") == kinds.count("action.contained") >= 1, kinds
        assert (ledger.case(t.case_id) or {})["status"] == "contained"
        if t.case_id != lead:
            assert "approval.incident" in kinds and "approval.asked" not in kinds
    assert len(list(ledger.records(kind_prefix="approval.given"))) == 1
    assert "case.actor_access" in [r.kind for r in ledger.records(case_id=actor_case)]
    keys = stack["aws"].clients("iam", account_id=identity["accountId"]).list_access_keys(
        UserName=identity["userName"])["AccessKeyMetadata"]
    assert {k["AccessKeyId"]: k["Status"] for k in keys}[identity["accessKeyId"]] == "Inactive"
    final = stack["slack"].message(CHANNEL, message["ts"])
    assert final["history"] and "contained" in json.dumps(final["blocks"]).lower()
    assert ledger.verify().ok
