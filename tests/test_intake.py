"""read_inputs: every input format, and bad input of every kind, from files written in tmp_path."""

from __future__ import annotations

import gzip
import io
import json
from types import SimpleNamespace

import pytest

from cordon.detections.errors import Rejected
from cordon.detections.intake import RAW_TEXT_CAP, RawRecord, classify, read_inputs
from cordon.detections.pipeline import DetectStats, detect


def ct_event(name: str = "CreateAccessKey", **extra) -> dict:
    """A CloudTrail event in the shape of the record contents reference."""
    event = {
        "eventVersion": "1.09",
        "eventTime": "2024-07-30T21:53:13Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2.15.0",
        "recipientAccountId": "111122223333",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAEXAMPLE",
            "arn": "arn:aws:iam::111122223333:user/alice",
            "accountId": "111122223333",
            "accessKeyId": "AKIAALICEEXAMPLE",
            "userName": "alice",
        },
        "requestParameters": {"userName": "bob"},
        "responseElements": {
            "accessKey": {"accessKeyId": "AKIABOBEXAMPLE", "status": "Active", "userName": "bob",
                          "createDate": "Jul 30, 2024 9:53:13 PM"}
        },
    }
    event.update(extra)
    return event


GD_FINDING = {
    "schemaVersion": "2.0",
    "accountId": "111122223333",
    "region": "us-east-1",
    "id": "gd-1",
    "type": "Persistence:IAMUser/AnomalousBehavior",
    "severity": 5,
    "createdAt": "2024-07-30T22:00:00.000Z",
    "updatedAt": "2024-07-30T22:00:00.000Z",
    "service": {"serviceName": "guardduty", "detectorId": "d1", "archived": False, "additionalInfo": {}},
    "resource": {"resourceType": "AccessKey",
                 "accessKeyDetails": {"accessKeyId": "AKIABOBEXAMPLE", "userName": "bob", "userType": "IAMUser"}},
}

ASFF_FINDING = {
    "SchemaVersion": "2018-10-08",
    "Id": "arn:aws:securityhub:us-east-1:111122223333:subscription/"
    "aws-foundational-security-best-practices/v/1.0.0/IAM.3/finding/x",
    "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/securityhub",
    "GeneratorId": "aws-foundational-security-best-practices/v/1.0.0/IAM.3",
    "AwsAccountId": "111122223333",
    "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"],
    "CreatedAt": "2024-07-30T22:00:00.000Z",
    "UpdatedAt": "2024-07-30T22:00:00.000Z",
    "Severity": {"Label": "MEDIUM"},
    "Title": "IAM.3 IAM users' access keys should be rotated every 90 days or less",
    "ProductFields": {"ControlId": "IAM.3"},
    "Resources": [{"Type": "AwsIamUser", "Id": "arn:aws:iam::111122223333:user/bob"}],
    "Workflow": {"Status": "NEW"},
    "RecordState": "ACTIVE",
}


def eventbridge(detail_type: str, detail: dict, source: str) -> dict:
    return {"version": "0", "id": "eb-1", "detail-type": detail_type, "source": source,
            "account": "111122223333", "time": "2024-07-30T22:00:00Z", "region": "us-east-1",
            "resources": [], "detail": detail}


class StandIn:
    """Test scaffolding in place of cordon.sigma.RuleSet: matches CloudTrail events by name."""

    def __init__(self, names):
        self.names = set(names)
        self.calls = []

    def match(self, event, *, product, service):
        self.calls.append((product, service))
        if event.get("eventName") in self.names:
            return [SimpleNamespace(id="rule-1", title="Access key created", path="rules/x.yml",
                                    level="high", technique_ids=["T1098.001"])]
        return []


def records(items):
    return [r for r in items if isinstance(r, RawRecord)]


def rejected(items):
    return [r for r in items if isinstance(r, Rejected)]


# -- formats ----------------------------------------------------------------------------------


def test_single_object(tmp_path):
    p = tmp_path / "one.json"
    p.write_text(json.dumps(ct_event(), indent=2))
    out = list(read_inputs([p]))
    assert len(out) == 1 and isinstance(out[0], RawRecord)
    r = out[0]
    assert (r.origin, r.position, r.kind, r.line) == (str(p), 0, "cloudtrail", 1)
    assert r.record["eventName"] == "CreateAccessKey"
    assert r.envelope is None


def test_json_array(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text(json.dumps([ct_event("CreateUser"), GD_FINDING, ASFF_FINDING], indent=1))
    out = list(read_inputs([str(p)]))
    assert [r.kind for r in out] == ["cloudtrail", "guardduty", "securityhub"]
    assert [r.position for r in out] == [0, 1, 2]
    assert out[0].line == 2 and out[1].line > out[0].line


def test_json_lines_with_blank_line(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_text(json.dumps(ct_event("CreateUser")) + "\n\n" + json.dumps(GD_FINDING) + "\n   \n"
                 + json.dumps(ASFF_FINDING) + "\n")
    out = list(read_inputs([p]))
    assert all(isinstance(r, RawRecord) for r in out)
    assert [(r.position, r.line, r.kind) for r in out] == [
        (0, 1, "cloudtrail"), (1, 3, "guardduty"), (2, 5, "securityhub")]


def test_gzip_detected_by_magic_not_name(tmp_path):
    p = tmp_path / "plain-name.json"  # no .gz suffix
    p.write_bytes(gzip.compress(("\n".join(json.dumps(ct_event()) for _ in range(3)) + "\n").encode()))
    out = list(read_inputs([p]))
    assert len(records(out)) == 3 and not rejected(out)


def test_cloudtrail_s3_delivery_file_gzipped(tmp_path):
    p = tmp_path / "111122223333_CloudTrail_us-east-1_20240730T2155Z_abc.json.gz"
    events = [ct_event("CreateAccessKey"), ct_event("CreateUser"), ct_event("GetCallerIdentity")]
    p.write_bytes(gzip.compress(json.dumps({"Records": events}).encode()))
    out = list(read_inputs([p]))
    assert [r.record["eventName"] for r in out] == ["CreateAccessKey", "CreateUser", "GetCallerIdentity"]
    assert [r.position for r in out] == [0, 1, 2]


def test_pretty_printed_records_streamed_item_by_item(tmp_path):
    p = tmp_path / "ct.json"
    p.write_text(json.dumps({"Records": [ct_event(), ct_event("CreateUser")]}, indent=4))
    out = list(read_inputs([p]))
    assert [r.kind for r in out] == ["cloudtrail", "cloudtrail"]
    assert out[0].line == 3 and out[1].line > out[0].line


def test_multi_member_gzip(tmp_path):
    p = tmp_path / "multi.gz"
    p.write_bytes(gzip.compress(json.dumps(ct_event()).encode() + b"\n")
                  + gzip.compress(json.dumps(GD_FINDING).encode() + b"\n"))
    assert [r.kind for r in read_inputs([p])] == ["cloudtrail", "guardduty"]


def test_concatenated_json_objects(tmp_path):
    p = tmp_path / "firehose"
    p.write_text(json.dumps(ct_event()) + json.dumps(ct_event("CreateUser")))
    out = list(read_inputs([p]))
    assert [r.record["eventName"] for r in out] == ["CreateAccessKey", "CreateUser"]


def test_eventbridge_cloudtrail(tmp_path):
    p = tmp_path / "eb-ct.json"
    p.write_text(json.dumps(eventbridge("AWS API Call via CloudTrail", ct_event(), "aws.iam")))
    [r] = list(read_inputs([p]))
    assert r.kind == "cloudtrail" and r.record["eventName"] == "CreateAccessKey"
    assert r.envelope["detail-type"] == "AWS API Call via CloudTrail"
    assert r.envelope["id"] == "eb-1" and "detail" not in r.envelope


def test_eventbridge_console_sign_in_is_cloudtrail(tmp_path):
    p = tmp_path / "eb-signin.json"
    detail = ct_event("ConsoleLogin", eventSource="signin.amazonaws.com")
    p.write_text(json.dumps(eventbridge("AWS Console Sign In via CloudTrail", detail, "aws.signin")))
    [r] = list(read_inputs([p]))
    assert r.kind == "cloudtrail"


def test_eventbridge_guardduty(tmp_path):
    p = tmp_path / "eb-gd.json"
    p.write_text(json.dumps(eventbridge("GuardDuty Finding", GD_FINDING, "aws.guardduty")))
    [r] = list(read_inputs([p]))
    assert r.kind == "guardduty" and r.record["id"] == "gd-1"
    assert r.envelope["source"] == "aws.guardduty"


def test_eventbridge_security_hub_each_finding(tmp_path):
    second = dict(ASFF_FINDING, Id="second")
    p = tmp_path / "eb-sh.json"
    p.write_text(json.dumps(eventbridge("Security Hub Findings - Imported",
                                        {"findings": [ASFF_FINDING, second]}, "aws.securityhub")))
    out = list(read_inputs([p]))
    assert [(r.kind, r.position, r.record["Id"]) for r in out] == [
        ("securityhub", 0, ASFF_FINDING["Id"]), ("securityhub", 1, "second")]


def test_findings_wrapper(tmp_path):
    p = tmp_path / "get-findings.json"
    p.write_text(json.dumps({"Findings": [ASFF_FINDING, ASFF_FINDING], "NextToken": "abc"}, indent=2))
    out = list(read_inputs([p]))
    assert [r.kind for r in out] == ["securityhub", "securityhub"]


def test_stdin_dash():
    data = (json.dumps(ct_event()) + "\n").encode()
    [r] = list(read_inputs(["-"], stdin=io.BytesIO(data)))
    assert r.origin == "<stdin>" and r.kind == "cloudtrail"


def test_stdin_gzip():
    data = gzip.compress(json.dumps({"Records": [ct_event()]}).encode())
    [r] = list(read_inputs(["-"], stdin=io.BytesIO(data)))
    assert r.origin == "<stdin>" and r.kind == "cloudtrail"


def test_several_inputs_keep_their_own_positions(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([ct_event(), ct_event()]))
    b.write_text(json.dumps([ct_event()]))
    out = list(read_inputs([a, b]))
    assert [(r.origin, r.position) for r in out] == [(str(a), 0), (str(a), 1), (str(b), 0)]


def test_classify():
    assert classify(ct_event()) == "cloudtrail"
    assert classify(GD_FINDING) == "guardduty"
    assert classify(ASFF_FINDING) == "securityhub"
    assert classify({"schemaVersion": "2.0", "type": "x", "service": {"serviceName": "macie"}}) is None
    assert classify(["not", "a", "dict"]) is None


# -- bad input --------------------------------------------------------------------------------


def test_not_json_names_file_and_line(tmp_path):
    p = tmp_path / "garbage.txt"
    p.write_text("this is not json\n")
    [r] = list(read_inputs([p]))
    assert isinstance(r, Rejected)
    assert r.origin == str(p) and r.position == 0
    assert "not JSON at line 1" in r.reason and "byte 0" in r.reason
    assert str(p) in r.message()
    assert r.raw_text == "this is not json\n"


def test_broken_record_in_the_middle_of_json_lines(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text(json.dumps(ct_event()) + "\n" + '{"eventName": "CreateUser", oops}\n'
                 + json.dumps(ct_event("CreateUser")) + "\n")
    out = list(read_inputs([p]))
    assert [type(r).__name__ for r in out] == ["RawRecord", "Rejected", "RawRecord"]
    bad = out[1]
    assert bad.position == 1 and "line 2" in bad.reason
    assert bad.raw_text == '{"eventName": "CreateUser", oops}'
    assert f"{p}: record 1" in bad.message()
    assert out[2].position == 2 and out[2].record["eventName"] == "CreateUser"


def test_broken_first_line_of_json_lines_does_not_hide_the_rest(tmp_path):
    p = tmp_path / "first-broken.jsonl"
    p.write_text('{"eventName": \n' + json.dumps(ct_event()) + "\n" + json.dumps(ct_event()) + "\n")
    out = list(read_inputs([p]))
    assert [type(r).__name__ for r in out] == ["Rejected", "RawRecord", "RawRecord"]


def test_broken_item_in_array_stops_with_position(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[\n' + json.dumps(ct_event()) + ',\n{"eventName": ]\n')
    out = list(read_inputs([p]))
    assert isinstance(out[0], RawRecord)
    assert isinstance(out[1], Rejected) and out[1].position == 1 and "line 3" in out[1].reason


def test_truncated_gzip_yields_complete_records_first(tmp_path):
    lines = "".join(json.dumps(ct_event(), sort_keys=True) + "\n" for _ in range(400)).encode()
    full = gzip.compress(lines)
    p = tmp_path / "cut.json.gz"
    p.write_bytes(full[: len(full) // 2])
    out = list(read_inputs([p]))
    good, bad = records(out), rejected(out)
    assert 0 < len(good) < 400
    assert len(bad) == 1 and bad[0] is out[-1]
    assert "truncated gzip" in bad[0].reason and bad[0].origin == str(p)
    assert str(p) in bad[0].message()


def test_truncated_gzip_of_a_records_document(tmp_path):
    full = gzip.compress(json.dumps({"Records": [ct_event() for _ in range(300)]}, indent=2).encode())
    p = tmp_path / "cut-doc.gz"
    p.write_bytes(full[: len(full) * 2 // 3])
    out = list(read_inputs([p]))
    assert 0 < len(records(out)) < 300
    assert "truncated gzip" in out[-1].reason and isinstance(out[-1], Rejected)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "bad.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 40)
    [r] = list(read_inputs([p]))
    assert isinstance(r, Rejected) and "gzip" in r.reason


def test_unknown_shape_says_what_was_expected(tmp_path):
    p = tmp_path / "unknown.json"
    p.write_text(json.dumps([ct_event(), {"hello": "world", "time": 1}]))
    out = list(read_inputs([p]))
    bad = out[1]
    assert isinstance(bad, Rejected) and bad.position == 1
    assert "eventName, eventSource, eventTime" in bad.reason and "SchemaVersion" in bad.reason
    assert "got keys: hello, time" in bad.reason
    assert json.loads(bad.raw_text) == {"hello": "world", "time": 1}


def test_non_object_value(tmp_path):
    p = tmp_path / "numbers.jsonl"
    p.write_text("42\n" + json.dumps(ct_event()) + "\n")
    out = list(read_inputs([p]))
    assert isinstance(out[0], Rejected) and "expected a JSON object" in out[0].reason and "number" in out[0].reason
    assert isinstance(out[1], RawRecord)


def test_unsupported_eventbridge_detail_type(tmp_path):
    p = tmp_path / "eb.json"
    p.write_text(json.dumps(eventbridge("EC2 Instance State-change Notification", {"state": "running"},
                                        "aws.ec2")))
    [r] = list(read_inputs([p]))
    assert isinstance(r, Rejected) and r.field == "detail-type" and "EC2 Instance" in r.reason


def test_envelope_kind_must_match_detail(tmp_path):
    p = tmp_path / "eb.json"
    p.write_text(json.dumps(eventbridge("GuardDuty Finding", ct_event(), "aws.guardduty")))
    [r] = list(read_inputs([p]))
    assert isinstance(r, Rejected) and "the envelope says guardduty" in r.reason


def test_records_not_an_array(tmp_path):
    p = tmp_path / "ct.json"
    p.write_text(json.dumps({"Records": "nope"}))
    [r] = list(read_inputs([p]))
    assert isinstance(r, Rejected) and r.field == "Records" and "expected an array" in r.reason


def test_missing_file(tmp_path):
    p = tmp_path / "absent.json"
    [r] = list(read_inputs([p]))
    assert isinstance(r, Rejected) and r.position is None and "cannot open" in r.reason


def test_not_utf8(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"eventName": "caf\xe9"}\n' + json.dumps(ct_event()).encode() + b"\n")
    out = list(read_inputs([p]))
    assert isinstance(out[0], Rejected) and "not UTF-8" in out[0].reason and "\ufffd" in out[0].raw_text
    assert isinstance(out[1], RawRecord)


def test_raw_text_is_capped(tmp_path):
    p = tmp_path / "huge.jsonl"
    p.write_text('{"x": "' + "a" * (RAW_TEXT_CAP + 5000) + '"\n')  # unterminated
    [r] = list(read_inputs([p]))
    assert isinstance(r, Rejected)
    assert len(r.raw_text) < RAW_TEXT_CAP + 200 and "truncated" in r.raw_text


# -- wrong field types surface through the pipeline, naming file, position and field ------------


def _detect(tmp_path, lines):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    stats = DetectStats()
    out = list(detect(read_inputs([p]), StandIn({"CreateAccessKey"}), stats))
    return p, out, stats


def test_user_identity_of_wrong_type(tmp_path):
    p, out, stats = _detect(tmp_path, [ct_event(), ct_event(userIdentity="bob"), ct_event()])
    assert [type(r).__name__ for r in out] == ["Detection", "Rejected", "Detection"]
    bad = out[1]
    assert (bad.origin, bad.position, bad.field) == (str(p), 1, "userIdentity")
    assert "expected an object, got string" in bad.reason
    assert bad.message() == f"{p}: record 1: field 'userIdentity': expected an object, got string"
    assert json.loads(bad.raw_text)["userIdentity"] == "bob"
    assert stats.rejected == 1 and stats.detections == 2


def test_event_time_of_wrong_type(tmp_path):
    p, out, _ = _detect(tmp_path, [ct_event(eventTime=12)])
    [bad] = out
    assert isinstance(bad, Rejected) and bad.field == "eventTime" and bad.position == 0
    assert "expected a string, got number" in bad.reason


def test_event_time_unparseable(tmp_path):
    _, out, _ = _detect(tmp_path, [ct_event(eventTime="yesterday")])
    assert out[0].field == "eventTime" and "yesterday" in out[0].reason


def test_missing_access_key_id_on_success(tmp_path):
    p, out, _ = _detect(tmp_path, [ct_event(responseElements=None)])
    [bad] = out
    assert bad.field == "responseElements.accessKey.accessKeyId" and str(p) in bad.message()


def test_detect_counts_and_skips_unmatched(tmp_path):
    p = tmp_path / "mix.jsonl"
    p.write_text("\n".join([json.dumps(ct_event()), json.dumps(ct_event("GetCallerIdentity")),
                            json.dumps(GD_FINDING), json.dumps(ASFF_FINDING), "not json"]) + "\n")
    rules = StandIn({"CreateAccessKey"})
    stats = DetectStats()
    out = list(detect(read_inputs([p]), rules, stats))
    assert [getattr(r, "source", "rejected") for r in out] == ["cloudtrail", "guardduty", "securityhub",
                                                               "rejected"]
    assert stats.as_dict() == {"records_read": 5, "events": 2, "events_matched": 1, "events_unmatched": 1,
                               "findings": 2, "detections": 3, "suppressed": 0, "rejected": 1,
                                   "records_detected": 3, "records_empty": 0}
    assert rules.calls == [("aws", "cloudtrail"), ("aws", "cloudtrail")]


def test_one_detection_per_matching_rule(tmp_path):
    class TwoRules:
        def match(self, event, *, product, service):
            return [SimpleNamespace(id=f"r{i}", title=f"rule {i}", path=None, level="medium", technique_ids=[])
                    for i in range(2)]

    p = tmp_path / "one.json"
    p.write_text(json.dumps(ct_event()))
    out = list(detect(read_inputs([p]), TwoRules()))
    assert [d.rule.uid for d in out] == ["r0", "r1"]
    assert out[0].uid != out[1].uid


@pytest.mark.parametrize("bad_gd", [dict(GD_FINDING, severity="high"), dict(GD_FINDING, service={
    "serviceName": "guardduty", "detectorId": "d", "additionalInfo": "x"})])
def test_bad_guardduty_field_is_rejected_not_raised(tmp_path, bad_gd):
    _, out, _ = _detect(tmp_path, [bad_gd, GD_FINDING])
    assert isinstance(out[0], Rejected) and out[0].field in ("severity", "service.additionalInfo")
    assert out[1].source == "guardduty"


def test_big_single_line_records_file_is_streamed_as_a_document(tmp_path):
    events = [ct_event(eventID=f"e{i}", padding="x" * 500) for i in range(3000)]
    p = tmp_path / "delivery.json.gz"
    body = json.dumps({"Records": events}).encode()
    assert len(body) > 1024 * 1024 and b"\n" not in body
    p.write_bytes(gzip.compress(body))
    out = list(read_inputs([p]))
    assert not rejected(out)
    assert [r.record["eventID"] for r in out] == [f"e{i}" for i in range(3000)]
    assert out[-1].position == 2999 and out[-1].line == 1
