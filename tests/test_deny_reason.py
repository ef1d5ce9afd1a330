"""Deny asks for a reason (issue 11): a *Deny* click opens a Slack modal (``views.open`` on the
stand-in, with the click's ``trigger_id``); its ``view_submission`` is what records the Deny, through
the same decider (ledger order, case lock), with the reason in the ledger; a Deny that cannot get a
dialog is recorded with "no reason given"; a clicker whose Deny came too late is told who decided.

The world of ``tests/test_approval_policy.py``: one case waiting in the Slack stand-in, the real
decider and server (signed requests over HTTP), a real SQLite ledger, a paused-run stand-in that
validates the run input as Prefect would.
"""

from __future__ import annotations

import json
import urllib.parse

import httpx

from cordon.approvals.decide import wants_deny_reason
from cordon.sandbox.slack_standin import view_submission_payload
from cordon.server import create_app
from cordon.slack.blocks import DENY_CALLBACK_ID, REASON_BLOCK_ID
from tests.test_approval_policy import CHANNEL, World, world  # noqa: F401 - world is a fixture
from tests.test_server import SECRET, serve, sign, wait_for


class DialogServer:
    """Cordon's server for ``w`` as ``cordon serve`` wires it: Deny clicks open the reason dialog
    through the stand-in's ``views.open``."""

    def __init__(self, w: World):
        self.w = w
        self.decided: list = []
        decide = w.make_decider()

        def counted(ix):
            try:
                return decide(ix)
            finally:
                self.decided.append(ix)

        def open_view(trigger_id, view):
            w.client.views_open(trigger_id=trigger_id, view=view)

        self.server = serve(create_app(signing_secret=SECRET, ledger=w.ledger, decide=counted, open_view=open_view,
                                       wants_reason=lambda ix: wants_deny_reason(w.ledger, ix)))
        self.url = self.server.__enter__()

    def close(self) -> None:
        self.server.__exit__(None, None, None)

    def post(self, payload: dict) -> httpx.Response:
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return httpx.post(f"{self.url}/slack/interactions", content=body, headers=sign(body))

    def deny_click(self, user_id: str, *, trigger: bool = True) -> tuple[dict, str]:
        body, url = self.w.body(user_id, "cordon_deny")
        payload = json.loads(urllib.parse.parse_qs(body.decode())["payload"][0])
        if not trigger:
            payload.pop("trigger_id")
        assert self.post(payload).status_code == 200
        return payload, url

    def submit(self, view: dict, reason: str | None, user_id: str) -> httpx.Response:
        name = {"U0BOB0002": "bob", "U0CAROL03": "carol", "U0ALICE01": "alice"}[user_id]
        return self.post(view_submission_payload(view, {REASON_BLOCK_ID: reason}, user_id=user_id, user_name=name))


def claims(w: World) -> list:
    return [r for r in w.ledger.records(case_id=w.case_id) if r.kind == "approval.decision"]


def test_deny_opens_the_reason_dialog_and_its_submission_records_the_deny_with_the_reason(world):  # noqa: F811
    w = world()
    srv = DialogServer(w)
    try:
        click, url = srv.deny_click("U0BOB0002")
        # the dialog was opened with the click's trigger_id; nothing decided yet
        (opened,) = w.slack.views()
        view = opened["view"]
        assert opened["trigger_id"] == click["trigger_id"] and view["callback_id"] == DENY_CALLBACK_ID
        (reason_block,) = [b for b in view["blocks"] if b["type"] == "input"]
        assert reason_block["block_id"] == REASON_BLOCK_ID and not reason_block.get("optional")
        assert json.loads(view["private_metadata"])["case_id"] == w.case_id
        assert srv.decided == [] and claims(w) == [] and w.run.inputs == []
        assert "approval.deny_reason_asked" in w.kinds()

        # an empty (whitespace) reason is refused inside the dialog, nothing recorded
        answer = srv.submit(view, "   ", "U0BOB0002")
        assert answer.status_code == 200 and answer.json()["response_action"] == "errors"
        assert REASON_BLOCK_ID in answer.json()["errors"] and claims(w) == []

        reason = "release pipeline <!channel> rotated it & told us"
        assert srv.submit(view, reason, "U0BOB0002").status_code == 200
        assert wait_for(lambda: "approval.decision_received" in w.kinds())
        (claim,) = claims(w)
        assert claim.payload["decision"] == "deny" and claim.payload["approver"] == "slack:U0BOB0002"
        assert claim.payload["reason"] == reason
        (received,) = [r for r in w.ledger.records(case_id=w.case_id) if r.kind == "approval.decision_received"]
        assert received.payload["reason"] == reason and received.payload["decision_seq"] == claim.seq
        # Prefect gets the run input only (validated against ApprovalInput): the reason stays in the ledger
        ((_, run_input),) = w.run.inputs
        assert run_input["decision"] == "deny" and "reason" not in run_input
        assert w.slack.responses(url) == []  # accepted: nothing to tell
        assert w.ledger.verify().ok
    finally:
        srv.close()


def test_a_deny_submitted_after_another_decision_is_told_who_decided(world):  # noqa: F811
    w = world()
    srv = DialogServer(w)
    try:
        _, bob_url = srv.deny_click("U0BOB0002")
        _, carol_url = srv.deny_click("U0CAROL03")
        bob_view, carol_view = (v["view"] for v in w.slack.views())
        assert srv.submit(bob_view, "expected: CI key", "U0BOB0002").status_code == 200
        assert wait_for(lambda: "approval.decision_received" in w.kinds())
        assert srv.submit(carol_view, "me too", "U0CAROL03").status_code == 200
        assert wait_for(lambda: w.slack.responses(carol_url))
        (told,) = w.slack.responses(carol_url)
        assert told["text"] == "already decided: deny by <@U0BOB0002>" and told["response_type"] == "ephemeral"
        assert len(w.run.inputs) == 1 and w.slack.responses(bob_url) == []
        # a Deny click once decided opens no dialog: the clicker is told at once
        _, late_url = srv.deny_click("U0ALICE01")
        assert wait_for(lambda: w.slack.responses(late_url))
        assert w.slack.responses(late_url)[0]["text"] == "already decided: deny by <@U0BOB0002>"
        assert len(w.slack.views()) == 2
    finally:
        srv.close()


def test_a_deny_with_no_dialog_is_recorded_with_no_reason_given(world):  # noqa: F811
    # views.open fails (500 on every attempt, the SDK's retries included): the Deny is not lost
    w = world()
    srv = DialogServer(w)
    try:
        w.slack.fail_next("views.open", 500, times=5)
        srv.deny_click("U0BOB0002")
        assert wait_for(lambda: "approval.decision_received" in w.kinds())
        (claim,) = claims(w)
        assert claim.payload["reason"].startswith("no reason given (the reason dialog could not be opened: "
                                                  "views.open failed"), claim.payload
        assert "slack.views_open_failed" in w.kinds() and w.slack.views() == []
        assert w.run.inputs[0][1]["decision"] == "deny"
    finally:
        srv.close()
    # a click without a trigger_id (no dialog possible) on a fresh case
    w2 = world()
    srv2 = DialogServer(w2)
    try:
        srv2.deny_click("U0BOB0002", trigger=False)
        assert wait_for(lambda: "approval.decision_received" in w2.kinds())
        (claim,) = claims(w2)
        assert claim.payload["reason"] == ("no reason given (the reason dialog could not be opened: the click "
                                           "carried no trigger_id)")
    finally:
        srv2.close()


def test_a_server_without_a_slack_client_records_the_deny_at_once(world):  # noqa: F811
    """The World's own server has no ``open_view`` (no bot token): the Deny is decided at once."""
    w = world()
    assert w.click("U0BOB0002", "cordon_deny") is None
    (claim,) = claims(w)
    assert claim.payload["reason"] == "no reason given" and w.slack.views() == []
