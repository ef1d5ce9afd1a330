"""Approval clicks from Microsoft Teams over real HTTP, through the Teams SDK's token validator.

Real parts: the Teams stand-in (:class:`cordon.sandbox.teams_standin.TeamsStandIn`: OpenID metadata,
the key set that signs its invokes, the connector), Cordon's ``/teams/messages`` endpoint
(:func:`cordon.teams.server.teams_router`) on uvicorn, the verifier
(:class:`cordon.teams.verify.InvokeVerifier`, ``microsoft_teams.apps`` ``TokenValidator`` pointed at
the stand-in's metadata URL), the same decider as Slack's
(:func:`cordon.approvals.decide.make_decider`) on a SQLite ledger, and a case waiting for approval
built by ``tests.test_approval_policy.World`` (the Slack message posted to the Slack stand-in, so a
Slack click and a Teams click meet in one quorum). The one stand-in is Prefect's resume
(``PausedRun``). One waiting case per module for the refusals (each leaves the request open).
"""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from cordon.audit.refusals import RefusalCounter
from cordon.config import ConfigError
from cordon.sandbox.teams_standin import TeamsStandIn
from cordon.teams.client import Connector, TeamsCards
from cordon.teams.server import teams_router
from cordon.teams.verify import InvokeVerifier, TeamsSettings, load_teams_settings
from tests.test_approval_policy import GLOBAL, RUN_ID, World
from tests.test_server import serve, wait_for

CONVERSATION = "19:security-approvals@thread.tacv2"
ALICE, BOB, EVE, MALLORY = "oid-alice-0001", "oid-bob-0002", "oid-eve-0006", "oid-mallory-09"
#: Slack approvers of test_approval_policy plus Teams clickers (Entra object ids); Teams clickers
#: are resolved only through approval.identities (no Slack directory for them).
GLOBAL_T = {"approvers": {"users": [*GLOBAL["approvers"]["users"], f"teams:{ALICE}", f"teams:{BOB}",
                                   f"teams:{MALLORY}"], "groups": GLOBAL["approvers"]["groups"]},
            "identities": {**GLOBAL["identities"], f"teams:{ALICE}": ["alice@example.com"],
                           f"teams:{BOB}": ["bob@example.com"], f"teams:{EVE}": ["eve@example.com"],
                           f"teams:{MALLORY}": ["arn:aws:iam::111122223333:user/mallory"]}}


@pytest.fixture(scope="module")
def teams():
    with TeamsStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def verifier(teams):
    return InvokeVerifier(TeamsSettings(app_id=teams.app_id, tenant_id=teams.tenant_id,
                                        openid_metadata_url=teams.openid_metadata_url))


class TeamsWorld:
    """A :class:`World` (case waiting in Slack) plus Cordon's Teams endpoint on its ledger."""

    def __init__(self, tmp, aws, teams: TeamsStandIn, verifier: InvokeVerifier, card: bool = False,
                 entra_directory=None, **kw):
        self.w = World(tmp, aws, kw.pop("approval", {"required": True, "expire_after": "4h"}),
                       global_approval=GLOBAL_T, **kw)
        self.teams = teams
        self.ref = None
        after = None
        if card:  # the request card posted to the Teams stand-in, its reference in the ledger
            self.ref = TeamsCards(self.w.ledger, self.connector).post_request(
                service_url=teams.service_url, conversation_id=CONVERSATION, case_id=self.w.case_id, run_id=RUN_ID,
                playbook=self.w.playbook.name, detection=self.w.detection.summary(), plan=self.w.plan.model_dump(),
                expires_at=self.w.asked["expires_at"], quorum=self.w.asked["quorum"])
            # a second TeamsCards, sharing nothing in memory with the one that posted: the card is
            # found again from the ledger, as by a restarted Cordon
            after = TeamsCards(self.w.ledger, self.connector).after_decision
        # unverified requests are counted per window (cordon.audit.refusals), every sample kept here
        self.refusals = RefusalCounter(self.w.ledger, max_samples=100)
        app = FastAPI()
        # Teams clickers' directory (Entra ID), when given
        decide = self.w.make_decider(directories={"teams": entra_directory} if entra_directory else None)
        app.include_router(teams_router(ledger=self.w.ledger, verifier=verifier, decide=decide, after=after,
                                        refusals=self.refusals))
        self._server = serve(app)
        self.url = self._server.__enter__()

    @staticmethod
    def connector(service_url: str) -> Connector:
        return Connector(service_url, lambda: "bot-token-from-entra", sleep=lambda s: None)

    def card(self) -> dict:
        return self.teams.activity(CONVERSATION, self.ref["activity_id"])

    def close(self) -> None:
        self._server.__exit__(None, None, None)
        self.w.close()

    def activity(self, oid: str, verb: str = "cordon_approve", **kw) -> dict:
        data = {"case_id": self.w.case_id, "plan_hash": self.w.plan.hash, "run_id": RUN_ID}
        data.update(kw.pop("data", {}))
        return self.teams.invoke(verb=verb, data=data, aad_object_id=oid, conversation_id=CONVERSATION,
                                 reply_to_id=self.ref["activity_id"] if self.ref else "1:1", **kw)

    def send(self, activity: dict, **token_kw) -> httpx.Response:
        token = token_kw.pop("raw", None) or self.teams.token(**token_kw)
        return httpx.post(f"{self.url}/teams/messages", json=activity, headers={"Authorization": f"Bearer {token}"})

    def click(self, oid: str, verb: str = "cordon_approve", **kw) -> httpx.Response:
        return self.send(self.activity(oid, verb, **kw))

    def kinds(self, prefix: str) -> list:
        return [r for r in self.w.ledger.records(case_id=None) if r.kind.startswith(prefix)]


@pytest.fixture(scope="module")
def waiting(tmp_path_factory, aws_sandbox, teams, verifier):
    """One critical case (quorum 2) waiting for approval, shared by the module's refusals."""
    aws_sandbox.reset()
    tw = TeamsWorld(tmp_path_factory.mktemp("teams"), aws_sandbox, teams, verifier, severity="critical")
    yield tw
    tw.close()


def refused_records(tw: TeamsWorld) -> list:
    """The chained refusals of requests Teams signed."""
    return tw.kinds("teams.invoke_refused")


def counted(tw: TeamsWorld) -> list[dict]:
    """The counted refusals of unverified requests (samples, oldest first)."""
    return sorted((dict(x, reason=x["reason"]) for w in tw.refusals.windows("teams") for x in w.samples),
                  key=lambda x: x["ts"])


# -- the token: refused with 401 before anything reads the activity ------------------------------
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("token_kw, detail", [
    ({"key": OTHER_KEY}, "Signature verification failed"),
    ({"audience": "00000000-0000-0000-0000-0000000bad00"}, "Audience"),
    ({"issuer": "https://evil.example.com"}, "issuer"),
    ({"expires_in": -3600}, "expired"),
    ({"service_url": "https://smba.evil.example.com/"}, "Service URL mismatch"),
    ({"kid": "unknown-kid"}, "signing key"),
], ids=["forged-signature", "wrong-audience", "wrong-issuer", "expired", "wrong-serviceUrl", "unknown-key"])
def test_bad_token_is_refused_and_recorded(waiting, token_kw, detail):
    before = len(counted(waiting))
    r = waiting.send(waiting.activity(ALICE), **token_kw)
    assert r.status_code == 401 and r.json()["reason"] == "bad_jwt"
    new = counted(waiting)[before:]
    assert [x["reason"] for x in new] == ["bad_jwt"] and detail.lower() in new[0]["detail"].lower()
    assert "Bearer" not in str(new[0]) and "eyJ" not in str(new[0])  # never the token
    assert waiting.w.run.inputs == [] and not waiting.kinds("teams.invoke_received")
    assert not [v for v in waiting.kinds("approval.vote")]


def test_missing_token_is_refused(waiting):
    r = httpx.post(f"{waiting.url}/teams/messages", json=waiting.activity(ALICE))
    assert r.status_code == 401 and r.json()["reason"] == "no_bearer"
    assert counted(waiting)[-1]["reason"] == "no_bearer"


def test_body_not_json_is_refused_and_counted(waiting):
    r = httpx.post(f"{waiting.url}/teams/messages", content=b"{not json",
                   headers={"Authorization": f"Bearer {waiting.teams.token()}"})
    assert r.status_code == 400 and counted(waiting)[-1]["reason"] == "malformed_body"


def test_unverified_refusals_are_summarised_in_the_chain(waiting):
    closed = waiting.refusals.close_due(now=time.time() + 3600)
    summaries = [r for r in closed if r.kind == "teams.refusals"]
    assert summaries and sum(r.payload["by_reason"].get("bad_jwt", 0) for r in summaries) >= 6


def test_token_not_signed_at_all_is_refused(waiting):
    unsigned = jwt.encode({"iss": "https://api.botframework.com", "aud": waiting.teams.app_id}, key=None,
                          algorithm="none")
    r = waiting.send(waiting.activity(ALICE), raw=unsigned)
    assert r.status_code == 401 and counted(waiting)[-1]["reason"] == "bad_jwt"


# -- what the SDK does not check -------------------------------------------------------------------
@pytest.mark.parametrize("invoke_kw, reason", [
    ({"tenant_id": "tenant-elsewhere"}, "wrong_tenant"),
    ({"user_role": "guest"}, "guest"),
    ({"user_role": "anonymous"}, "guest"),
], ids=["other-tenant", "guest", "anonymous"])
def test_activity_checks_refuse_and_record(waiting, invoke_kw, reason):
    r = waiting.click(ALICE, **invoke_kw)
    assert r.status_code == 200 and "refused" in r.json()["value"]
    assert refused_records(waiting)[-1].payload["reason"] == reason
    assert waiting.w.run.inputs == [] and not waiting.kinds("approval.vote")


def test_wrong_channel_refused(waiting):
    act = waiting.activity(ALICE)
    act["channelId"] = "webchat"
    assert waiting.send(act).status_code == 200
    assert refused_records(waiting)[-1].payload["reason"] == "wrong_channel"


# -- the approval policy, the same decider as Slack's ---------------------------------------------
@pytest.mark.parametrize("oid, data, said", [
    (EVE, {}, "is not an approver"),
    (MALLORY, {}, "no self-approval"),
    (ALICE, {"plan_hash": "0" * 64}, "plan changed"),
], ids=["non-approver", "suspect-approves-own-case", "stale-plan-hash"])
def test_policy_refusals_are_recorded_and_contain_nothing(waiting, oid, data, said):
    r = waiting.click(oid, data=data)
    assert r.status_code == 200 and said in r.json()["value"]
    refusal = [x for x in waiting.kinds("approval.click_refused")][-1]
    assert refusal.actor == f"teams:{oid}" and said in refusal.payload["reason"]
    assert waiting.w.run.inputs == [] and not waiting.kinds("approval.vote")


def test_teams_and_slack_approvals_meet_in_one_quorum_and_replay_is_refused(waiting):
    act = waiting.activity(ALICE)
    r = waiting.send(act)
    assert r.status_code == 200 and "approval 1 of 2" in r.json()["value"]
    (vote,) = waiting.kinds("approval.vote")
    assert vote.payload["approver"] == f"teams:{ALICE}" and vote.actor == f"teams:{ALICE}"
    assert waiting.w.run.inputs == []

    # the same activity again (a replay, freshly signed): refused from the ledger, not counted
    r = waiting.send(act)
    assert r.status_code == 401 and r.json()["reason"] == "replayed"
    assert refused_records(waiting)[-1].payload["reason"] == "replayed"
    assert len(waiting.kinds("approval.vote")) == 1

    # Bob approves in Slack: the second distinct approver reaches the quorum across channels
    assert waiting.w.click("U0BOB0002") is None
    ((run_id, run_input),) = waiting.w.run.inputs
    assert run_input["decision"] == "approve"
    assert run_input["approvers"] == [f"teams:{ALICE}", "slack:U0BOB0002"]


def test_first_deny_in_teams_wins_over_a_slack_approval(tmp_path, aws, teams, verifier):
    tw = TeamsWorld(tmp_path, aws, teams, verifier)
    try:
        # the card's reason input arrives merged into the action's data (Action.Execute)
        r = tw.click(BOB, "cordon_deny", data={"reason": "  ticket CHG-4411: planned key rotation  "})
        assert r.status_code == 200 and "deny recorded" in r.json()["value"]
        ((_, run_input),) = tw.w.run.inputs
        assert run_input["decision"] == "deny" and run_input["approver"] == f"teams:{BOB}"
        (claim,) = [x.payload for x in tw.w.ledger.records(case_id=tw.w.case_id) if x.kind == "approval.decision"]
        assert claim["reason"] == "ticket CHG-4411: planned key rotation"
        said = tw.w.click("U0ALICE01")
        assert said and "already decided: deny" in said
        assert len(tw.w.run.inputs) == 1
    finally:
        tw.close()


def test_teams_settings_from_config(tmp_path):
    from cordon.config import load_config
    from tests.test_approval_policy import write_config

    cfg_dir = write_config(tmp_path / "c", {"required": True}, GLOBAL)
    import yaml

    raw = yaml.safe_load((cfg_dir / "cordon.yaml").read_text())
    raw["teams"] = {"app_id": "app-1", "tenant_id": "t-1", "openid_metadata_url": "http://127.0.0.1:1/x"}
    (cfg_dir / "cordon.yaml").write_text(yaml.safe_dump(raw))
    s = load_teams_settings(load_config(cfg_dir))
    assert (s.app_id, s.tenant_id, s.app_password_env) == ("app-1", "t-1", "CORDON_TEAMS_APP_PASSWORD")
    raw["teams"] = {"app_id": "app-1", "tenant_id": "t-1", "app_password": "s3cret"}
    (cfg_dir / "cordon.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="teams.app_password"):
        load_teams_settings(load_config(cfg_dir))


# -- the card: posted, bound to the plan, updated in place after the decision ----------------------
def test_card_posted_then_updated_in_place_after_a_teams_approval(tmp_path, aws, teams, verifier):
    tw = TeamsWorld(tmp_path, aws, teams, verifier, card=True)
    try:
        posted = tw.card()
        (att,) = posted["attachments"]
        card = att["content"]
        assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
        data = {"case_id": tw.w.case_id, "plan_hash": tw.w.plan.hash, "run_id": RUN_ID}
        assert [(a["type"], a["verb"], a["data"]) for a in card["actions"]] == [
            ("Action.Execute", "cordon_approve", data), ("Action.Execute", "cordon_deny", data)]
        text = json.dumps(card)
        for step in tw.w.plan.model_dump()["steps"]:  # the exact plan: every call
            assert all(json.dumps(str(c))[1:-1] in text for c in step["describe"])
        assert tw.w.plan.hash in text and "Does not " in text and "Approvals 0 of 1" in text
        (ref,) = [r.payload for r in tw.w.ledger.records(case_id=tw.w.case_id, kind_prefix="teams.card_posted")]
        assert ref["service_url"] == teams.service_url and ref["conversation_id"] == CONVERSATION

        r = tw.click(ALICE)
        assert r.status_code == 200 and "approve recorded" in r.json()["value"]
        assert wait_for(lambda: len(tw.card()["history"]) == 1)
        updated = tw.card()["attachments"][0]["content"]
        assert "actions" not in updated  # decided: no buttons for anyone
        assert f"Approved by teams:{ALICE}" in json.dumps(updated)
        # recorded right after the update answered (the card may be seen first)
        assert wait_for(lambda: list(tw.w.ledger.records(case_id=tw.w.case_id, kind_prefix="teams.card_updated")))
    finally:
        tw.close()


def test_connector_honours_429_retry_after(teams):
    slept: list[float] = []
    conn = Connector(teams.service_url, lambda: "t", sleep=slept.append)
    teams.fail_next(429, retry_after=2)
    aid = conn.send(CONVERSATION, {"type": "message", "text": "hi"})
    assert slept == [2.0] and teams.activity(CONVERSATION, aid)["text"] == "hi"


def test_cordon_serve_takes_teams_clicks_when_configured(tmp_path, monkeypatch, teams):
    """``build_app`` (what ``cordon serve`` runs) mounts ``/teams/messages`` with a ``teams`` section."""
    import yaml

    from cordon.audit.ledger import Ledger
    from cordon.server.wiring import build_app
    from tests.test_approval_policy import write_config

    cfg = write_config(tmp_path / "c", {"required": True}, GLOBAL_T)
    raw = yaml.safe_load((cfg / "cordon.yaml").read_text())
    raw["teams"] = {"app_id": teams.app_id, "tenant_id": teams.tenant_id,
                    "openid_metadata_url": teams.openid_metadata_url}
    (cfg / "cordon.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("CORDON_CONFIG", str(cfg))
    monkeypatch.setenv("CORDON_TEAMS_APP_PASSWORD", "not-used-by-the-stand-in")
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    with serve(build_app(signing_secret="s" * 32, ledger=ledger)) as url:
        act = teams.invoke(verb="cordon_approve", data={"case_id": "c-nope", "plan_hash": "h", "run_id": RUN_ID},
                           aad_object_id=ALICE)
        forged = httpx.post(f"{url}/teams/messages", json=act,
                            headers={"Authorization": f"Bearer {teams.token(key=OTHER_KEY)}"})
        assert forged.status_code == 401
        ok = httpx.post(f"{url}/teams/messages", json=act, headers={"Authorization": f"Bearer {teams.token()}"})
        assert ok.status_code == 200 and "unknown case" in ok.json()["value"]
    monkeypatch.delenv("CORDON_TEAMS_APP_PASSWORD")
    with pytest.raises(KeyError, match="CORDON_TEAMS_APP_PASSWORD"):
        build_app(signing_secret="s" * 32, ledger=ledger)


def test_card_shows_the_approvals_still_needed_after_a_teams_vote(tmp_path, aws, teams, verifier):
    tw = TeamsWorld(tmp_path, aws, teams, verifier, card=True, severity="critical")
    try:
        r = tw.click(BOB)
        assert r.status_code == 200 and "approval 1 of 2" in r.json()["value"]
        assert wait_for(lambda: len(tw.card()["history"]) == 1)
        updated = tw.card()["attachments"][0]["content"]
        assert f"Approvals 1 of 2 (teams:{BOB})" in json.dumps(updated)
        assert [a["verb"] for a in updated["actions"]] == ["cordon_approve", "cordon_deny"]  # still waiting
        # a refused click (the suspect) does not touch the card
        assert "no self-approval" in tw.click(MALLORY).json()["value"]
        time.sleep(0.3)
        assert len(tw.card()["history"]) == 1
    finally:
        tw.close()


def test_the_sweeper_edits_the_teams_card_on_escalation_and_expiry(tmp_path, aws, teams, verifier):
    """Escalation and expiry are the sweeper's (:func:`cordon.approvals.expiry.sweep`); with Teams
    cards it edits the card in place: the escalation note while the request waits, then the
    expired outcome with no buttons. The card is found again from the ledger (a fresh
    :class:`TeamsCards`, as a sweeper in another process would build)."""
    from datetime import timedelta

    from cordon.approvals.expiry import sweep
    from tests.test_approval_policy import T0

    approval = {"required": True, "expire_after": "4h", "escalate_after": "1h", "escalate_to": "U0CAROL03"}
    tw = TeamsWorld(tmp_path, aws, teams, verifier, card=True, approval=approval)
    try:
        cards = TeamsCards(tw.w.ledger, tw.connector)
        events = sweep(tw.w.ledger, None, now=T0 + timedelta(hours=2), resume=tw.w.run, teams=cards)
        assert [e["event"] for e in events] == ["escalated"]
        waiting = tw.card()
        assert len(waiting["history"]) == 1 and "Escalated to U0CAROL03" in json.dumps(waiting)
        assert [a["verb"] for a in waiting["attachments"][0]["content"]["actions"]] == ["cordon_approve",
                                                                                       "cordon_deny"]
        events = sweep(tw.w.ledger, None, now=T0 + timedelta(hours=5), resume=tw.w.run, teams=cards)
        assert [e["event"] for e in events] == ["expired"]
        expired = tw.card()
        content = expired["attachments"][0]["content"]
        assert len(expired["history"]) == 2 and "actions" not in content
        assert "Expired by cordon:sweeper" in json.dumps(content)
        ((_, run_input),) = tw.w.run.inputs
        assert run_input["decision"] == "expired"
    finally:
        tw.close()


def test_the_bots_connector_token_comes_from_entra_through_msal(tmp_path, monkeypatch, teams):
    """The bot's own token: MSAL's client-credentials grant against Entra's login (the Azure
    sandbox's TLS stand-in: OpenID configuration, then the token endpoint), scope
    ``https://api.botframework.com/.default``; it reaches the connector as the Bearer token, and
    MSAL's cache keeps it (one token request for two sends). A wrong secret is Entra's refusal."""
    from cordon.sandbox.azure import AzureSandbox
    from cordon.teams.client import bot_token_provider

    settings = TeamsSettings(app_id="00000000-0000-0000-0000-0000000b0700", tenant_id="tenant-cordon",
                             app_password_env="CORDON_TEST_BOT_SECRET")
    azure = AzureSandbox().start()
    try:
        azure.standin.add_client(settings.app_id, "bot-secret-1", settings.tenant_id)
        monkeypatch.setenv("CORDON_TEST_BOT_SECRET", "bot-secret-1")
        token = bot_token_provider(settings, login=azure.arm_url, verify=azure.standin.ca_path)
        connector = Connector(teams.service_url, token, sleep=lambda s: None)
        for _ in range(2):
            connector.send(CONVERSATION, {"type": "message", "text": "hello"})
        sent = [r["headers"]["authorization"] for r in teams.requests[-2:]]
        issued = [t for t, grant in azure.standin.tokens.items() if grant["scope"] == "https://api.botframework.com/.default"]
        assert len(issued) == 1 and sent == [f"Bearer {issued[0]}"] * 2
        monkeypatch.setenv("CORDON_TEST_BOT_SECRET", "wrong")
        with pytest.raises(RuntimeError, match="no bot token: invalid_client"):
            bot_token_provider(settings, login=azure.arm_url, verify=azure.standin.ca_path)()
    finally:
        azure.stop()


def test_roll_back_from_the_teams_card_under_the_same_policy(tmp_path, aws, teams, verifier):
    """A contained case's card carries *Roll back* (``cordon_rollback``); the click goes to the same
    decider as Slack's button: the suspect and a non-approver are refused, an approver's click undoes
    the containment, and the card says so, without the button."""
    from cordon.respond import run_step

    tw = TeamsWorld(tmp_path, aws, teams, verifier, card=True)
    try:
        assert "approve recorded" in tw.click(ALICE).json()["value"]
        # the card's own refresh after the click runs in the background: let it land first
        assert wait_for(lambda: list(tw.w.ledger.records(case_id=tw.w.case_id, kind_prefix="teams.card_updated")))
        result = run_step(tw.w.plan.steps[0], tw.w.detection, tw.w.clients)  # as the run's task does
        assert result.status == "contained"
        tw.w.ledger.append("action.contained", result.model_dump(), case_id=tw.w.case_id, run_id=RUN_ID)
        tw.w.ledger.set_case(tw.w.case_id, status="contained")
        cards = TeamsCards(tw.w.ledger, tw.connector)
        assert cards.show_status(tw.w.case_id, RUN_ID, "contained", ["Verified: 1 of 1 step(s) hold."], rollback=True)
        content = tw.card()["attachments"][0]["content"]
        assert [a["verb"] for a in content["actions"]] == ["cordon_rollback"]
        iam = aws.clients("iam", account_id="111122223333")

        def status() -> str:
            return iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"][0]["Status"]

        assert status() == "Inactive"
        assert "no self-approval" in tw.click(MALLORY, "cordon_rollback").json()["value"]
        assert "not an approver" in tw.click(EVE, "cordon_rollback").json()["value"]
        assert status() == "Inactive"
        said = tw.click(BOB, "cordon_rollback").json()["value"]
        assert "rollback of" in said and "done" in said, said
        assert status() == "Active" and tw.w.ledger.case(tw.w.case_id)["status"] == "rolled_back"
        wait_for(lambda: "Rolled back" in json.dumps(tw.card()))
        final = tw.card()["attachments"][0]["content"]
        assert "actions" not in final and "rolled_back" in json.dumps(final)
    finally:
        tw.close()


def test_mark_done_from_the_teams_card_under_the_same_policy(tmp_path, aws, teams, verifier):
    """A case awaiting a person's step shows the step and *Mark done* (``cordon_manual_done``) on
    the card; the click goes to the same decider: the suspect is refused, an approver's click
    records ``manual.done``, closes the case contained, and the card says who did it."""
    tw = TeamsWorld(tmp_path, aws, teams, verifier, card=True)
    try:
        assert "approve recorded" in tw.click(ALICE).json()["value"]
        # the card's own refresh after the click runs in the background: let it land first
        assert wait_for(lambda: list(tw.w.ledger.records(case_id=tw.w.case_id, kind_prefix="teams.card_updated")))
        steps = [{"id": "delete-app-passwords", "text": "Delete the app passwords on the per-user MFA page."}]
        approval = {"decision": "approve", "approver": f"teams:{ALICE}"}
        tw.w.ledger.close_case(tw.w.case_id, "awaiting_manual", {"status": "awaiting_manual", "verified": True,
                                                                 "approval": approval, "manual": steps}, run_id=RUN_ID)
        cards = TeamsCards(tw.w.ledger, tw.connector)
        assert cards.show_status(tw.w.case_id, RUN_ID, "awaiting_manual", ["Verified"], manual=steps)
        content = tw.card()["attachments"][0]["content"]
        assert [a["verb"] for a in content["actions"]] == ["cordon_manual_done"]
        assert "Delete the app passwords" in json.dumps(content)
        assert "no self-approval" in tw.click(MALLORY, "cordon_manual_done").json()["value"]
        assert tw.w.ledger.case(tw.w.case_id)["status"] == "awaiting_manual"
        said = tw.click(BOB, "cordon_manual_done").json()["value"]
        assert "marked done" in said and tw.w.ledger.case(tw.w.case_id)["status"] == "contained", said
        (done,) = [r.payload for r in tw.w.ledger.records(case_id=tw.w.case_id, kind_prefix="manual.done")]
        assert done == {"step": "delete-app-passwords", "by": f"teams:{BOB}"}
        wait_for(lambda: f"marked done by teams:{BOB}" in json.dumps(tw.card()))
        assert "actions" not in tw.card()["attachments"][0]["content"]
    finally:
        tw.close()
