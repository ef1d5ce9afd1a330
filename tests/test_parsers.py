"""Field-by-field checks of the CloudTrail, GuardDuty and ASFF parsers on realistic record shapes.

Shapes follow the CloudTrail record contents / userIdentity references, the IAM / STS / EC2 API
responses as CloudTrail logs them, the GuardDuty finding format and the ASFF reference.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from cordon.detections.errors import RecordError
from cordon.detections.model import record_sha256
from cordon.providers.aws.cloudtrail import detection_from_cloudtrail, parse_aws_time
from cordon.providers.aws.guardduty import detection_from_guardduty, severity_from_score, techniques_for_type
from cordon.providers.aws.securityhub import consolidated_control, detection_from_asff

MATCH = SimpleNamespace(id="5f2a7c3e-0000-4000-8000-000000000001", title="AWS access key created",
                        path="cordon/providers/aws/rules/access_key.yml", level="high", technique_ids=["T1098.001"])
BARE = SimpleNamespace(id="bare", title="bare", path=None, level=None, technique_ids=[])

IAM_USER = {
    "type": "IAMUser",
    "principalId": "AIDACKCEVSQ6C2EXAMPLE",
    "arn": "arn:aws:iam::111122223333:user/alice",
    "accountId": "111122223333",
    "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
    "userName": "alice",
}

ASSUMED_ROLE_CONSOLE = {
    "type": "AssumedRole",
    "principalId": "AROAEXAMPLE:alice@example.com",
    "arn": "arn:aws:sts::111122223333:assumed-role/Admin/alice@example.com",
    "accountId": "111122223333",
    "accessKeyId": "ASIAEXAMPLESESSION",
    "sessionContext": {
        "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE",
                          "arn": "arn:aws:iam::111122223333:role/Admin", "accountId": "111122223333",
                          "userName": "Admin"},
        "webIdFederationData": {},
        "attributes": {"creationDate": "2024-07-30T20:00:00Z", "mfaAuthenticated": "true"},
    },
}


def event(name, *, identity=None, request=None, response=None, **extra):
    ev = {
        "eventVersion": "1.09",
        "userIdentity": copy.deepcopy(identity or IAM_USER),
        "eventTime": "2024-07-30T21:53:13Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.10",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6",
        "requestParameters": request,
        "responseElements": response,
        "requestID": "req-1",
        "eventID": "evt-1",
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": "111122223333",
    }
    ev.update(extra)
    return ev


def ct(ev, match=MATCH):
    return detection_from_cloudtrail(ev, match, "trail.json", 7)


# -- CloudTrail --------------------------------------------------------------------------------


def test_create_access_key_for_other_user_all_fields():
    ev = event("CreateAccessKey", request={"userName": "bob"},
               response={"accessKey": {"accessKeyId": "AKIABOBNEWKEY", "status": "Active", "userName": "bob",
                                       "createDate": "Jul 30, 2024 9:53:13 PM",
                                       "secretAccessKey": "must-not-be-copied"}})
    d = ct(ev)
    assert (d.provider, d.source, d.event_name, d.finding_type) == ("aws", "cloudtrail", "CreateAccessKey", None)
    assert d.technique_ids == ["T1098.001"]
    assert d.rule.model_dump() == {"type": "sigma", "uid": MATCH.id, "name": MATCH.title, "path": MATCH.path}
    assert d.severity == "high"
    assert d.time == datetime(2024, 7, 30, 21, 53, 13, tzinfo=UTC)
    assert (d.account_uid, d.region) == ("111122223333", "us-east-1")
    a = d.actor
    assert a.user.model_dump() == {"uid": "arn:aws:iam::111122223333:user/alice", "name": "alice",
                                   "type": "IAMUser", "account_uid": "111122223333"}
    assert (a.session_uid, a.session_issuer, a.mfa) == ("AKIAIOSFODNN7EXAMPLE", None, None)
    assert (a.src_ip, a.user_agent, a.invoked_by, a.access_path) == (
        "198.51.100.10", "aws-cli/2.15.0 Python/3.11.6", None, "api")
    assert d.target.model_dump() == {"uid": "arn:aws:iam::111122223333:user/bob", "name": "bob",
                                     "type": "IAMUser", "account_uid": "111122223333"}
    c = d.credential
    assert (c.kind, c.uid) == ("aws_access_key", "AKIABOBNEWKEY")
    assert c.owner == d.target
    assert c.attributes == {"status": "Active", "createDate": "Jul 30, 2024 9:53:13 PM"}
    assert "must-not-be-copied" not in json.dumps(d.summary())
    assert d.raw_ref.model_dump() == {"origin": "trail.json", "position": 7, "sha256": record_sha256(ev)}
    assert d.raw == ev and len(d.uid) == 32 and d.suppressed is None


def test_uid_depends_on_record_and_rule():
    ev = event("CreateUser", request={"userName": "eve"})
    assert ct(ev).uid == ct(copy.deepcopy(ev)).uid
    assert ct(ev).uid != ct(ev, BARE).uid
    assert ct(ev).uid != ct(dict(ev, eventID="other")).uid


def test_create_access_key_for_self_targets_the_caller():
    ev = event("CreateAccessKey", request=None,
               response={"accessKey": {"accessKeyId": "AKIANEW", "status": "Active", "userName": "alice"}})
    d = ct(ev)
    assert d.target.uid == "arn:aws:iam::111122223333:user/alice" and d.target.name == "alice"
    assert d.credential.owner.name == "alice"


def test_root_console_access_key():
    root = {"type": "Root", "principalId": "111122223333", "arn": "arn:aws:iam::111122223333:root",
            "accountId": "111122223333", "accessKeyId": "ASIAROOTSESSION",
            "sessionContext": {"attributes": {"creationDate": "2024-07-30T21:00:00Z", "mfaAuthenticated": "false"}}}
    ev = event("CreateAccessKey", identity=root, request=None,
               response={"accessKey": {"accessKeyId": "AKIAROOTKEY", "status": "Active"}},
               userAgent="console.amazonaws.com", sourceIPAddress="203.0.113.9")
    d = ct(ev)
    assert d.actor.user.name == "root" and d.actor.user.type == "Root"
    assert d.actor.access_path == "console" and d.actor.mfa is False
    assert d.actor.session_created == "2024-07-30T21:00:00Z"
    assert d.target.model_dump() == {"uid": "arn:aws:iam::111122223333:root", "name": "root", "type": "Root",
                                     "account_uid": "111122223333"}
    assert d.credential.uid == "AKIAROOTKEY" and d.credential.owner.type == "Root"


def test_assumed_role_console_session_fields():
    ev = event("AttachUserPolicy", identity=ASSUMED_ROLE_CONSOLE,
               request={"userName": "bob", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"},
               userAgent="AWS Internal", sessionCredentialFromConsole="true")
    d = ct(ev, BARE)
    a = d.actor
    assert a.user.name == "alice@example.com" and a.user.type == "AssumedRole"
    assert a.session_issuer == "arn:aws:iam::111122223333:role/Admin"
    assert a.mfa is True and a.access_path == "console"
    assert d.credential.kind == "aws_policy_grant"
    assert d.credential.uid == "arn:aws:iam::aws:policy/AdministratorAccess"
    assert d.credential.attributes == {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}
    assert d.technique_ids == ["T1098.003"] and d.severity == "unknown"


@pytest.mark.parametrize(("fields", "path"), [
    ({"userIdentity": dict(IAM_USER, invokedBy="cloudformation.amazonaws.com"),
      "sourceIPAddress": "cloudformation.amazonaws.com"}, "service"),
    ({"userAgent": "signin.amazonaws.com"}, "console"),
    ({"userAgent": "console.ec2.amazonaws.com"}, "console"),
    ({"userIdentity": dict(IAM_USER, invokedBy="signin.amazonaws.com")}, "console"),
    ({"sourceIPAddress": "211.9.016.253"}, "api"),
])
def test_access_path(fields, path):
    ev = event("CreateUser", request={"userName": "x"})
    ev.update(fields)
    d = ct(ev)
    assert d.actor.access_path == path
    assert d.actor.src_ip == ev["sourceIPAddress"]  # kept as given, even when not an IP


def test_login_profiles():
    d = ct(event("CreateLoginProfile", request={"userName": "bob", "passwordResetRequired": False},
                 response={"loginProfile": {"userName": "bob", "createDate": "Aug 1, 2024 1:42:21 PM",
                                            "passwordResetRequired": False}}))
    assert (d.credential.kind, d.credential.uid) == ("aws_login_profile", "bob")
    assert d.credential.attributes == {"passwordResetRequired": False, "createDate": "Aug 1, 2024 1:42:21 PM"}
    d = ct(event("UpdateLoginProfile", request={"userName": "carol", "passwordResetRequired": True}))
    assert d.credential.uid == "carol" and d.credential.attributes == {"passwordResetRequired": True}


def test_create_user_uses_path_from_response():
    d = ct(event("CreateUser", request={"userName": "mallory", "path": "/ops/"},
                 response={"user": {"path": "/ops/", "userName": "mallory", "userId": "AIDAMALLORY",
                                    "arn": "arn:aws:iam::111122223333:user/ops/mallory",
                                    "createDate": "Aug 1, 2024 1:33:28 PM"}}), BARE)
    assert d.target.uid == "arn:aws:iam::111122223333:user/ops/mallory"
    assert (d.credential.kind, d.credential.uid) == ("aws_iam_user", "mallory")
    assert d.credential.attributes["userId"] == "AIDAMALLORY"
    assert d.technique_ids == ["T1136.003"]


def test_key_pairs_never_copy_key_material():
    d = ct(event("ImportKeyPair", eventSource="ec2.amazonaws.com", awsRegion="ap-central-2r",
                 request={"keyName": "backdoor", "publicKeyMaterial": "c3NoLXJzYSBBQUFB"},
                 response={"requestId": "r", "keyName": "backdoor", "keyFingerprint": "ab:cd",
                           "keyPairId": "key-0123"}))
    assert (d.credential.kind, d.credential.uid) == ("aws_key_pair", "backdoor")
    assert d.credential.attributes == {"keyPairId": "key-0123", "keyFingerprint": "ab:cd",
                                       "region": "ap-central-2r"}
    assert d.region == "ap-central-2r"
    d = ct(event("CreateKeyPair", eventSource="ec2.amazonaws.com", request={"keyName": "k2"},
                 response={"keyName": "k2", "keyFingerprint": "ef", "keyPairId": "key-2",
                           "keyMaterial": "-----BEGIN RSA PRIVATE KEY-----"}))
    assert d.credential.uid == "k2" and "PRIVATE" not in json.dumps(d.credential.model_dump())


def test_service_specific_credential_never_copies_password():
    d = ct(event("CreateServiceSpecificCredential",
                 request={"userName": "bob", "serviceName": "codecommit.amazonaws.com"},
                 response={"serviceSpecificCredential": {
                     "serviceSpecificCredentialId": "ACCA1234EXAMPLE", "serviceName": "codecommit.amazonaws.com",
                     "serviceUserName": "bob-at-111122223333", "servicePassword": "s3cret", "status": "Active",
                     "userName": "bob", "createDate": "Aug 1, 2024 1:00:00 PM"}}))
    c = d.credential
    assert (c.kind, c.uid, c.owner.name) == ("aws_service_specific_credential", "ACCA1234EXAMPLE", "bob")
    assert c.attributes["serviceName"] == "codecommit.amazonaws.com"
    assert "s3cret" not in json.dumps(c.model_dump())


def test_federation_token_owned_by_caller_without_secrets():
    d = ct(event("GetFederationToken", eventSource="sts.amazonaws.com", request={"name": "fed", "policy": "{}"},
                 response={"credentials": {"accessKeyId": "ASIAFEDTOKEN", "expiration": "Nov 30, 2024, 8:43:17 PM",
                                           "sessionToken": "TOKEN-SECRET"},
                           "federatedUser": {"arn": "arn:aws:sts::111122223333:federated-user/fed",
                                             "federatedUserId": "111122223333:fed"}}))
    c = d.credential
    assert (c.kind, c.uid) == ("aws_federation_token", "ASIAFEDTOKEN")
    assert c.owner.uid == "arn:aws:iam::111122223333:user/alice"
    assert c.attributes == {"expiration": "Nov 30, 2024, 8:43:17 PM",
                            "federatedUserArn": "arn:aws:sts::111122223333:federated-user/fed",
                            "federatedUserId": "111122223333:fed", "name": "fed"}
    assert "TOKEN-SECRET" not in json.dumps(d.summary())


def test_put_user_policy():
    doc = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'
    d = ct(event("PutUserPolicy", request={"userName": "bob", "policyName": "inline-admin", "policyDocument": doc}))
    assert (d.credential.kind, d.credential.uid) == ("aws_policy_grant", "inline-admin")
    assert d.credential.attributes == {"policy_name": "inline-admin", "policy_document": doc}
    assert d.target.name == "bob"


def test_failed_call_names_no_credential_and_is_suppressed():
    ev = event("CreateAccessKey", request={"userName": "bob"}, errorCode="LimitExceededException",
               errorMessage="Cannot exceed quota for AccessKeysPerUser: 2")
    d = ct(ev)
    assert d.credential.kind == "aws_access_key" and d.credential.uid is None
    assert d.credential.attributes["errorCode"] == "LimitExceededException"
    assert "LimitExceededException" in d.suppressed


def test_non_credential_event_has_no_credential():
    d = ct(event("GetRole", request={"roleName": "r1"}), BARE)
    assert d.credential is None and d.technique_ids == []
    assert d.target.model_dump() == {"uid": "arn:aws:iam::111122223333:role/r1", "name": "r1", "type": "Role",
                                     "account_uid": "111122223333"}


@pytest.mark.parametrize(("mutate", "field", "reason"), [
    (lambda e: e.update(userIdentity="bob"), "userIdentity", "expected an object, got string"),
    (lambda e: e.pop("userIdentity"), "userIdentity", "required field missing"),
    (lambda e: e.update(eventTime=12), "eventTime", "expected a string, got number"),
    (lambda e: e.update(eventTime="30/07/2024"), "eventTime", "not an ISO 8601 timestamp"),
    (lambda e: e.update(requestParameters="userName=bob"), "requestParameters", "expected an object"),
    (lambda e: e.update(responseElements=[1]), "responseElements", "expected an object, got array"),
    (lambda e: e.update(responseElements=None), "responseElements.accessKey.accessKeyId", "required field"),
    (lambda e: e.update(responseElements={"accessKey": {"accessKeyId": 5}}),
     "responseElements.accessKey.accessKeyId", "expected a string, got number"),
    (lambda e: e["userIdentity"].update(sessionContext={"attributes": {"mfaAuthenticated": "maybe"}}),
     "userIdentity.sessionContext.attributes.mfaAuthenticated", "expected 'true' or 'false'"),
    (lambda e: e["userIdentity"].update(sessionContext="x"), "userIdentity.sessionContext", "expected an object"),
    (lambda e: e.update(eventName=["CreateAccessKey"]), "eventName", "expected a string"),
    (lambda e: e.update(awsRegion=1), "awsRegion", "expected a string"),
])
def test_cloudtrail_field_errors(mutate, field, reason):
    ev = event("CreateAccessKey", request={"userName": "bob"},
               response={"accessKey": {"accessKeyId": "AKIAX", "status": "Active"}})
    mutate(ev)
    with pytest.raises(RecordError) as info:
        ct(ev)
    err = info.value
    assert (err.origin, err.position, err.field) == ("trail.json", 7, field)
    assert reason in err.reason
    assert str(err).startswith(f"trail.json: record 7: field '{field}'")


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-07-30T21:53:13Z", datetime(2024, 7, 30, 21, 53, 13, tzinfo=UTC)),
    ("2022-09-27 17:09:18", datetime(2022, 9, 27, 17, 9, 18, tzinfo=UTC)),
    ("2023-01-03 01:52:07.000000000", datetime(2023, 1, 3, 1, 52, 7, tzinfo=UTC)),
    ("2020-10-23T12:22:41.296Z", datetime(2020, 10, 23, 12, 22, 41, 296000, tzinfo=UTC)),
    ("2024-07-30T23:53:13+02:00", datetime(2024, 7, 30, 21, 53, 13, tzinfo=UTC)),
])
def test_parse_aws_time(text, expected):
    assert parse_aws_time(text) == expected


@pytest.mark.parametrize("text", ["2024-07-30", "Jul 30, 2024 9:53:13 PM", "2024-13-01T00:00:00Z", ""])
def test_parse_aws_time_rejects(text):
    with pytest.raises(ValueError):
        parse_aws_time(text)


# -- GuardDuty ---------------------------------------------------------------------------------

GD = {
    "schemaVersion": "2.0",
    "accountId": "111122223333",
    "region": "us-east-1",
    "partition": "aws",
    "id": "16afba5c5c43e07c9e3e5e2e544e95df",
    "arn": "arn:aws:guardduty:us-east-1:111122223333:detector/d1/finding/16afba5c5c43e07c9e3e5e2e544e95df",
    "type": "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
    "resource": {
        "resourceType": "AccessKey",
        "accessKeyDetails": {"accessKeyId": "ASIASTOLENKEY", "principalId": "AROAEXAMPLE:i-0abc",
                             "userName": "ec2-role", "userType": "AssumedRole"},
    },
    "service": {
        "serviceName": "guardduty",
        "detectorId": "d1",
        "action": {"actionType": "AWS_API_CALL", "awsApiCallAction": {
            "api": "ListBuckets", "serviceName": "s3.amazonaws.com", "callerType": "Remote IP",
            "remoteIpDetails": {"ipAddressV4": "198.51.100.99"},
            "userAgent": {"fullUserAgent": "aws-cli/2.0", "userAgent": "aws-cli"}}},
        "archived": False,
        "additionalInfo": {"value": "{}", "type": "default"},
        "count": 3,
    },
    "severity": 8.0,
    "createdAt": "2024-07-30T21:00:00.000Z",
    "updatedAt": "2024-07-30T21:30:00.000Z",
    "title": "Credentials for instance role ec2-role used from external IP address.",
}


def test_guardduty_all_fields():
    d = detection_from_guardduty(copy.deepcopy(GD), "gd.json", 3)
    assert (d.source, d.finding_type, d.event_name) == ("guardduty", GD["type"], "ListBuckets")
    assert d.technique_ids == ["T1552.005"] and d.severity == "high"
    assert d.rule.model_dump() == {"type": "guardduty", "uid": GD["id"], "name": GD["type"], "path": None}
    assert d.time == datetime(2024, 7, 30, 21, 30, tzinfo=UTC)
    assert (d.account_uid, d.region) == ("111122223333", "us-east-1")
    c = d.credential
    assert (c.kind, c.uid) == ("aws_access_key", "ASIASTOLENKEY")
    assert (c.owner.name, c.owner.type, c.owner.uid) == ("ec2-role", "AssumedRole", None)
    assert d.actor.src_ip == "198.51.100.99" and d.actor.user_agent == "aws-cli/2.0"
    assert d.actor.session_uid == "ASIASTOLENKEY" and d.actor.access_path == "api"
    assert d.suppressed is None


def test_guardduty_iam_user_owner_gets_arn_and_domain_caller_is_service():
    gd = copy.deepcopy(GD)
    gd["resource"]["accessKeyDetails"] = {"accessKeyId": "AKIAUSERKEY", "userName": "bob", "userType": "IAMUser"}
    gd["service"]["action"]["awsApiCallAction"] = {"api": "PutRolePolicy", "callerType": "Domain",
                                                   "domainDetails": {"domain": "cloudformation.amazonaws.com"}}
    d = detection_from_guardduty(gd, "gd.json", 0)
    assert d.credential.owner.uid == "arn:aws:iam::111122223333:user/bob"
    assert d.actor.invoked_by == "cloudformation.amazonaws.com" and d.actor.access_path == "service"


@pytest.mark.parametrize(("sample", "archived", "expected"), [
    (True, False, "GuardDuty sample finding (service.additionalInfo.sample)"),
    ("true", False, "GuardDuty sample finding (service.additionalInfo.sample)"),
    (None, True, "archived GuardDuty finding"),
    (False, False, None),
])
def test_guardduty_suppression(sample, archived, expected):
    gd = copy.deepcopy(GD)
    if sample is not None:
        gd["service"]["additionalInfo"]["sample"] = sample
    gd["service"]["archived"] = archived
    assert detection_from_guardduty(gd, "gd.json", 0).suppressed == expected


def test_guardduty_without_resource_has_no_credential():
    gd = copy.deepcopy(GD)
    del gd["resource"]
    d = detection_from_guardduty(gd, "gd.json", 0)
    assert d.credential is None and d.target.uid is None


@pytest.mark.parametrize(("score", "label"), [(1, "low"), (3.9, "low"), (4.0, "medium"), (6.9, "medium"),
                                              (7, "high"), (8.9, "high"), (9.0, "critical"), (10, "critical")])
def test_guardduty_severity_bands(score, label):
    assert severity_from_score(score) == label


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda g: g.update(severity=11), "severity"),
    (lambda g: g.update(severity=True), "severity"),
    (lambda g: g.pop("id"), "id"),
    (lambda g: g.update(updatedAt="soon", createdAt="soon"), "updatedAt"),
    (lambda g: g["resource"].update(accessKeyDetails=[]), "resource.accessKeyDetails"),
    (lambda g: g["service"].update(archived="perhaps"), "service.archived"),
])
def test_guardduty_field_errors(mutate, field):
    gd = copy.deepcopy(GD)
    mutate(gd)
    with pytest.raises(RecordError) as info:
        detection_from_guardduty(gd, "gd.json", 4)
    assert (info.value.field, info.value.position, info.value.origin) == (field, 4, "gd.json")


def test_guardduty_technique_table():
    assert techniques_for_type("Persistence:IAMUser/AnomalousBehavior") == ["T1098"]
    assert techniques_for_type("CredentialAccess:IAMUser/AnomalousBehavior") == ["T1552"]
    assert techniques_for_type("PrivilegeEscalation:IAMUser/AdministrativePermissions") == ["T1098.003"]
    assert techniques_for_type("UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.InsideAWS") == [
        "T1552.005"]
    assert techniques_for_type("Stealth:IAMUser/PasswordPolicyChange") == ["T1562"]
    assert techniques_for_type("Stealth:IAMUser/CloudTrailLoggingDisabled") == ["T1562.008"]
    assert techniques_for_type("Policy:IAMUser/RootCredentialUsage") == ["T1078.004"]
    assert techniques_for_type("Backdoor:EC2/C&CActivity.B") == []


# -- Security Hub (ASFF) -----------------------------------------------------------------------

ASFF = {
    "SchemaVersion": "2018-10-08",
    "Id": "arn:aws:securityhub:us-east-1:111122223333:subscription/"
    "aws-foundational-security-best-practices/v/1.0.0/IAM.3/finding/1",
    "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/securityhub",
    "GeneratorId": "aws-foundational-security-best-practices/v/1.0.0/IAM.3",
    "AwsAccountId": "111122223333",
    "Region": "us-east-1",
    "Types": ["Software and Configuration Checks/Industry and Regulatory Standards/"
              "AWS-Foundational-Security-Best-Practices"],
    "CreatedAt": "2020-10-23T12:22:41.296Z",
    "UpdatedAt": "2022-01-24T14:16:33.642Z",
    "Severity": {"Product": 40, "Label": "MEDIUM", "Normalized": 40, "Original": "MEDIUM"},
    "Title": "IAM.3 IAM users' access keys should be rotated every 90 days or less",
    "ProductFields": {"ControlId": "IAM.3"},
    "Resources": [{"Type": "AwsIamUser", "Id": "arn:aws:iam::111122223333:user/test-admin2",
                   "Details": {"AwsIamUser": {"UserName": "test-admin2", "Path": "/"}}}],
    "Compliance": {"Status": "FAILED"},
    "Workflow": {"Status": "NEW"},
    "RecordState": "ACTIVE",
}


def test_asff_control_finding_fields():
    d = detection_from_asff(copy.deepcopy(ASFF), "sh.json", 0)
    assert (d.source, d.finding_type, d.severity) == ("securityhub", "IAM.3", "medium")
    assert d.technique_ids == ["T1098.001"]
    assert d.rule.model_dump() == {"type": "securityhub", "uid": "IAM.3", "name": ASFF["Title"], "path": None}
    assert d.time == datetime(2022, 1, 24, 14, 16, 33, 642000, tzinfo=UTC)
    assert (d.account_uid, d.region) == ("111122223333", "us-east-1")
    assert d.target.model_dump() == {"uid": "arn:aws:iam::111122223333:user/test-admin2", "name": "test-admin2",
                                     "type": "IAMUser", "account_uid": "111122223333"}
    assert d.suppressed is None  # IAM.3 names a user: the account's rotation hygiene (config_rules.py)
    assert (d.credential.kind, d.credential.uid) == ("aws_stale_credentials", "111122223333:rotation")
    assert d.credential.attributes["users"] == ["test-admin2"] and d.credential.attributes["max_age_days"] == 90


def test_asff_security_control_id_preferred():
    f = copy.deepcopy(ASFF)
    f["Compliance"]["SecurityControlId"] = "IAM.8"
    assert detection_from_asff(f, "sh.json", 0).finding_type == "IAM.8"


def test_asff_access_key_resource_is_the_credential():
    f = copy.deepcopy(ASFF)
    f["Resources"] = [{"Type": "AwsIamAccessKey", "Id": "AWS::IAM::AccessKey:AKIAFROMID",
                       "Details": {"AwsIamAccessKey": {"PrincipalName": "bob", "PrincipalType": "IAMUser",
                                                       "PrincipalId": "AIDABOB", "Status": "Active",
                                                       "CreatedAt": "2024-01-01T00:00:00.000Z"}}}]
    d = detection_from_asff(f, "sh.json", 0)
    c = d.credential
    assert (c.kind, c.uid) == ("aws_access_key", "AKIAFROMID")
    assert c.owner.model_dump() == {"uid": "arn:aws:iam::111122223333:user/bob", "name": "bob", "type": "IAMUser",
                                    "account_uid": "111122223333"}
    assert c.attributes == {"status": "Active", "createdAt": "2024-01-01T00:00:00.000Z"}
    f["Resources"][0]["Details"]["AwsIamAccessKey"]["AccessKeyId"] = "AKIAEXPLICIT"
    assert detection_from_asff(f, "sh.json", 0).credential.uid == "AKIAEXPLICIT"


@pytest.mark.parametrize(("mutate", "reason_part"), [
    (lambda f: f.update(Workflow={"Status": "RESOLVED"}), "RESOLVED"),
    (lambda f: f.update(Workflow={"Status": "SUPPRESSED"}), "SUPPRESSED"),
    (lambda f: f.update(RecordState="ARCHIVED"), "ARCHIVED"),
    (lambda f: f.update(Compliance={"Status": "PASSED"}), "PASSED"),
])
def test_asff_suppression(mutate, reason_part):
    f = copy.deepcopy(ASFF)
    mutate(f)
    assert reason_part in detection_from_asff(f, "sh.json", 0).suppressed


def test_asff_cis_versions_map_to_different_controls():
    cis12 = "arn:aws:securityhub:::ruleset/cis-aws-foundations-benchmark/v/1.2.0/rule/1.4"
    assert consolidated_control("1.4", cis12) == "IAM.3"
    assert consolidated_control("1.4", "cis-aws-foundations-benchmark/v/1.4.0/1.4") == "IAM.4"
    assert consolidated_control("PCI.IAM.7", "pci-dss/v/3.2.1/PCI.IAM.7") == "IAM.8"
    assert consolidated_control("EC2.1", "") == "EC2.1"


def test_asff_guardduty_product():
    f = copy.deepcopy(ASFF)
    f.update(ProductArn="arn:aws:securityhub:us-east-1::product/aws/guardduty",
             Types=["TTPs/Persistence/Persistence:IAMUser-AnomalousBehavior"], ProductFields={})
    d = detection_from_asff(f, "sh.json", 0)
    assert d.finding_type == "Persistence:IAMUser/AnomalousBehavior" and d.technique_ids == ["T1098"]


def test_asff_severity_from_normalized_when_no_label():
    f = copy.deepcopy(ASFF)
    f["Severity"] = {"Normalized": 90}
    assert detection_from_asff(f, "sh.json", 0).severity == "critical"


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda f: f.update(Severity={"Label": "SEVERE"}), "Severity.Label"),
    (lambda f: f.update(Resources={"Type": "AwsIamUser"}), "Resources"),
    (lambda f: f.update(Resources=[{"Type": 3}]), "Resources.0.Type"),
    (lambda f: f.pop("Id"), "Id"),
    (lambda f: (f.pop("UpdatedAt"), f.pop("CreatedAt")), "CreatedAt"),
    (lambda f: f.update(Workflow="NEW"), "Workflow"),
])
def test_asff_field_errors(mutate, field):
    f = copy.deepcopy(ASFF)
    mutate(f)
    with pytest.raises(RecordError) as info:
        detection_from_asff(f, "sh.json", 2)
    assert (info.value.field, info.value.position) == (field, 2)


def test_guardduty_remote_ip_details_become_the_actors_location():
    gd = copy.deepcopy(GD)
    gd["service"]["action"]["awsApiCallAction"]["remoteIpDetails"].update(
        {"city": {"cityName": "Lagos"}, "country": {"countryCode": "NG", "countryName": "Nigeria"},
         "organization": {"asn": "37148", "asnOrg": "Globacom Limited", "isp": "Globacom", "org": "Globacom"}})
    loc = detection_from_guardduty(gd, "gd.json", 0).actor.src_location
    assert loc.model_dump(exclude_none=True) == {"city": "Lagos", "country": "NG", "isp": "Globacom Limited",
                                                 "desc": "Nigeria"}
    assert detection_from_guardduty(copy.deepcopy(GD), "gd.json", 0).actor.src_location is None
