"""The watch after containment (issue 14, item 2): a contained credential is read again and searched
for in CloudTrail for the playbook's ``watch`` window, and raised in Slack when it is used or comes
back. Real parts: the AWS sandbox (moto's server, and the stand-in's CloudTrail ``LookupEvents``) over
real HTTP, the real respond flow to contain the example's key first, the Slack stand-in; the last
test waits for the scheduled watch of ``cordon worker`` to find a use by itself.

The use of the key is a CloudTrail record in the documented shape
(https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html),
written here: the shared corpus has no record of a contained key being used again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cordon.flows.watch import watch_windows
from cordon.playbooks.schema import load_playbooks
from cordon.sandbox.aws import sandbox_clients
from cordon.sandbox.slack_standin import SlackStandIn
from cordon.watch import due, recorded_cloud, slack_alerter, watch_case
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudtrail-create-access-key.json"
ACCOUNT = "111122223333"


def used_by(key: str, user: str, when: datetime, name: str = "ListBuckets", ip: str = "203.0.113.77") -> dict:
    """A CloudTrail record of a call signed with ``key``."""
    return {"eventVersion": "1.09", "eventID": str(uuid.uuid4()), "eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": "s3.amazonaws.com", "eventName": name, "awsRegion": "us-east-1",
            "sourceIPAddress": ip, "userAgent": "aws-cli/2.15.0", "readOnly": True,
            "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLEBUILDBOT1", "accountId": ACCOUNT,
                             "arn": f"arn:aws:iam::{ACCOUNT}:user/{user}", "accessKeyId": key, "userName": user},
            "recipientAccountId": ACCOUNT, "eventType": "AwsApiCall", "managementEvent": True}


def test_every_aws_key_playbook_watches_for_30_minutes():
    from cordon.config import DEFAULTS

    windows = watch_windows(load_playbooks(DEFAULTS / "playbooks"))
    assert windows["aws-access-key-created"] == 1800
    assert windows["aws-login-profile"] == 1800 and windows["aws-backdoor-user"] == 1800
    assert "gcp-iam-grant" not in windows  # not searched there yet: no watch declared


def test_a_contained_key_used_or_reenabled_is_raised_once_each(responder, aws):
    report = responder.intake([EXAMPLE])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert summary["status"] == "contained"
    case_id, ledger = summary["case_id"], responder.ledger
    key = summary["detection"]["credential"]["uid"]
    user = summary["detection"]["credential"]["owner"]["name"]
    windows = {"aws-access-key-created": 1800}
    now = datetime.now(UTC)
    (item,) = due(ledger, windows, now)
    assert item.case_id == case_id and item.ends_at - item.contained_at == timedelta(seconds=1800)
    cloud, where, _ = recorded_cloud(ledger, case_id, list(ledger.records(case_id=case_id)))
    assert where == "in_process" and cloud.get("sandbox")  # the flow skips these; the test reaches the sandbox
    clients = sandbox_clients(aws.cloud_params())
    slack = SlackStandIn()
    slack_url = slack.start()
    try:
        from slack_sdk import WebClient

        alert = slack_alerter(ledger, WebClient(token="xoxb-test", base_url=slack_url), "C0ALERTS01")
        quiet = watch_case(ledger, item, clients, now, alert)
        assert quiet == {"case_id": case_id, "held": True, "used": [], "alert": False, "ended": False}

        # the key is used after containment (CloudTrail has the call): raised once
        aws.standin.add_events([used_by(key, user, item.contained_at + timedelta(seconds=5))])
        used = watch_case(ledger, item, clients, now, alert)
        assert used["alert"] and used["held"] and [e["event_name"] for e in used["used"]] == ["ListBuckets"]
        assert used["used"][0]["source_ip"] == "203.0.113.77"
        again = watch_case(ledger, item, clients, now, alert)
        assert not again["alert"] and again["used"] == []  # the same event is not raised twice

        # the key is re-enabled (the attacker's second foothold): raised once, while it stays live
        aws.clients("iam").update_access_key(UserName=user, AccessKeyId=key, Status="Active")
        live = watch_case(ledger, item, clients, now, alert)
        assert live["alert"] and live["held"] is False
        assert not watch_case(ledger, item, clients, now, alert)["alert"]

        # past the window: the last pass ends the watch, and the case is due no more
        end = watch_case(ledger, item, clients, item.ends_at + timedelta(seconds=1), alert)
        assert end["ended"]
        assert due(ledger, windows, item.ends_at + timedelta(seconds=2)) == []
        posted = [r for r in slack.requests if r.method == "chat.postMessage"]
        assert len(posted) == 2 and all(key in r.body["text"] for r in posted)
        assert "used 1 time(s)" in posted[0].body["text"] and "no longer holds" in posted[1].body["text"]
    finally:
        slack.stop()
    kinds = [r.kind for r in ledger.records(case_id=case_id) if r.kind.startswith(("watch.", "slack."))]
    assert kinds.count("watch.checked") == 6 and kinds.count("watch.alert") == 2
    assert kinds.count("slack.watch_alert_posted") == 2 and kinds[-1] == "watch.ended"
    assert ledger.verify().ok


def test_a_use_in_the_second_containment_happened_in_is_found(responder, aws):
    """CloudTrail's ``eventTime`` has whole seconds: a use stamped with the second the case was
    contained in (before its fraction) is searched for too, not lost to the rounding."""
    from cordon.detections.model import Detection
    from cordon.providers.aws.watch import credential_usage

    report = responder.intake([EXAMPLE])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    ledger = responder.ledger
    (item,) = due(ledger, {"aws-access-key-created": 1800}, datetime.now(UTC))
    detection = Detection.model_validate_json(ledger.case(summary["case_id"])["detection"])
    since = item.contained_at.replace(microsecond=999_000)  # late in its second: the event's stamp is before it
    key, user = detection.credential.uid, detection.credential.owner.name
    aws.standin.add_events([used_by(key, user, since)])  # eventTime: the whole second
    used = credential_usage(detection, since, sandbox_clients(aws.cloud_params()))
    assert [e["access_key_id"] for e in used] == [key]


def test_the_flow_skips_what_an_in_process_sandbox_run_contained(responder, aws, monkeypatch):
    from cordon.flows.watch import watch_contained

    report = responder.intake([EXAMPLE])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    (out,) = watch_contained.fn()
    assert out["case_id"] == summary["case_id"] and "sandbox" in out["skipped"]
    assert watch_contained.fn() == []  # ended: not due again
