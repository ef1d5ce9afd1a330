"""The public AWS corpus in ../shared/data/real (see its SOURCES.md), read in place, never copied.

* stratus-red-team/docs/detonation-logs/*.json (DataDog/stratus-red-team @ 7c9a7a5a): CloudTrail
  captured while real attacks ran, a JSON array a file.
* panther-analysis/rules/aws_*/**.yml (panther-labs/panther-analysis @ daa10c88): ``Tests[].Log``
  of the CloudTrail and GuardDuty rules (YAML maps or JSON strings).
* aws-automated-security-response/ (aws-solutions/automated-security-response-on-aws @ 37959629):
  raw ASFF findings in simtest/simdata and an EventBridge event in source/layer/test/test_json_data.

Parsing tests only: every record is read by read_inputs without a Rejected, findings become
Detections, and every CloudTrail event a credential-creating eventName names gives a Detection
with the right credential uid. Sigma matching over the corpus lives in the last test, which runs
once ``cordon.sigma.RuleSet`` exists.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cordon.detections.errors import RecordError, Rejected
from cordon.detections.intake import RawRecord, read_inputs
from cordon.providers import shipped_rule_dirs
from cordon.providers.aws.cloudtrail import CREDENTIAL_EVENTS, detection_from_cloudtrail
from cordon.providers.aws.guardduty import detection_from_guardduty
from cordon.providers.aws.securityhub import detection_from_asff

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    pytest.skip(f"../shared/data/real is absent: the public corpus is not checked out next to the repo ({REAL})",
                allow_module_level=True)

STRATUS = sorted((REAL / "stratus-red-team" / "docs" / "detonation-logs").glob("*.json"))
ASR = REAL / "aws-automated-security-response"
ASFF_FILES = sorted((ASR / "simtest" / "simdata").glob("*.json")) + sorted(
    (ASR / "source" / "layer" / "test" / "test_json_data").glob("*.json"))
PANTHER_RULES = sorted((REAL / "panther-analysis" / "rules").glob("aws_*/**/*.yml"))

DUMMY = SimpleNamespace(id="corpus-dummy", title="dummy", path=None, level="medium", technique_ids=[])


def expected_credential_uid(ev: dict):
    """The credential uid each credential-creating call names, read straight from the record
    (the API reference's response/request field for that call); None when the call failed."""
    if ev.get("errorCode"):
        return None
    req = ev.get("requestParameters") or {}
    resp = ev.get("responseElements") or {}
    name = ev["eventName"]
    if name == "CreateAccessKey":
        return resp["accessKey"]["accessKeyId"]
    if name in ("CreateLoginProfile", "UpdateLoginProfile", "CreateUser"):
        return req["userName"]
    if name in ("ImportKeyPair", "CreateKeyPair"):
        return req["keyName"]
    if name == "CreateServiceSpecificCredential":
        return resp["serviceSpecificCredential"]["serviceSpecificCredentialId"]
    if name == "GetFederationToken":
        return resp["credentials"]["accessKeyId"]
    if name == "AttachUserPolicy":
        return req["policyArn"]
    if name == "PutUserPolicy":
        return req["policyName"]
    if name == "UpdateAssumeRolePolicy":
        return req["roleName"]
    if name == "CreateTrustAnchor":
        return resp["trustAnchor"]["trustAnchorId"]
    if name == "CreateProfile":
        return resp["profile"]["profileId"]
    raise AssertionError(name)


def panther_cases():
    """(rule file, test name, ExpectedResult, log dict) for every test of an AWS CloudTrail or
    GuardDuty Panther rule."""
    cases = []
    for path in PANTHER_RULES:
        spec = yaml.safe_load(path.read_text())
        if not set(spec.get("LogTypes") or []) & {"AWS.CloudTrail", "AWS.GuardDuty"}:
            continue
        for test in spec.get("Tests") or []:
            log = test["Log"]
            if isinstance(log, str):
                log = json.loads(log)
            cases.append((path, test["Name"], test.get("ExpectedResult"), log))
    return cases


PANTHER = panther_cases()


def read_panther(log: dict) -> list:
    return list(read_inputs(["-"], stdin=io.BytesIO(json.dumps(log).encode())))


# -- Stratus Red Team --------------------------------------------------------------------------


def test_corpus_is_present():
    assert len(STRATUS) == 8 and len(ASFF_FILES) == 7 and len(PANTHER) == 34


def test_every_stratus_capture_reads_as_cloudtrail():
    out = list(read_inputs(STRATUS))
    assert not [r for r in out if isinstance(r, Rejected)]
    assert all(r.kind == "cloudtrail" for r in out)
    for path in STRATUS:
        events = json.loads(path.read_text())
        got = [r for r in out if r.origin == str(path)]
        assert [r.record for r in got] == events
        assert [r.position for r in got] == list(range(len(events)))


def test_every_stratus_credential_event_names_its_credential():
    seen = set()
    for rec in read_inputs(STRATUS):
        d = detection_from_cloudtrail(rec.record, DUMMY, rec.origin, rec.position)
        assert d.region == rec.record["awsRegion"]  # made-up regions such as ap-central-2r are kept
        assert d.actor.src_ip == rec.record["sourceIPAddress"]  # kept as given, e.g. "211.9.016.253"
        name = rec.record["eventName"]
        if name in CREDENTIAL_EVENTS:
            seen.add(name)
            assert d.credential is not None and d.credential.kind == CREDENTIAL_EVENTS[name]
            assert d.credential.uid == expected_credential_uid(rec.record)
        else:
            assert d.credential is None
    assert seen == {"CreateAccessKey", "CreateUser", "AttachUserPolicy", "CreateLoginProfile",
                    "UpdateLoginProfile", "GetFederationToken", "CreateTrustAnchor", "CreateProfile",
                    "UpdateAssumeRolePolicy"}


def test_stratus_known_credentials():
    by_key = {}
    for rec in read_inputs(STRATUS):
        d = detection_from_cloudtrail(rec.record, DUMMY, rec.origin, rec.position)
        if d.credential:
            by_key[(Path(rec.origin).name, rec.record["eventName"])] = d
    d = by_key[("aws.persistence.iam-backdoor-user.json", "CreateAccessKey")]
    assert d.credential.uid == "AKIAL80DWDVKKM0UXEER"
    assert d.target.uid == "arn:aws:iam::946986569305:user/stratus-red-team-backdoor-u-user"
    assert d.actor.user.name == "christophe" and d.actor.session_uid == "AKIA30BEZSJBVKOFKZW0"
    d = by_key[("aws.persistence.sts-federation-token.json", "GetFederationToken")]
    assert d.credential.uid == "ASIASTJKC5GCM7ZE6LUP"
    assert d.credential.owner.uid == "arn:aws:iam::742491224508:user/stratus-red-team-user-federation-user"
    assert "sessionToken" not in json.dumps(d.credential.model_dump())
    assert not any(v.startswith("IQoJ") for v in map(str, d.credential.attributes.values()))
    d = by_key[("aws.persistence.iam-create-admin-user.json", "CreateUser")]
    assert d.credential.attributes["userId"] == "AIDAL1XMLVWIUOK8KAF0" and d.technique_ids == ["T1136.003"]


# -- Panther -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "name", "expected", "log"), PANTHER,
                         ids=[f"{p.stem}:{n}" for p, n, _, _ in PANTHER])
def test_panther_case_reads_and_parses(path, name, expected, log):
    out = read_panther(log)
    assert len(out) == 1 and isinstance(out[0], RawRecord), out
    rec = out[0]
    if "AWS.GuardDuty" in yaml.safe_load(path.read_text())["LogTypes"]:
        assert rec.kind == "guardduty"
        d = detection_from_guardduty(rec.record, rec.origin, rec.position)
        assert d.finding_type == log["type"]
        sample = (log["service"].get("additionalInfo") or {}).get("sample")
        if sample:
            assert d.suppressed == "GuardDuty sample finding (service.additionalInfo.sample)"
            assert expected is False  # Panther's rules ignore samples too
        else:
            assert d.suppressed is None
        return
    assert rec.kind == "cloudtrail"
    name_ = log["eventName"]
    if name_ not in CREDENTIAL_EVENTS:
        return
    if log.get("requestParameters") is None and name_ == "PutUserPolicy":
        # Panther's "Request Param is null": a PutUserPolicy that names no policy cannot name
        # its credential, so the parser refuses it, naming the field.
        with pytest.raises(RecordError) as info:
            detection_from_cloudtrail(rec.record, DUMMY, rec.origin, rec.position)
        assert info.value.field == "requestParameters.policyName"
        return
    d = detection_from_cloudtrail(rec.record, DUMMY, rec.origin, rec.position)
    own_root_key = name_ == "CreateAccessKey" and d.target.type == "Root"  # the root user's own key
    assert d.credential.kind == ("aws_root_access_key" if own_root_key else CREDENTIAL_EVENTS[name_])
    assert d.credential.uid == expected_credential_uid(log)
    if log.get("errorCode"):
        assert d.suppressed and log["errorCode"] in d.suppressed


def test_panther_guardduty_samples_are_all_suppressed():
    samples = [c for c in PANTHER if (c[3].get("service", {}).get("additionalInfo") or {}).get("sample")]
    assert len(samples) == 4
    for _, _, _, log in samples:
        [rec] = read_panther(log)
        assert detection_from_guardduty(rec.record, rec.origin, rec.position).suppressed


def test_panther_root_key_targets_root():
    [case] = [c for c in PANTHER if c[1] == "Root Access Key Created"]
    [rec] = read_panther(case[3])
    d = detection_from_cloudtrail(rec.record, DUMMY, rec.origin, rec.position)
    assert d.target.type == "Root" and d.target.name == "root" and d.credential.owner.type == "Root"


# -- Security Hub ------------------------------------------------------------------------------


def test_every_asff_finding_becomes_a_detection():
    out = list(read_inputs(ASFF_FILES))
    assert not [r for r in out if isinstance(r, Rejected)]
    assert len(out) == 7 and all(r.kind == "securityhub" for r in out)
    by_file = {}
    for rec in out:
        d = detection_from_asff(rec.record, rec.origin, rec.position)
        by_file[Path(rec.origin).name] = d
        assert d.source == "securityhub" and d.severity == "medium" and d.suppressed is None
    assert by_file["afsbp-iam.3.json"].finding_type == "IAM.3"
    assert by_file["afsbp-iam.3.json"].technique_ids == ["T1098.001"]
    assert by_file["afsbp-iam.3.json"].target.name == "test-admin2"
    assert by_file["afsbp-iam.8.json"].technique_ids == ["T1078.004"]
    assert by_file["pci-iam.7.json"].technique_ids == ["T1078.004"]
    assert by_file["cis13.json"].technique_ids == ["T1078.004"]
    assert by_file["cis14.json"].finding_type == "1.4" and by_file["cis14.json"].technique_ids == ["T1098.001"]
    nodetails = by_file["cis-1.4-nodetails.json"]
    assert nodetails.target.uid == "arn:aws:iam::111122223333:user/AIDACKCEVSQ6C2EXAMPLE"
    assert nodetails.target.name == "AIDACKCEVSQ6C2EXAMPLE"
    eb = [r for r in out if r.envelope is not None]
    assert len(eb) == 1 and eb[0].envelope["detail-type"] == "Security Hub Findings - Imported"


# -- with the Sigma engine ---------------------------------------------------------------------


def test_stratus_through_sigma_rules():
    """Every Stratus capture through the shipped Sigma rules and the parsers."""
    from cordon.detections.pipeline import DetectStats, detect
    from cordon.sigma import RuleSet

    rules = RuleSet.load(shipped_rule_dirs())
    stats = DetectStats()
    out = list(detect(read_inputs(STRATUS), rules, stats))
    assert not [r for r in out if isinstance(r, Rejected)]
    assert stats.events == 15 and stats.events == stats.events_matched + stats.events_unmatched
    detected = {(d.raw_ref.origin, d.raw_ref.position) for d in out}
    for rec in read_inputs(STRATUS):
        if rec.record["eventName"] in CREDENTIAL_EVENTS:
            assert (rec.origin, rec.position) in detected, rec.record["eventName"]
