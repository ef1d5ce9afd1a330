"""``/cordon`` and the run-a-playbook modal: Cordon's server under uvicorn on 127.0.0.1, requests
signed here the way Slack signs them, the Slack stand-in (``views.open``, ``users.info``,
``chat.postEphemeral``, response URLs) over real HTTP, a real ledger, real playbooks.

``start_run`` opens the manual case for real (:func:`cordon.manual.open_manual_case`) but does not
submit it to a Prefect deployment (that path is the webhook's, tested elsewhere); it can be held
on an event to show the acknowledgement does not wait for it."""

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
from cordon.engine import Responder
from cordon.manual import open_manual_case
from cordon.sandbox.slack_standin import SlackStandIn
from cordon.server import create_app
from cordon.slack.client import make_client
from cordon.slack.commands import CommandHandler

SECRET = "8f14e45fceea167a5a36dedd4bea2543-signing"
KEY = "AKIASLASHCOMMAND0001"


def sign(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    mac = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={mac}",
            "Content-Type": "application/x-www-form-urlencoded"}


@contextmanager
def serve(app):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Wait (not a timing assertion: a deadline for background work to show up) until truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Starter:
    """``start_run``: opens the manual case for real; optionally held until ``release``."""

    def __init__(self, responder: Responder, hold: bool = False):
        self.responder = responder
        self.called = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.calls: list[tuple[str, dict, dict]] = []
        if not hold:
            self.release.set()

    def __call__(self, playbook: str, params: dict, requested_by: dict) -> dict:
        self.calls.append((playbook, params, requested_by))
        self.called.set()
        self.release.wait(20)
        ticket = open_manual_case(self.responder, playbook, params, requested_by)
        self.done.set()
        return {"case_id": ticket.case_id, "status": "submitted", "playbook": playbook}


@pytest.fixture
def slack():
    with SlackStandIn() as s:
        yield s


@pytest.fixture
def responder(tmp_path):
    return Responder(ledger=Ledger(f"sqlite:///{tmp_path}/ledger.db"))


@pytest.fixture
def server(responder, slack):
    """``server(hold=False) -> (base URL, starter)``."""
    stack = []

    def start(hold: bool = False):
        starter = Starter(responder, hold=hold)
        handler = CommandHandler(ledger=responder.ledger, playbooks=responder.playbooks, start_run=starter,
                                 client=make_client("xoxb-test", base_url=slack.base_url))
        cm = serve(create_app(signing_secret=SECRET, ledger=responder.ledger, decide=lambda ix: None,
                              commands=handler))
        stack.append(cm)
        return cm.__enter__(), starter

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def command(base: str, text: str, slack: SlackStandIn, *, user_id: str = "U0CAROL03", ts: int | None = None,
            secret: str = SECRET) -> tuple[httpx.Response, str]:
    response_url = slack.response_url()
    form = {"token": "deprecated", "team_id": "T0CORDON1", "team_domain": "cordon", "channel_id": "C0ALERTS01",
            "channel_name": "security-alerts", "user_id": user_id, "user_name": "carol", "command": "/cordon",
            "text": text, "api_app_id": "A0CORDON01", "response_url": response_url,
            "trigger_id": f"{int(time.time())}.1234.{hashlib.md5(text.encode()).hexdigest()}"}
    body = urllib.parse.urlencode(form).encode()
    return httpx.post(f"{base}/slack/commands", content=body, headers=sign(body, ts, secret), timeout=10), response_url


def submit_view(base: str, view: dict, values: dict[str, str], *, user_id: str = "U0CAROL03") -> httpx.Response:
    """The ``view_submission`` Slack sends when ``user_id`` submits ``view`` filled with ``values``
    (block_id -> text; selects get ``selected_option``)."""
    state = {}
    for block in view["blocks"]:
        if block["type"] != "input":
            continue
        el = block["element"]
        value = values.get(block["block_id"])
        if el["type"] == "static_select":
            opt = next((o for o in el["options"] if o["value"] == value), None)
            state[block["block_id"]] = {"value": {"type": "static_select", "selected_option": opt}}
        else:
            state[block["block_id"]] = {"value": {"type": el["type"], "value": value}}
    payload = {"type": "view_submission", "team": {"id": "T0CORDON1", "domain": "cordon"},
               "user": {"id": user_id, "username": "carol", "name": "carol", "team_id": "T0CORDON1"},
               "api_app_id": "A0CORDON01", "trigger_id": "12345.98765.abcd",
               "view": {**view, "id": "V0123", "team_id": "T0CORDON1", "state": {"values": state}}}
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    return httpx.post(f"{base}/slack/interactions", content=body, headers=sign(body), timeout=10)


def test_help_answers_at_once_with_the_runnable_playbooks(server, slack, responder):
    base, starter = server()
    for text in ("help", ""):
        res, url = command(base, text, slack)
        assert res.status_code == 200 and res.json()["response_type"] == "ephemeral"
        assert "/cordon run PLAYBOOK key=value" in res.json()["text"]
        assert "`aws-access-key-created` access_key_id=… user_name=… account_id=…" in res.json()["text"]
        assert "aws-finding-triage" not in res.json()["text"]
    assert not starter.calls
    kinds = [r.kind for r in responder.ledger.records()]
    assert kinds == ["slack.command_received", "slack.command_received"]


def test_forged_and_stale_commands_get_401_and_a_record(server, slack, responder):
    base, starter = server()
    res, _ = command(base, "run aws-access-key-created", slack, secret="not-the-secret")
    assert res.status_code == 401 and res.json()["reason"] == "bad_signature"
    res, _ = command(base, "list", slack, ts=int(time.time()) - 600)
    assert res.status_code == 401 and res.json()["reason"] == "stale_timestamp"
    # unsigned refusals are counted per window (cordon.audit.refusals), not chained one by one
    from cordon.audit.refusals import RefusalCounter

    refused = [s for w in RefusalCounter(responder.ledger).windows("slack") for s in w.samples]
    assert sorted(p["reason"] for p in refused) == ["bad_signature", "stale_timestamp"]
    assert all(p["endpoint"] == "/slack/commands" for p in refused) and not starter.calls


def test_run_acknowledges_before_the_work_and_reports_after(server, slack, responder):
    base, starter = server(hold=True)
    res, url = command(base, f"run aws-access-key-created access_key_id={KEY} user_name=build-bot "
                             "account_id=111122223333", slack)
    # the answer came back while the run is still held: the work happens after the response
    assert res.status_code == 200 and "Starting `aws-access-key-created`" in res.json()["text"]
    assert not starter.done.is_set() and slack.responses(url) == []
    starter.release.set()
    (posted,) = wait_for(lambda: slack.responses(url), "the result on response_url")
    case_id = responder.ledger.cases()[0]["case_id"]
    assert posted["response_type"] == "ephemeral" and f"Case `{case_id}` opened" in posted["text"]
    playbook, params, who = starter.calls[0]
    assert playbook == "aws-access-key-created" and params == {"access_key_id": KEY, "user_name": "build-bot",
                                                               "account_id": "111122223333"}
    assert who == {"slack_user_id": "U0CAROL03", "email": "carol@example.com"}  # email from users.info
    (req,) = responder.ledger.records(case_id=case_id, kind_prefix="manual.requested")
    assert req.actor == "slack:U0CAROL03" and req.payload["requested_by"] == who
    assert json.loads(responder.ledger.case(case_id)["detection"])["raw"]["requested_by"] == who


def test_bad_parameters_are_told_at_once_naming_parameter_and_file(server, slack):
    base, starter = server()
    res, _ = command(base, "run aws-access-key-created access_key_id=AKIA-nope user_name=x account_id=1", slack)
    text = res.json()["text"]
    assert "aws-access-key-created.yaml" in text and "parameter 'access_key_id'" in text and "account_id" in text
    res, _ = command(base, "run no-such-playbook", slack)
    assert "no such playbook" in res.json()["text"] and "gcp-sa-key-created" in res.json()["text"]
    res, _ = command(base, "run aws-access-key-created access_key_id", slack)
    assert "expected key=value" in res.json()["text"]
    assert slack.views() == [] and not starter.calls


def test_missing_parameters_open_the_modal_built_from_the_schema(server, slack, responder):
    base, starter = server()
    res, _ = command(base, f"run aws-access-key-created access_key_id={KEY}", slack)
    assert "Opening the form" in res.json()["text"] and "user_name, account_id" in res.json()["text"]
    (opened,) = wait_for(slack.views, "views.open")
    view = opened["view"]
    assert opened["trigger_id"].endswith(hashlib.md5(f"run aws-access-key-created access_key_id={KEY}".encode())
                                         .hexdigest())
    assert view["type"] == "modal" and view["callback_id"] == "cordon_run"
    assert json.loads(view["private_metadata"]) == {"playbook": "aws-access-key-created", "channel_id": "C0ALERTS01"}
    inputs = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    pb = next(p for p in responder.playbooks if p.name == "aws-access-key-created")
    assert list(inputs) == [f"param:{n}" for n in pb.parameters]
    assert inputs["param:access_key_id"]["element"]["initial_value"] == KEY  # what the command gave
    assert "initial_value" not in inputs["param:user_name"]["element"]
    assert "^AKIA[A-Z0-9]{16}$" in inputs["param:access_key_id"]["hint"]["text"]
    assert all(b["optional"] is False for b in inputs.values())

    # submitted with errors: each field gets its own message, nothing starts
    bad = submit_view(base, view, {"param:access_key_id": "AKIA123", "param:user_name": "build-bot",
                                   "param:account_id": "12345"})
    assert bad.status_code == 200 and bad.json()["response_action"] == "errors"
    errors = bad.json()["errors"]
    assert set(errors) == {"param:access_key_id", "param:account_id"}
    assert "does not match ^AKIA[A-Z0-9]{16}$" in errors["param:access_key_id"]
    assert "does not match ^[0-9]{12}$" in errors["param:account_id"]
    assert not starter.calls
    (refused,) = responder.ledger.records(kind_prefix="manual.refused")
    assert set(refused.payload["errors"]) == {"access_key_id", "account_id"}

    # submitted right: the modal closes and the run starts; the outcome is posted ephemerally
    ok = submit_view(base, view, {"param:access_key_id": KEY, "param:user_name": "build-bot",
                                  "param:account_id": "111122223333"})
    assert ok.json() == {"response_action": "clear"}
    (note,) = wait_for(lambda: slack.ephemerals("C0ALERTS01"), "the ephemeral outcome")
    assert note["user"] == "U0CAROL03" and "opened for `aws-access-key-created`" in note["text"]
    assert starter.calls[0][1] == {"access_key_id": KEY, "user_name": "build-bot", "account_id": "111122223333"}


def test_run_alone_picks_a_playbook_then_its_form(server, slack):
    base, starter = server()
    res, _ = command(base, "run", slack)
    assert res.json()["text"] == "Opening the form…"
    (opened,) = wait_for(slack.views, "views.open")
    pick = opened["view"]
    assert pick["callback_id"] == "cordon_run_pick"
    options = [o["value"] for o in pick["blocks"][1]["element"]["options"]]
    assert "gcp-sa-key-created" in options and "aws-finding-triage" not in options
    res = submit_view(base, pick, {"playbook": "gcp-sa-key-created"})
    answer = res.json()
    assert answer["response_action"] == "update" and answer["view"]["callback_id"] == "cordon_run"
    assert [b["block_id"] for b in answer["view"]["blocks"] if b["type"] == "input"] == ["param:key_name"]
    assert not starter.calls


def test_status_and_list(server, slack, responder):
    base, _ = server()
    ticket = open_manual_case(responder, "aws-access-key-created",
                              {"access_key_id": KEY, "user_name": "build-bot", "account_id": "111122223333"},
                              {"cli_user": "oncall"})
    res, url = command(base, f"status {ticket.case_id}", slack)
    assert res.json()["text"] == f"Looking up {ticket.case_id}…"
    (status,) = wait_for(lambda: slack.responses(url), "status on response_url")
    assert f"*{ticket.case_id}* · *open* · playbook aws-access-key-created" in status["text"]
    assert "`manual.requested` by cli:oncall" in status["text"]

    res, url = command(base, "list", slack)
    (listing,) = wait_for(lambda: slack.responses(url), "list on response_url")
    assert "*1 open case(s)*" in listing["text"] and ticket.case_id in listing["text"]
    responder.ledger.set_case(ticket.case_id, status="contained")
    res, url = command(base, "list", slack)
    assert wait_for(lambda: slack.responses(url), "list")[0]["text"] == "No open cases."

    res, url = command(base, "status case-nope", slack)
    assert wait_for(lambda: slack.responses(url), "status")[0]["text"] == "No case `case-nope`."
    res, _ = command(base, "frobnicate", slack)
    assert "unknown subcommand `frobnicate`" in res.json()["text"]
