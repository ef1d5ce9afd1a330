"""A contained credential is looked at again (issue 14, item 2): a new detection of a closed case's
credential opens a case linked to it, whose run reads the credential again. Live again (re-enabled by
the attacker): planned, asked and contained again. Still contained (a GuardDuty finding arriving
after the fact): closed ``already_contained`` without asking anyone. Cordon's own call (its rollback
re-enabling the key): no new case.

Real parts: the respond flow in process, the AWS sandbox (moto's server) over real HTTP. The
``UpdateAccessKey`` record is written here in CloudTrail's documented shape
(https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateAccessKey.html, request parameters
``userName``, ``accessKeyId``, ``status``; ``responseElements`` null), from the example's
``CreateAccessKey`` record: the shared corpus has no re-enabled key."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from cordon.providers.aws.cloudtrail import detection_from_cloudtrail
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudtrail-create-access-key.json"
GUARDDUTY = REPO / "examples" / "guardduty-same-key.json"


def reenabled(by_arn: str | None = None, status: str = "Active") -> dict:
    """``UpdateAccessKey`` making the example's key ``status`` again, by the example's actor (or ``by_arn``)."""
    ev = json.loads(EXAMPLE.read_text())
    created = ev["responseElements"]["accessKey"]
    ev.update(eventName="UpdateAccessKey", eventID=str(uuid.uuid4()), eventTime="2026-11-20T05:02:11Z",
              requestParameters={"userName": created["userName"], "accessKeyId": created["accessKeyId"],
                                 "status": status}, responseElements=None)
    if by_arn:
        ev["userIdentity"] = {"type": "IAMUser", "arn": by_arn, "accountId": ev["recipientAccountId"],
                              "userName": by_arn.rsplit("/", 1)[-1], "accessKeyId": "AKIAEXAMPLECORDON001"}
    return ev


def test_a_key_made_active_names_the_key_and_made_inactive_names_nothing(make_detection):
    match = type("M", (), {"id": "r", "title": "t", "path": None, "level": "high", "technique_ids": []})()
    det = detection_from_cloudtrail(reenabled(), match, "test", 0)
    assert (det.credential.kind, det.credential.uid) == ("aws_access_key", "AKIAEXAMPLEBUILDBOT9")
    assert det.credential.attributes == {"status": "Active", "reactivated": True}
    assert det.case_key() == detection_from_cloudtrail(json.loads(EXAMPLE.read_text()), match, "t", 0).case_key()
    assert detection_from_cloudtrail(reenabled(status="Inactive"), match, "test", 0).credential is None


def _contain_example(responder, aws) -> dict:
    report = responder.intake([EXAMPLE])
    (first,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert first["status"] == "contained"
    return first


def _status(aws, key: str = "AKIAEXAMPLEBUILDBOT9") -> str:
    keys = aws.clients("iam").list_access_keys(UserName="build-bot")["AccessKeyMetadata"]
    return {k["AccessKeyId"]: k["Status"] for k in keys}[key]


def test_a_key_reenabled_after_containment_is_contained_again_in_a_linked_case(responder, aws, tmp_path):
    first = _contain_example(responder, aws)
    aws.clients("iam").update_access_key(UserName="build-bot", AccessKeyId="AKIAEXAMPLEBUILDBOT9", Status="Active")
    path = tmp_path / "reenabled.json"
    path.write_text(json.dumps(reenabled()))
    report = responder.intake([path])
    (ticket,) = report.cases
    assert ticket.case_id != first["case_id"] and ticket.playbook.name == "aws-access-key-created"
    (again,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert again["status"] == "contained", again
    assert _status(aws) == "Inactive"
    ledger = responder.ledger
    (reopened,) = list(ledger.records(case_id=first["case_id"], kind_prefix="case.reopened"))
    assert reopened.payload["linked_case"] == ticket.case_id and reopened.payload["status"] == "contained"
    (linked,) = list(ledger.records(case_id=ticket.case_id, kind_prefix="case.linked"))
    assert linked.payload == {"previous_case": first["case_id"], "previous_status": "contained"}
    assert ledger.case(ticket.case_id)["case_key"] == ledger.case(first["case_id"])["case_key"] + "#2"
    # the same record again is a duplicate of the linked case's detection: nothing new
    assert responder.intake([path]).cases == []
    assert ledger.verify().ok


def test_a_finding_after_containment_is_read_again_and_closed_without_asking(responder, aws):
    first = _contain_example(responder, aws)
    report = responder.intake([GUARDDUTY])
    (ticket,) = report.cases
    (again,) = list(responder.run_all(report, approval="console", stand_ins=aws))  # asking needs a terminal
    assert again["status"] == "already_contained" and again["verified"] is True, again
    kinds = [r.kind for r in responder.ledger.records(case_id=ticket.case_id)]
    assert "approval.asked" not in kinds and "step.started" not in kinds and kinds[-1] == "case.closed"
    assert _status(aws) == "Inactive"
    assert responder.ledger.case(first["case_id"])["status"] == "contained"


def test_cordons_own_reactivation_opens_no_case(responder, aws, tmp_path):
    first = _contain_example(responder, aws)
    (guard,) = list(responder.ledger.records(case_id=first["case_id"], kind_prefix="guard.passed"))
    me = guard.payload["cordon_identity"]
    assert me
    path = tmp_path / "rollback.json"
    path.write_text(json.dumps(reenabled(by_arn=me)))
    report = responder.intake([path])
    assert report.cases == [] and [t.case_id for t in report.joined] == [first["case_id"]]
    (why,) = list(responder.ledger.records(case_id=first["case_id"], kind_prefix="case.not_reopened"))
    assert "Cordon's own call" in why.payload["reason"]
