"""The root user's own access key (issue 14, item 6): ``CreateAccessKey`` signed by the root user with no
user named. With centralized root access (``aws.root_access.management_account`` in ``cordon.yaml``) the
key is deleted through ``sts:AssumeRoot`` (task policy ``IAMDeleteRootUserCredentials``) called in the
management account, then ``iam:DeleteAccessKey`` signed with the root session: exactly that key, not
reversible. Without it (or for the management account itself) nothing is called and the exact manual
steps are recorded.

The rule is tested on Panther's sample records (panther-labs/panther-analysis @ daa10c88,
``rules/aws_cloudtrail_rules/aws_root_access_key_created.yml``, read from ``../shared/data/real/``). The
record contained below is built in the documented CloudTrail shape (the ``userIdentity`` reference's
``Root`` example: ``principalId`` and ``accountId`` the account, ``arn`` ``arn:aws:iam::<account>:root``;
``responseElements.accessKey`` as ``CreateAccessKey`` answers; console session) because Panther's uses the
placeholder key ID ``1111``, which no AWS API accepts. moto has neither ``AssumeRoot`` nor root access
keys: the sandbox's stand-in serves them over HTTP, and boto3's own STS and IAM clients talk to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cordon.action import ActionContext, GuardError, get_action
from tests.conftest import SHARED_DATA, detection_from_event
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

MEMBER = "444455556666"
MANAGEMENT = "111122223333"
KEY = "AKIAIOSFODNN7ROOTKEY"
OTHER = "AKIAIOSFODNN7OLDROOT"
REPO = Path(__file__).resolve().parents[1]
PANTHER = SHARED_DATA / "panther-analysis" / "rules" / "aws_cloudtrail_rules" / "aws_root_access_key_created.yml"


def root_record(account: str = MEMBER, key: str = KEY) -> dict:
    """``CreateAccessKey`` by the root user of ``account`` in the console (documented shape)."""
    return {
        "eventVersion": "1.09",
        "userIdentity": {"type": "Root", "principalId": account, "arn": f"arn:aws:iam::{account}:root",
                         "accountId": account, "accessKeyId": "ASIAIOSFODNN7CONSOLE",
                         "sessionContext": {"attributes": {"creationDate": "2026-11-30T09:58:02Z",
                                                           "mfaAuthenticated": "true"}}},
        "eventTime": "2026-11-30T10:02:11Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateAccessKey",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "203.0.113.77",
        "userAgent": "AWS Internal",
        "requestParameters": None,
        "responseElements": {"accessKey": {"accessKeyId": key, "status": "Active",
                                           "createDate": "Nov 30, 2026, 10:02:11 AM"}},
        "requestID": "8a1d3c2e-5f4b-4e6a-9c7d-0b1a2c3d4e5f",
        "eventID": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account,
        "eventCategory": "Management",
        "sessionCredentialFromConsole": "true",
    }


def config(tmp_path: Path, monkeypatch, root_access: dict | None) -> Path:
    data = yaml.safe_load((REPO / "cordon" / "defaults" / "cordon.yaml").read_text())
    data["playbooks"] = str(REPO / "cordon" / "defaults" / "playbooks")
    if root_access is not None:
        data["aws"] = {"hub_account": MANAGEMENT, "root_access": root_access}
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "cordon.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CORDON_CONFIG", str(folder))
    return folder


def ctx(aws, det, **params):
    return ActionContext(detection=det, params={"account_id": MEMBER, "access_key_id": KEY, **params},
                         clients=aws.clients)


def root_keys(aws, account: str = MEMBER) -> list[str]:
    return sorted(k["AccessKeyId"] for k in aws.standin.root_keys.get(account, []))


@pytest.mark.skipif(not PANTHER.exists(), reason="the shared corpus is not here")
def test_the_rule_fires_on_roots_own_key_only():
    from cordon.providers import shipped_rule_dirs
    from cordon.providers.aws.cloudtrail import detection_from_cloudtrail
    from cordon.sigma import RuleSet

    rules = RuleSet.load(shipped_rule_dirs())
    cases = {t["Name"]: t["Log"] for t in yaml.safe_load(PANTHER.read_text())["Tests"]}
    own, for_user = cases["Root Access Key Created"], cases["Root Created Access Key For User"]
    assert "AWS Root User Access Key Created" in {m.title for m in rules.match(own, "aws", "cloudtrail")}
    assert "AWS Root User Access Key Created" not in {m.title for m in rules.match(for_user, "aws", "cloudtrail")}
    (match,) = [m for m in rules.match(own, "aws", "cloudtrail") if m.title == "AWS Root User Access Key Created"]
    det = detection_from_cloudtrail(own, match, "panther", 0)
    assert det.credential.kind == "aws_root_access_key" and det.severity == "critical"
    # root creating a key for a user is that user's key, answered as any other
    assert detection_from_event(for_user).credential.kind == "aws_access_key"


def test_not_configured_gives_the_steps_and_calls_nothing(aws, tmp_path, monkeypatch):
    config(tmp_path, monkeypatch, None)
    det = detection_from_event(root_record())
    aws.seed_from_detection(det)
    facts = get_action("aws.root-access-key")().run(
        ActionContext(detection=det, params={"access_key_id": KEY}, clients=aws.clients))
    assert facts["centralized"] is False and facts["management_account"] is None
    assert "not configured" in facts["why_not"]
    steps = "\n".join(facts["manual_steps"])
    assert f"delete access key {KEY}" in steps and f"root user of account {MEMBER}" in steps
    assert "https://docs.aws.amazon.com/IAM/latest/UserGuide/id_root-user.html" in steps
    result = get_action("aws.delete-root-access-key")().run(ctx(aws, det, management_account=None))
    assert result.status == "refused" and "not configured" in result.error and result.calls == []
    assert "AssumeRoot" not in aws.standin.operations() and root_keys(aws) == [KEY]


def test_the_management_account_itself_is_left_to_a_person(aws, tmp_path, monkeypatch):
    config(tmp_path, monkeypatch, {"management_account": MANAGEMENT})
    det = detection_from_event(root_record(account=MANAGEMENT))
    facts = get_action("aws.root-access-key")().run(
        ActionContext(detection=det, params={"access_key_id": KEY}, clients=aws.clients))
    assert facts["centralized"] is False and "is the management account" in facts["why_not"]
    assert facts["management_account"] is None and f"root user of account {MANAGEMENT}" in facts["manual_steps"][0]
    result = get_action("aws.delete-root-access-key")().run(
        ActionContext(detection=det, params={"account_id": MANAGEMENT, "access_key_id": KEY,
                                             "management_account": MANAGEMENT}, clients=aws.clients))
    assert result.status == "refused" and "management account" in result.error
    assert "AssumeRoot" not in aws.standin.operations()


def test_centralized_root_access_deletes_exactly_the_key(aws, tmp_path, monkeypatch):
    config(tmp_path, monkeypatch, {"management_account": MANAGEMENT})
    det = detection_from_event(root_record())
    aws.seed_from_detection(det)
    aws.standin.add_root_access_key(MEMBER, OTHER)
    facts = get_action("aws.root-access-key")().run(
        ActionContext(detection=det, params={"access_key_id": KEY}, clients=aws.clients))
    assert facts["centralized"] is True and facts["management_account"] == MANAGEMENT
    action = get_action("aws.delete-root-access-key")()
    result = action.run(ctx(aws, det, management_account=MANAGEMENT))
    assert result.status == "contained", result.error
    assert [c.describe() for c in result.calls] == [
        "sts:AssumeRoot(TargetPrincipal=444455556666, TaskPolicyArn={'arn': "
        "'arn:aws:iam::aws:policy/root-task/IAMDeleteRootUserCredentials'})",
        f"iam:DeleteAccessKey(AccessKeyId={KEY})"]
    assert result.before["status"] == "Active" and result.before["root_access_key_ids"] == sorted([KEY, OTHER])
    assert result.after is None and root_keys(aws) == [OTHER]
    # AssumeRoot was asked of the management account, for the member account
    assume = [r for r in aws.standin.requests if r["operation"] == "AssumeRoot"]
    assert assume and {r["account"] for r in assume} == {MANAGEMENT}
    assert all(s["account"] == MEMBER and s["task_policy"] == "IAMDeleteRootUserCredentials"
               for s in aws.standin.root_sessions.values())
    assert action.verify(ctx(aws, det, management_account=MANAGEMENT)) == (True, None)

    again = action.run(ctx(aws, det, management_account=MANAGEMENT))
    assert again.status == "already_contained" and again.calls == []
    with pytest.raises(GuardError, match="cannot be rolled back"):
        action.rollback(ctx(aws, det, management_account=MANAGEMENT), result)


def test_a_step_naming_another_key_or_account_is_refused():
    det = detection_from_event(root_record())
    cls = get_action("aws.delete-root-access-key")
    ok = {"account_id": MEMBER, "access_key_id": KEY, "management_account": MANAGEMENT}
    cls.validate_params(ok)
    assert cls.check_identifies(ok, det) is None
    assert "is not the detection's credential.uid" in cls.check_identifies({**ok, "access_key_id": OTHER}, det)
    assert "is not the detection's account_uid" in cls.check_identifies({**ok, "account_id": MANAGEMENT}, det)


def test_the_grant_is_assume_root_only():
    from cordon.providers.aws.grants import aws_policy

    (stmt,) = [s for s in aws_policy([get_action("aws.delete-root-access-key")])["Statement"]
               if s["Sid"] == "AwsDeleteRootAccessKey"]
    assert stmt["Action"] == ["sts:AssumeRoot"]


def test_the_slack_lines_carry_the_steps():
    from cordon.providers.aws import render  # noqa: F401 - registers the renderers
    from cordon.slack.render import RENDERERS

    lines = RENDERERS["aws.root-access-key"]({"centralized": False, "why_not": "not configured",
                                              "manual_steps": ["1. sign in", f"2. delete access key {KEY}"]})
    assert lines[0].startswith("*Page a human*") and lines[2] == f"2. delete access key {KEY}"


def test_flow_without_centralized_root_access_pages_a_human(responder, aws, tmp_path, monkeypatch):
    """The shipped configuration (no ``aws.root_access``): the guard lets the playbook through (its
    only step declares it acts on ``arn:aws:iam::*:root``) and planning refuses it, naming the manual
    steps; nothing reaches AWS, and the ledger's enrichment carries the exact steps."""
    config(tmp_path, monkeypatch, None)
    path = tmp_path / "root-key.json"
    path.write_text(json.dumps({"Records": [root_record()]}))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=aws))
    assert s["playbook"] == "aws-root-access-key" and s["status"] == "refused", s
    assert "centralized root access is not configured" in s["guard"]["reason"]
    assert s["actions"] == [] and root_keys(aws) == [KEY]
    assert not {"AssumeRoot", "DeleteAccessKey"} & set(aws.standin.operations())
    enrich = [r.payload for r in responder.ledger.records(case_id=s["case_id"]) if r.kind == "enrichment.completed"
              and r.payload["action"] == "aws.root-access-key"]
    (facts,) = [e["result"] for e in enrich]
    assert facts["centralized"] is False and any(KEY in step for step in facts["manual_steps"])
    assert responder.ledger.verify().ok


def test_flow_with_centralized_root_access_deletes_exactly_the_key(responder, aws, tmp_path, monkeypatch):
    """With ``aws.root_access.management_account``: through the respond flow, the protected root user's
    own key is deleted (the guard's exception is the action's declaration, ``acts_on_protected``),
    ``AssumeRoot`` called in the management account, the root user's other key left alone."""
    config(tmp_path, monkeypatch, {"management_account": MANAGEMENT})
    path = tmp_path / "root-key.json"
    path.write_text(json.dumps({"Records": [root_record()]}))
    report = responder.intake([path])
    aws.standin.root_keys.setdefault(MEMBER, []).append({"AccessKeyId": "AKIAIOSFODNN7OTHERKEY", "Status": "Active"})
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert s["playbook"] == "aws-root-access-key" and s["status"] == "contained", s
    assert root_keys(aws) == ["AKIAIOSFODNN7OTHERKEY"]
    assert "AssumeRoot" in aws.standin.operations()
