"""EC2 key pairs are contained by identity, not by name (issue 14, item 5): ``CreateKeyPair`` /
``ImportKeyPair`` name a key pair, and the key pair under that name may have been deleted and
re-created since (by the attacker or by its owner). ``aws.delete-key-pair`` compares the key pair's ID
(``responseElements.keyPairId``), else its fingerprint (``keyFingerprint``), with the live one
(``DescribeKeyPairs``) and refuses when they differ; the ``aws-key-pair`` playbook reads the live one
first (``aws.key-pair``), so the guard refuses before any plan.

Real parts only: boto3 over HTTP to moto's server (the session sandbox, ``tests/conftest.py``), the real
CloudTrail parser, the respond flow on Prefect's test server. The records are AWS's documented
``CreateKeyPair`` example (CloudTrail User Guide, "CloudTrail log file examples", Amazon EC2:
https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-log-file-examples.html ) with this
test's key name, ID and fingerprint in place of the example's; the fingerprint-only form is the
guide's older example (``responseElements`` with ``keyName``, ``keyFingerprint``, ``keyMaterial``)."""

from __future__ import annotations

import copy
import json

import pytest

from cordon.action import ActionContext, get_action
from tests.conftest import detection_from_event
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

ACCOUNT = "444455556666"
REGION = "us-east-1"
NAME = "my-key"


def documented_record(key_name: str, key_pair_id: str | None, fingerprint: str | None) -> dict:
    """The CloudTrail User Guide's ``CreateKeyPair`` record (IAM user Arnav, aws-cli in CloudShell),
    naming ``key_name`` with ``key_pair_id`` and ``fingerprint`` (each left out when ``None``)."""
    response = {"requestId": "9aa4938f-720f-4f4b-9637-EXAMPLE9a196", "keyName": key_name,
                "keyFingerprint": fingerprint, "keyPairId": key_pair_id, "keyMaterial": "<sensitiveDataRemoved>"}
    return {
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "IAMUser", "principalId": "AIDA6ON6E4XEGIEXAMPLE", "arn": f"arn:aws:iam::{ACCOUNT}:user/Arnav",
            "accountId": ACCOUNT, "accessKeyId": "AKIAI44QH8DHBEXAMPLE", "userName": "Arnav",
            "sessionContext": {"sessionIssuer": {}, "webIdFederationData": {},
                               "attributes": {"creationDate": "2023-07-19T21:11:57Z", "mfaAuthenticated": "false"}},
        },
        "eventTime": "2023-07-19T21:19:22Z",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "CreateKeyPair",
        "awsRegion": REGION,
        "sourceIPAddress": "192.0.2.0",
        "userAgent": "aws-cli/2.13.5 Python/3.11.4 Linux/4.14.255-314-253.539.amzn2.x86_64 exec-env/CloudShell "
                     "exe/x86_64.amzn.2 prompt/off command/ec2.create-key-pair",
        "requestParameters": {"keyName": key_name, "keyType": "rsa", "keyFormat": "pem"},
        "responseElements": {k: v for k, v in response.items() if v is not None},
        "requestID": "9aa4938f-720f-4f4b-9637-EXAMPLE9a196",
        "eventID": "2ae450ff-e72b-4de1-87b0-EXAMPLE5227cb",
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
        "tlsDetails": {"tlsVersion": "TLSv1.2", "cipherSuite": "ECDHE-RSA-AES128-GCM-SHA256",
                       "clientProvidedHostHeader": "ec2.us-east-1.amazonaws.com"},
        "sessionCredentialFromConsole": "true",
    }


def ec2(aws):
    return aws.clients("ec2", region=REGION)


def live(aws) -> list[tuple[str, str]]:
    return sorted((k["KeyName"], k["KeyPairId"]) for k in ec2(aws).describe_key_pairs()["KeyPairs"])


def create(aws, name: str = NAME) -> dict:
    """``ec2:CreateKeyPair`` in moto: ``{KeyName, KeyPairId, KeyFingerprint, KeyMaterial}``."""
    return ec2(aws).create_key_pair(KeyName=name)


def recreated(aws) -> tuple[dict, dict]:
    """The event's key pair, then (deleted) another one created under the same name."""
    first = create(aws)
    ec2(aws).delete_key_pair(KeyPairId=first["KeyPairId"])
    second = create(aws)
    assert second["KeyPairId"] != first["KeyPairId"]
    return first, second


def ctx(aws, det, **params):
    return ActionContext(detection=det, params={"key_name": NAME, "region": REGION, **params}, clients=aws.clients)


@pytest.fixture
def account(aws):
    aws.use_account(ACCOUNT)
    return aws


# -- the record ------------------------------------------------------------------------------
def test_the_documented_record_names_the_key_pair_by_name_id_and_fingerprint():
    det = detection_from_event(documented_record(NAME, "key-0123456789abcdef0", "1f:51:ae:28"))
    assert (det.credential.kind, det.credential.uid, det.region) == ("aws_key_pair", NAME, REGION)
    assert det.credential.attributes == {"keyPairId": "key-0123456789abcdef0", "keyFingerprint": "1f:51:ae:28",
                                         "region": REGION}
    assert "sensitiveDataRemoved" not in json.dumps(det.credential.model_dump())


# -- the action --------------------------------------------------------------------------------
def test_the_same_key_pair_is_deleted_by_its_id_and_verified(account):
    aws = account
    kp = create(aws)
    other = create(aws, "ops-key")
    det = detection_from_event(documented_record(NAME, kp["KeyPairId"], kp["KeyFingerprint"]))
    action = get_action("aws.delete-key-pair")()
    result = action.run(ctx(aws, det))
    assert result.status == "contained", result.error
    assert [c.describe() for c in result.calls] == [f"ec2:DeleteKeyPair(KeyPairId={kp['KeyPairId']})"]
    assert result.before["key_pair_id"] == kp["KeyPairId"] and result.before["same_key_pair"] is True
    assert result.before["event_key_pair_id"] == kp["KeyPairId"] and result.after is None
    assert live(aws) == [("ops-key", other["KeyPairId"])]
    assert action.verify(ctx(aws, det)) == (True, None)
    again = action.run(ctx(aws, det))
    assert again.status == "already_contained" and again.calls == []


def test_a_key_pair_recreated_under_the_same_name_is_refused_and_kept(account):
    aws = account
    first, second = recreated(aws)
    det = detection_from_event(documented_record(NAME, first["KeyPairId"], first["KeyFingerprint"]))
    action = get_action("aws.delete-key-pair")()
    result = action.run(ctx(aws, det))
    assert result.status == "refused" and result.calls == [], result
    assert f"is now {second['KeyPairId']}, not {first['KeyPairId']}" in result.error
    # the key pair found is recorded, said not to be the one named
    assert result.before["key_pair_id"] == second["KeyPairId"] and result.before["same_key_pair"] is False
    assert live(aws) == [(NAME, second["KeyPairId"])]
    # the name is not called clean: the key pair under it is not the one contained
    held, state = action.verify(ctx(aws, det))
    assert held is False and state["mismatch"] == result.before["mismatch"]
    with pytest.raises(Exception, match="re-created under the same name"):
        action.plan(ctx(aws, det))


def test_without_an_id_the_fingerprint_decides(account):
    """The guide's older record carries ``keyFingerprint`` and no ``keyPairId``."""
    aws = account
    first, second = recreated(aws)
    old = detection_from_event(documented_record(NAME, None, first["KeyFingerprint"]))
    refused = get_action("aws.delete-key-pair")().run(ctx(aws, old))
    assert refused.status == "refused" and "fingerprint" in refused.error
    assert live(aws) == [(NAME, second["KeyPairId"])]
    # fingerprints compare as EC2 prints them (hex digits in either case)
    now = detection_from_event(documented_record(NAME, None, second["KeyFingerprint"].upper()))
    done = get_action("aws.delete-key-pair")().run(ctx(aws, now))
    assert done.status == "contained", done.error
    assert [c.params for c in done.calls] == [{"KeyPairId": second["KeyPairId"]}] and live(aws) == []


def test_a_record_naming_neither_id_nor_fingerprint_is_refused(account):
    aws = account
    create(aws)
    det = detection_from_event(documented_record(NAME, None, None))
    result = get_action("aws.delete-key-pair")().run(ctx(aws, det))
    assert result.status == "refused" and "names neither a KeyPairId nor a fingerprint" in result.error
    assert [n for n, _ in live(aws)] == [NAME]


def test_the_id_read_when_planning_must_still_be_the_live_one(account):
    """``key_pair_id`` (what ``aws.key-pair`` read for the plan) is checked too: the key pair swapped
    between the plan and the run is refused, even when the record named no ID."""
    aws = account
    first, second = recreated(aws)
    det = detection_from_event(documented_record(NAME, None, second["KeyFingerprint"]))
    result = get_action("aws.delete-key-pair")().run(ctx(aws, det, key_pair_id=first["KeyPairId"]))
    assert result.status == "refused" and "(the one planned)" in result.error
    assert live(aws) == [(NAME, second["KeyPairId"])]


def test_rollback_reimports_and_containment_after_it_is_refused(account):
    """Rollback re-imports the public key (a new KeyPairId): that key pair is no longer the one the
    event named, so containing the case again is refused and left to a person."""
    aws = account
    kp = create(aws)
    det = detection_from_event(documented_record(NAME, kp["KeyPairId"], kp["KeyFingerprint"]))
    action = get_action("aws.delete-key-pair")()
    result = action.run(ctx(aws, det))
    assert result.status == "contained", result.error
    undone = action.rollback(ctx(aws, det), result)
    assert undone.status == "rolled_back", undone.error
    assert undone.after["public_key"].split()[:2] == result.before["public_key"].split()[:2]
    assert undone.after["same_key_pair"] is False
    assert action.run(ctx(aws, det)).status == "refused"


# -- the enrichment and the guard ---------------------------------------------------------------
def test_the_enrichment_reads_the_live_key_pair_and_the_guard_refuses_another(account):
    aws = account
    first, second = recreated(aws)
    det = detection_from_event(documented_record(NAME, first["KeyPairId"], first["KeyFingerprint"]))
    facts = get_action("aws.key-pair")().run(
        ActionContext(detection=det, params={"key_name": NAME, "region": REGION}, clients=aws.clients))
    assert facts["exists"] is True and facts["key_pair_id"] == second["KeyPairId"]
    assert facts["event_key_pair_id"] == first["KeyPairId"] and facts["same_key_pair"] is False
    cls = get_action("aws.delete-key-pair")
    params = {"key_name": NAME, "region": REGION, "key_pair_id": facts["key_pair_id"],
              "key_fingerprint": facts["key_fingerprint"]}
    cls.validate_params(params)
    reason = cls.check_identifies(params, det)
    assert reason and f"is now {second['KeyPairId']}, not {first['KeyPairId']}" in reason
    same = detection_from_event(documented_record(NAME, second["KeyPairId"], second["KeyFingerprint"]))
    assert cls.check_identifies(params, same) is None
    # nothing under the name when read: nothing to compare (the action says already_contained)
    assert cls.check_identifies({**params, "key_pair_id": None, "key_fingerprint": None}, det) is None
    # the key name is still the generic check
    assert "is not the detection's" in cls.check_identifies({**params, "key_name": "other"}, same)

    ec2(aws).delete_key_pair(KeyPairId=second["KeyPairId"])
    gone = get_action("aws.key-pair")().run(
        ActionContext(detection=det, params={"key_name": NAME, "region": REGION}, clients=aws.clients))
    assert gone["exists"] is False and gone["key_pair_id"] is None and gone["same_key_pair"] is None


def test_the_key_pair_renderer_says_which_key_pair_is_under_the_name():
    from cordon.providers.aws import render  # noqa: F401 - registers the renderers
    from cordon.slack.render import RENDERERS

    lines = RENDERERS["aws.key-pair"]({"exists": True, "key_pair_id": "key-0b", "key_fingerprint": "aa",
                                       "same_key_pair": False, "mismatch": "key pair 'k' is now key-0b, not <x>"})
    assert "not the one the event named" in lines[0] and "&lt;x&gt;" in lines[0]
    assert "the one the event created" in RENDERERS["aws.key-pair"](
        {"exists": True, "key_pair_id": "key-0b", "key_fingerprint": "aa", "same_key_pair": True})[0]


def test_the_sandbox_seeds_the_key_pair_the_record_names(account):
    aws = account
    det = detection_from_event(documented_record(NAME, "key-0a1b2c3d4e5f60718", "1f:51"))
    assert aws.seed_from_detection(det)["key_pairs"] == [NAME]
    assert live(aws) == [(NAME, "key-0a1b2c3d4e5f60718")]
    by_fingerprint = detection_from_event(documented_record("old-key", None, "1f:51:ae"))
    aws.seed_from_detection(by_fingerprint)
    (kp,) = ec2(aws).describe_key_pairs(KeyNames=["old-key"])["KeyPairs"]
    assert kp["KeyFingerprint"] == "1f:51:ae"


# -- the respond flow --------------------------------------------------------------------------
def _respond(responder, aws, tmp_path, record):
    path = tmp_path / "create-key-pair.json"
    path.write_text(json.dumps({"Records": [copy.deepcopy(record)]}))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=aws))
    return s


def test_flow_refuses_a_recreated_key_pair_before_any_plan(responder, account, tmp_path):
    aws = account
    first, second = recreated(aws)
    s = _respond(responder, aws, tmp_path, documented_record(NAME, first["KeyPairId"], first["KeyFingerprint"]))
    assert s["playbook"] == "aws-key-pair" and s["status"] == "refused", s
    assert f"is now {second['KeyPairId']}, not {first['KeyPairId']}" in s["guard"]["reason"]
    assert s["enrichment"]["aws.key-pair"]["same_key_pair"] is False
    assert live(aws) == [(NAME, second["KeyPairId"])]
    kinds = [r.kind for r in responder.ledger.records(case_id=s["case_id"])]
    assert "guard.refused" in kinds and "plan.created" not in kinds
    assert responder.ledger.verify().ok


def test_flow_deletes_the_same_key_pair_and_verifies(responder, account, tmp_path):
    aws = account
    kp = create(aws)
    other = create(aws, "ops-key")
    s = _respond(responder, aws, tmp_path, documented_record(NAME, kp["KeyPairId"], kp["KeyFingerprint"]))
    assert s["status"] == "contained" and s["verified"] is True, s
    (action,) = s["actions"]
    assert action["name"] == "aws.delete-key-pair" and action["before"]["same_key_pair"] is True
    assert [(c["operation"], c["params"]) for c in action["calls"]] == [
        ("DeleteKeyPair", {"KeyPairId": kp["KeyPairId"]})]
    assert live(aws) == [("ops-key", other["KeyPairId"])]
    assert responder.ledger.verify().ok
