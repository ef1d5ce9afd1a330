"""The Slack approval policy end to end over real HTTP: who may approve, quorum, no self-approval,
expiry, replays, a changed plan, escalation, the Roll back button, and 429 handling.

Real parts: Cordon's server (uvicorn on 127.0.0.1) with the real decider
(:func:`cordon.approvals.decide.make_decider`), the Slack stand-in serving the Web API to the real
``slack_sdk.WebClient`` (messages, ``users.info``, ``usergroups.users.list``, response URLs),
clicks built from the posted message and signed the way Slack signs them, the AWS sandbox (moto)
for the plan and the rollback, a SQLite ledger. The one stand-in is Prefect's ``resume_flow_run``
(:class:`PausedRun`: validates the input against the flow's ``ApprovalInput`` schema and refuses a
second resume as Prefect does); ``tests/test_sweeper.py`` resumes a real suspended run.
Time is a settable clock, never a sleep.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from cordon.approvals import outbox
from cordon.approvals.decide import make_decider, parse_time, post_request, request_state
from cordon.approvals.expiry import sweep
from cordon.approvals.outbox import Outbox
from cordon.approvals.policy import (
    SlackDirectory,
    identity_forms,
    load_settings,
    policy_for,
    principal_names,
    self_approval_reason,
)
from cordon.audit.ledger import Ledger
from cordon.clouds import clients_for
from cordon.config import ConfigError, load_config
from cordon.engine import Responder
from cordon.respond import build_plan, run_step
from cordon.sandbox.slack_standin import SlackStandIn, block_actions_payload
from cordon.server import create_app
from cordon.slack.blocks import summary_blocks
from cordon.slack.client import make_client
from tests.helpers import one_credential
from tests.test_server import SECRET, serve, sign, wait_for

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudtrail-create-access-key.json"
RUN_ID = "0b9f3c1e-7d2a-4c55-9e61-2f8a7b6c5d40"
CHANNEL = "C0APPROVALS"
T0 = datetime(2026, 11, 20, 3, 20, tzinfo=UTC)

#: Slack users of this workspace. Mallory is the actor of the example detection (matched by her
#: profile e-mail); Dave is mapped explicitly to the target principal build-bot; Carol approves only
#: through the user group S0SECOPS01; Erin is on call (the escalation target); Eve is nobody.
USERS = [
    {"id": "U0ALICE01", "name": "alice", "profile": {"email": "alice@example.com"}},
    {"id": "U0BOB0002", "name": "bob", "profile": {"email": "bob@example.com"}},
    {"id": "U0CAROL03", "name": "carol", "profile": {"email": "carol@example.com"}},
    {"id": "U0MALLORY", "name": "m.sec", "profile": {"email": "Mallory@example.com"}},
    {"id": "U0DAVE004", "name": "dave", "profile": {"email": "dave@example.com"}},
    {"id": "U0ERIN005", "name": "erin", "profile": {"email": "erin@example.com"}},
    {"id": "U0EVE0006", "name": "eve", "profile": {"email": "eve@example.com"}},
]
GROUPS = {"S0SECOPS01": ["U0CAROL03"], "S0ONCALL01": ["U0ERIN005"]}


class Clock:
    """A settable clock: ``now()`` for the decider and sweeper, ``monotonic()`` for caches."""

    def __init__(self, at: datetime):
        self.at = at

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()

    def advance(self, **kw) -> None:
        self.at += timedelta(**kw)


class PausedRun:
    """Prefect's side of ``resume_flow_run`` for one suspended run: the input must validate against
    ``cordon.flows.respond.ApprovalInput`` (as the Prefect server validates it), and a run that was
    already resumed is not paused any more (Prefect raises ``NotPausedError``)."""

    def __init__(self):
        self.inputs: list[tuple[str, dict]] = []

    def __call__(self, run_id: str, run_input: dict) -> None:
        from cordon.flows.respond import ApprovalInput

        if self.inputs:
            raise RuntimeError(f"Flow run {run_id} is not paused.")
        ApprovalInput.model_validate(run_input)
        self.inputs.append((run_id, run_input))


def write_config(tmp: Path, approval: dict, global_approval: dict) -> Path:
    """A config folder: the shipped rules and the access-key playbook with ``approval`` replaced."""
    (tmp / "playbooks").mkdir(parents=True)
    book = yaml.safe_load((REPO / "cordon" / "defaults" / "playbooks" / "aws-access-key-created.yaml").read_text())
    book["approval"] = approval
    (tmp / "playbooks" / "aws-access-key-created.yaml").write_text(yaml.safe_dump(book, sort_keys=False))
    # one case waiting for approval: the example's actor (mallory's key) would be a second case of
    # the same incident and change every message and plan this module reads (tests.helpers.one_credential)
    base = one_credential(yaml.safe_load((REPO / "cordon" / "defaults" / "cordon.yaml").read_text()))
    base.update(playbooks=str(tmp / "playbooks"), approval=global_approval)
    base.pop("rules", None)  # the providers' shipped rules
    (tmp / "cordon.yaml").write_text(yaml.safe_dump(base))
    return tmp


GLOBAL = {"approvers": {"users": ["U0ALICE01", "U0BOB0002", "U0MALLORY", "U0DAVE004"], "groups": ["S0SECOPS01"]},
          "identities": {"U0DAVE004": ["arn:aws:iam::111122223333:user/build-bot"]}}


class World:
    """One case waiting for approval in Slack, and Cordon's server to click at."""

    def __init__(self, tmp: Path, aws, approval: dict, severity: str | None = None, requested_by=None,
                 global_approval: dict | None = None, directory: bool = True):
        self.clock = Clock(T0)
        self.slack = SlackStandIn(users=USERS, usergroups=GROUPS)
        self.slack.start()
        self.client = make_client("xoxb-test", base_url=self.slack.base_url)
        self.config = load_config(write_config(tmp / "config", approval,
                                               GLOBAL if global_approval is None else global_approval))
        self.ledger = Ledger(f"sqlite:///{tmp}/ledger.db")
        # part B's outbox, in this test's database, without the per-channel pacing (no sleeps here)
        self.outbox = Outbox(self.ledger.url, post_interval=0, update_interval=0)
        self.responder = Responder(config=self.config, ledger=self.ledger)
        (self.ticket,) = self.responder.intake([EXAMPLE]).cases
        det = self.ticket.detection
        updates = {}
        if severity:
            updates["severity"] = severity
        if requested_by:
            updates["raw"] = {**det.raw, "requested_by": requested_by}
        if updates:
            det = det.model_copy(update=updates)
            self.ledger.set_case(self.ticket.case_id, detection=det.model_dump_json())
        self.detection = det
        self.case_id = self.ticket.case_id
        aws.seed_from_detection(det)
        self.clients = clients_for("aws", Responder.cloud_for(self.ticket, aws.cloud_params()))
        self.playbook = self.ticket.playbook
        self.plan = build_plan(self.case_id, self.playbook, det, self.clients, {})
        self.ledger.set_case(self.case_id, flow_run_id=RUN_ID, plan_hash=self.plan.hash)
        self.ledger.append("plan.created", self.plan.model_dump(), case_id=self.case_id, run_id=RUN_ID)
        self.asked = post_request(self.ledger, self.client, config=self.config, playbook=self.playbook,
                                  case_id=self.case_id, run_id=RUN_ID, detection=det, enrichment={},
                                  plan=self.plan.model_dump(), channel="security-approvals", now=self.clock.now(),
                                  outbox=self.outbox)
        self.ts = self.asked["ts"]
        self.run = PausedRun()
        # directory=False: a server without a Slack bot token (no users.info, no user groups)
        self.directory = SlackDirectory(self.client, ttl=60, clock=self.clock.monotonic) if directory else None
        self.decided: list = []
        decide = self.make_decider()

        def counted(ix):
            try:
                return decide(ix)
            finally:
                self.decided.append(ix)

        self.server = serve(create_app(signing_secret=SECRET, ledger=self.ledger, decide=counted))
        self.url = self.server.__enter__()

    def make_decider(self, resume=None, **kw):
        """A decider on this world's ledger (another replica of Cordon's server when called again);
        ``kw`` goes to :func:`make_decider` (``directories``)."""
        return make_decider(self.ledger, self.config, resume=resume or self.run,
                            slack_client=self.client if self.directory is not None else None,
                            directory=self.directory, now=self.clock.now, rollback=self.rollback,
                            outbox=self.outbox, **kw)

    def rollback(self, case_id: str, who: str) -> list[dict]:
        return self.responder.rollback(case_id, self.clients, who)

    def close(self) -> None:
        self.server.__exit__(None, None, None)
        self.slack.stop()

    def message(self) -> dict:
        return self.slack.message(CHANNEL, self.ts)

    def body(self, user_id: str, action_id: str = "cordon_approve", message: dict | None = None) -> tuple[bytes, str]:
        """A click on ``message`` (default: the message as it is now), signed later by :meth:`post`."""
        user = next(u for u in USERS if u["id"] == user_id)
        url = self.slack.response_url(CHANNEL, self.ts)
        payload = block_actions_payload(message or self.message(), CHANNEL, action_id, user_id=user_id,
                                        user_name=user["name"], response_url=url)
        return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode(), url

    def post(self, body: bytes) -> httpx.Response:
        return httpx.post(f"{self.url}/slack/interactions", content=body, headers=sign(body))

    def click(self, user_id: str, action_id: str = "cordon_approve", message: dict | None = None) -> str | None:
        """Click, wait for the decision; returns the ephemeral refusal shown to the clicker, or None."""
        body, url = self.body(user_id, action_id, message)
        n = len(self.decided)
        refusals = len(list(self.ledger.records(kind_prefix="approval.click_refused")))
        assert self.post(body).status_code == 200
        assert wait_for(lambda: len(self.decided) > n)
        if len(list(self.ledger.records(kind_prefix="approval.click_refused"))) > refusals:
            assert wait_for(lambda: self.slack.responses(url)), "the refusal was not posted to the response_url"
            (answer,) = self.slack.responses(url)
            assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
            return answer["text"]
        return None

    def kinds(self, prefix: str = "") -> list[str]:
        return [r.kind for r in self.ledger.records(case_id=self.case_id) if r.kind.startswith(prefix)]


@pytest.fixture
def world(tmp_path, aws):
    made: list[World] = []

    def make(approval: dict | None = None, **kw) -> World:
        w = World(tmp_path / f"w{len(made)}", aws, approval or {"required": True, "expire_after": "4h"}, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def text_of(blocks) -> str:
    return json.dumps(blocks, ensure_ascii=False)


# -- quorum -----------------------------------------------------------------------------------
def test_quorum_of_two_for_a_critical_detection(world):
    w = world(severity="critical")
    assert w.asked["quorum"] == 2
    assert "Approvals 0 of 2" in text_of(w.message()["blocks"])

    assert w.click("U0ALICE01") is None
    assert w.run.inputs == []  # one approval is not enough
    [vote] = [r for r in w.ledger.records(case_id=w.case_id) if r.kind == "approval.vote"]
    assert vote.payload == {"plan_hash": w.plan.hash, "user_id": "U0ALICE01", "approver": "slack:U0ALICE01",
                                 "user_name": "alice", "count": 1, "quorum": 2}
    msg = w.message()
    assert "Approvals 1 of 2* (<@U0ALICE01>)" in text_of(msg["blocks"]) and msg["history"]
    assert any(b["type"] == "actions" for b in msg["blocks"])  # still waiting: buttons stay
    assert [r["text"] for r in w.slack.replies(CHANNEL, w.ts)] == ["Approval 1 of 2 by <@U0ALICE01>"]

    # the same approver twice does not make two
    assert "already approved" in w.click("U0ALICE01")
    assert w.run.inputs == []

    assert w.click("U0BOB0002") is None
    [(run_id, run_input)] = w.run.inputs
    assert run_id == RUN_ID and run_input["decision"] == "approve" and run_input["quorum"] == 2
    assert run_input["approvers"] == ["slack:U0ALICE01", "slack:U0BOB0002"]
    assert run_input["plan_hash"] == w.plan.hash
    # the settling approval is claimed first, then resumes the run (ledger order decides between replicas)
    assert w.kinds("approval.") == ["approval.asked", "approval.vote", "approval.click_refused", "approval.vote",
                                    "approval.decision", "approval.decision_received"]
    [claim] = w.ledger.records(kind_prefix="approval.decision_received")
    assert claim.payload["resumed"] is True and claim.payload["status"] == "ACCEPT"
    assert w.ledger.verify().ok
    # decided: a third click is refused and told why
    assert "already decided: approve" in w.click("U0CAROL03")


def test_quorum_is_one_by_default_and_the_playbook_can_raise_it(world):
    w = world()
    assert w.asked["quorum"] == 1
    assert w.click("U0BOB0002") is None
    assert w.run.inputs[0][1]["approvers"] == ["slack:U0BOB0002"]
    settings = load_settings(w.config)
    from cordon.playbooks.schema import Approval

    assert policy_for(settings, Approval(quorum=3), "low").quorum == 3
    assert policy_for(settings, Approval(), "critical").quorum == 2
    assert policy_for(settings, Approval(quorum=1), "critical").quorum == 1


def test_deny_from_any_allowed_approver_ends_it(world):
    w = world(severity="critical")
    assert w.click("U0ALICE01") is None
    assert w.run.inputs == []
    assert w.click("U0BOB0002", "cordon_deny") is None
    [(_, run_input)] = w.run.inputs
    assert run_input["decision"] == "deny" and run_input["approver"] == "slack:U0BOB0002"
    assert run_input["approvers"] == ["slack:U0BOB0002"]
    assert "already decided: deny" in w.click("U0CAROL03")


# -- who may decide ---------------------------------------------------------------------------
def test_actor_refused_through_the_slack_profile_email(world):
    w = world()
    # U0MALLORY is an allowed approver, but her Slack e-mail Mallory@example.com names the IAM user
    # arn:aws:iam::111122223333:user/mallory who created the key.
    reason = w.click("U0MALLORY")
    assert reason and "no self-approval" in reason and "mallory" in reason
    reason = w.click("U0MALLORY", "cordon_deny")
    assert reason and "no self-approval" in reason
    assert w.run.inputs == []
    assert [r.payload["user_id"] for r in w.ledger.records(kind_prefix="approval.click_refused")] == \
           ["U0MALLORY", "U0MALLORY"]
    assert w.slack.requests_for("users.info")  # the e-mail came from Slack


def test_target_refused_through_the_explicit_identity_mapping(world):
    w = world()
    reason = w.click("U0DAVE004")  # mapped in config to arn:...:user/build-bot, the target
    assert reason and "no self-approval" in reason and "build-bot" in reason
    assert w.run.inputs == []


@pytest.mark.parametrize("requested_by", [{"slack_user_id": "U0ALICE01"}, {"email": "ALICE@example.com"},
                                          {"cli_user": "alice"}])
def test_who_requested_a_manual_run_cannot_approve_it(world, requested_by):
    w = world(requested_by=requested_by)
    reason = w.click("U0ALICE01")
    assert reason and "you requested this run" in reason
    assert w.run.inputs == []
    assert w.click("U0BOB0002") is None  # anyone else allowed still can
    assert w.run.inputs[0][1]["approvers"] == ["slack:U0BOB0002"]


def test_non_approver_refused(world):
    w = world()
    reason = w.click("U0EVE0006")
    assert reason == "<@U0EVE0006> is not an approver for this playbook"
    assert w.run.inputs == []
    [rec] = w.ledger.records(kind_prefix="approval.click_refused")
    assert rec.actor == "slack:U0EVE0006" and rec.payload["plan_hash"] == w.plan.hash


def test_user_group_member_accepted_and_groups_cached_briefly(world):
    w = world()
    assert w.click("U0CAROL03") is None  # only through S0SECOPS01
    assert w.run.inputs[0][1]["approvers"] == ["slack:U0CAROL03"]
    [req] = w.slack.requests_for("usergroups.users.list")
    assert req.body["usergroup"] == "S0SECOPS01" and req.headers["authorization"] == "Bearer xoxb-test"
    # within the TTL the answer is reused; after it, Slack is asked again and a removal is seen
    w.slack.set_usergroup("S0SECOPS01", [])
    assert w.directory.group_members("S0SECOPS01") == {"U0CAROL03"}
    w.clock.advance(seconds=61)
    assert w.directory.group_members("S0SECOPS01") == frozenset()
    assert len(w.slack.requests_for("usergroups.users.list")) == 2


# -- stale, replayed, changed -----------------------------------------------------------------
def test_expired_request_refused(world):
    w = world({"required": True, "expire_after": "30m"})
    w.clock.advance(minutes=30)
    reason = w.click("U0ALICE01")
    assert reason == "this approval request expired at 2026-11-20T03:50:00+00:00"
    assert w.run.inputs == []


def test_replayed_request_refused_with_401(world):
    w = world({"required": True, "quorum": 2})
    body, _ = w.body("U0ALICE01")
    assert w.post(body).status_code == 200
    assert wait_for(lambda: len(w.decided) == 1)
    again = w.post(body)  # the same signed body, still within Slack's five minutes
    assert again.status_code == 401 and again.json()["reason"] == "replayed"
    [refused] = w.ledger.records(kind_prefix="slack.request_refused")
    assert refused.payload["reason"] == "replayed" and refused.payload["user_id"] == "U0ALICE01"
    assert refused.case_id == w.case_id
    time.sleep(0.2)  # nothing is decided in the background either
    assert len(w.decided) == 1
    assert [r.payload["count"] for r in w.ledger.records(kind_prefix="approval.vote")] == [1]
    # a new click by the same person is a new interaction (new trigger_id and action_ts): refused for
    # the vote, not as a replay
    assert "already approved" in w.click("U0ALICE01")


def test_forged_request_401_and_recorded(world):
    w = world()
    body, _ = w.body("U0ALICE01")
    r = httpx.post(f"{w.url}/slack/interactions", content=body,
                   headers={**sign(body), "X-Slack-Signature": "v0=" + "0" * 64})
    assert r.status_code == 401
    from cordon.audit.refusals import RefusalCounter  # unsigned: counted per window, not chained one by one

    assert RefusalCounter(w.ledger).counts("slack") == {"bad_signature": 1}
    assert w.decided == []


def test_changed_plan_refused(world):
    w = world()
    w.ledger.set_case(w.case_id, plan_hash="f" * 64)  # the run re-planned since the message was posted
    reason = w.click("U0ALICE01")
    assert reason == "the containment plan changed since this message was posted; decide on the new one"
    assert w.run.inputs == []


# -- escalation and reminders (the sweeper, with the clock set) -------------------------------
def test_escalation_fires_after_its_delay_and_lets_the_oncall_approve(world):
    w = world({"required": True, "expire_after": "4h", "remind_every": "30m", "escalate_after": "1h",
               "escalate_to": "S0ONCALL01"})
    assert "is not an approver" in w.click("U0ERIN005")  # not yet escalated
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=T0 + timedelta(minutes=29), resume=w.run) == []
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=T0 + timedelta(minutes=30), resume=w.run) == [
        {"case_id": w.case_id, "event": "reminded", "n": 1}]
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=T0 + timedelta(minutes=59), resume=w.run) == []
    events = sweep(w.ledger, w.client, outbox=w.outbox, now=T0 + timedelta(minutes=60), resume=w.run)
    assert events == [{"case_id": w.case_id, "event": "escalated", "to": "S0ONCALL01"}]
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=T0 + timedelta(minutes=61), resume=w.run) == []  # once only
    replies = [r["text"] for r in w.slack.replies(CHANNEL, w.ts)]
    assert replies[0].startswith("Reminder: approval still needed") and "(0 of 1)" in replies[0]
    assert replies[1].startswith("<!subteam^S0ONCALL01>: approval still needed")
    assert "escalated to <!subteam^S0ONCALL01>" in text_of(w.message()["blocks"])
    [esc] = w.ledger.records(kind_prefix="approval.escalated")
    assert esc.payload["escalate_to"] == "S0ONCALL01" and esc.payload["after_seconds"] == 3600
    assert esc.actor == "cordon:sweeper"
    w.clock.advance(minutes=61)
    assert w.click("U0ERIN005") is None  # on call, through the escalation group
    assert w.run.inputs[0][1]["approvers"] == ["slack:U0ERIN005"]
    assert w.kinds("approval.") == ["approval.asked", "approval.click_refused", "approval.reminded",
                                    "approval.escalated", "approval.vote", "approval.decision",
                                    "approval.decision_received"]


def test_sweeper_expires_an_open_request_once(world):
    w = world({"required": True, "expire_after": "2h", "on_expiry": "deny"})
    just_before = T0 + timedelta(hours=2) - timedelta(seconds=1)
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=just_before, resume=w.run) == []
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=T0 + timedelta(hours=2), resume=w.run) == [
        {"case_id": w.case_id, "event": "expired", "on_expiry": "deny"}]
    [(run_id, run_input)] = w.run.inputs
    assert run_input["decision"] == "expired" and run_input["approver"] == "cordon:sweeper"
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=T0 + timedelta(hours=3), resume=w.run) == []
    st = request_state(list(w.ledger.records(case_id=w.case_id)), RUN_ID, w.plan.hash)
    assert st.decided is not None and st.decided.payload["decision"] == "expired"
    w.clock.advance(hours=1)
    assert "expired" in w.click("U0ALICE01")


# -- the Roll back button ---------------------------------------------------------------------
def test_roll_back_button_under_the_same_policy(world, aws):
    w = world({"required": True, "quorum": 1})
    assert w.click("U0ALICE01") is None  # approved; the run contains the key (as the flow's task does)
    step = w.plan.steps[0]
    result = run_step(step, w.detection, w.clients)
    assert result.status == "contained"
    w.ledger.append("action.contained", result.model_dump(), case_id=w.case_id, run_id=RUN_ID)
    w.ledger.append("case.closed", {"status": "contained", "verified": True,
                                    "approval": {"decision": "approve", "approver": "slack:U0ALICE01"}},
                    case_id=w.case_id, run_id=RUN_ID)
    w.ledger.set_case(w.case_id, status="contained")
    summary = {"case_id": w.case_id, "playbook": w.playbook.name, "flow_run_id": RUN_ID, "status": "contained",
               "verified": True, "plan": {"hash": w.plan.hash}, "detection": w.detection.summary(),
               "approval": {"decision": "approve", "approver": "slack:U0ALICE01"}, "rollback": True,
               "actions": [{"name": result.name, "target": result.target, "status": "contained"}]}
    outbox.update_case(w.client, {"channel": CHANNEL, "ts": w.ts}, case_id=w.case_id,
                       blocks=summary_blocks(summary), text="contained", outbox=w.outbox)
    iam = aws.clients("iam", account_id="111122223333")

    def status() -> str:
        return iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"][0]["Status"]

    assert status() == "Inactive"
    # the actor cannot undo the containment of her own key; nor can a non-approver
    assert "no self-approval" in w.click("U0MALLORY", "cordon_rollback")
    assert "not an approver" in w.click("U0EVE0006", "cordon_rollback")
    assert status() == "Inactive"
    with_button = w.message()
    assert w.click("U0BOB0002", "cordon_rollback") is None
    assert status() == "Active"
    kinds = w.kinds()
    for kind in ("rollback.vote", "rollback.approved", "rollback.requested", "action.rolled_back",
                 "rollback.completed"):
        assert kind in kinds, kind
    assert w.ledger.case(w.case_id)["status"] == "rolled_back"
    msg = w.message()
    assert "Rolled back" in text_of(msg["blocks"]) and "cordon_rollback" not in text_of(msg["blocks"])
    assert w.slack.replies(CHANNEL, w.ts)[-1]["text"].startswith("Rollback: aws.deactivate-access-key")
    # a click on a copy of the message that still showed the button
    assert "already rolled back" in w.click("U0ALICE01", "cordon_rollback", message=with_button)


# -- the Mark done button of a manual step (cordon/manual_steps.py) ----------------------------
def test_mark_done_button_under_the_same_policy(world):
    w = world({"required": True, "quorum": 1})
    assert w.click("U0ALICE01") is None  # approved; the run ends with the case awaiting a person's step
    steps = [{"id": "delete-app-passwords", "text": "Delete the app passwords on the per-user MFA page."}]
    approval = {"decision": "approve", "approver": "slack:U0ALICE01"}
    w.ledger.close_case(w.case_id, "awaiting_manual", {"status": "awaiting_manual", "verified": True,
                                                       "approval": approval, "manual": steps}, run_id=RUN_ID)
    summary = {"case_id": w.case_id, "playbook": w.playbook.name, "flow_run_id": RUN_ID, "status": "awaiting_manual",
               "verified": True, "plan": {"hash": w.plan.hash}, "detection": w.detection.summary(),
               "approval": approval, "manual": steps}
    outbox.update_case(w.client, {"channel": CHANNEL, "ts": w.ts}, case_id=w.case_id,
                       blocks=summary_blocks(summary), text="awaiting", outbox=w.outbox)
    # the suspect cannot say the step is done; nor can someone who may not approve
    assert "no self-approval" in w.click("U0MALLORY", "cordon_manual_done")
    assert "not an approver" in w.click("U0EVE0006", "cordon_manual_done")
    assert w.ledger.case(w.case_id)["status"] == "awaiting_manual" and "manual.done" not in w.kinds()
    with_button = w.message()
    assert w.click("U0BOB0002", "cordon_manual_done") is None
    assert w.ledger.case(w.case_id)["status"] == "contained"
    (done,) = [r for r in w.ledger.records(case_id=w.case_id) if r.kind == "manual.done"]
    assert done.payload == {"step": "delete-app-passwords", "by": "slack:U0BOB0002"}
    msg = w.message()
    assert "cordon_manual_done" not in text_of(msg["blocks"]) and "Contained" in text_of(msg["blocks"])
    assert w.slack.replies(CHANNEL, w.ts)[-1]["text"] == "Manual step delete-app-passwords marked done by <@U0BOB0002>"
    assert "not awaiting" in w.click("U0ALICE01", "cordon_manual_done", message=with_button)


# -- pure parts and configuration -------------------------------------------------------------
def test_identity_matching_rules():
    det = {"actor": {"user": {"uid": "arn:aws:iam::1:user/ops/Mallory", "name": "mallory"}},
           "target": {"uid": "projects/-/serviceAccounts/bot@p.iam.gserviceaccount.com"},
           "credential": {"owner": {"name": "alice@corp.onmicrosoft.com"}}}
    names = principal_names(det)
    assert {"arn:aws:iam::1:user/ops/mallory", "mallory", "alice@corp.onmicrosoft.com"} <= names
    assert self_approval_reason("U1", "x", identity_forms("mallory@example.com"), det)
    assert self_approval_reason("U1", "x", identity_forms("Alice@corp.onmicrosoft.com"), det)
    assert self_approval_reason("U1", "x", identity_forms("bob@example.com"), det) is None
    assert self_approval_reason("U1", "x", identity_forms(None, ["user:MALLORY"]), det)


def test_bad_policy_configuration_names_the_field(tmp_path):
    for section, field in (({"quorum": {"critical": 0}}, "approval.quorum.critical"),
                           ({"identities": {"U1": "arn:x"}}, "approval.identities.U1"),
                           ({"approvers": {"people": []}}, "approval.approvers.people"),
                           ({"grace": "soon"}, "approval.grace"),
                           ({"deny_window": 60}, "approval.deny_window"),
                           ({"deny_window": "soon"}, "approval.deny_window")):
        d = tmp_path / f"{field}-{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "cordon.yaml").write_text(yaml.safe_dump({"approval": section}))
        with pytest.raises(ConfigError) as err:
            load_settings(load_config(d))
        assert f"field '{field}'" in str(err.value) and "cordon.yaml" in str(err.value)


def test_the_deny_window_is_read_in_seconds(tmp_path):
    (tmp_path / "cordon.yaml").write_text(yaml.safe_dump({"approval": {"deny_window": 1.5}}))
    assert load_settings(load_config(tmp_path)).deny_window_seconds == 1.5
    (tmp_path / "cordon.yaml").write_text(yaml.safe_dump({"approval": {"deny_window": "2s"}}))
    assert load_settings(load_config(tmp_path)).deny_window_seconds == 2.0
    (tmp_path / "cordon.yaml").write_text(yaml.safe_dump({"approval": {}}))
    assert load_settings(load_config(tmp_path)).deny_window_seconds == 0.5


def test_playbook_escalation_needs_a_target():
    from cordon.playbooks.schema import Approval

    with pytest.raises(ValueError, match="escalate_after needs escalate_to"):
        Approval(escalate_after="1h")
    with pytest.raises(ValueError):
        Approval(approvers={"users": ["alice"]})


# -- Slack rate limits ------------------------------------------------------------------------
def test_429_with_retry_after_is_honoured_by_our_client(tmp_path):
    box = Outbox(f"sqlite:///{tmp_path}/outbox.db")
    with SlackStandIn(users=USERS, usergroups=GROUPS) as slack:
        client = make_client("xoxb-test", base_url=slack.base_url)
        slack.fail_next("usergroups.users.list", status=429, headers={"Retry-After": "1"})
        assert SlackDirectory(client).group_members("S0SECOPS01") == {"U0CAROL03"}
        first, second = slack.requests_for("usergroups.users.list")
        assert (first.status, second.status) == (429, 200)
        assert second.time - first.time >= 1.0  # waited at least Retry-After before asking again
        channel = slack.add_channel("ops", "C0OPS0001")
        where = outbox.request_approval(client, channel=channel, case_id="c1", actor_key=None,
                                        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}],
                                        text="x", outbox=box)
        ts = where["ts"]
        slack.fail_next("chat.update", status=429, headers={"Retry-After": "1"})
        outbox.update_case(client, where, case_id="c1", blocks=[], text="y", thread_text="step", outbox=box)
        up = slack.requests_for("chat.update")
        assert [r.status for r in up] == [429, 200] and up[1].time - up[0].time >= 1.0
        assert slack.message(channel, ts)["text"] == "y"
        assert [r["text"] for r in slack.replies(channel, ts)] == ["step"]


def test_two_approvers_at_once_resume_the_run_once(world):
    # two approvers clicking at the same moment: exactly one resume, quorum counted once each
    w = world(severity="critical")
    bodies = [w.body("U0ALICE01")[0], w.body("U0BOB0002")[0]]
    threads = [threading.Thread(target=w.post, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_for(lambda: len(w.decided) == 2)
    assert len(w.run.inputs) == 1
    assert sorted(w.run.inputs[0][1]["approvers"]) == ["slack:U0ALICE01", "slack:U0BOB0002"]
    assert sorted(r.payload["count"] for r in w.ledger.records(kind_prefix="approval.vote")) == [1, 2]


# -- closed by default (issue 10, part 7) -----------------------------------------------------
def told(w: World, user_id: str, action_id: str = "cordon_approve") -> str | None:
    """Click and wait for the decision; the ephemeral message posted to the click's response_url
    (refused, lost the race, too late...) or ``None`` when the click was accepted silently."""
    body, url = w.body(user_id, action_id)
    n = len(w.decided)
    assert w.post(body).status_code == 200
    assert wait_for(lambda: len(w.decided) > n)
    notified = len(list(w.ledger.records(kind_prefix="slack.refusal_notified")))
    wait_for(lambda: w.slack.responses(url), timeout=2)  # an accepted click is told nothing: no answer comes
    answers = w.slack.responses(url)
    if not answers:
        assert len(list(w.ledger.records(kind_prefix="slack.refusal_notified"))) == notified
        return None
    (answer,) = answers
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    return answer["text"]


def test_no_approvers_configured_means_nobody_may_approve(world):
    w = world(global_approval={"approvers": {"users": [], "groups": []}})
    reason = w.click("U0ALICE01")
    assert reason.startswith("no approvers are configured for this playbook, so nobody may approve")
    assert "approval.approvers.users / groups" in reason
    assert "no approvers are configured" in w.click("U0BOB0002", "cordon_deny")
    assert w.run.inputs == [] and w.kinds("approval.decision") == []


def test_identity_that_cannot_be_resolved_is_refused_not_guessed_from_the_user_name(world):
    # no bot token: no users.info. Alice has no identities entry: refused (her user name "alice" is
    # no proof of who she is); Dave has one (build-bot, the target): checked against it and refused
    # for self-approval; Bob has one naming someone else: allowed.
    w = world(global_approval={**GLOBAL, "identities": {**GLOBAL["identities"], "U0BOB0002": ["bob@example.com"]}},
              directory=False)
    reason = w.click("U0ALICE01")
    assert reason == ("cannot resolve your identity to rule out self-approval: Cordon has no Slack bot token to "
                      "read your profile (users.info), and approval.identities in cordon.yaml has no entry for "
                      "U0ALICE01; ask an administrator to add one")
    assert "no self-approval" in w.click("U0DAVE004") and "build-bot" in w.click("U0DAVE004")
    assert w.run.inputs == []
    assert w.click("U0BOB0002") is None
    assert w.run.inputs[0][1]["approver"] == "slack:U0BOB0002"
    assert w.slack.requests_for("users.info") == []  # nothing was looked up: there is no directory


def test_profile_without_email_and_no_mapping_is_refused(world):
    w = world()
    w.slack.add_user({"id": "U0ALICE01", "name": "alice", "profile": {}})  # no users:read.email, say
    reason = w.click("U0ALICE01")
    assert reason.startswith("cannot resolve your identity to rule out self-approval: your Slack profile shows "
                             "Cordon no e-mail")
    assert w.run.inputs == []
    # a failed users.info is a refusal too (even for someone with an identities entry)
    w.slack.fail_next("users.info", status=500, times=5)
    assert "cannot look up your Slack profile" in w.click("U0DAVE004")


def test_require_approvers_refuses_the_slack_path_without_approvers(tmp_path):
    from cordon.approvals.policy import require_approvers
    from cordon.playbooks.schema import load_playbooks

    shipped = load_config(REPO / "cordon" / "defaults")
    if not (load_settings(shipped).users or load_settings(shipped).groups):
        with pytest.raises(ConfigError) as err:
            require_approvers(shipped)
        text = str(err.value)
        assert str(REPO / "cordon" / "defaults" / "cordon.yaml") in text and "nor does any playbook" in text
        assert "Set approval.approvers.users (Slack user IDs, U...) and/or approval.approvers.groups" in text
    # global approvers: fine
    require_approvers(load_config(write_config(tmp_path / "a", {"required": True}, GLOBAL)))
    # none globally, one playbook with its own: the others are named
    cfg = load_config(write_config(tmp_path / "b", {"required": True, "approvers": {"users": ["U0ALICE01"]}},
                                   {"approvers": {"users": []}}))
    books = load_playbooks(cfg.playbooks_dir)
    require_approvers(cfg, books)  # the only playbook there names approvers
    extra = books[0].model_copy(update={"name": "no-approvers", "approval": books[0].approval.model_copy(
        update={"approvers": books[0].approval.approvers.model_copy(update={"users": []})})})
    with pytest.raises(ConfigError, match="playbook\\(s\\) no-approvers name none"):
        require_approvers(cfg, [*books, extra])
    # a playbook that needs no approval needs no approvers
    not_required = extra.model_copy(update={"approval": extra.approval.model_copy(update={"required": False})})
    require_approvers(cfg, [*books, not_required])


# -- no decision lost (issue 10, part 1) ------------------------------------------------------
def test_deny_after_an_accepted_approval_stops_containment_not_yet_started(world):
    from cordon.approvals.gate import claim_containment

    w = world()
    assert w.click("U0ALICE01") is None  # approved: the run was resumed
    assert [i[1]["decision"] for i in w.run.inputs] == ["approve"]
    # bob's Deny arrives before the run reaches containment: recorded, and it wins
    assert told(w, "U0BOB0002", "cordon_deny") == ("your Deny stops the approved containment (already decided: "
                                                    "approve by <@U0ALICE01>, not yet contained)")
    assert len(w.run.inputs) == 1  # nothing resumed twice
    [lost] = w.ledger.records(kind_prefix="approval.decision_lost")
    assert lost.payload["effect"] == "stops_containment" and lost.payload["resumed"] is False
    assert lost.payload["settled_by"]["approver"] == "slack:U0ALICE01"
    claim = claim_containment(w.ledger, w.case_id, RUN_ID, w.plan.hash)
    assert claim.denied and claim.denied_by == "slack:U0BOB0002"
    assert w.kinds("containment.") == ["containment.started", "containment.cancelled"]
    # asked again (a re-executed flow): the same answer, nothing appended
    assert claim_containment(w.ledger, w.case_id, RUN_ID, w.plan.hash) == claim
    assert w.kinds("containment.") == ["containment.started", "containment.cancelled"]
    # a later Deny is told the containment was cancelled already
    assert told(w, "U0CAROL03", "cordon_deny") == "already denied by <@U0BOB0002>: containment was cancelled"


def test_deny_after_containment_started_is_too_late(world):
    from cordon.approvals.gate import claim_containment

    w = world()
    assert w.click("U0ALICE01") is None
    claim = claim_containment(w.ledger, w.case_id, RUN_ID, w.plan.hash)
    assert claim.outcome == "allowed"
    [started] = w.ledger.records(kind_prefix="containment.started")
    assert told(w, "U0BOB0002", "cordon_deny") == (f"too late: containment started at {started.ts} (already "
                                                    "decided: approve by <@U0ALICE01>); use Roll back")
    assert claim_containment(w.ledger, w.case_id, RUN_ID, w.plan.hash).outcome == "allowed"  # still
    # once the run has ended, a Deny is refused before anything is recorded
    w.ledger.append("case.closed", {"status": "contained"}, case_id=w.case_id, run_id=RUN_ID)
    assert "too late: the run already ended (contained)" in told(w, "U0CAROL03", "cordon_deny")


def test_a_resume_prefect_does_not_accept_leaves_no_record_that_says_it_resumed(world):
    from cordon.approvals.decide import ResumeRefused

    def aborted(run_id, run_input):  # what prefect_resume raises for the server's ABORT
        raise ResumeRefused("ABORT", "Cannot resume a flow run that is not paused.")

    w = world()
    decide = w.make_decider(resume=aborted)

    def counted(ix):
        try:
            return decide(ix)
        finally:
            w.decided.append(ix)

    server = serve(create_app(signing_secret=SECRET, ledger=w.ledger, decide=counted))
    w.url = server.__enter__()
    try:
        reason = told(w, "U0ALICE01")
    finally:
        server.__exit__(None, None, None)
    assert reason == ("the run is not waiting for a decision (ABORT: Cannot resume a flow run that is not paused.); "
                      "your approval did not resume it; nothing was contained on it")
    assert w.kinds("approval.decision_received") == []
    [failed] = w.ledger.records(kind_prefix="approval.resume_failed")
    assert failed.payload["status"] == "ABORT" and failed.payload["resumed"] is False
    # the failed claim settles nothing: the request is open again
    st = request_state(list(w.ledger.records(case_id=w.case_id)), RUN_ID, w.plan.hash)
    assert st.decided is None


def opposite_clicks_on_two_replicas(w: World, approve_first_server: bool) -> tuple[str, dict, dict]:
    """Alice's Approve and Bob's Deny POSTed at the same moment (a barrier), one to ``w``'s server
    and one to a second replica (its own decider, no shared lock) on the same ledger. Waits until
    both are settled; returns (the winning decision, approve response URL answers, deny answers)."""
    second = serve(create_app(signing_secret=SECRET, ledger=w.ledger, decide=w.make_decider()))
    url2 = second.__enter__()
    try:
        approve, approve_url = w.body("U0ALICE01")
        deny, deny_url = w.body("U0BOB0002", "cordon_deny")
        barrier = threading.Barrier(2)

        def post(url, body):
            barrier.wait()
            httpx.post(f"{url}/slack/interactions", content=body, headers=sign(body))

        servers = (w.url, url2) if approve_first_server else (url2, w.url)
        threads = [threading.Thread(target=post, args=(servers[0], approve)),
                   threading.Thread(target=post, args=(servers[1], deny))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def settled():  # the winner resumed the run and the loser was told
            kinds = [r.kind for r in w.ledger.records(case_id=w.case_id)]
            return "approval.decision_received" in kinds and (w.slack.responses(approve_url)
                                                              or w.slack.responses(deny_url))

        assert wait_for(settled), [(r.kind, r.payload.get("reason") or r.payload.get("decision"))
                                   for r in w.ledger.records(case_id=w.case_id)][-8:]
    finally:
        second.__exit__(None, None, None)
    first = next(r for r in w.ledger.records(case_id=w.case_id) if r.kind == "approval.decision")
    return first.payload["decision"], w.slack.responses(approve_url), w.slack.responses(deny_url)


def test_opposite_clicks_on_two_replicas_at_once_one_settles_and_a_deny_is_never_lost(world):
    """10 trials: one resume each time, the loser is told, and containment never starts after a
    Deny (the gate), whichever replica got which click."""
    from cordon.approvals.gate import claim_containment

    winners = []
    for trial in range(10):
        w = world()
        winner, approve_answers, deny_answers = opposite_clicks_on_two_replicas(w, trial % 2 == 0)
        winners.append(winner)
        assert len(w.run.inputs) == 1, trial
        assert w.run.inputs[0][1]["decision"] == winner  # the first claim in the chain resumed the run
        kinds = w.kinds("approval.")
        assert kinds.count("approval.decision_received") == 1
        # the loser either saw the winner's claim before its own (refused at once) or claimed too
        # and lost by ledger order; a Deny always claims (it may still stop containment)
        assert kinds.count("approval.decision_lost") + kinds.count("approval.click_refused") == 1
        assert kinds.count("approval.decision") == 1 + kinds.count("approval.decision_lost")
        if winner == "deny":
            assert [a["text"] for a in approve_answers] == ["already decided: deny by <@U0BOB0002>"]
            assert deny_answers == []
        else:
            assert [a["text"] for a in deny_answers] == [
                "your Deny stops the approved containment (already decided: approve by <@U0ALICE01>, "
                "not yet contained)"]
            assert approve_answers == []
        # either way the run never contains: a Deny claim precedes containment.started
        assert claim_containment(w.ledger, w.case_id, RUN_ID, w.plan.hash).denied, trial
        assert w.ledger.verify().ok
        w.close()
    print(f"two replicas, 10 trials: first claim deny {winners.count('deny')}, approve {winners.count('approve')}")


def test_sweeper_delivers_a_claim_whose_owner_died_before_resuming(world):
    from cordon.approvals.gate import CLAIM_KIND

    w = world()
    run_input = {"decision": "deny", "approver": "slack:U0BOB0002", "approver_name": "bob", "team_id": "T0CORDON1",
                 "plan_hash": w.plan.hash, "decided_at": T0.isoformat(), "approvers": ["slack:U0BOB0002"],
                 "quorum": 1}
    claim = w.ledger.append(CLAIM_KIND, {**run_input, "user_id": "U0BOB0002"}, case_id=w.case_id, run_id=RUN_ID,
                            actor="slack:U0BOB0002")  # ... and the replica died here
    claimed_at = parse_time(claim.ts)
    assert "already decided: deny" in w.click("U0ALICE01")  # the claim settles the request
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=claimed_at + timedelta(seconds=30), resume=w.run) == []
    events = sweep(w.ledger, w.client, outbox=w.outbox, now=claimed_at + timedelta(seconds=61), resume=w.run)
    assert events == [{"case_id": w.case_id, "event": "delivered", "decision": "deny", "decision_seq": claim.seq}]
    assert w.run.inputs == [(RUN_ID, run_input)]
    [received] = w.ledger.records(kind_prefix="approval.decision_received")
    assert received.payload["decision_seq"] == claim.seq and received.payload["delivered_by"] == "cordon:sweeper"
    assert sweep(w.ledger, w.client, outbox=w.outbox, now=claimed_at + timedelta(hours=1), resume=w.run) == []


def test_the_slack_path_does_not_start_without_approvers(tmp_path, monkeypatch):
    # (the sandbox / auto paths without approvers: tests/test_cli.py runs them on the shipped config)
    import os
    import subprocess

    cfg = write_config(tmp_path / "config", {"required": True}, {"approvers": {"users": [], "groups": []}})
    env = {**os.environ, "CORDON_CONFIG": str(cfg), "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db",
           "CORDON_SLACK_SIGNING_SECRET": "s" * 32, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cordon = str(REPO / ".venv" / "bin" / "cordon")
    for args in (["respond", str(EXAMPLE), "--approve", "slack"], ["worker"], ["serve", "--port", "9"],
                 ["run", "aws-access-key-created", "-p", "access_key_id=AKIAEXAMPLEBUILDBOT9", "-p",
                  "user_name=build-bot"]):
        res = subprocess.run([cordon, *args], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "no Slack approvers configured" in res.stderr and "approval.approvers.users" in res.stderr, args
    from cordon.server.wiring import build_app

    monkeypatch.setenv("CORDON_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="no Slack approvers configured"):
        build_app(signing_secret="s" * 32, ledger=Ledger(env["CORDON_DATABASE_URL"]))
    monkeypatch.setenv("CORDON_CONFIG", str(write_config(tmp_path / "ok", {"required": True}, GLOBAL)))
    assert build_app(signing_secret="s" * 32, ledger=Ledger(env["CORDON_DATABASE_URL"])) is not None
    # nothing was opened by the refused commands
    assert Ledger(env["CORDON_DATABASE_URL"]).cases() == []
