"""AWS actions against the sandbox: real boto3 over real HTTP to moto's server and Cordon's
stand-in (CloudTrail LookupEvents, IAM service-specific credentials). No mocks.

Events come from Stratus Red Team detonation logs (DataDog/stratus-red-team @ 7c9a7a5a,
docs/detonation-logs/*.json) where one exists, else are written here in CloudTrail's shape.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from cordon.action import ActionContext, ActionParamError, ApiCall, GuardError, all_actions, get_action
from tests.conftest import detection_from_event, stratus_event

BACKDOOR = "aws.persistence.iam-backdoor-user"
BACKDOOR_USER = "stratus-red-team-backdoor-u-user"
BACKDOOR_KEY = "AKIAL80DWDVKKM0UXEER"
ACCOUNT = "946986569305"


def ctx(aws, detection, **params):
    return ActionContext(detection=detection, params=params, clients=aws.clients)


def run(aws, name, detection, **params):
    return get_action(name)().run(ctx(aws, detection, **params))


def iam(aws):
    return aws.clients("iam")


def key_status(aws, user):
    return {k["AccessKeyId"]: k["Status"] for k in iam(aws).list_access_keys(UserName=user)["AccessKeyMetadata"]}


def request_count(aws):
    """Mutating + read requests the stand-in saw (used to prove 'no call')."""
    return len(aws.standin.requests)


@pytest.fixture
def backdoor(aws):
    """CreateAccessKey on the backdoor user, seeded; plus a second, legitimate key of the same user."""
    det = detection_from_event(stratus_event(BACKDOOR, "CreateAccessKey"))
    aws.seed_from_detection(det)
    other = iam(aws).create_access_key(UserName=BACKDOOR_USER)["AccessKey"]["AccessKeyId"]
    return det, other


# -- registry ---------------------------------------------------------------------------------
EXPECTED = {
    "aws.deactivate-access-key", "aws.delete-login-profile", "aws.delete-key-pair",
    "aws.deactivate-service-specific-credential", "aws.revoke-sessions", "aws.quarantine-user",
    "aws.detach-user-policy", "aws.delete-user-policy", "aws.iam-user", "aws.actor", "aws.cloudtrail-session",
}


def test_every_aws_action_is_registered_and_self_describes():
    actions = {n: a for n, a in all_actions().items() if n.startswith("aws.")}
    assert EXPECTED <= set(actions)
    for name in EXPECTED:
        d = actions[name].describe()
        assert d["provider"] == "aws"
        assert "```" not in d["doc"] and f"action: {name}" in d["doc"], name
        for perm in d["permissions"]:
            service, _, op = perm.partition(":")
            assert service in ("iam", "ec2", "cloudtrail") and op[:1].isupper(), perm
        if d["kind"] == "contain":
            assert d["credential_kinds"], name


def test_params_are_validated_against_the_schema():
    action = get_action("aws.deactivate-access-key")
    action.validate_params({"user_name": "bob", "access_key_id": BACKDOOR_KEY})
    with pytest.raises(ActionParamError) as err:
        action.validate_params({"user_name": "bob", "access_key_id": "ASIA0000000000000000"})
    assert err.value.field == "access_key_id"
    with pytest.raises(ActionParamError):
        get_action("aws.detach-user-policy").validate_params({"user_name": "bob", "policy_arn": "Admin"})


# -- deactivate-access-key --------------------------------------------------------------------
def test_seeder_holds_the_exact_key_id_in_the_detections_account(aws, backdoor):
    det, other = backdoor
    assert key_status(aws, BACKDOOR_USER) == {BACKDOOR_KEY: "Active", other: "Active"}
    assert iam(aws).get_user(UserName=BACKDOOR_USER)["User"]["Arn"] == (
        f"arn:aws:iam::{ACCOUNT}:user/{BACKDOOR_USER}")
    # the actor's signing key is seeded too, under the actor's user
    assert key_status(aws, "christophe") == {"AKIA30BEZSJBVKOFKZW0": "Active"}
    assert aws.seed_from_detection(det)["access_keys"] == ["AKIA30BEZSJBVKOFKZW0", BACKDOOR_KEY]
    assert len(key_status(aws, BACKDOOR_USER)) == 2  # idempotent


def test_deactivate_access_key_contains_only_the_named_key(aws, backdoor):
    det, other = backdoor
    result = run(aws, "aws.deactivate-access-key", det, user_name=BACKDOOR_USER, access_key_id=BACKDOOR_KEY)
    assert result.status == "contained", result.error
    assert result.target == f"arn:aws:iam::{ACCOUNT}:user/{BACKDOOR_USER} access-key {BACKDOOR_KEY}"
    assert result.before["status"] == "Active" and result.after["status"] == "Inactive"
    assert result.before["create_date"] == "2024-07-30T21:53:13Z"
    assert [c.describe() for c in result.calls] == [
        f"iam:UpdateAccessKey(AccessKeyId={BACKDOOR_KEY}, Status=Inactive, UserName={BACKDOOR_USER})"]
    assert key_status(aws, BACKDOOR_USER) == {BACKDOOR_KEY: "Inactive", other: "Active"}

    again = run(aws, "aws.deactivate-access-key", det, user_name=BACKDOOR_USER, access_key_id=BACKDOOR_KEY)
    assert again.status == "already_contained" and again.calls == [] and again.data is None

    action = get_action("aws.deactivate-access-key")()
    c = ctx(aws, det, user_name=BACKDOOR_USER, access_key_id=BACKDOOR_KEY)
    assert action.verify(c)[0] is True
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back" and undone.after["status"] == "Active"
    assert key_status(aws, BACKDOOR_USER) == {BACKDOOR_KEY: "Active", other: "Active"}
    # rolling back an already_contained result changes nothing
    assert action.rollback(c, again).calls == []


def test_deactivate_access_key_plan_changes_nothing(aws, backdoor):
    det, other = backdoor
    plan = get_action("aws.deactivate-access-key")().plan(
        ctx(aws, det, user_name=BACKDOOR_USER, access_key_id=BACKDOOR_KEY))
    assert plan.status == "planned"
    assert plan.calls == [ApiCall(service="iam", operation="UpdateAccessKey",
                                  params={"UserName": BACKDOOR_USER, "AccessKeyId": BACKDOOR_KEY,
                                          "Status": "Inactive"})]
    assert key_status(aws, BACKDOOR_USER) == {BACKDOOR_KEY: "Active", other: "Active"}


def test_deactivate_access_key_refuses_a_key_of_another_user(aws, backdoor):
    det, other = backdoor
    iam(aws).create_user(UserName="alice")
    alice_key = iam(aws).create_access_key(UserName="alice")["AccessKey"]["AccessKeyId"]
    result = run(aws, "aws.deactivate-access-key", det, user_name=BACKDOOR_USER, access_key_id=alice_key)
    assert result.status == "refused" and "belongs to user 'alice'" in result.error
    assert result.calls == []
    assert key_status(aws, "alice") == {alice_key: "Active"}
    assert key_status(aws, BACKDOOR_USER) == {BACKDOOR_KEY: "Active", other: "Active"}
    with pytest.raises(GuardError):
        get_action("aws.deactivate-access-key")().plan(
            ctx(aws, det, user_name=BACKDOOR_USER, access_key_id=alice_key))


def test_deactivate_access_key_that_does_not_exist_is_marked_missing(aws, backdoor):
    det, _ = backdoor
    result = run(aws, "aws.deactivate-access-key", det, user_name=BACKDOOR_USER,
                 access_key_id="AKIA0000000000000000")
    assert result.status == "already_contained" and result.before is None
    assert result.data == {"missing": True}


def test_api_errors_are_recorded_as_failed(aws, backdoor):
    det, _ = backdoor
    # The UpdateAccessKey call reaches moto naming a user that does not exist: a real API error.
    action = get_action("aws.deactivate-access-key")()
    c = ctx(aws, det, user_name=BACKDOOR_USER, access_key_id=BACKDOOR_KEY)
    before = action.read_state(c)
    result = action.run(ActionContext(detection=det, params=c.params,
                                      clients=lambda service, region=None: _BrokenUpdate(aws.clients(service))))
    assert result.status == "failed" and "(NoSuchEntity)" in result.error
    assert result.before == before and result.calls == []
    assert key_status(aws, BACKDOOR_USER)[BACKDOOR_KEY] == "Active"


class _BrokenUpdate:
    """A real client whose UpdateAccessKey goes to moto with an unknown user (a real API error)."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        if name == "update_access_key":
            return lambda **kw: self._client.update_access_key(**dict(kw, UserName="no-such-user"))
        return getattr(self._client, name)


# -- delete-login-profile ---------------------------------------------------------------------
LOGIN = "aws.persistence.iam-create-user-login-profile"
LOGIN_USER = "stratus-red-team-login-profile-user"


def test_delete_login_profile(aws):
    det = detection_from_event(stratus_event(LOGIN, "CreateLoginProfile"))
    aws.seed_from_detection(det)
    assert iam(aws).get_login_profile(UserName=LOGIN_USER)["LoginProfile"]["UserName"] == LOGIN_USER
    action = get_action("aws.delete-login-profile")()
    c = ctx(aws, det, user_name=LOGIN_USER)
    plan = action.plan(c)
    assert [x.describe() for x in plan.calls] == [f"iam:DeleteLoginProfile(UserName={LOGIN_USER})"]
    assert plan.before["exists"] is True and plan.before["password_reset_required"] is False

    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["exists"] is True and result.after == {
        "user_name": LOGIN_USER, "exists": False, "create_date": None, "password_reset_required": None}
    with pytest.raises(ClientError) as err:
        iam(aws).get_login_profile(UserName=LOGIN_USER)
    assert err.value.response["Error"]["Code"] == "NoSuchEntity"
    assert result.rollback is None
    again = action.run(c)
    assert again.status == "already_contained" and again.calls == []
    with pytest.raises(GuardError):
        action.rollback(c, result)


# -- delete-key-pair --------------------------------------------------------------------------
def import_key_pair_event(key_name="attacker-key", region="ap-central-2r"):
    base = stratus_event(BACKDOOR, "CreateAccessKey")
    return dict(base, eventName="ImportKeyPair", eventSource="ec2.amazonaws.com", awsRegion=region,
                eventID="0d9b8a34-7c6e-4f2a-9a51-3f1c2b6e9a10",
                requestParameters={"keyName": key_name, "publicKeyMaterial": "<sensitiveDataRemoved>"},
                responseElements={"keyName": key_name, "keyPairId": "key-0123456789abcdef0",
                                  "keyFingerprint": "aa:bb"})


def test_delete_key_pair_and_reimport_on_rollback(aws):
    det = detection_from_event(import_key_pair_event())
    assert det.credential.kind == "aws_key_pair" and det.region == "ap-central-2r"
    aws.seed_from_detection(det)
    ec2 = aws.clients("ec2", region="ap-central-2r")
    seeded = ec2.describe_key_pairs(KeyNames=["attacker-key"], IncludePublicKey=True)["KeyPairs"][0]
    ec2.create_key_pair(KeyName="ops-key")

    action = get_action("aws.delete-key-pair")()
    c = ctx(aws, det, key_name="attacker-key")
    plan = action.plan(c)
    # exactly the key pair read: by its KeyPairId (the sandbox's moto honours it, as EC2 does; issue 12)
    assert plan.calls == [ApiCall(service="ec2", operation="DeleteKeyPair", params={"KeyPairId": seeded["KeyPairId"]},
                                  region="ap-central-2r")]
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.target == f"arn:aws:ec2:ap-central-2r:{ACCOUNT}:key-pair/attacker-key"
    assert result.before["key_pair_id"] == seeded["KeyPairId"]
    assert result.before["public_key"] == seeded["PublicKey"] and result.after is None
    names = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    assert names == ["ops-key"]
    assert action.run(c).status == "already_contained"

    undone = action.rollback(c, result)
    assert undone.status == "rolled_back", undone.error
    back = ec2.describe_key_pairs(KeyNames=["attacker-key"], IncludePublicKey=True)["KeyPairs"][0]
    assert back["PublicKey"].split()[:2] == seeded["PublicKey"].split()[:2]
    assert back["KeyFingerprint"] == seeded["KeyFingerprint"]


def test_delete_key_pair_refuses_a_different_key_pair_id(aws):
    det = detection_from_event(import_key_pair_event())
    aws.seed_from_detection(det)
    result = run(aws, "aws.delete-key-pair", det, key_name="attacker-key", key_pair_id="key-00000000000000000")
    assert result.status == "refused" and result.calls == []
    ec2 = aws.clients("ec2", region="ap-central-2r")
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["attacker-key"]


# -- deactivate-service-specific-credential ---------------------------------------------------
SSC_ID = "ACCAQXB2ZEXAMPLE12345"


def ssc_event():
    base = stratus_event(BACKDOOR, "CreateAccessKey")
    return dict(base, eventName="CreateServiceSpecificCredential", eventID="5e1c7f0a-2b2d-4a41-9e3f-0b8f3c1d2e4f",
                requestParameters={"userName": BACKDOOR_USER, "serviceName": "codecommit.amazonaws.com"},
                responseElements={"serviceSpecificCredential": {
                    "serviceSpecificCredentialId": SSC_ID, "serviceName": "codecommit.amazonaws.com",
                    "serviceUserName": f"{BACKDOOR_USER}-at-{ACCOUNT}", "status": "Active",
                    "createDate": "Jul 30, 2024 9:53:13 PM", "userName": BACKDOOR_USER}})


def ssc_status(aws, user):
    creds = iam(aws).list_service_specific_credentials(UserName=user)["ServiceSpecificCredentials"]
    return {c["ServiceSpecificCredentialId"]: c["Status"] for c in creds}


def test_deactivate_service_specific_credential(aws):
    det = detection_from_event(ssc_event())
    aws.seed_from_detection(det)
    other = iam(aws).create_service_specific_credential(
        UserName=BACKDOOR_USER, ServiceName="cassandra.amazonaws.com")["ServiceSpecificCredential"]
    assert ssc_status(aws, BACKDOOR_USER) == {SSC_ID: "Active", other["ServiceSpecificCredentialId"]: "Active"}

    action = get_action("aws.deactivate-service-specific-credential")()
    c = ctx(aws, det, user_name=BACKDOOR_USER, service_specific_credential_id=SSC_ID)
    assert [x.operation for x in action.plan(c).calls] == ["UpdateServiceSpecificCredential"]
    assert ssc_status(aws, BACKDOOR_USER)[SSC_ID] == "Active"
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["service_name"] == "codecommit.amazonaws.com"
    assert (result.before["status"], result.after["status"]) == ("Active", "Inactive")
    assert ssc_status(aws, BACKDOOR_USER) == {SSC_ID: "Inactive", other["ServiceSpecificCredentialId"]: "Active"}
    ops = aws.standin.operations()
    assert action.run(c).status == "already_contained"
    assert "UpdateServiceSpecificCredential" not in aws.standin.operations()[len(ops):]
    assert action.rollback(c, result).status == "rolled_back"
    assert ssc_status(aws, BACKDOOR_USER)[SSC_ID] == "Active"


def test_deactivate_service_specific_credential_of_another_user_is_refused(aws):
    det = detection_from_event(ssc_event())
    aws.seed_from_detection(det)
    iam(aws).create_user(UserName="alice")
    alice = iam(aws).create_service_specific_credential(
        UserName="alice", ServiceName="codecommit.amazonaws.com")["ServiceSpecificCredential"]
    result = run(aws, "aws.deactivate-service-specific-credential", det, user_name=BACKDOOR_USER,
                 service_specific_credential_id=alice["ServiceSpecificCredentialId"])
    assert result.status == "refused" and "alice" in result.error
    assert ssc_status(aws, "alice") == {alice["ServiceSpecificCredentialId"]: "Active"}
    assert ssc_status(aws, BACKDOOR_USER) == {SSC_ID: "Active"}


# -- revoke-sessions --------------------------------------------------------------------------
FEDERATION = "aws.persistence.sts-federation-token"
FED_USER = "stratus-red-team-user-federation-user"


def test_revoke_sessions_for_a_federation_token(aws):
    det = detection_from_event(stratus_event(FEDERATION, "GetFederationToken"))
    assert det.credential.kind == "aws_federation_token"
    aws.seed_from_detection(det)
    action = get_action("aws.revoke-sessions")()
    c = ctx(aws, det, user_name=FED_USER, issued_before="2024-11-30T09:00:00Z")
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["exists"] is False and result.after["issued_before"] == "2024-11-30T09:00:00Z"
    doc = iam(aws).get_user_policy(UserName=FED_USER, PolicyName="CordonRevokeOlderSessions")["PolicyDocument"]
    assert doc["Statement"] == [{"Sid": "CordonRevokeOlderSessions", "Effect": "Deny", "Action": "*",
                                 "Resource": "*",
                                 "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2024-11-30T09:00:00Z"}}}]
    # same or earlier time: already contained, no call
    for when in ("2024-11-30T09:00:00Z", "2024-11-30T08:00:00+00:00"):
        again = action.run(ctx(aws, det, user_name=FED_USER, issued_before=when))
        assert again.status == "already_contained" and again.calls == []
    # a later time updates the document; rolling that back restores the earlier one
    later = action.run(ctx(aws, det, user_name=FED_USER, issued_before="2024-12-01T00:00:00Z"))
    assert later.status == "contained" and later.before["issued_before"] == "2024-11-30T09:00:00Z"
    action.rollback(c, later)
    assert action.read_state(c)["issued_before"] == "2024-11-30T09:00:00Z"
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back"
    assert iam(aws).list_user_policies(UserName=FED_USER)["PolicyNames"] == []


def test_revoke_sessions_defaults_to_now(aws):
    det = detection_from_event(stratus_event(FEDERATION, "GetFederationToken"))
    aws.seed_from_detection(det)
    start = datetime.now(UTC).replace(microsecond=0)
    result = run(aws, "aws.revoke-sessions", det, user_name=FED_USER)
    issued = datetime.fromisoformat(result.after["issued_before"].replace("Z", "+00:00"))
    assert start <= issued <= datetime.now(UTC)


# -- quarantine-user --------------------------------------------------------------------------
ADMIN_USER_LOG = "aws.persistence.iam-create-admin-user"


def test_quarantine_created_backdoor_user(aws):
    det = detection_from_event(stratus_event(ADMIN_USER_LOG, "CreateUser"))
    assert det.credential.kind == "aws_iam_user"
    aws.seed_from_detection(det)
    tags = iam(aws).get_user(UserName="malicious-iam-user")["User"]["Tags"]
    assert tags == [{"Key": "StratusRedTeam", "Value": "true"}]
    iam(aws).put_user_policy(UserName="malicious-iam-user", PolicyName="keep",
                             PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                 {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    action = get_action("aws.quarantine-user")()
    c = ctx(aws, det, user_name="malicious-iam-user")
    assert action.plan(c).calls[0].params["PolicyName"] == "CordonQuarantine"
    assert "CordonQuarantine" not in iam(aws).list_user_policies(UserName="malicious-iam-user")["PolicyNames"]
    result = action.run(c)
    assert result.status == "contained", result.error
    doc = iam(aws).get_user_policy(UserName="malicious-iam-user", PolicyName="CordonQuarantine")["PolicyDocument"]
    assert doc["Statement"] == [{"Sid": "CordonQuarantine", "Effect": "Deny", "Action": "*", "Resource": "*"}]
    assert action.run(c).status == "already_contained"
    assert action.rollback(c, result).status == "rolled_back"
    assert iam(aws).list_user_policies(UserName="malicious-iam-user")["PolicyNames"] == ["keep"]
    missing = action.run(ctx(aws, det, user_name="nobody"))
    assert missing.status == "already_contained" and missing.data == {"missing": True}


# -- detach-user-policy / delete-user-policy ---------------------------------------------------
ADMIN_ARN = "arn:aws:iam::aws:policy/AdministratorAccess"


def attached(aws, user):
    return sorted(p["PolicyArn"] for p in iam(aws).list_attached_user_policies(UserName=user)["AttachedPolicies"])


def test_detach_exactly_the_named_policy(aws):
    det = detection_from_event(stratus_event(ADMIN_USER_LOG, "AttachUserPolicy"))
    assert det.credential.uid == ADMIN_ARN
    aws.seed_from_detection(det)
    mine = iam(aws).create_policy(PolicyName="ReadOnlyThing", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]}))
    iam(aws).attach_user_policy(UserName="malicious-iam-user", PolicyArn=mine["Policy"]["Arn"])
    assert attached(aws, "malicious-iam-user") == sorted([ADMIN_ARN, mine["Policy"]["Arn"]])

    action = get_action("aws.detach-user-policy")()
    c = ctx(aws, det, user_name="malicious-iam-user", policy_arn=ADMIN_ARN)
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["attached"] and not result.after["attached"]
    assert attached(aws, "malicious-iam-user") == [mine["Policy"]["Arn"]]
    assert action.run(c).status == "already_contained"
    assert action.rollback(c, result).status == "rolled_back"
    assert attached(aws, "malicious-iam-user") == sorted([ADMIN_ARN, mine["Policy"]["Arn"]])


def put_user_policy_event():
    base = stratus_event(BACKDOOR, "CreateAccessKey")
    doc = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    return dict(base, eventName="PutUserPolicy", eventID="7a0e2c1d-9b8f-4e3a-8c7d-6b5a4f3e2d1c",
                requestParameters={"userName": BACKDOOR_USER, "policyName": "backdoor-admin",
                                   "policyDocument": doc}, responseElements=None)


def test_delete_inline_policy_and_put_it_back(aws):
    det = detection_from_event(put_user_policy_event())
    aws.seed_from_detection(det)
    action = get_action("aws.delete-user-policy")()
    c = ctx(aws, det, user_name=BACKDOOR_USER, policy_name="backdoor-admin")
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["document"]["Statement"][0]["Action"] == "*"
    assert iam(aws).list_user_policies(UserName=BACKDOOR_USER)["PolicyNames"] == []
    assert action.run(c).status == "already_contained"
    assert action.rollback(c, result).status == "rolled_back"
    doc = iam(aws).get_user_policy(UserName=BACKDOOR_USER, PolicyName="backdoor-admin")["PolicyDocument"]
    assert doc == result.before["document"]
    refused = action.run(ctx(aws, det, user_name=BACKDOOR_USER, policy_name="CordonQuarantine"))
    assert refused.status == "refused"


# -- enrichment -------------------------------------------------------------------------------
def test_iam_user_enrichment(aws, backdoor):
    det, other = backdoor
    aws.ensure_login_profile(BACKDOOR_USER, password_reset_required=True)
    aws.ensure_managed_policy_attached(BACKDOOR_USER, ADMIN_ARN)
    iam(aws).create_group(GroupName="devs")
    iam(aws).add_user_to_group(GroupName="devs", UserName=BACKDOOR_USER)
    iam(aws).update_access_key(UserName=BACKDOOR_USER, AccessKeyId=other, Status="Inactive")
    facts = get_action("aws.iam-user")().run(ctx(aws, det, user_name=BACKDOOR_USER))
    json.dumps(facts)  # JSON-serialisable
    assert facts["exists"] is True and facts["arn"] == f"arn:aws:iam::{ACCOUNT}:user/{BACKDOOR_USER}"
    assert facts["groups"] == ["devs"]
    assert facts["attached_policies"] == [{"name": "AdministratorAccess", "arn": ADMIN_ARN}]
    assert facts["is_admin"] is True and facts["key_count"] == 2 and facts["active_key_count"] == 1
    assert {k["access_key_id"]: k["status"] for k in facts["access_keys"]} == {
        BACKDOOR_KEY: "Active", other: "Inactive"}
    assert facts["login_profile"]["exists"] is True and facts["login_profile"]["password_reset_required"] is True
    assert facts["mfa_devices"] == [] and facts["inline_policies"] == []

    plain = get_action("aws.iam-user")().run(ctx(aws, det, user_name="christophe"))
    assert plain["is_admin"] is False and plain["login_profile"]["exists"] is False
    iam(aws).put_user_policy(UserName="christophe", PolicyName="star", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["*"], "Resource": "*"}]}))
    assert get_action("aws.iam-user")().run(ctx(aws, det, user_name="christophe"))["is_admin"] is True
    assert get_action("aws.iam-user")().run(ctx(aws, det, user_name="ghost")) == {
        "exists": False, "user_name": "ghost"}


def test_actor_enrichment_is_a_pure_function_of_the_detection(aws):
    det = detection_from_event(stratus_event(BACKDOOR, "CreateAccessKey"))
    facts = get_action("aws.actor")().run(ActionContext(detection=det, params={}, clients=None))
    assert facts["principal_arn"] == f"arn:aws:iam::{ACCOUNT}:user/christophe"
    assert facts["access_key_id"] == "AKIA30BEZSJBVKOFKZW0" and facts["temporary_credentials"] is False
    assert facts["src_ip"] == "211.9.016.253" and facts["access_path"] == "api"
    assert facts["actor_is_target"] is False and facts["target_name"] == BACKDOOR_USER
    assert not (facts["is_root"] or facts["is_assumed_role"] or facts["is_federated_user"])

    fed = detection_from_event(stratus_event(FEDERATION, "GetCallerIdentity"))
    ffacts = get_action("aws.actor")().run(ActionContext(detection=fed, params={}, clients=None))
    assert ffacts["is_federated_user"] is True and ffacts["temporary_credentials"] is True


def test_cloudtrail_session_returns_the_keys_other_activity(aws, backdoor):
    det, _ = backdoor
    far = copy.deepcopy(det.raw)
    far.update(eventID="far-away", eventName="DeleteUser", eventTime="2024-07-31T01:00:00Z")
    aws.standin.add_events([far])
    facts = get_action("aws.cloudtrail-session")().run(ctx(aws, det))
    json.dumps(facts)
    assert facts["access_key_id"] == "AKIA30BEZSJBVKOFKZW0"
    assert facts["event_names"] == {"CreateAccessKey": 1, "GetCallerIdentity": 1, "ListUsers": 1,
                                    "ListAttachedUserPolicies": 1}
    assert [e["event_name"] for e in facts["events"]] == [
        "ListAttachedUserPolicies", "CreateAccessKey", "ListUsers", "GetCallerIdentity"]
    create = facts["events"][1]
    assert create["event_time"] == "2024-07-30T21:53:13Z" and create["source_ip"] == "211.9.016.253"
    assert {"type": "AWS::IAM::AccessKey", "name": BACKDOOR_KEY} in create["resources"]
    wide = get_action("aws.cloudtrail-session")().run(ctx(aws, det, window_minutes=240))
    assert wide["event_names"]["DeleteUser"] == 1 and wide["count"] == 5


def test_cloudtrail_session_paginates(aws, backdoor):
    det, _ = backdoor
    t0 = datetime(2024, 7, 30, 21, 0, tzinfo=UTC)
    extra = []
    for i in range(60):
        ev = copy.deepcopy(det.raw)
        ev.update(eventID=f"bulk-{i}", eventName="GetObject",
                  eventTime=(t0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        extra.append(ev)
    aws.standin.add_events(extra)
    before = aws.standin.operations().count("LookupEvents")
    facts = get_action("aws.cloudtrail-session")().run(ctx(aws, det))
    assert facts["count"] == 64 and facts["event_names"]["GetObject"] == 60
    assert len({e["event_id"] for e in facts["events"]}) == 64
    assert aws.standin.operations().count("LookupEvents") - before == 2  # 50 + 14
    capped = get_action("aws.cloudtrail-session")().run(ctx(aws, det, max_events=10))
    assert capped["count"] == 10 and capped["truncated"] is True


@pytest.mark.parametrize("status", [429, 503])
def test_cloudtrail_throttling_and_5xx_are_retried(aws, backdoor, status):
    det, _ = backdoor
    aws.fail_next(status, times=2)
    start = len(aws.standin.requests)
    facts = get_action("aws.cloudtrail-session")().run(ctx(aws, det))
    assert facts["count"] == 4
    seen = [r["status"] for r in aws.standin.requests[start:]]
    assert seen == [status, status, 200]


def test_cloudtrail_gives_up_after_max_attempts(aws, backdoor):
    det, _ = backdoor
    aws.fail_next(500, times=4)
    with pytest.raises(ClientError) as err:
        get_action("aws.cloudtrail-session")().run(ctx(aws, det))
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 3


def test_standin_rejects_what_cloudtrail_rejects(aws):
    ct = aws.clients("cloudtrail")
    with pytest.raises(ClientError) as err:
        ct.lookup_events(LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "a"},
                                           {"AttributeKey": "Username", "AttributeValue": "b"}])
    assert err.value.response["Error"]["Code"] == "InvalidLookupAttributesException"
    with pytest.raises(ClientError) as err:
        ct.lookup_events(NextToken="!!!")
    assert err.value.response["Error"]["Code"] == "InvalidNextTokenException"
    with pytest.raises(ClientError) as err:
        ct.lookup_events(StartTime=datetime(2024, 2, 1, tzinfo=UTC), EndTime=datetime(2024, 1, 1, tzinfo=UTC))
    assert err.value.response["Error"]["Code"] == "InvalidTimeRangeException"


# -- every containment action: plan changes nothing, second run makes no mutating call -----------
MUTATING = ("update_", "delete_", "put_", "attach_", "detach_", "import_", "create_")


class Recorder:
    """Client factory over the sandbox's real clients that records every method called on them."""

    def __init__(self, aws):
        self.aws = aws
        self.calls: list[str] = []

    def __call__(self, service, region=None):
        return _RecordingClient(self.aws.clients(service, region=region), service, self.calls)

    def mutating(self):
        return [c for c in self.calls if c.split(".", 1)[1].startswith(MUTATING)]


class _RecordingClient:
    def __init__(self, client, service, calls):
        self._client, self._service, self._calls = client, service, calls

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def recorded(*args, **kwargs):
            self._calls.append(f"{self._service}.{name}")
            return attr(*args, **kwargs)

        return recorded


def _case(name):
    """(detection, params, snapshot) for one containment action, seeded in the sandbox."""
    def snap_keys(aws):
        return key_status(aws, BACKDOOR_USER)

    def snap_user(user):
        def snap(aws):
            c = iam(aws)
            return (c.list_user_policies(UserName=user)["PolicyNames"], attached(aws, user),
                    key_status(aws, user))
        return snap

    if name == "aws.deactivate-access-key":
        return (stratus_event(BACKDOOR, "CreateAccessKey"),
                {"user_name": BACKDOOR_USER, "access_key_id": BACKDOOR_KEY}, snap_keys)
    if name == "aws.delete-login-profile":
        def snap(aws):
            try:
                return iam(aws).get_login_profile(UserName=LOGIN_USER)["LoginProfile"]["UserName"]
            except ClientError:
                return None
        return stratus_event(LOGIN, "CreateLoginProfile"), {"user_name": LOGIN_USER}, snap
    if name == "aws.delete-key-pair":
        return (import_key_pair_event(), {"key_name": "attacker-key"},
                lambda aws: sorted(k["KeyName"] for k in aws.clients("ec2", region="ap-central-2r")
                                   .describe_key_pairs()["KeyPairs"]))
    if name == "aws.deactivate-service-specific-credential":
        return (ssc_event(), {"user_name": BACKDOOR_USER, "service_specific_credential_id": SSC_ID},
                lambda aws: ssc_status(aws, BACKDOOR_USER))
    if name == "aws.revoke-sessions":
        return (stratus_event(FEDERATION, "GetFederationToken"),
                {"user_name": FED_USER, "issued_before": "2024-11-30T09:00:00Z"}, snap_user(FED_USER))
    if name == "aws.quarantine-user":
        return (stratus_event(ADMIN_USER_LOG, "CreateUser"), {"user_name": "malicious-iam-user"},
                snap_user("malicious-iam-user"))
    if name == "aws.detach-user-policy":
        return (stratus_event(ADMIN_USER_LOG, "AttachUserPolicy"),
                {"user_name": "malicious-iam-user", "policy_arn": ADMIN_ARN}, snap_user("malicious-iam-user"))
    assert name == "aws.delete-user-policy"
    return (put_user_policy_event(), {"user_name": BACKDOOR_USER, "policy_name": "backdoor-admin"},
            snap_user(BACKDOOR_USER))


CONTAINMENT = sorted(n for n in EXPECTED if get_action(n).kind == "contain")


@pytest.mark.parametrize("name", CONTAINMENT)
def test_containment_plan_is_exact_and_second_run_is_read_only(aws, name):
    event, params, snapshot = _case(name)
    det = detection_from_event(event)
    aws.seed_from_detection(det)
    action = get_action(name)()
    action.validate_params(params)
    initial = snapshot(aws)

    rec = Recorder(aws)
    plan = action.plan(ActionContext(detection=det, params=params, clients=rec))
    assert plan.status == "planned" and len(plan.calls) == 1
    assert rec.mutating() == [] and snapshot(aws) == initial

    result = action.run(ActionContext(detection=det, params=params, clients=rec))
    assert result.status == "contained", result.error
    # the calls made are exactly the calls planned, and they changed the state
    assert result.calls == plan.calls
    assert len(rec.mutating()) == 1 and snapshot(aws) != initial
    contained = snapshot(aws)

    rec2 = Recorder(aws)
    again = action.run(ActionContext(detection=det, params=params, clients=rec2))
    assert again.status == "already_contained" and again.calls == []
    assert rec2.calls and rec2.mutating() == []
    assert snapshot(aws) == contained

    if action.rollback_supported:
        undone = action.rollback(ActionContext(detection=det, params=params, clients=aws.clients), result)
        assert undone.status == "rolled_back", undone.error
        assert snapshot(aws) == initial


# -- the sandbox as another process sees it -----------------------------------------------------
def test_cloud_params_rebuild_clients_in_the_detections_account(aws, backdoor):
    from cordon.sandbox.aws import SANDBOX_ACCESS_KEY, sandbox_clients

    params = aws.cloud_params()
    json.dumps(params)
    assert params["account_id"] == ACCOUNT and params["region_map"] == {"ap-central-2r": "us-east-1"}
    clients = sandbox_clients(params)
    assert clients("iam").get_user(UserName=BACKDOOR_USER)["User"]["Arn"].startswith(f"arn:aws:iam::{ACCOUNT}:")
    det, _ = backdoor
    result = get_action("aws.deactivate-access-key")().run(ActionContext(
        detection=det, params={"user_name": BACKDOOR_USER, "access_key_id": BACKDOOR_KEY}, clients=clients))
    assert result.status == "contained" and key_status(aws, BACKDOOR_USER)[BACKDOOR_KEY] == "Inactive"
    facts = get_action("aws.cloudtrail-session")().run(ActionContext(detection=det, params={}, clients=clients))
    assert facts["count"] == 4

    # a plain boto3 client without the account header lands in the account by its signing key
    import boto3

    plain = boto3.client("iam", endpoint_url=params["aws_endpoint_url"], region_name="us-east-1",
                         aws_access_key_id=SANDBOX_ACCESS_KEY, aws_secret_access_key="x")
    assert plain.get_user(UserName=BACKDOOR_USER)["User"]["Arn"].startswith(f"arn:aws:iam::{ACCOUNT}:")
    # the sandbox's signing key is not an IAM user's key
    assert SANDBOX_ACCESS_KEY not in {k for u in ("christophe", BACKDOOR_USER) for k in key_status(aws, u)}
    customary = boto3.client("iam", endpoint_url=params["aws_endpoint_url"], region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    assert customary.get_user(UserName=BACKDOOR_USER)["User"]["UserName"] == BACKDOOR_USER
    aws.reset()
    with pytest.raises(ClientError):
        plain.get_user(UserName=BACKDOOR_USER)


# -- exactly the approved calls ----------------------------------------------------------------
def test_containment_makes_exactly_the_approved_calls_or_refuses(aws, backdoor):
    """``run(approved=...)`` makes the approved plan's calls; when the state read now needs
    others (the key was deactivated at plan time and re-activated since, or the plan held other
    calls) nothing is called and the result is ``plan_changed``, naming both call lists."""
    from cordon.respond import PlanStep, run_step

    det, other = backdoor
    action = get_action("aws.deactivate-access-key")()
    c = ctx(aws, det, user_name=BACKDOOR_USER, access_key_id=BACKDOOR_KEY)
    planned = [call.model_dump(exclude_none=True) for call in action.plan(c).calls]
    # another plan than the one the state needs: nothing called
    tampered = [{**planned[0], "params": {**planned[0]["params"], "Status": "Active"}}]
    refused = action.run(c, approved=tampered)
    assert refused.status == "plan_changed" and refused.calls == []
    assert refused.data == {"approved": tampered, "now": planned}
    assert key_status(aws, BACKDOOR_USER) == {BACKDOOR_KEY: "Active", other: "Active"}
    # the approved calls, through a JSON round trip (as Prefect's result storage returns them)
    step = PlanStep(action=action.name, params={"user_name": BACKDOOR_USER, "access_key_id": BACKDOOR_KEY},
                    target="t", calls=json.loads(json.dumps(planned)))
    done = run_step(step, det, aws.clients)
    assert done.status == "contained", done.error
    assert [call.model_dump(exclude_none=True) for call in done.calls] == planned
    # approved when nothing was to be done; re-activated since: refused, the key stays as it is
    nothing = step.model_copy(update={"calls": []})
    iam(aws).update_access_key(UserName=BACKDOOR_USER, AccessKeyId=BACKDOOR_KEY, Status="Active")
    again = run_step(nothing, det, aws.clients)
    assert again.status == "plan_changed" and "nothing was done" in again.error
    assert key_status(aws, BACKDOOR_USER)[BACKDOOR_KEY] == "Active"
    from cordon.respond import outcome_status

    assert outcome_status([again.model_dump()], [{"held": False}]) == "plan_changed"
