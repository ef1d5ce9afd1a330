"""Approval in Microsoft Teams, end to end, in the production shape on one machine.

A real Prefect server and ``respond`` worker (child processes), the AWS sandbox (moto), the Teams
stand-in (connector, OpenID metadata and the key set that signs its invokes), the Slack stand-in,
and Cordon's server (:func:`cordon.server.wiring.build_app`: ``/teams/messages`` mounted because
``cordon.yaml`` has a ``teams`` section). A case is submitted with ``approval="teams"`` (or
``both``); its run posts the Adaptive Card and suspends; the worker is killed while it waits; a
signed click resumes the run; a new worker contains the key; the card ends with the outcome.
"""

from __future__ import annotations

import json

import httpx
import pytest

from cordon.engine import Responder
from cordon.sandbox.prefect_server import Worker
from cordon.sandbox.teams_standin import TeamsStandIn
from tests.helpers import wait_for, with_teams
from tests.test_decision_race import deny_body
from tests.test_durability import (  # noqa: F401 - stack: the fixture this module builds on
    CHANNEL,
    EXAMPLE,
    REPO,
    cordon_config,
    deployment_ready,
    flow_state,
    slack_signed,
    stack,
)

CONVERSATION = "19:security-approvals@thread.tacv2"
ALICE, MALLORY = "oid-alice-0001", "oid-mallory-09"


@pytest.fixture
def teams_stack(tmp_path, monkeypatch, request):
    """The durability stack (:func:`tests.test_durability.stack`) with the Teams stand-in, and
    ``cordon.yaml`` naming it (written before the sk builds Cordon's server from it)."""
    with TeamsStandIn() as teams:
        cfg = cordon_config(tmp_path, monkeypatch)
        with_teams(cfg, teams, conversation_id=CONVERSATION, approvers=[f"teams:{ALICE}", f"teams:{MALLORY}"],
                   identities={f"teams:{ALICE}": ["alice@example.com"],
                               f"teams:{MALLORY}": ["arn:aws:iam::111122223333:user/mallory"]})
        monkeypatch.setenv("CORDON_TEAMS_CONNECTOR_TOKEN", "standin-bot-token")
        sk = request.getfixturevalue("stack")
        sk["env"]["CORDON_TEAMS_CONNECTOR_TOKEN"] = "standin-bot-token"
        sk["teams"] = teams
        yield sk


def submit(sk, approval: str) -> tuple[str, str]:
    """Serve the deployment with a worker, submit the example's case with ``approval`` and wait
    until its run is PAUSED; returns ``(flow_run_id, case_id)``."""
    w = Worker(sk["env"], sk["tmp"] / "worker1.log", cwd=REPO).start()
    sk["workers"].append(w)
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    responder = Responder(ledger=sk["ledger"])
    report = responder.intake([EXAMPLE])
    slack = {"channel": CHANNEL, "base_url": sk["slack_url"]}
    (submitted,) = list(responder.run_all(report, approval=approval, stand_ins=sk["aws"], slack=slack))
    assert submitted["status"] == "awaiting_approval", submitted
    run_id, case_id = submitted["flow_run_id"], submitted["case_id"]
    wait_for(lambda: flow_state(run_id) == "PAUSED", 120, "the run to suspend for approval")
    return run_id, case_id


def posted_card(sk, case_id: str) -> dict:
    (ref,) = [r.payload for r in sk["ledger"].records(case_id=case_id, kind_prefix="teams.card_posted")]
    return ref


def click(sk, ref: dict, case_id: str, run_id: str, oid: str, verb: str = "cordon_approve") -> httpx.Response:
    """A signed ``adaptiveCard/action`` invoke from ``oid`` on the card ``ref``, POSTed to Cordon."""
    teams = sk["teams"]
    data = {"case_id": case_id, "plan_hash": ref["plan_hash"], "run_id": run_id}
    card = teams.activity(CONVERSATION, ref["activity_id"])["attachments"][0]["content"]
    if "actions" in card:  # still waiting: the click carries what the card's button holds
        assert next(a["data"] for a in card["actions"] if a["verb"] == verb) == data
    activity = teams.invoke(verb=verb, data=data, aad_object_id=oid, conversation_id=CONVERSATION,
                            reply_to_id=ref["activity_id"])
    return httpx.post(f"{sk['cordon_url']}/teams/messages", json=activity,
                      headers={"Authorization": f"Bearer {teams.token()}"}, timeout=30)


def test_teams_approval_survives_a_worker_killed_while_waiting_and_contains_once(teams_stack):
    sk = teams_stack
    run_id, case_id = submit(sk, "teams")
    ref = posted_card(sk, case_id)
    asked = [r.payload for r in sk["ledger"].records(case_id=case_id, kind_prefix="approval.asked")]
    assert [a["mode"] for a in asked] == ["teams"]
    assert sk["slack"].messages(CHANNEL) == []  # Teams only: nothing posted in Slack
    assert sk["teams"].requests[0]["headers"]["authorization"] == "Bearer standin-bot-token"

    sk["workers"][0].kill()  # the runner dies while the run waits
    # the suspect (the key's creator, by their recorded identity) may not approve their own case
    own = click(sk, ref, case_id, run_id, MALLORY)
    assert own.status_code == 200 and "approve recorded" not in own.json()["value"]
    assert flow_state(run_id) == "PAUSED"
    ok = click(sk, ref, case_id, run_id, ALICE)
    assert ok.status_code == 200 and "approve recorded" in ok.json()["value"], ok.json()
    assert wait_for(lambda: flow_state(run_id) not in ("PAUSED", None), 30, "the run to leave PAUSED")

    w2 = Worker(sk["env"], sk["tmp"] / "worker2.log", cwd=REPO).start()
    sk["workers"].append(w2)
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the resumed run to complete")

    iam = sk["aws"].clients("iam", account_id="111122223333")
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]}
    assert keys == {"AKIAEXAMPLEBUILDBOT9": "Inactive"}
    records = list(sk["ledger"].records(case_id=case_id))
    kinds = [r.kind for r in records]
    assert kinds.count("action.contained") == 1 and kinds[-1] == "case.closed", kinds
    refused = [r.payload for r in records if r.kind == "approval.click_refused"]
    assert [p["user_id"] for p in refused] == [f"teams:{MALLORY}"]
    (given,) = [r.payload for r in records if r.kind == "approval.given"]
    assert given["approver"] == f"teams:{ALICE}"
    assert sk["ledger"].verify().ok
    # the card was updated in place: decided (no buttons) at the click, then the run's outcome
    final = wait_for(lambda: (lambda a: a if len(a["history"]) >= 2 else None)(
        sk["teams"].activity(CONVERSATION, ref["activity_id"])), 30, "the card's final update")
    content = final["attachments"][0]["content"]
    text = json.dumps(content)
    assert "contained" in text and "Verified: 1 of 1 step(s) hold." in text
    # decided: no Approve / Deny for anyone; the key can be rolled back, so that button is offered
    assert [a["verb"] for a in content["actions"]] == ["cordon_rollback"]
    assert any(f"Approved by teams:{ALICE}" in json.dumps(h) for h in final["history"])


def test_both_channels_a_deny_in_slack_stops_the_run_and_the_teams_card_says_so(teams_stack):
    sk = teams_stack
    run_id, case_id = submit(sk, "both")
    ref = posted_card(sk, case_id)
    (message,) = sk["slack"].messages(CHANNEL)
    # the Deny as Slack delivers it: the click opens the reason dialog, its submission records the Deny
    body, _ = deny_body(sk, message, "U0ALICE01", sk["cordon_url"])
    r = httpx.post(f"{sk['cordon_url']}/slack/interactions", content=body, headers=slack_signed(body))
    assert r.status_code == 200
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the denied run to complete")
    # a Teams Approve after the Slack Deny is refused: the first Deny wins in either channel
    late = click(sk, ref, case_id, run_id, ALICE)
    assert late.status_code == 200 and "already decided: deny" in late.json()["value"]
    iam = sk["aws"].clients("iam", account_id="111122223333")
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]}
    assert keys == {"AKIAEXAMPLEBUILDBOT9": "Active"}
    closed = [r.payload for r in sk["ledger"].records(case_id=case_id, kind_prefix="case.closed")]
    assert closed[-1]["status"] == "denied"
    final = wait_for(lambda: (lambda a: a if "denied" in json.dumps(a["attachments"]) else None)(
        sk["teams"].activity(CONVERSATION, ref["activity_id"])), 30, "the Teams card to show the Deny")
    assert "actions" not in final["attachments"][0]["content"]


def test_cordon_respond_sandbox_approve_teams_runs_end_to_end_with_a_scripted_click(tmp_path):
    """``cordon respond ... --sandbox --approve teams``, as a user runs it (a child process): the
    card goes to the Teams stand-in, the scripted responder's signed click is verified by Cordon's
    endpoint and resumes the run on the rehearsal's worker, the key is contained, the card updated."""
    import os
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    cordon = str(Path(sys.executable).with_name("cordon"))
    env = {**os.environ, "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db",
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in ("PREFECT_API_URL", "CORDON_CONFIG", "CORDON_TEAMS_CONNECTOR_TOKEN"):
        env.pop(name, None)
    res = subprocess.run([cordon, "respond", "examples/cloudtrail-create-access-key.json", "--sandbox", "--approve",
                          "teams", "--output", "json"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()]
    cases = [x for x in lines if "case_id" in x and "status" in x]
    assert cases and all(c["status"] == "contained" for c in cases), cases
    key_case = next(c for c in cases if c["detection"]["credential"]["uid"] == "AKIAEXAMPLEBUILDBOT9")
    assert key_case["approval"]["approver"] == "teams:00000000-0000-4000-8000-00000000c0de"
    assert lines[-1]["summary"]["failed"] == 0
    assert "HtmlWidgetSecurityPolicy" not in res.stderr
    db = sqlite3.connect(tmp_path / "ledger.db")
    kinds = [k for (k,) in db.execute("SELECT kind FROM ledger ORDER BY seq")]
    for kind in ("teams.card_posted", "teams.invoke_received", "approval.given", "teams.card_updated",
                 "action.contained", "case.closed"):
        assert kind in kinds, (kind, kinds)
    assert not [k for k in kinds if k.startswith("slack.")]
    asked = [json.loads(p) for (p,) in db.execute("SELECT payload FROM ledger WHERE kind = 'approval.asked'")]
    assert asked and {a["mode"] for a in asked} == {"teams"}


def test_a_teams_approve_and_a_slack_deny_at_the_same_moment_end_in_the_deny(teams_stack):
    """``both``: Alice approves on the Teams card while Bob submits a Deny in Slack, released at the
    same moment; three cases. Whichever the ledger orders first, the Deny wins (containment starts
    no sooner than the deny window after an approval): nothing is contained, every case ends
    ``denied``, and the Teams card shows it."""
    import threading

    from tests.test_decision_race import key_status, message_of, write_events

    sk = teams_stack
    sk["workers"].append(Worker(sk["env"], sk["tmp"] / "worker.log", cwd=REPO).start())
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    events = sk["tmp"] / "events.jsonl"
    keys = write_events(events, 3)
    responder = Responder(ledger=sk["ledger"])
    report = responder.intake([events])
    slack = {"channel": CHANNEL, "base_url": sk["slack_url"]}
    submitted = list(responder.run_all(report, approval="both", stand_ins=sk["aws"], slack=slack))
    by_key = {sk["ledger"].case(s["case_id"])["case_key"].rsplit("|", 1)[-1]: s for s in submitted}
    trials = [(by_key[key], user) for key, user in keys]
    for s, _ in trials:
        wait_for(lambda s=s: flow_state(s["flow_run_id"]) == "PAUSED", 300, f"run of {s['case_id']} to suspend")
        wait_for(lambda s=s: list(sk["ledger"].records(case_id=s["case_id"], kind_prefix="approval.asked")), 120,
                 f"the request of {s['case_id']} to be in Slack")
    for s, _ in trials:
        case_id, run_id = s["case_id"], s["flow_run_id"]
        ref = posted_card(sk, case_id)
        deny, _ = deny_body(sk, message_of(sk, case_id), "U0BOB0002", sk["cordon_url"])
        barrier = threading.Barrier(2)
        answers: dict[str, int] = {}

        def teams_approve(case_id=case_id, run_id=run_id, ref=ref, barrier=barrier, answers=answers) -> None:
            barrier.wait()
            answers["teams"] = click(sk, ref, case_id, run_id, ALICE).status_code

        def slack_deny(body=deny, barrier=barrier, answers=answers) -> None:
            barrier.wait()
            answers["slack"] = httpx.post(f"{sk['cordon_url']}/slack/interactions", content=body,
                                          headers=slack_signed(body), timeout=30).status_code

        threads = [threading.Thread(target=teams_approve), threading.Thread(target=slack_deny)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == {"teams": 200, "slack": 200}
    for s, user in trials:
        case_id = s["case_id"]
        wait_for(lambda s=s: flow_state(s["flow_run_id"]) == "COMPLETED", 300, f"run of {case_id} to end")
        kinds = [r.kind for r in sk["ledger"].records(case_id=case_id)]
        assert not any(k.startswith(("action.", "step.")) for k in kinds), (case_id, kinds)
        closed = [r.payload for r in sk["ledger"].records(case_id=case_id, kind_prefix="case.closed")]
        assert closed[-1]["status"] == "denied", (case_id, closed)
        assert key_status(sk, user) == "Active", case_id
        ref = posted_card(sk, case_id)
        wait_for(lambda ref=ref: "denied" in json.dumps(sk["teams"].activity(CONVERSATION, ref["activity_id"])),
                 30, f"the Teams card of {case_id} to show the Deny")
