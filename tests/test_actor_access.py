"""The actor's own access (issue 14, item 1): the access key or role sessions the actor signed a
credential-adding call with, derived from the record (``cordon.providers.aws.actor``), and
``aws.revoke-role-sessions`` against moto's server over real HTTP.

The IAM-user records are Stratus Red Team's detonation logs (``tests/conftest.py``); the
assumed-role record is written here in CloudTrail's documented ``userIdentity`` shape
(https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-user-identity.html)
for an EC2 instance role session, since the shared corpus has none."""

from __future__ import annotations

import copy
import json

import pytest

from cordon.action import ActionContext, GuardError, get_action
from cordon.providers import get_provider
from tests.conftest import detection_from_event, stratus_event

ADMIN_USER_LOG = "aws.persistence.iam-create-admin-user"
ACCOUNT = "111122223333"
ROLE = "web-instance-role"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"


def instance_role_event() -> dict:
    """AttachUserPolicy (AdministratorAccess) by an EC2 instance role session."""
    event = copy.deepcopy(stratus_event(ADMIN_USER_LOG, "AttachUserPolicy"))
    event["recipientAccountId"] = ACCOUNT
    event["userIdentity"] = {
        "type": "AssumedRole", "principalId": "AROAEXAMPLEWEBROLE01:i-0abc1234def567890",
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/i-0abc1234def567890", "accountId": ACCOUNT,
        "accessKeyId": "ASIAEXAMPLEWEBROLE01",
        "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLEWEBROLE01", "arn": ROLE_ARN,
                                             "accountId": ACCOUNT, "userName": ROLE},
                           "attributes": {"creationDate": "2024-11-30T08:00:00Z", "mfaAuthenticated": "false"},
                           "ec2RoleDelivery": "2.0"}}
    return event


def test_the_key_that_created_a_key_is_answered_as_an_access_key_of_its_own():
    det = detection_from_event(stratus_event(ADMIN_USER_LOG, "CreateAccessKey"))
    derived = get_provider("aws").actor_access(det)
    assert derived is not None and derived.playbook == "aws-access-key-created"
    d = derived.detection
    assert d.credential.kind == "aws_access_key" and d.credential.uid == det.actor.session_uid
    assert d.credential.uid.startswith("AKIA") and d.credential.uid != det.credential.uid
    assert d.credential.owner.uid == det.actor.user.uid == d.target.uid
    assert d.credential.attributes["revealed_by"] == {"detection_uid": det.uid, "event_name": "CreateAccessKey",
                                                      "credential_uid": det.credential.uid}
    assert d.uid == f"{det.uid}#actor" and "T1078.004" in d.technique_ids and d.raw == det.raw
    # one case for the actor whatever it created: the case key is the actor's key's
    other = get_provider("aws").actor_access(detection_from_event(stratus_event(ADMIN_USER_LOG, "CreateUser")))
    assert other.detection.case_key() == d.case_key() != det.case_key()


def test_an_instance_role_session_is_answered_by_revoking_the_roles_sessions():
    det = detection_from_event(instance_role_event())
    derived = get_provider("aws").actor_access(det)
    assert derived is not None and derived.playbook == "aws-actor-role-sessions"
    cred = derived.detection.credential
    assert (cred.kind, cred.uid, cred.owner.name) == ("aws_role_sessions", ROLE_ARN, ROLE)
    assert cred.attributes["session_key"] == "ASIAEXAMPLEWEBROLE01"
    assert cred.attributes["session"].endswith(f"assumed-role/{ROLE}/i-0abc1234def567890")


@pytest.mark.parametrize("identity", [
    {"type": "Root", "arn": f"arn:aws:iam::{ACCOUNT}:root", "accountId": ACCOUNT,
     "accessKeyId": "AKIAEXAMPLEROOT00001"},
    {"type": "AWSService", "invokedBy": "cloudformation.amazonaws.com"},
])
def test_nothing_is_derived_for_the_root_user_or_a_service(identity):
    event = copy.deepcopy(stratus_event(ADMIN_USER_LOG, "CreateAccessKey"))
    event["userIdentity"] = identity
    assert get_provider("aws").actor_access(detection_from_event(event)) is None


def test_nothing_is_derived_when_the_detection_is_already_about_the_actors_key():
    event = copy.deepcopy(stratus_event(ADMIN_USER_LOG, "CreateAccessKey"))
    event["userIdentity"]["accessKeyId"] = event["responseElements"]["accessKey"]["accessKeyId"]
    assert get_provider("aws").actor_access(detection_from_event(event)) is None


def _ctx(aws, det, **params):
    return ActionContext(detection=det, params=params, clients=aws.clients)


def test_revoke_role_sessions_puts_the_deny_and_rolls_back(aws):
    derived = get_provider("aws").actor_access(detection_from_event(instance_role_event())).detection
    iam = aws.clients("iam")  # the account the action context acts in
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
    action = get_action("aws.revoke-role-sessions")()
    c = _ctx(aws, derived, role_name=ROLE, issued_before="2024-11-30T09:00:00Z")
    plan = action.plan(c)
    assert [call.operation for call in plan.calls] == ["PutRolePolicy"] and plan.before["exists"] is False
    result = action.run(c, approved=[call.model_dump(exclude_none=True) for call in plan.calls])
    assert result.status == "contained", result.error
    doc = iam.get_role_policy(RoleName=ROLE, PolicyName="CordonRevokeOlderSessions")["PolicyDocument"]
    assert doc["Statement"] == [{"Sid": "CordonRevokeOlderSessions", "Effect": "Deny", "Action": "*",
                                 "Resource": "*",
                                 "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2024-11-30T09:00:00Z"}}}]
    held, state = action.verify(c)
    assert held and state["issued_before"] == "2024-11-30T09:00:00Z" and state["role_arn"].endswith(f":role/{ROLE}")
    again = action.run(_ctx(aws, derived, role_name=ROLE, issued_before="2024-11-30T08:00:00Z"))
    assert again.status == "already_contained" and again.calls == []
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back"
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == []


def test_a_service_linked_role_is_refused(aws):
    derived = get_provider("aws").actor_access(detection_from_event(instance_role_event())).detection
    iam = aws.clients("iam")  # the account the action context acts in
    iam.create_role(RoleName=ROLE, Path="/aws-service-role/ec2.amazonaws.com/", AssumeRolePolicyDocument="{}")
    with pytest.raises(GuardError, match="service-linked"):
        get_action("aws.revoke-role-sessions")().plan(_ctx(aws, derived, role_name=ROLE))
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == []
