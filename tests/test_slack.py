"""Slack approval messages against the Slack stand-in, through the real slack_sdk WebClient.

Both sides are asserted: what the SDK returned, what the stand-in stored, and the request it saw.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse
from datetime import UTC, datetime

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from cordon.action import ApiCall
from cordon.detections.model import Actor, Credential, Detection, Location, Principal, RawRef, RuleRef, record_sha256
from cordon.sandbox.slack_standin import SlackStandIn, block_actions_payload
from cordon.slack.blocks import approval_blocks, fallback_text, status_blocks
from cordon.slack.client import make_client, post_approval, update_message
from cordon.slack.verify import (
    DecisionOutcome,
    InteractionError,
    SignatureError,
    UnsupportedInteraction,
    parse_interaction,
    verify_request,
)

KEY_ID = "AKIAQXAMPLE7NEWKEY01"
USER_ARN = "arn:aws:iam::111122223333:user/ci-deployer"
ACTOR_ARN = "arn:aws:iam::111122223333:user/mallory"
RUN_ID = "5c1d7a2e-9b7f-4f4e-8d0a-6a1f0c3e2b11"
CASE_ID = "case-0123456789ab"
PLAN_HASH = hashlib.sha256(b"the plan").hexdigest()


def make_detection(with_credential: bool = True) -> Detection:
    raw = {
        "eventVersion": "1.09",
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateAccessKey",
        "eventTime": "2024-05-02T10:15:30Z",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "203.0.113.77",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6 <script>",
        "userIdentity": {"type": "IAMUser", "arn": ACTOR_ARN, "userName": "mallory",
                         "accessKeyId": "AKIAMALLORYSESSION01", "accountId": "111122223333"},
        "requestParameters": {"userName": "ci-deployer"},
        "responseElements": {"accessKey": {"accessKeyId": KEY_ID, "status": "Active", "userName": "ci-deployer"}},
    }
    target = Principal(uid=USER_ARN, name="ci-deployer", type="IAMUser", account_uid="111122223333")
    return Detection(
        uid="det-" + record_sha256(raw)[:16],
        provider="aws",
        source="cloudtrail",
        event_name="CreateAccessKey",
        technique_ids=["T1098.001"],
        rule=RuleRef(type="sigma", uid="0a1b2c3d-1111-2222-3333-444455556666",
                     name="IAM access key created for another user"),
        severity="high",
        time=datetime(2024, 5, 2, 10, 15, 30, tzinfo=UTC),
        account_uid="111122223333",
        region="us-east-1",
        actor=Actor(user=Principal(uid=ACTOR_ARN, name="mallory", type="IAMUser", account_uid="111122223333"),
                    session_uid="AKIAMALLORYSESSION01", mfa=False, src_ip="203.0.113.77",
                    user_agent="aws-cli/2.15.0 Python/3.11.6 <script>", access_path="api"),
        target=target,
        credential=Credential(kind="aws_access_key", uid=KEY_ID, owner=target,
                              attributes={"status": "Active"}) if with_credential else None,
        raw_ref=RawRef(origin="test", position=0, sha256=record_sha256(raw)),
        raw=raw,
    )


def make_plan() -> list[dict]:
    deactivate = ApiCall(service="iam", operation="UpdateAccessKey",
                         params={"AccessKeyId": KEY_ID, "Status": "Inactive", "UserName": "ci-deployer"})
    tag = ApiCall(service="iam", operation="TagUser",
                  params={"UserName": "ci-deployer", "Tags": "[{'Key': 'cordon-case', 'Value': 'case-0123'}]"})
    login = ApiCall(service="iam", operation="DeleteLoginProfile", params={"UserName": "ci-deployer"})
    return [
        {"action": "aws.deactivate-access-key", "target": f"{USER_ARN} access-key {KEY_ID}",
         "calls": [deactivate.describe(), tag.describe()]},
        {"action": "aws.delete-login-profile", "target": f"{USER_ARN} login-profile", "calls": [login.describe()]},
    ]


ENRICHMENT = {
    "aws.iam-user": {
        "access_keys": [
            {"AccessKeyId": "AKIAQXAMPLEOLDKEY000", "Status": "Active", "CreateDate": "2023-01-09T08:00:00Z"},
            {"AccessKeyId": KEY_ID, "Status": "Active", "CreateDate": "2024-05-02T10:15:30Z"},
        ],
        "policies": {"attached": [{"PolicyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}], "inline": []},
        "groups": [{"GroupName": "deployers"}],
    },
    "aws.cloudtrail-session": {"events": [{"eventName": "CreateAccessKey"}, {"eventName": "ListUsers"},
                                          {"eventName": "ListUsers"}]},
}


def all_text(blocks: list[dict]) -> str:
    """Every text string in a block list (what a reader of the message sees)."""
    out: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "text" and isinstance(v, str):
                    out.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(blocks)
    return "\n".join(out)


def buttons(blocks: list[dict]) -> dict[str, dict]:
    return {el["action_id"]: el for b in blocks if b["type"] == "actions" for el in b["elements"]}


@pytest.fixture
def standin():
    with SlackStandIn() as s:
        yield s


def build_blocks(detection: Detection | None = None, enrichment=None, plan=None) -> list[dict]:
    det = detection or make_detection()
    return approval_blocks(CASE_ID, "aws-access-key-persistence", det.summary(),
                           ENRICHMENT if enrichment is None else enrichment,
                           make_plan() if plan is None else plan, PLAN_HASH, RUN_ID, "2024-05-02T11:15:30+00:00")


# -- posting and updating ---------------------------------------------------------------------
def test_post_approval_both_sides(standin):
    client = WebClient(token="xoxb-test", base_url=standin.base_url)
    det = make_detection()
    blocks = build_blocks(det)
    text = fallback_text("aws-access-key-persistence", det.summary())

    channel_id, ts = post_approval(client, "#security-approvals", blocks, text)

    # SDK side: the stand-in's channel ID and a ts.
    assert channel_id == "C0APPROVALS"
    assert ts and float(ts) > 0
    # Stand-in side: the message as stored.
    [msg] = standin.messages("security-approvals")
    assert msg["ts"] == ts and msg["blocks"] == blocks and msg["text"] == text
    btn = buttons(msg["blocks"])
    assert set(btn) == {"cordon_approve", "cordon_deny"}
    assert btn["cordon_approve"]["style"] == "primary" and btn["cordon_deny"]["style"] == "danger"
    assert "confirm" in btn["cordon_approve"]
    for action_id, decision in (("cordon_approve", "approve"), ("cordon_deny", "deny")):
        assert json.loads(btn[action_id]["value"]) == {"run_id": RUN_ID, "case_id": CASE_ID,
                                                       "plan_hash": PLAN_HASH, "decision": decision}
    seen = all_text(msg["blocks"])
    for step in make_plan():
        for call in step["calls"]:
            assert call in seen
    for fact in (ACTOR_ARN, USER_ARN, KEY_ID, "203.0.113.77", "T1098.001", "CreateAccessKey", "*no*",
                 "AdministratorAccess", "deployers", "3 CloudTrail events", "ListUsers x2", PLAN_HASH):
        assert fact in seen, fact
    # mrkdwn control characters from the record are escaped, not interpreted.
    assert "&lt;script&gt;" in seen and "<script>" not in seen
    # The new key is marked as the detection's, the old one is not.
    assert f"`{KEY_ID}` Active, 2024-05-02T10:15:30Z ← *this detection*" in seen
    # Request side: method, bearer token, JSON body.
    [req] = standin.requests
    assert req.method == "chat.postMessage" and req.path == "/api/chat.postMessage"
    assert req.headers["authorization"] == "Bearer xoxb-test"
    assert req.headers["content-type"].startswith("application/json")
    assert req.body["channel"] == "#security-approvals" and req.body["blocks"] == blocks


def test_update_in_place_removes_buttons(standin):
    client = WebClient(token="xoxb-test", base_url=standin.base_url)
    det = make_detection()
    channel_id, ts = post_approval(client, "security-approvals", build_blocks(det), "approval needed")

    new_blocks = status_blocks(
        CASE_ID, "aws-access-key-persistence", det.summary(), PLAN_HASH, RUN_ID, state="failed",
        decided_by="U0ALICE01", decided_at="2024-05-02T10:20:00+00:00",
        actions=[{"name": "aws.deactivate-access-key", "target": KEY_ID, "status": "contained"},
                 {"name": "aws.delete-login-profile", "target": "ci-deployer", "status": "failed",
                  "error": "ClientError: AccessDenied"}],
        note="Verification: key inactive.")
    answer = update_message(client, channel_id, ts, new_blocks, "Cordon: containment failed")

    assert answer["ok"] is True and answer["ts"] == ts and answer["channel"] == channel_id
    msg = standin.message(channel_id, ts)
    assert msg["blocks"] == new_blocks and msg["text"] == "Cordon: containment failed"
    assert not any(b["type"] == "actions" for b in msg["blocks"])
    text = all_text(msg["blocks"])
    assert "<@U0ALICE01>" in text and "ClientError: AccessDenied" in text and "*failed*" in text
    assert len(msg["history"]) == 1
    assert any(b["type"] == "actions" for b in msg["history"][0]["blocks"])
    assert [r.method for r in standin.requests] == ["chat.postMessage", "chat.update"]
    assert standin.requests[1].body["ts"] == ts


def test_update_unknown_message_is_an_error(standin):
    client = make_client("xoxb-test", base_url=standin.base_url)
    with pytest.raises(SlackApiError) as err:
        update_message(client, "C0APPROVALS", "1700000000.000001", [], "x")
    assert err.value.response["error"] == "message_not_found"


# -- retries are slack_sdk's, enabled by post_approval ----------------------------------------
def test_rate_limited_once_is_retried(standin):
    standin.fail_next("chat.postMessage", status=429, headers={"Retry-After": "0"}, times=1)
    client = WebClient(token="xoxb-test", base_url=standin.base_url)
    channel_id, ts = post_approval(client, "security-approvals", build_blocks(), "approval needed")
    reqs = standin.requests_for("chat.postMessage")
    assert [r.status for r in reqs] == [429, 200]
    assert [m["ts"] for m in standin.messages("C0APPROVALS")] == [ts]


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_once_is_retried(standin, status):
    standin.fail_next("chat.postMessage", status=status)
    client = WebClient(token="xoxb-test", base_url=standin.base_url)
    post_approval(client, "security-approvals", build_blocks(), "approval needed")
    assert [r.status for r in standin.requests_for("chat.postMessage")] == [status, 200]
    assert len(standin.messages("security-approvals")) == 1


def test_without_the_handlers_a_429_is_an_error(standin):
    # Shows what the handlers buy: slack_sdk's default client does not retry 429.
    standin.fail_next("chat.postMessage", status=429)
    client = WebClient(token="xoxb-test", base_url=standin.base_url)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="security-approvals", text="hi")
    assert err.value.response.status_code == 429
    assert standin.messages("security-approvals") == []


def test_bad_and_missing_token(standin):
    with pytest.raises(SlackApiError) as err:
        post_approval(WebClient(token="xoxb-wrong", base_url=standin.base_url), "security-approvals",
                      build_blocks(), "x")
    assert err.value.response["error"] == "invalid_auth"
    assert standin.requests[0].headers["authorization"] == "Bearer xoxb-wrong"
    with pytest.raises(SlackApiError) as err:
        WebClient(base_url=standin.base_url).chat_postMessage(channel="security-approvals", text="x")
    assert err.value.response["error"] == "not_authed"
    assert standin.messages("security-approvals") == []


def test_other_methods(standin):
    client = make_client("xoxb-test", base_url=standin.base_url)
    assert client.auth_test()["team_id"] == standin.team_id
    user = client.users_info(user="U0ALICE01")["user"]
    assert user["name"] == "alice" and user["profile"]["email"] == "alice@example.com"
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U0NOBODY0")
    assert err.value.response["error"] == "user_not_found"
    ts = client.chat_postEphemeral(channel="C0APPROVALS", user="U0BOB0002", text="only you")["message_ts"]
    assert standin.ephemerals("security-approvals") == [
        {"ts": ts, "user": "U0BOB0002", "text": "only you", "blocks": []}]
    with pytest.raises(SlackApiError) as err:
        client.api_call("chat.doesNotExist")
    assert err.value.response["error"] == "unknown_method"
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="#nowhere", text="x")
    assert err.value.response["error"] == "channel_not_found"


# -- Slack's limits ---------------------------------------------------------------------------
def test_huge_plan_stays_within_slack_limits(standin):
    long_call = ApiCall(service="iam", operation="DetachUserPolicy",
                        params={"UserName": "ci-deployer", "PolicyArn": "arn:aws:iam::aws:policy/" + "X" * 150})
    plan = [{"action": f"aws.step-{i}", "target": f"{USER_ARN} thing-{i}", "calls": [long_call.describe()] * 40}
            for i in range(80)]
    blocks = build_blocks(plan=plan)
    assert len(blocks) <= 50
    for b in blocks:
        if b["type"] == "section":
            assert len(b["text"]["text"]) <= 3000
            assert all(len(f["text"]) <= 2000 for f in b.get("fields", []))
    text = all_text(blocks)
    assert "more call(s) not shown" in text and "by name only" in text
    assert "aws.step-0*" in text and long_call.describe() in text
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    plan_text = "".join(t for t in sections if "aws.step-" in t)
    assert len(plan_text) <= 12000
    # The stand-in enforces the same limits Slack does, and accepts the message.
    client = make_client("xoxb-test", base_url=standin.base_url)
    post_approval(client, "security-approvals", blocks, "x")
    assert buttons(standin.messages("security-approvals")[0]["blocks"])


def test_enormous_plan_falls_back_to_names_and_counts(standin):
    plan = [{"action": f"aws.step-{i}", "target": f"thing-{i}", "calls": [f"iam:Op{i}(X=1)"]} for i in range(2000)]
    blocks = build_blocks(plan=plan)
    assert len(blocks) <= 50
    text = all_text(blocks)
    assert "iam:Op0(X=1)" in text and "by name only" in text and "more step(s)" in text
    assert "aws.step-1999" not in text
    assert f"recorded in the ledger for case `{CASE_ID}`" in text
    post_approval(make_client("xoxb-test", base_url=standin.base_url), "security-approvals", blocks, "x")


def test_standin_rejects_over_limit_blocks(standin):
    client = make_client("xoxb-test", base_url=standin.base_url)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="security-approvals", text="x",
                                blocks=[{"type": "divider"}] * 51)
    assert err.value.response["error"] == "invalid_blocks"


def test_blocks_with_no_credential_and_no_enrichment():
    blocks = build_blocks(make_detection(with_credential=False), enrichment={}, plan=[])
    text = all_text(blocks)
    assert "not named by the detection" in text and "plan is empty" in text
    assert "Enrichment" not in text
    assert json.loads(buttons(blocks)["cordon_deny"]["value"])["run_id"] == RUN_ID


def test_enrichment_error_and_unknown_shapes():
    enrichment = {"aws.iam-user": {"error": "AccessDenied: iam:ListAccessKeys"},
                  "aws.cloudtrail-session": "weird", "custom.lookup": {"hits": [1, 2, 3], "verdict": "bad"}}
    text = all_text(build_blocks(enrichment=enrichment))
    assert ":warning: `aws.iam-user` failed: AccessDenied" in text
    assert "hits: 3 item(s); verdict: bad" in text


# -- inbound: signatures and payloads ---------------------------------------------------------
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def slack_signature(secret: str, ts: str, body: bytes) -> str:
    """Computed here, independently of the code under test, as Slack documents it."""
    return "v0=" + hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()


def test_verify_request_reasons():
    body = b"payload=%7B%7D"
    now = 1_714_644_930
    ts = str(now - 10)
    good = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": slack_signature(SECRET, ts, body)}
    assert verify_request(SECRET, good, body, now=now) is None
    assert verify_request(SECRET, {k.lower(): v for k, v in good.items()}, body, now=now) is None

    cases = [
        ({"X-Slack-Signature": good["X-Slack-Signature"]}, body, now, "missing_header"),
        ({"X-Slack-Request-Timestamp": ts}, body, now, "missing_header"),
        ({**good, "X-Slack-Request-Timestamp": "yesterday"}, body, now, "bad_timestamp"),
        (good, body, now + 301, "stale_timestamp"),
        (good, body, now - 400, "stale_timestamp"),
        (good, body + b"x", now, "bad_signature"),
        ({**good, "X-Slack-Signature": slack_signature("other-secret", ts, body)}, body, now, "bad_signature"),
        (good, b"\xff\xfe", now, "bad_signature"),
    ]
    for headers, b, at, reason in cases:
        with pytest.raises(SignatureError) as err:
            verify_request(SECRET, headers, b, now=at)
        assert err.value.reason == reason, (headers, b, at)


def test_verify_request_uses_the_real_clock_by_default():
    body = b"payload=x"
    ts = str(int(time.time()))
    verify_request(SECRET, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": slack_signature(SECRET, ts, body)},
                   body)
    old = str(int(time.time()) - 600)
    with pytest.raises(SignatureError):
        verify_request(SECRET, {"X-Slack-Request-Timestamp": old,
                                "X-Slack-Signature": slack_signature(SECRET, old, body)}, body)


def form(payload) -> bytes:
    return urllib.parse.urlencode({"payload": payload if isinstance(payload, str) else json.dumps(payload)}).encode()


def test_parse_interaction_from_a_posted_message(standin):
    client = make_client("xoxb-test", base_url=standin.base_url)
    channel_id, ts = post_approval(client, "security-approvals", build_blocks(), "x")
    msg = standin.message(channel_id, ts)
    url = standin.response_url(channel_id, ts)
    for action_id, decision in (("cordon_approve", "approve"), ("cordon_deny", "deny")):
        payload = block_actions_payload(msg, channel_id, action_id, user_id="U0ALICE01", user_name="alice",
                                        team_id="T0CORDON1", response_url=url)
        it = parse_interaction(form(payload))
        assert (it.decision, it.user_id, it.user_name, it.team_id) == (decision, "U0ALICE01", "alice", "T0CORDON1")
        assert (it.run_id, it.case_id, it.plan_hash) == (RUN_ID, CASE_ID, PLAN_HASH)
        assert (it.channel, it.message_ts, it.response_url) == (channel_id, ts, url)
        assert it.action_ts


def base_payload() -> dict:
    value = {"run_id": RUN_ID, "case_id": CASE_ID, "plan_hash": PLAN_HASH, "decision": "approve"}
    return {"type": "block_actions", "user": {"id": "U0ALICE01", "username": "alice", "team_id": "T0CORDON1"},
            "team": {"id": "T0CORDON1"}, "container": {"type": "message", "message_ts": "1714644930.000100",
                                                       "channel_id": "C0APPROVALS"},
            "response_url": "https://hooks.slack.com/actions/T0/1/abc",
            "actions": [{"action_id": "cordon_approve", "value": json.dumps(value), "type": "button"}]}


def mutate(path: str, value):
    p = base_payload()
    node = p
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return p


@pytest.mark.parametrize(("body", "field"), [
    (b"", "payload"),
    (b"token=abc", "payload"),
    (form("{not json"), "payload"),
    (form([1, 2]), "payload"),
    (form(mutate("user", KeyError)), "user"),
    (form(mutate("user.id", "")), "user.id"),
    (form(mutate("actions", [])), "actions"),
    (form(mutate("actions.0.action_id", "something_else")), "actions[0].action_id"),
    (form(mutate("actions.0.value", "nope")), "actions[0].value"),
    (form(mutate("actions.0.value", json.dumps({"run_id": RUN_ID, "case_id": CASE_ID, "decision": "approve"}))),
     "actions[0].value.plan_hash"),
    (form(mutate("actions.0.value", json.dumps({"run_id": RUN_ID, "case_id": CASE_ID, "plan_hash": PLAN_HASH,
                                                "decision": "deny"}))), "actions[0].value.decision"),
    (form(mutate("container", {})), "container.channel_id"),
])
def test_parse_interaction_malformed(body, field):
    with pytest.raises(InteractionError) as err:
        parse_interaction(body)
    assert err.value.field == field
    assert field in str(err.value)


def test_parse_interaction_fallbacks_and_other_types():
    p = mutate("container", {})
    p["channel"] = {"id": "C0APPROVALS"}
    p["message"] = {"ts": "1714644930.000100"}
    del p["user"]["username"]
    p["user"]["name"] = "alice.a"
    it = parse_interaction(form(p))
    assert (it.channel, it.message_ts, it.user_name) == ("C0APPROVALS", "1714644930.000100", "alice.a")
    with pytest.raises(UnsupportedInteraction) as err:
        parse_interaction(form({"type": "view_submission", "user": {"id": "U1"}}))
    assert err.value.payload_type == "view_submission"


def test_decision_outcome_shape():
    assert DecisionOutcome(False, "stale plan") == DecisionOutcome(accepted=False, message="stale plan")


def test_summary_blocks_from_the_flow_summary(standin, monkeypatch):
    """The flow's ``update_slack`` path: ``web_client(settings)`` and ``status_blocks(summary)``."""
    from cordon.slack.blocks import status_blocks as sb
    from cordon.slack.client import web_client

    monkeypatch.setenv("CORDON_SLACK_BOT_TOKEN", "xoxb-test")
    client = web_client({"channel": "security-approvals", "base_url": standin.base_url})
    channel, ts = post_approval(client, "security-approvals", build_blocks(), "approval needed")
    det = make_detection()
    summary = {"case_id": CASE_ID, "playbook": "aws-access-key-persistence", "flow_run_id": RUN_ID,
               "detection": det.summary(), "status": "contained", "verified": True,
               "plan": {"hash": PLAN_HASH, "steps": make_plan()},
               "approval": {"decision": "approve", "approver": "slack:U0ALICE01"},
               "actions": [{"name": "aws.deactivate-access-key", "target": KEY_ID, "status": "contained",
                            "error": None}],
               "verification": [{"held": True}]}
    update_message(client, channel, ts, sb(summary), "Cordon: contained")
    msg = standin.message(channel, ts)
    text = all_text(msg["blocks"])
    assert "Contained and verified" in text and "Approved by <@U0ALICE01>" in text
    assert "Verification: 1 of 1 step(s) hold" in text and PLAN_HASH in text and RUN_ID in text
    assert not buttons(msg["blocks"])
    refusal = {"decision": "deny", "approver": "slack:U0BOB0002"}
    denied = all_text(sb({**summary, "status": "denied", "approval": refusal, "actions": [], "verification": []}))
    assert "Denied by <@U0BOB0002>" in denied and "Reason:" not in denied
    because = {**refusal, "reason": "rotation by <!channel> the release team"}
    denied = all_text(sb({**summary, "status": "denied", "approval": because, "actions": [], "verification": []}))
    assert "Reason: rotation by &lt;!channel&gt; the release team" in denied  # the typed reason, escaped
    monkeypatch.delenv("CORDON_SLACK_BOT_TOKEN")
    with pytest.raises(RuntimeError):
        web_client({"base_url": standin.base_url})


def test_gcp_approval_shows_the_service_account_its_roles_and_the_exact_key():
    from cordon.slack.blocks import approval_blocks

    sa = "deploy-bot@p1.iam.gserviceaccount.com"
    key = f"projects/p1/serviceAccounts/{sa}/keys/3f1c9a7e"
    other = f"projects/p1/serviceAccounts/{sa}/keys/aaaa0000"
    enrichment = {"gcp.service-account": {
        "exists": True, "email": sa, "project": "p1", "disabled": False,
        "keys": [{"name": key, "key_id": "3f1c9a7e", "key_type": "USER_MANAGED", "disabled": False},
                 {"name": other, "key_id": "aaaa0000", "key_type": "SYSTEM_MANAGED", "disabled": False}],
        "project_roles": [{"role": "roles/editor"}],
        "can_act_as": [{"member": "user:mallory@example.com", "role": "roles/iam.serviceAccountTokenCreator"}]}}
    plan = [{"action": "gcp.disable-sa-key", "target": key,
             "calls": [f"iam.v1:projects.serviceAccounts.keys.disable(name={key})"]}]
    blocks = approval_blocks(case_id="case-1", playbook="gcp-sa-key-created",
                             detection={"provider": "gcp", "credential": {"kind": "gcp_sa_key", "uid": key}},
                             enrichment=enrichment, plan=plan, plan_hash="h" * 64, run_id="run-1", expires_at=None)
    text = json.dumps(blocks, ensure_ascii=False)
    assert sa in text and "roles/editor" in text and "user:mallory@example.com" in text
    assert "3f1c9a7e` USER_MANAGED, enabled ← *this detection*" in text
    assert "aaaa0000` SYSTEM_MANAGED, enabled" in text and "aaaa0000` SYSTEM_MANAGED, enabled ←" not in text


def test_approval_message_links_to_the_ledger_and_the_run(monkeypatch):
    monkeypatch.delenv("CORDON_PUBLIC_URL", raising=False)
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    bare = json.dumps(build_blocks())
    assert "audit/cases" not in bare and "flow-run" not in bare
    monkeypatch.setenv("CORDON_PUBLIC_URL", "https://cordon.example.com/")
    monkeypatch.setenv("PREFECT_UI_URL", "https://prefect.example.com")
    linked = json.dumps(build_blocks())
    assert f"<https://cordon.example.com/audit/cases/{CASE_ID}|ledger timeline>" in linked
    assert f"<https://prefect.example.com/runs/flow-run/{RUN_ID}|Prefect run>" in linked


@pytest.mark.parametrize("actor, expected", [
    ({"src_ip": "102.89.1.1", "src_location": {"city": "Lagos", "country": "NG", "desc": "Nigeria",
                                               "isp": "Globacom"}}, "Lagos, Nigeria (NG) · Globacom"),
    ({"src_ip": "203.0.113.77"}, "documentation range (RFC 5737 / 3849): a sample or test record"),
    ({"src_ip": "10.1.2.3"}, "private network (inside a VPC or on-premises)"),
    ({"src_ip": "8.8.8.8"}, "public internet; the record gives no location"),
    ({"src_ip": "cloudformation.amazonaws.com"}, "not an IP address (a cloud service or internal caller)"),
    ({}, None),
])
def test_the_place_of_a_source_ip(actor, expected):
    from cordon.slack.blocks import place_of

    assert place_of(actor) == expected


def test_approval_message_shows_where_the_actor_was():
    det = make_detection()
    det.actor.src_location = Location(city="Lagos", country="NG", desc="Nigeria")
    text = json.dumps(approval_blocks(CASE_ID, "aws-access-key-persistence", det.summary(), ENRICHMENT, make_plan(),
                                      PLAN_HASH, RUN_ID, None))
    assert "Lagos, Nigeria (NG)" in text


# -- names first, what happened in words (issue 11) ------------------------------------------
@pytest.mark.parametrize("kind,owner,expected", [
    ("azure_sp_password", {"uid": "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40", "name": "payments-api",
                           "type": "ServicePrincipal"}, "New client secret on payments-api"),
    ("aws_access_key", {"uid": "arn:aws:iam::111122223333:user/alice", "type": "IAMUser"},
     "New access key for IAM user alice"),
    ("gcp_sa_key", {"uid": "sa@proj.iam.gserviceaccount.com", "type": "ServiceAccount"},
     "New service-account key on sa@proj.iam.gserviceaccount.com"),
    ("azure_sp_key", {"name": "payments-api"}, "New certificate on payments-api"),
    ("aws_iam_user", {"name": "backdoor"}, "New IAM user backdoor"),
    ("gcp_api_key", {}, "New API key in account acme-prod"),  # no owner, no target: the account
    ("some_future_kind", {"name": "x"}, "New some future kind on x"),  # generic
])
def test_what_happened_from_the_credential_kind_and_owner(kind, owner, expected):
    from cordon.slack.blocks import what_happened

    assert what_happened({"account_uid": "acme-prod", "credential": {"kind": kind, "owner": owner}}) == expected


def test_every_credential_kind_has_a_phrase():
    from cordon.providers import credential_kinds
    from cordon.slack.render import credential_phrases

    assert set(credential_kinds()) == set(credential_phrases())


def test_what_happened_without_a_credential_and_principal_names():
    from cordon.slack.blocks import principal_name, what_happened

    assert what_happened({"event_name": "ConsoleLogin", "credential": None}) == "ConsoleLogin"
    assert principal_name({"uid": "arn:aws:sts::1:assumed-role/Admin/session-1"}) == "Admin/session-1"
    assert principal_name({"uid": "arn:aws:iam::111122223333:root"}) == "root"
    assert principal_name({"uid": "5d7b0c1e", "name": "mallory@contoso.example"}) == "mallory@contoso.example"
    assert principal_name({}) is None and principal_name(None) is None


def entra_detection() -> dict:
    """The shipped Entra example, through the real intake and Sigma (no hand-made detection)."""
    from pathlib import Path

    from cordon.config import load_config
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.sigma import RuleSet

    repo = Path(__file__).resolve().parents[1]
    example = repo / "examples" / "entra-add-sp-credentials.json"
    rules = RuleSet.load(load_config(repo / "cordon" / "defaults").rules_dir)
    (det,) = [d for d in detect(read_inputs([example]), rules) if isinstance(d, Detection)]
    return det.summary()


def test_entra_approval_names_first_guids_second(standin):
    det = entra_detection()
    blocks = approval_blocks(CASE_ID, "azure-sp-credential-added", det, {}, make_plan(), PLAN_HASH, RUN_ID,
                             "2024-05-02T11:15:30+00:00")
    header = blocks[0]
    assert header["type"] == "header" and header["text"]["text"] == "New client secret on payments-api"
    fields = "\n".join(f["text"] for b in blocks if b["type"] == "section" for f in b.get("fields", []))
    # the names are in the fields; the GUIDs are not
    assert "`mallory@contoso.example` (User)" in fields and "`payments-api` (ServicePrincipal)" in fields
    for guid in ("5d7b0c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e", "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40",
                 "72f988bf-86f1-41af-91ab-2d7cd011db47"):
        assert guid not in fields
    # ... but in the small context line right under them
    (ids,) = [b for b in blocks if b["type"] == "context" and b["elements"][0]["text"].startswith("IDs: ")]
    id_text = ids["elements"][0]["text"]
    for guid in ("5d7b0c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e", "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40",
                 "e4a7c9b1-3d5f-4e6a-8b0c-2d4f6a8c0e1b", "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                 "72f988bf-86f1-41af-91ab-2d7cd011db47"):
        assert guid in id_text, guid
    assert blocks.index(ids) > next(i for i, b in enumerate(blocks) if "*Target*" in json.dumps(b))
    assert "client secret `sync`" in fields
    seen = all_text(blocks)
    assert "None" not in seen and "null" not in seen
    # the notification text names actor, target and credential
    text = fallback_text("azure-sp-credential-added", det, case_id=CASE_ID)
    assert text.startswith("Cordon: approval needed: New client secret on payments-api, by mallory@contoso.example")
    assert "target payments-api" in text and "credential client secret sync e4a7c9b1-" in text and CASE_ID in text
    # and Slack accepts the message as built
    client = WebClient(token="xoxb-test", base_url=standin.base_url)
    post_approval(client, "security-approvals", blocks, text)
    (msg,) = standin.messages("security-approvals")
    assert msg["text"] == text


def test_names_from_arns_and_no_empty_fields_and_hostile_names_stay_escaped():
    det = make_detection().summary()
    det["credential"]["attributes"] = {"status": "Active", "principal_subject": None, "empty": ""}
    det["target"]["name"] = None
    det["credential"]["owner"] = dict(det["target"])
    det["actor"]["user"]["name"] = "<!channel> & <https://evil.example|click>"
    blocks = approval_blocks(CASE_ID, "aws-access-key-persistence", det, {}, make_plan(), PLAN_HASH, RUN_ID, None)
    assert blocks[0]["text"]["text"] == "New access key for IAM user ci-deployer"  # the ARN's user name
    seen = all_text(blocks)
    assert "principal_subject" not in seen and "empty=" not in seen and "None" not in seen
    assert "<!channel>" not in seen and "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in seen
    assert USER_ARN in seen  # the ARN is still there, in the ID line
    text = fallback_text("aws-access-key-persistence", det)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "target ci-deployer" in text and f"credential access key {KEY_ID}" in text
    # the status message says what happened too
    status = status_blocks(CASE_ID, "aws-access-key-persistence", det, PLAN_HASH, RUN_ID, state="denied")
    assert status[0]["text"]["text"] == "Denied: New access key for IAM user ci-deployer"
