"""Durable approval: the production shape on one machine.

A real Prefect server (child process), a worker serving the ``respond`` deployment (child
process), the Slack stand-in, the AWS sandbox, and Cordon's server (uvicorn, real HTTP). The run
posts its approval request to Slack and suspends; the worker is killed (SIGKILL) while the run
waits; a responder's click (signed the way Slack signs it) resumes the run; a new worker picks it
up, Prefect replays completed tasks from their persisted results, and the key is contained once.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
import uvicorn

from cordon.audit.ledger import Ledger
from cordon.engine import Responder
from cordon.sandbox.aws import AwsSandbox
from cordon.sandbox.prefect_server import PrefectServer, Worker, deployment_served, free_port
from cordon.sandbox.slack_standin import SlackStandIn, block_actions_payload
from cordon.server.wiring import build_app
from tests.helpers import config_with_approvers, wait_for

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudtrail-create-access-key.json"
SECRET = "8f14e45fceea167a5a36dedd4bea2543"
CHANNEL = "C0APPROVALS"
WEBHOOK_TOKEN = "wh-2f7c9e1a"


def slack_signed(body: bytes, ts: int | None = None) -> dict[str, str]:
    """Sign like Slack: v0= + HMAC-SHA256(secret, "v0:{ts}:{body}") (computed here, independently)."""
    ts = int(time.time()) if ts is None else ts
    sig = hmac.new(SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={sig}",
            "Content-Type": "application/x-www-form-urlencoded"}


def cordon_config(tmp_path: Path, monkeypatch) -> Path:
    """The test's configuration (made once per test, whichever fixture asks first): the shipped
    one with Slack approvers named (the Slack path refuses to start without) and a copy of the
    playbooks a test may edit (``edit_playbook``), under ``tmp_path`` and set as ``CORDON_CONFIG``
    (workers started afterwards inherit it)."""
    cfg = tmp_path / "config"
    if not cfg.exists():
        config_with_approvers(tmp_path, copy_playbooks=True)
    monkeypatch.setenv("CORDON_CONFIG", str(cfg))
    return cfg


@pytest.fixture
def stack(tmp_path, monkeypatch):
    cordon_config(tmp_path, monkeypatch)
    server = PrefectServer(tmp_path / "prefect").start()
    slack = SlackStandIn()
    slack_url = slack.start()
    aws = AwsSandbox().start()
    aws.reset()  # moto's backends live in this process: forget what earlier tests contained
    db_url = f"sqlite:///{tmp_path}/ledger.db"
    env = {**server.env, "CORDON_DATABASE_URL": db_url, "CORDON_SLACK_BOT_TOKEN": "xoxb-test",
           "CORDON_SLACK_API_URL": slack_url, "CORDON_SLACK_CHANNEL": CHANNEL}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
        ledger = Ledger(db_url)
        app = build_app(signing_secret=SECRET, ledger=ledger, webhook_token=WEBHOOK_TOKEN,
                        cloud=aws.cloud_params())
        port = free_port()
        uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        # the server thread must see this test's Prefect settings (threads start with an empty context)
        t = threading.Thread(target=contextvars.copy_context().run, args=(uv.run,), daemon=True)
        t.start()
        wait_for(lambda: uv.started, 30, "Cordon's server")
        workers: list[Worker] = []
        try:
            yield {"server": server, "env": env, "slack": slack, "slack_url": slack_url, "aws": aws,
                   "ledger": ledger, "cordon_url": f"http://127.0.0.1:{port}", "tmp": tmp_path, "workers": workers}
        finally:
            for w in workers:
                w.stop()
            uv.should_exit = True
            t.join(10)
            # flows run in this process (the sweeper's, say) left Prefect's event and log workers
            # sending to this server: drain them while it still answers, or the next module's test
            # harness waits for them forever at its own teardown (EventsWorker.drain_all)
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
            aws.stop()
            slack.stop()
            server.stop()


def flow_state(flow_run_id: str) -> str | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(flow_run_id)
    return fr.state.type.value if fr.state else None


def task_run_names(flow_run_id: str) -> list[str]:
    """The names of the flow run's task runs as the Prefect server recorded them."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    return [t.name for t in runs]


def deployment_ready() -> bool:
    return deployment_served("respond/respond")


def start_paused_case(stack) -> tuple[str, str]:
    """Serve the deployment with a worker, submit the example's case for Slack approval and wait
    until its run is PAUSED; returns ``(flow_run_id, case_id)``."""
    w = Worker(stack["env"], stack["tmp"] / "worker.log", cwd=REPO).start()
    stack["workers"].append(w)
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    responder = Responder(ledger=stack["ledger"])
    report = responder.intake([EXAMPLE])
    slack_settings = {"channel": CHANNEL, "base_url": stack["slack_url"]}
    (submitted,) = list(responder.run_all(report, approval="slack", stand_ins=stack["aws"], slack=slack_settings))
    run_id, case_id = submitted["flow_run_id"], submitted["case_id"]
    wait_for(lambda: flow_state(run_id) == "PAUSED", 120, "the run to suspend for approval")
    return run_id, case_id


def test_worker_killed_while_waiting_then_approved_contains_once(stack):
    tmp, env = stack["tmp"], stack["env"]
    w1 = Worker(env, tmp / "worker1.log", cwd=REPO).start()
    stack["workers"].append(w1)
    wait_for(deployment_ready, 90, "the respond deployment to be served")

    responder = Responder(ledger=stack["ledger"])
    report = responder.intake([EXAMPLE])
    slack_settings = {"channel": CHANNEL, "base_url": stack["slack_url"]}
    (submitted,) = list(responder.run_all(report, approval="slack", stand_ins=stack["aws"], slack=slack_settings))
    assert submitted["status"] == "awaiting_approval"
    run_id, case_id = submitted["flow_run_id"], submitted["case_id"]
    # submitting the same case again returns the same run (Prefect idempotency key = case ID)
    again = responder.submit(report.cases[0], cloud=stack["aws"].cloud_params(), slack=slack_settings)
    assert again["flow_run_id"] == run_id

    wait_for(lambda: flow_state(run_id) == "PAUSED", 120, "the run to suspend for approval")
    (message,) = stack["slack"].messages(CHANNEL)
    values = [json.loads(el["value"]) for b in message["blocks"] if b["type"] == "actions" for el in b["elements"]]
    assert {v["decision"] for v in values} == {"approve", "deny"}
    assert all(v["run_id"] == run_id and v["case_id"] == case_id for v in values)
    assert "iam:UpdateAccessKey" in json.dumps(message["blocks"])

    w1.kill()  # the runner dies while the run waits
    assert w1.proc.poll() is not None

    payload = block_actions_payload(message, CHANNEL, "cordon_approve", user_id="U0ALICE01", user_name="alice",
                                    response_url=stack["slack"].response_url(CHANNEL, message["ts"]))
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    # a forged click (wrong signature) is refused with 401 and recorded
    forged = httpx.post(f"{stack['cordon_url']}/slack/interactions", content=body,
                        headers={**slack_signed(body), "X-Slack-Signature": "v0=" + "0" * 64})
    assert forged.status_code == 401
    ok = httpx.post(f"{stack['cordon_url']}/slack/interactions", content=body, headers=slack_signed(body))
    assert ok.status_code == 200
    wait_for(lambda: flow_state(run_id) not in ("PAUSED", None), 30, "the run to leave PAUSED")

    w2 = Worker(env, tmp / "worker2.log", cwd=REPO).start()
    stack["workers"].append(w2)
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the resumed run to complete")

    iam = stack["aws"].clients("iam", account_id="111122223333")
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]}
    assert keys == {"AKIAEXAMPLEBUILDBOT9": "Inactive"}
    records = list(stack["ledger"].records(case_id=case_id))
    kinds = [r.kind for r in records]
    assert kinds.count("action.contained") == 1, kinds
    assert kinds.count("enrichment.completed") == 3, kinds  # not repeated on resume
    # the resumed run went on from the ledger: the pre-approval half and the ask ran once, and
    # were not even replayed from Prefect's result cache (each replay is a task run to record)
    names = wait_for(lambda: (lambda n: n if f"finish {case_id}" in n else None)(task_run_names(run_id)), 30,
                     "the run's task runs to be recorded")
    assert names.count(f"enrich, guard and plan {case_id}") == 1, names
    assert sum(n.startswith(f"ask {case_id}") for n in names) == 1, names
    assert kinds.count("approval.asked") == 1
    given = [r for r in records if r.kind == "approval.given"]
    assert len(given) == 1 and given[0].payload["approver"] == "slack:U0ALICE01"
    assert "verify.held" in kinds and kinds[-1] == "case.closed"
    assert stack["ledger"].verify().ok
    # the forged click was counted (unsigned refusals are tallied per window, not chained one by one)
    from cordon.audit.refusals import RefusalCounter

    assert RefusalCounter(stack["ledger"]).counts("slack") == {"bad_signature": 1}
    # the approval message was updated in place with the outcome
    final = stack["slack"].message(CHANNEL, message["ts"])
    assert final["history"] and "contained" in json.dumps(final["blocks"]).lower()
    # the decision buttons are gone; the key can be rolled back, so that button is offered
    buttons = [el["action_id"] for b in final["blocks"] if b["type"] == "actions" for el in b["elements"]]
    assert buttons == ["cordon_rollback"]
    # one update on the way to "verified" (Slack off the critical path): no "Containing" in between
    assert not any("Containing" in json.dumps(h["blocks"]) for h in final["history"])
    # and one thread reply behind it tells the story step by step
    (reply,) = [r["text"] for r in stack["slack"].replies(CHANNEL, message["ts"])]
    lines = reply.split("\n")
    assert lines[0] == "Approved by <@U0ALICE01>: containing."
    assert lines[1].startswith("aws.deactivate-access-key on ") and lines[1].endswith(": contained")
    assert lines[-1] == "Verified: 1 of 1 step(s) hold."


def test_webhook_joins_open_case_and_submits_new_ones(stack):
    w1 = Worker(stack["env"], stack["tmp"] / "worker.log", cwd=REPO).start()
    stack["workers"].append(w1)
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    url = f"{stack['cordon_url']}/webhook/detections"
    body = EXAMPLE.read_bytes()
    # the sandbox holds what the detection says exists (test set-up, as `cordon respond --sandbox` does)
    from cordon.config import load_config
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.sigma import RuleSet

    for det in detect(read_inputs([EXAMPLE]), RuleSet.load(load_config().rules_dir)):
        stack["aws"].seed_from_detection(det)
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(url, content=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    first = httpx.post(url, content=body, headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, timeout=60)
    assert first.status_code == 202, first.text
    (case,) = first.json()["cases"]
    assert case["playbook"] == "aws-access-key-created" and case["status"] == "awaiting_approval"
    # the GuardDuty finding on the same key joins that case: no second run
    gd = httpx.post(url, content=(REPO / "examples" / "guardduty-same-key.json").read_bytes(),
                    headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, timeout=60)
    assert gd.status_code == 202 and gd.json()["cases"] == [] and gd.json()["joined"] == [case["case_id"]]
    # garbage is refused record by record and kept
    bad = httpx.post(url, content=b'{"not": "a detection"}', headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert bad.status_code == 202 and "unrecognised record shape" in bad.json()["rejected"][0]
    assert [d["origin"] for d in stack["ledger"].dead_letters()][0].startswith("webhook")
    wait_for(lambda: flow_state(case["flow_run_id"]) == "PAUSED", 120, "the webhook's run to wait for approval")


@pytest.fixture
def edit_playbook(tmp_path, monkeypatch):
    """``edit(name, old, new)``: in the test's copy of the playbooks (:func:`cordon_config`, set as
    ``CORDON_CONFIG``, so workers started afterwards read it), replace ``old`` by ``new`` in
    playbook ``name``."""
    pbs = cordon_config(tmp_path, monkeypatch).parent / "playbooks"

    def edit(name: str, old: str, new: str) -> None:
        pb = pbs / name
        text = pb.read_text()
        assert old in text, f"{name} has no {old!r}"
        pb.write_text(text.replace(old, new))

    return edit


@pytest.fixture
def quorum_of_two(edit_playbook):
    """A configuration whose aws-access-key-created playbook needs two distinct approvals."""
    edit_playbook("aws-access-key-created.yaml", "  quorum: 1\n", "  quorum: 2\n")


def test_quorum_of_two_resumes_the_real_run_only_on_the_second_distinct_approver(quorum_of_two, stack):
    run_id, case_id = start_paused_case(stack)
    (message,) = stack["slack"].messages(CHANNEL)
    assert "Approvals 0 of 2" in json.dumps(message["blocks"])

    def click(user_id: str, user_name: str) -> None:
        current = stack["slack"].message(CHANNEL, message["ts"])
        payload = block_actions_payload(current, CHANNEL, "cordon_approve", user_id=user_id, user_name=user_name,
                                        response_url=stack["slack"].response_url(CHANNEL, message["ts"]))
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        resp = httpx.post(f"{stack['cordon_url']}/slack/interactions", content=body, headers=slack_signed(body))
        assert resp.status_code == 200, resp.text

    def votes() -> list:
        return [r for r in stack["ledger"].records(case_id=case_id) if r.kind == "approval.vote"]

    click("U0ALICE01", "alice")
    wait_for(lambda: len(votes()) == 1, 30, "alice's vote to be recorded")
    # one approval of two: the run still waits, and the message counts the vote
    assert flow_state(run_id) == "PAUSED"
    wait_for(lambda: "Approvals 1 of 2" in json.dumps(stack["slack"].message(CHANNEL, message["ts"])["blocks"]),
             30, "the message to show one approval of two")
    click("U0ALICE01", "alice")  # the same person again does not make two
    wait_for(lambda: any(r.kind == "approval.click_refused" for r in stack["ledger"].records(case_id=case_id)),
             30, "the repeated vote to be refused")
    assert len(votes()) == 1 and flow_state(run_id) == "PAUSED"

    click("U0BOB0002", "bob")
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the run to complete after the second approval")
    records = list(stack["ledger"].records(case_id=case_id))
    given = [r for r in records if r.kind == "approval.given"]
    assert len(given) == 1 and sorted(given[0].payload["approvers"]) == ["slack:U0ALICE01", "slack:U0BOB0002"]
    assert [r.kind for r in records].count("action.contained") == 1, [(r.kind, r.payload) for r in records][-8:]
    iam = stack["aws"].clients("iam", account_id="111122223333")
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]}
    assert keys == {"AKIAEXAMPLEBUILDBOT9": "Inactive"}
    assert stack["ledger"].verify().ok


def test_a_plan_the_state_outgrew_is_not_run_but_planned_and_asked_again(stack):
    """The plan was approved for a state that changed before containment: the key was already
    inactive when the run planned (nothing to call) and was re-activated before the click. The
    approved run calls nothing (``action.plan_changed``), tells Slack, and submits the next attempt,
    which plans from the state as it is now and asks in a new message; that approval contains it."""
    w = Worker(stack["env"], stack["tmp"] / "worker.log", cwd=REPO).start()
    stack["workers"].append(w)
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    ledger, aws, slack = stack["ledger"], stack["aws"], stack["slack"]
    responder = Responder(ledger=ledger)
    report = responder.intake([EXAMPLE])
    (ticket,) = report.cases
    aws.seed_from_detection(ticket.detection)
    iam = aws.clients("iam", account_id="111122223333")
    key = {"UserName": "build-bot", "AccessKeyId": "AKIAEXAMPLEBUILDBOT9"}
    iam.update_access_key(**key, Status="Inactive")  # someone deactivated it before Cordon planned
    slack_settings = {"channel": CHANNEL, "base_url": stack["slack_url"]}
    first = responder.submit(ticket, cloud=aws.cloud_params(), slack=slack_settings)
    case_id = first["case_id"]
    wait_for(lambda: flow_state(first["flow_run_id"]) == "PAUSED", 120, "the first run to ask")
    (message,) = slack.messages(CHANNEL)
    iam.update_access_key(**key, Status="Active")  # ... and it came back before the click

    def click(msg: dict) -> None:
        payload = block_actions_payload(msg, CHANNEL, "cordon_approve", user_id="U0ALICE01", user_name="alice",
                                        response_url=slack.response_url(CHANNEL, msg["ts"]))
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        assert httpx.post(f"{stack['cordon_url']}/slack/interactions", content=body,
                          headers=slack_signed(body)).status_code == 200

    click(message)
    wait_for(lambda: len(slack.messages(CHANNEL)) == 2, 180, "the second approval request")
    assert {r.kind for r in ledger.records(case_id=case_id)} >= {"action.plan_changed", "case.replan"}
    assert not list(ledger.records(case_id=case_id, kind_prefix="action.contained"))
    changed = next(ledger.records(case_id=case_id, kind_prefix="action.plan_changed")).payload
    assert changed["data"]["approved"] == [] and changed["data"]["now"][0]["operation"] == "UpdateAccessKey"
    old = slack.message(CHANNEL, message["ts"])
    assert "plans again" in " ".join(r["text"] for r in slack.replies(CHANNEL, message["ts"]))
    assert not [b for b in old["blocks"] if b["type"] == "actions"
                and any(el["action_id"] == "cordon_approve" for el in b["elements"])]
    second = next(m for m in slack.messages(CHANNEL) if m["ts"] != message["ts"])
    assert "iam:UpdateAccessKey" in json.dumps(second["blocks"])
    asked = list(ledger.records(case_id=case_id, kind_prefix="approval.asked"))
    assert len(asked) == 2 and asked[0].payload["plan_hash"] != asked[1].payload["plan_hash"]
    wait_for(lambda: flow_state(asked[1].run_id) == "PAUSED", 120, "the second run to wait")
    click(second)
    wait_for(lambda: ledger.case(case_id)["status"] == "contained", 180, "the case to be contained")
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]}
    assert keys == {"AKIAEXAMPLEBUILDBOT9": "Inactive"}
    kinds = [r.kind for r in ledger.records(case_id=case_id)]
    assert kinds.count("action.contained") == 1 and kinds.count("case.closed") == 1
