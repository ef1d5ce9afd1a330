"""A role trusted from outside the Organization (issue 14, item 6): ``UpdateAssumeRolePolicy`` naming an
AWS principal of an account ``cordon.yaml`` does not know, on a role with administrator permissions, is
contained by taking exactly that principal out of the live trust policy (rollback puts the document read
before back); in-Organization principals and roles without admin permissions are triage only (the guard
refuses with the reason, nothing is called).

The record is the real one of Stratus Red Team's ``aws.persistence.iam-backdoor-role`` detonation log
(DataDog/stratus-red-team @ 7c9a7a5a, ``docs/detonation-logs/``), read from ``../shared/data/real/`` at
run time: the role ``stratus-red-team-backdoor-r-role`` of account 751203476945 made to trust
``arn:aws:iam::193672423079:root`` besides ``ec2.amazonaws.com``. The URL-encoded variant is that record's
document encoded as IAM encodes documents (CloudTrail writes some that way). boto3 over HTTP to moto."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from cordon.action import ActionContext, get_action
from tests.conftest import STRATUS_LOGS, detection_from_event, stratus_event
from tests.helpers import one_credential
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

LOG = "aws.persistence.iam-backdoor-role"
ACCOUNT = "751203476945"
OUTSIDE = "arn:aws:iam::193672423079:root"
ROLE = "stratus-red-team-backdoor-r-role"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not STRATUS_LOGS.exists(), reason="the shared corpus is not here")


def record() -> dict:
    return stratus_event(LOG, "UpdateAssumeRolePolicy")


def config(tmp_path: Path, monkeypatch, **aws_section) -> Path:
    """The shipped ``cordon.yaml`` with an ``aws:`` section, pointed at by ``CORDON_CONFIG``."""
    # one case per record: the Stratus actor's own key is not this module's subject (tests.helpers.one_credential)
    data = one_credential(yaml.safe_load((REPO / "cordon" / "defaults" / "cordon.yaml").read_text()))
    data["playbooks"] = str(REPO / "cordon" / "defaults" / "playbooks")
    data["aws"] = {"hub_account": "111122223333", **aws_section}
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "cordon.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CORDON_CONFIG", str(folder))
    return folder


def seeded(aws, admin: str | None = "attached"):
    """The role as the record left it, with AdministratorAccess attached, an inline ``*:*`` policy or
    no permissions."""
    det = detection_from_event(record())
    aws.seed_from_detection(det)
    iam = aws.clients("iam")
    if admin == "attached":
        aws.ensure_user("policy-holder")  # loads the AWS managed policy into moto's account
        aws.ensure_managed_policy_attached("policy-holder", "arn:aws:iam::aws:policy/AdministratorAccess")
        iam.attach_role_policy(RoleName=ROLE, PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
    elif admin == "inline":
        iam.put_role_policy(RoleName=ROLE, PolicyName="everything", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*:*", "Resource": "*"}]}))
    return det


def trust(aws) -> dict:
    from cordon.providers.aws.actions import _role_trust_doc

    return _role_trust_doc(aws.clients("iam").get_role(RoleName=ROLE)["Role"])


def ctx(aws, det, **params):
    return ActionContext(detection=det, params={"role_name": ROLE, "principals": [OUTSIDE], **params},
                         clients=aws.clients)


def test_the_record_names_the_role_and_every_principal_it_trusts():
    det = detection_from_event(record())
    assert (det.credential.kind, det.credential.uid, det.target.type) == ("aws_role_trust", ROLE, "Role")
    assert det.credential.attributes["trusted_aws_principals"] == [OUTSIDE]
    encoded = record()
    encoded["requestParameters"]["policyDocument"] = quote(encoded["requestParameters"]["policyDocument"])
    assert encoded["requestParameters"]["policyDocument"].startswith("%7B")
    assert detection_from_event(encoded).credential.attributes == det.credential.attributes


def test_the_rule_matches_every_successful_trust_change():
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.providers import shipped_rule_dirs
    from cordon.sigma import RuleSet

    (det,) = list(detect(read_inputs([STRATUS_LOGS / f"{LOG}.json"]), RuleSet.load(shipped_rule_dirs())))
    assert det.rule.name == "AWS IAM Role Trust Policy Updated" and det.technique_ids == ["T1098.003"]


def test_outside_principals_are_those_of_no_known_account():
    from cordon.providers.aws.actions import outside_principals

    principals = [OUTSIDE, "444455556666", f"arn:aws:iam::{ACCOUNT}:role/ops", "*"]
    assert outside_principals(principals, {ACCOUNT, "444455556666"}) == [OUTSIDE, "*"]
    assert outside_principals(principals, {ACCOUNT, "444455556666", "193672423079"}) == ["*"]


def test_the_enrichment_decides_outside_and_admin(aws, tmp_path, monkeypatch):
    config(tmp_path, monkeypatch, organization_accounts=["222233334444"])
    det = seeded(aws, admin="inline")
    facts = get_action("aws.role-trust")().run(ctx(aws, det))
    assert facts["outside_principals"] == [OUTSIDE] and facts["live_outside_principals"] == [OUTSIDE]
    assert facts["is_admin"] is True and facts["admin_because"] == ["inline policy everything allows *"]
    assert facts["contain"] is True and facts["reason"] is None
    assert facts["known_accounts"] == sorted(["111122223333", "222233334444", ACCOUNT])


def test_an_in_organization_account_does_not_fire(aws, tmp_path, monkeypatch):
    from cordon.providers.aws import AwsProvider

    config(tmp_path, monkeypatch, organization_accounts=["193672423079"])
    det = seeded(aws)
    facts = get_action("aws.role-trust")().run(ctx(aws, det))
    assert facts["outside_principals"] == [] and facts["contain"] is False
    assert "no principal outside the Organization's accounts" in facts["reason"]
    refusal = AwsProvider().guard(det, aws.clients, None, {"aws.role-trust": facts})
    assert refusal.startswith("triage only: no principal outside")


def test_a_role_without_admin_permissions_is_triage_only(aws, tmp_path, monkeypatch):
    from cordon.providers.aws import AwsProvider

    config(tmp_path, monkeypatch)
    det = seeded(aws, admin=None)
    facts = get_action("aws.role-trust")().run(ctx(aws, det))
    assert facts["outside_principals"] == [OUTSIDE] and facts["is_admin"] is False and facts["contain"] is False
    refusal = AwsProvider().guard(det, aws.clients, None, {"aws.role-trust": facts})
    assert "has no administrator permissions: triage only, nothing contained" in refusal
    assert AwsProvider().guard(det, aws.clients, None, {}).startswith("triage only: the role's trust")


def test_exactly_the_outside_principal_is_removed_idempotent_and_rolled_back(aws):
    det = seeded(aws)
    before = trust(aws)
    action = get_action("aws.remove-outside-trust")()
    result = action.run(ctx(aws, det))
    assert result.status == "contained", result.error
    assert result.before["document"] == before and result.before["present"] == [OUTSIDE]
    (call,) = result.calls
    assert call.operation == "UpdateAssumeRolePolicy" and call.params["RoleName"] == ROLE
    after = trust(aws)
    assert after["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                   "Action": "sts:AssumeRole"}]
    assert action.verify(ctx(aws, det))[0] is True

    again = action.run(ctx(aws, det))
    assert again.status == "already_contained" and again.calls == []

    undone = action.rollback(ctx(aws, det), result)
    assert undone.status == "rolled_back", undone.error
    assert trust(aws) == before


def test_a_principal_the_record_did_not_name_is_refused(aws):
    det = detection_from_event(record())
    cls = get_action("aws.remove-outside-trust")
    assert cls.check_identifies({"role_name": ROLE, "principals": [OUTSIDE]}, det) is None
    # the account ID form of the same principal is the same principal
    assert cls.check_identifies({"role_name": ROLE, "principals": ["193672423079"]}, det) is None
    reason = cls.check_identifies({"role_name": ROLE, "principals": ["arn:aws:iam::999988887777:root"]}, det)
    assert reason and "not ones the record's trust policy named" in reason
    assert "is not the detection's" in cls.check_identifies({"role_name": "other", "principals": [OUTSIDE]}, det)


def test_the_grant_follows_from_the_declaration():
    from cordon.providers.aws.grants import aws_policy

    (stmt,) = [s for s in aws_policy([get_action("aws.remove-outside-trust")])["Statement"]
               if s["Sid"] == "AwsRemoveOutsideTrust"]
    assert stmt["Action"] == ["iam:GetRole", "iam:UpdateAssumeRolePolicy"]


def _respond(responder, aws, tmp_path):
    path = tmp_path / "update-assume-role-policy.json"
    path.write_text(json.dumps({"Records": [record()]}))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=aws))
    return s


def test_flow_contains_an_outside_principal_on_an_admin_role(responder, aws, tmp_path, monkeypatch):
    config(tmp_path, monkeypatch)
    seeded(aws)
    s = _respond(responder, aws, tmp_path)
    assert s["playbook"] == "aws-role-trust-outside" and s["status"] == "contained" and s["verified"], s
    assert [a["name"] for a in s["actions"]] == ["aws.remove-outside-trust", "aws.revoke-role-sessions"]
    assert OUTSIDE not in json.dumps(trust(aws))
    assert responder.ledger.verify().ok


def test_flow_leaves_an_in_organization_trust_alone(responder, aws, tmp_path, monkeypatch):
    config(tmp_path, monkeypatch, organization_accounts=["193672423079"])
    seeded(aws)
    before = trust(aws)
    s = _respond(responder, aws, tmp_path)
    assert s["status"] == "refused" and s["guard"]["reason"].startswith("triage only: no principal outside"), s
    assert s["actions"] == [] and trust(aws) == before
    kinds = [r.kind for r in responder.ledger.records(case_id=s["case_id"])]
    assert "guard.refused" in kinds and "plan.created" not in kinds
