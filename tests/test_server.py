"""Cordon's server under uvicorn on 127.0.0.1, driven over real HTTP with httpx.

Slack requests are signed here exactly as Slack signs them (v0 HMAC-SHA256 over
``v0:{timestamp}:{body}``), independently of the code under test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.parse
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from cordon.audit.ledger import Ledger
from cordon.audit.refusals import RefusalCounter
from cordon.sandbox.slack_standin import SlackStandIn, block_actions_payload
from cordon.server import create_app
from cordon.slack.blocks import approval_blocks
from cordon.slack.client import make_client, post_approval
from cordon.slack.verify import DecisionOutcome, Interaction

SECRET = "e3b0c44298fc1c149afbf4c8996fb924-signing"
WEBHOOK_TOKEN = "cordon-webhook-token-0123456789"
RUN_ID = "9a7e0c7e-2f43-4d0b-9b4e-3c2f6b8d1a55"
CASE_ID = "case-00aa11bb22cc"
PLAN_HASH = hashlib.sha256(b"plan v1").hexdigest()


def sign(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    mac = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={mac}",
            "Content-Type": "application/x-www-form-urlencoded"}


def click_body(decision: str = "approve", *, response_url: str | None = "http://127.0.0.1:9/unused",
               user_id: str = "U0ALICE01", plan_hash: str = PLAN_HASH, payload_type: str = "block_actions") -> bytes:
    value = {"run_id": RUN_ID, "case_id": CASE_ID, "plan_hash": plan_hash, "decision": decision}
    payload = {
        "type": payload_type,
        "user": {"id": user_id, "username": "alice", "name": "alice", "team_id": "T0CORDON1"},
        "team": {"id": "T0CORDON1", "domain": "cordon"},
        "container": {"type": "message", "message_ts": "1714644930.000100", "channel_id": "C0APPROVALS"},
        "response_url": response_url,
        "actions": [{"action_id": f"cordon_{decision}", "block_id": "cordon_decision", "type": "button",
                     "value": json.dumps(value), "action_ts": "1714644931.123456"}],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


class Decider:
    """A real ``decide``: records each interaction and answers with a fixed outcome, optionally
    after waiting for ``release`` (to show the 200 does not wait for it)."""

    def __init__(self, outcome: DecisionOutcome = DecisionOutcome(True, "approved"), hold: bool = False,
                 error: Exception | None = None):
        self.outcome = outcome
        self.error = error
        self.calls: list[Interaction] = []
        self.called = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, interaction: Interaction) -> DecisionOutcome:
        self.calls.append(interaction)
        self.called.set()
        self.release.wait(10)
        if self.error is not None:
            raise self.error
        return self.outcome


@contextmanager
def serve(app):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path}/l.db")


@pytest.fixture
def run_server(ledger):
    """``run_server(decide=..., webhook_token=..., on_detections=...)`` -> base URL."""
    stack = []

    def start(decide=None, **kwargs):
        cm = serve(create_app(signing_secret=SECRET, ledger=ledger, decide=decide or Decider(), **kwargs))
        stack.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def records(ledger: Ledger, kind: str):
    return [r for r in ledger.records() if r.kind == kind]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# -- Slack interactivity ----------------------------------------------------------------------
def test_signed_click_reaches_decide(run_server, ledger):
    decider = Decider()
    url = run_server(decide=decider)
    body = click_body("approve")
    r = httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body))
    assert r.status_code == 200 and r.content == b""
    assert decider.called.wait(10)
    [it] = decider.calls
    assert it == Interaction(decision="approve", user_id="U0ALICE01", user_name="alice", team_id="T0CORDON1",
                             run_id=RUN_ID, case_id=CASE_ID, plan_hash=PLAN_HASH, channel="C0APPROVALS",
                             message_ts="1714644930.000100", response_url="http://127.0.0.1:9/unused",
                             action_ts="1714644931.123456")
    [rec] = records(ledger, "slack.interaction_received")
    assert rec.case_id == CASE_ID and rec.run_id == RUN_ID and rec.actor == "slack:T0CORDON1/U0ALICE01"
    assert rec.payload["decision"] == "approve" and "response_url" not in rec.payload
    assert records(ledger, "slack.request_refused") == []
    assert ledger.verify().ok


def test_answers_before_decide_finishes(run_server):
    decider = Decider(hold=True)
    url = run_server(decide=decider)
    body = click_body("deny")
    started = time.monotonic()
    try:
        r = httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body), timeout=3.0)
        elapsed = time.monotonic() - started
        assert r.status_code == 200 and elapsed < 3.0
        assert decider.called.wait(10)  # decide runs (and is still running) after the 200
        assert not decider.release.is_set()
    finally:
        decider.release.set()
    assert decider.calls[0].decision == "deny"


@pytest.mark.parametrize(("case", "reason"), [
    ("wrong_secret", "bad_signature"),
    ("stale", "stale_timestamp"),
    ("future", "stale_timestamp"),
    ("tampered", "bad_signature"),
    ("no_signature", "missing_header"),
    ("no_timestamp", "missing_header"),
    ("no_headers", "missing_header"),
])
def test_unverified_requests_are_refused(run_server, ledger, case, reason):
    decider = Decider()
    url = run_server(decide=decider)
    body = click_body("approve")
    headers = sign(body)
    if case == "wrong_secret":
        headers = sign(body, secret="not-the-secret")
    elif case == "stale":
        headers = sign(body, ts=int(time.time()) - 6 * 60)
    elif case == "future":
        headers = sign(body, ts=int(time.time()) + 6 * 60)
    elif case == "tampered":
        # A captured, correctly signed request replayed with one field changed.
        body = body.replace(PLAN_HASH.encode(), hashlib.sha256(b"plan v2").hexdigest().encode())
        assert body != click_body("approve")
    elif case == "no_signature":
        del headers["X-Slack-Signature"]
    elif case == "no_timestamp":
        del headers["X-Slack-Request-Timestamp"]
    elif case == "no_headers":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(f"{url}/slack/interactions", content=body, headers=headers)
    assert r.status_code == 401
    assert r.json()["reason"] == reason
    # counted (unsigned: anyone can send it), not chained one by one
    assert records(ledger, "slack.request_refused") == []
    [window] = RefusalCounter(ledger).windows("slack")
    assert (window.reason, window.count, window.summary_seq) == (reason, 1, None)
    [sample] = window.samples
    assert sample["remote"] == "127.0.0.1" and sample["endpoint"] == "/slack/interactions"
    assert sample["timestamp_header"] == headers.get("X-Slack-Request-Timestamp")
    time.sleep(0.2)  # nothing runs in the background either
    assert decider.calls == []
    assert records(ledger, "slack.interaction_received") == []
    # once the window has ended, one chained record says how many and why
    [summary] = RefusalCounter(ledger).close_due(now=time.time() + 120)
    assert summary.kind == "slack.refusals" and summary.payload["by_reason"] == {reason: 1}
    assert summary.payload["count"] == 1 and summary.payload["samples"][0]["remote"] == "127.0.0.1"
    assert RefusalCounter(ledger).windows("slack")[0].summary_seq == summary.seq
    assert ledger.verify().ok


def test_refusal_is_posted_ephemerally_to_response_url(run_server, ledger):
    """The full loop: message posted to the Slack stand-in, a click built from it, signed,
    refused by decide, and the refusal arrives at the stand-in's response_url."""
    with SlackStandIn() as slack:
        client = make_client("xoxb-test", base_url=slack.base_url)
        blocks = approval_blocks(CASE_ID, "aws-access-key-persistence", {"event_name": "CreateAccessKey"}, {},
                                 [{"action": "aws.deactivate-access-key", "target": "AKIA1",
                                   "calls": ["iam:UpdateAccessKey(AccessKeyId=AKIA1, Status=Inactive)"]}],
                                 PLAN_HASH, RUN_ID, None)
        channel, ts = post_approval(client, "security-approvals", blocks, "approval needed")
        response_url = slack.response_url(channel, ts)
        payload = block_actions_payload(slack.message(channel, ts), channel, "cordon_approve", user_id="U0BOB0002",
                                        user_name="bob", response_url=response_url)
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()

        message = "The plan changed since this message was posted; nothing was done."
        decider = Decider(DecisionOutcome(False, message))
        url = run_server(decide=decider)
        slack.fail_next("response", status=503)  # the library's retry covers a 5xx from Slack
        r = httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body))
        assert r.status_code == 200

        assert wait_for(lambda: slack.responses(response_url))
        assert slack.responses(response_url) == [
            {"response_type": "ephemeral", "replace_original": False, "text": message}]
        assert [r.status for r in slack.requests_for("response")] == [503, 200]
        # The clicker was told; the approval message itself is untouched.
        assert slack.message(channel, ts)["blocks"] == blocks
        [it] = decider.calls
        assert (it.user_id, it.decision, it.plan_hash, it.message_ts) == ("U0BOB0002", "approve", PLAN_HASH, ts)
        assert wait_for(lambda: records(ledger, "slack.refusal_notified"))
        [rec] = records(ledger, "slack.refusal_notified")
        assert rec.payload["status"] == 200 and rec.case_id == CASE_ID


def test_accepted_decision_posts_nothing(run_server, ledger):
    with SlackStandIn() as slack:
        response_url = slack.response_url()
        decider = Decider(DecisionOutcome(True, "approved"))
        url = run_server(decide=decider)
        body = click_body("approve", response_url=response_url)
        assert httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body)).status_code == 200
        assert decider.called.wait(10)
        time.sleep(0.3)
        assert slack.responses(response_url) == []
        assert records(ledger, "slack.refusal_notified") == []


def test_decide_raising_is_recorded_and_told(run_server, ledger):
    with SlackStandIn() as slack:
        response_url = slack.response_url()
        url = run_server(decide=Decider(error=RuntimeError("prefect unreachable")))
        body = click_body("approve", response_url=response_url)
        assert httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body)).status_code == 200
        assert wait_for(lambda: slack.responses(response_url))
        assert "internal error" in slack.responses(response_url)[0]["text"]
        assert slack.responses(response_url)[0]["response_type"] == "ephemeral"
        [rec] = records(ledger, "slack.decide_failed")
        assert rec.payload["error"] == "RuntimeError: prefect unreachable"


def test_other_payload_types_are_ignored(run_server, ledger):
    decider = Decider()
    url = run_server(decide=decider)
    body = click_body(payload_type="view_submission")
    r = httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body))
    assert r.status_code == 200
    [rec] = records(ledger, "slack.interaction_ignored")
    assert rec.payload["payload_type"] == "view_submission"
    time.sleep(0.2)
    assert decider.calls == []


def test_signed_but_malformed_is_400(run_server, ledger):
    decider = Decider()
    url = run_server(decide=decider)
    body = urllib.parse.urlencode({"payload": json.dumps({"type": "block_actions", "user": {"id": "U1"}})}).encode()
    r = httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body))
    assert r.status_code == 400 and "user.username" in r.json()["error"]
    [rec] = records(ledger, "slack.interaction_malformed")
    assert rec.payload["field"] == "user.username"
    assert decider.calls == []


def test_oversized_body_is_refused(run_server, ledger):
    url = run_server()
    body = b"payload=" + b"x" * (1024 * 1024 + 10)
    r = httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body))
    assert r.status_code == 413
    assert RefusalCounter(ledger).counts("slack") == {"too_large": 1}
    assert records(ledger, "slack.request_refused") == []


# -- detection webhook ------------------------------------------------------------------------
class Intake:
    def __init__(self):
        self.calls: list[tuple[bytes, str]] = []

    def __call__(self, body: bytes, origin: str) -> dict:
        self.calls.append((body, origin))
        return {"accepted": len(json.loads(body)["Records"]), "origin": origin}


EVENTS = json.dumps({"Records": [{"eventName": "CreateAccessKey"}, {"eventName": "CreateUser"}]}).encode()


def test_webhook_requires_the_token(run_server, ledger):
    intake = Intake()
    url = run_server(webhook_token=WEBHOOK_TOKEN, on_detections=intake)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {WEBHOOK_TOKEN}"},
                    {"Authorization": f"Bearer {WEBHOOK_TOKEN}x"}):
        r = httpx.post(f"{url}/webhook/detections", content=EVENTS, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert intake.calls == []
    assert records(ledger, "webhook.request_refused") == []
    counter = RefusalCounter(ledger)
    assert counter.counts("webhook") == {"no_bearer": 1, "wrong_bearer": 3}
    samples = [s for w in counter.windows("webhook") for s in w.samples]
    assert sorted(s["detail"] for s in samples) == ["missing Authorization header"] + ["wrong bearer token"] * 3
    [summary] = counter.close_due(now=time.time() + 120)
    assert summary.kind == "webhook.refusals" and summary.payload["count"] == 4
    assert WEBHOOK_TOKEN not in json.dumps(samples) and WEBHOOK_TOKEN not in json.dumps(summary.payload)


def test_webhook_with_the_token_passes_the_body(run_server):
    intake = Intake()
    url = run_server(webhook_token=WEBHOOK_TOKEN, on_detections=intake)
    r = httpx.post(f"{url}/webhook/detections", content=EVENTS,
                   headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 202
    assert r.json() == {"accepted": 2, "origin": "webhook:127.0.0.1"}
    assert intake.calls == [(EVENTS, "webhook:127.0.0.1")]


def test_webhook_disabled_without_a_token(run_server):
    intake = Intake()
    url = run_server(on_detections=intake)
    r = httpx.post(f"{url}/webhook/detections", content=EVENTS, headers={"Authorization": "Bearer anything"})
    assert r.status_code == 503
    assert intake.calls == []


def test_webhook_handler_failure_is_500_and_recorded(run_server, ledger):
    def broken(body: bytes, origin: str) -> dict:
        raise ValueError("cannot parse")

    url = run_server(webhook_token=WEBHOOK_TOKEN, on_detections=broken)
    r = httpx.post(f"{url}/webhook/detections", content=b"{}", headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert r.status_code == 500
    assert records(ledger, "webhook.failed")[0].payload["error"] == "ValueError: cannot parse"


def test_healthz(run_server):
    url = run_server()
    r = httpx.get(f"{url}/healthz")
    assert r.status_code == 200 and r.json() == {"ok": True}


def test_create_app_needs_a_secret(ledger):
    with pytest.raises(ValueError):
        create_app(signing_secret="  ", ledger=ledger, decide=Decider())
