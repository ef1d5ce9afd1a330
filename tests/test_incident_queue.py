"""A case joins its incident's queued run (issue 13: a storm of one actor's keys, posted in many
webhook batches, is answered by few runs; ``incidents.join_queued``).

The ledger's rows and records on SQLite and PostgreSQL, then the production shape: a real Prefect
server, ``cordon worker`` in a child process, the Slack stand-in, the AWS sandbox and Cordon's
server over real HTTP (``tests/test_durability.py``'s ``stack``). The burst is Stratus Red Team's
``aws.persistence.iam-create-admin-user`` detonation log (CloudTrail captured while the attack
ran), read in place from ``../shared/data/real``, posted one record a request."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest

from cordon.audit.ledger import Ledger
from cordon.recovery import RunState, check_case
from cordon.sandbox.slack_standin import block_actions_payload
from tests.conftest import SHARED_DATA, stratus_events
from tests.helpers import wait_for
from tests.test_actor_access import ADMIN_USER_LOG
from tests.test_durability import (  # noqa: F401 - stack is a fixture
    CHANNEL,
    REPO,
    WEBHOOK_TOKEN,
    Worker,
    deployment_ready,
    flow_state,
    slack_signed,
    stack,
)

needs_corpus = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason=f"{SHARED_DATA} is absent (../shared not beside the repo)")

LENIENT = [True, 1, True, -3600]
STRICT = [True, 2, True, -3600]


def member(case_id: str) -> dict:
    return {"case_id": case_id, "playbook": "aws-access-key-created", "cloud": {"account": "1"}}


# -- the ledger: who may join, and the seal -----------------------------------------------------------------
def test_a_case_joins_a_queued_run_until_it_seals(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.open_incident_run("lead", 1, "incident-1", mode="slack", where="deployment", strictness=LENIENT,
                             conflict_keys=["gcp|projects/p"])
    join = dict(mode="slack", where="deployment", max_cases=4)
    assert ledger.join_incident_run("a", "incident-1", strictness=LENIENT, conflict_key=None,
                                    member=member("a"), **join) == "lead"
    assert ledger.join_incident_run("a", "incident-1", strictness=LENIENT, conflict_key=None,
                                    member=member("a"), **join) == "lead"  # asked again: the same run, once
    # refused: a stricter approval policy than the lead's, an object the run already rewrites, another
    # incident, another approval mode
    assert ledger.join_incident_run("b", "incident-1", strictness=STRICT, conflict_key=None,
                                    member=member("b"), **join) is None
    assert ledger.join_incident_run("c", "incident-1", strictness=LENIENT, conflict_key="gcp|projects/p",
                                    member=member("c"), **join) is None
    assert ledger.join_incident_run("d", "incident-2", strictness=LENIENT, conflict_key=None,
                                    member=member("d"), **join) is None
    assert ledger.join_incident_run("e", "incident-1", strictness=LENIENT, conflict_key=None, member=member("e"),
                                    **{**join, "mode": "auto"}) is None
    assert ledger.join_incident_run("f", "incident-1", strictness=LENIENT, conflict_key="gcp|projects/q",
                                    member=member("f"), **join) == "lead"
    assert ledger.join_incident_run("g", "incident-1", strictness=LENIENT, conflict_key="gcp|projects/q",
                                    member=member("g"), **join) is None  # f took projects/q
    assert ledger.join_incident_run("h", "incident-1", strictness=LENIENT, conflict_key=None,
                                    member=member("h"), **join) == "lead"
    assert ledger.join_incident_run("i", "incident-1", strictness=LENIENT, conflict_key=None,
                                    member=member("i"), **join) is None  # the run holds max_cases (4)
    delegated = [(r.case_id, r.payload["lead_case_id"]) for r in ledger.records(kind_prefix="run.delegated")]
    assert delegated == [("a", "lead"), ("f", "lead"), ("h", "lead")]

    sealed = ledger.seal_incident_run("lead", 1)
    assert [m["case_id"] for m in sealed] == ["a", "f", "h"] and sealed[0] == member("a")
    assert ledger.seal_incident_run("lead", 1) == sealed  # a resumed run: the same members, nothing written
    assert len(list(ledger.records(kind_prefix="run.sealed"))) == 1
    assert ledger.join_incident_run("j", "incident-1", strictness=LENIENT, conflict_key=None,
                                    member=member("j"), **join) is None  # sealed: a run of its own
    # another attempt of the lead (a rerun) finds nothing new to answer; a lead never opened, nothing at all
    assert ledger.seal_incident_run("lead", 2) == []
    assert ledger.seal_incident_run("nobody", 1) == []
    assert [r.payload["attempt"] for r in ledger.records(kind_prefix="run.sealed")] == [1, 2]
    assert ledger.verify().ok


def test_recovery_counts_the_cases_that_joined_among_the_leads_members(ledger_url):
    """A stranded lead is run again with the cases that joined its queued run (``run.sealed``), as
    with the members its request named; a member that joined is judged by its lead."""
    ledger = Ledger(ledger_url)
    lead_id = ledger.open_case("key-lead", "d1", {"x": 1}, "aws-access-key-created").case_id
    late_id = ledger.open_case("key-late", "d2", {"x": 2}, "aws-access-key-created").case_id
    ledger.append("run.requested", {"attempt": 1, "mode": "slack", "where": "deployment", "cloud": {},
                                    "members": [member("given")]}, case_id=lead_id)
    ledger.append("run.submitted", {"attempt": 1, "flow_run_id": "run-1"}, case_id=lead_id)
    ledger.open_incident_run(lead_id, 1, "incident-1", mode="slack", where="deployment", strictness=LENIENT,
                             conflict_keys=[])
    assert ledger.join_incident_run(late_id, "incident-1", strictness=LENIENT, conflict_key=None, mode="slack",
                                    where="deployment", member=member(late_id), max_cases=25) == lead_id
    running = RunState("RUNNING", "Running", None)
    assert check_case(ledger, ledger.case(late_id), state_of=lambda _: running).live is True
    ledger.seal_incident_run(lead_id, 1)
    check = check_case(ledger, ledger.case(lead_id), state_of=lambda _: RunState("CRASHED", "Crashed", None))
    assert check.live is False and [m["case_id"] for m in check.members] == ["given", late_id]


# -- the production shape: batches posted while the run waits in the queue ------------------------------------
def _post(stack, event: dict) -> dict:  # noqa: F811 - the fixture's value
    resp = httpx.post(f"{stack['cordon_url']}/webhook/detections", content=json.dumps(event).encode(),
                      headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, timeout=120)
    assert resp.status_code == 202, resp.text
    return resp.json()


@needs_corpus
def test_batches_of_one_actor_posted_while_its_run_is_queued_are_one_run(stack):  # noqa: F811
    """The burst's records posted one a request while no worker runs: the first is submitted, the
    others join its queued run (``run.delegated`` ``joined_queued``, no run of their own); a worker
    started then seals the run, asks once for every case and contains each on its click. A record
    posted after the seal gets a run of its own."""
    from cordon.config import load_config
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.sigma import RuleSet

    tmp, env, ledger = stack["tmp"], stack["env"], stack["ledger"]
    events = stratus_events(ADMIN_USER_LOG)
    log = tmp / "admin-user.json"
    log.write_text(json.dumps(events))
    for det in detect(read_inputs([log]), RuleSet.load(load_config().rules_dir)):
        stack["aws"].seed_from_detection(det)  # the sandbox holds what the detections say exists
    w1 = Worker(env, tmp / "worker1.log", cwd=REPO).start()
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    w1.stop()  # the deployment stays; its runs wait in the queue until a worker comes

    first, *rest = [e for e in events if e["eventName"] in ("CreateUser", "AttachUserPolicy", "CreateAccessKey")]
    (lead,) = _post(stack, first)["cases"]
    assert lead["status"] == "awaiting_approval"
    joined = [c for e in rest[:1] for c in _post(stack, e)["cases"]]
    assert [c["flow_run_id"] for c in joined] == [lead["flow_run_id"]]
    assert {r.case_id for r in ledger.records(kind_prefix="run.requested")} == {lead["case_id"]}
    (delegated,) = ledger.records(case_id=joined[0]["case_id"], kind_prefix="run.delegated")
    assert delegated.payload["joined_queued"] is True and delegated.payload["lead_case_id"] == lead["case_id"]

    w2 = Worker(env, tmp / "worker2.log", cwd=REPO).start()
    stack["workers"].append(w2)
    run_id = lead["flow_run_id"]
    wait_for(lambda: flow_state(run_id) == "PAUSED", 120, "the incident's run to suspend for approval")
    (sealed,) = ledger.records(case_id=lead["case_id"], kind_prefix="run.sealed")
    assert [m["case_id"] for m in sealed.payload["members"]] == [joined[0]["case_id"]]
    (message,) = stack["slack"].messages(CHANNEL)  # one request for both cases
    assert joined[0]["case_id"] in json.dumps(message["blocks"])

    # after the seal, the actor's next record is answered by a run of its own
    (late,) = _post(stack, rest[1])["cases"]
    assert late["flow_run_id"] not in (None, run_id)
    assert not list(ledger.records(case_id=late["case_id"], kind_prefix="run.delegated"))

    (asked,) = list(ledger.records(case_id=lead["case_id"], kind_prefix="approval.asked"))
    for user_id, name in [("U0ALICE01", "alice"), ("U0BOB0002", "bob")][:asked.payload["quorum"]]:
        payload = block_actions_payload(message, CHANNEL, "cordon_approve", user_id=user_id, user_name=name,
                                        response_url=stack["slack"].response_url(CHANNEL, message["ts"]))
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        assert httpx.post(f"{stack['cordon_url']}/slack/interactions", content=body,
                          headers=slack_signed(body)).status_code == 200
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the incident's run to complete")
    for case_id in (lead["case_id"], joined[0]["case_id"]):
        kinds = [r.kind for r in ledger.records(case_id=case_id)]
        assert kinds[-1] == "case.closed" and kinds.count("case.closed") == 1, kinds
        assert kinds.count("action.contained") >= 1 and (ledger.case(case_id) or {})["status"] == "contained"
    assert ledger.verify().ok
