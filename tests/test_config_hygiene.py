"""AWS Config credential rules and Security Hub IAM.3 / IAM.8, acted on (issue 17): one case per account
and criterion, one approval, exactly the keys past the rule's own limit deactivated (never deleted),
Config asked to re-evaluate, rollback.

Real parts: intake (the EventBridge envelope, the Config detail, the sweep's ``EvaluationResult``), the
respond flow (real Prefect), boto3 over real HTTP to moto's IAM and to the sandbox's Config stand-in
(moto 5.2 has no compliance or re-evaluation calls). Keys are aged in moto's in-process backend (the
sandbox's documented approximation: moto stamps every key with the time it is created). The Config
event is written in EventBridge's documented shape (``examples/config-access-keys-rotated.json``); the
Security Hub findings are AWS's own samples from ``../shared/data/real/aws-automated-security-response``."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cordon.clouds import clients_for
from cordon.engine import Responder
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "config-access-keys-rotated.json"
ASR = REPO.parent / "shared" / "data" / "real" / "aws-automated-security-response" / "simtest" / "simdata"
ACCOUNT = "111122223333"
NOW = datetime.now(UTC)


def event(user_id: str, rule: str = "access-keys-rotated", compliance: str = "NON_COMPLIANT") -> dict:
    rec = json.loads(EXAMPLE.read_text())
    detail = rec["detail"]
    detail["resourceId"] = user_id
    detail["configRuleName"] = rule
    detail["newEvaluationResult"]["evaluationResultIdentifier"]["evaluationResultQualifier"].update(
        resourceId=user_id, configRuleName=rule)
    detail["newEvaluationResult"]["complianceType"] = compliance
    return rec


def write(tmp_path: Path, name: str, *records: dict) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def account(aws, rule_days: int = 30) -> dict[str, str]:
    """Users of 111122223333 and their keys (aged in moto), and the Config rule with maxAccessKeyAge
    ``rule_days``. Returns {label: key id}."""
    aws.use_account(ACCOUNT)
    keys = {}

    def key(user: str, label: str, age_days: int, status: str = "Active") -> None:
        aws.ensure_user(user)
        key_id = f"AKIA{label.upper():0<16}"[:20]
        aws.ensure_access_key(user, key_id, status=status, create_date=NOW - timedelta(days=age_days))
        keys[label] = key_id

    key("legacy-ci", "LEGACYOLD", 45)           # past 30 days: stale
    key("legacy-ci", "LEGACYNEW", 3)            # fresh: kept
    key("analyst", "ANALYSTOLD", 100)           # stale
    key("analyst", "ANALYSTDONE", 200, status="Inactive")  # already inactive: untouched
    key("build-bot", "BUILDFRESH", 29)          # just inside the limit: kept
    key("break-glass-admin", "BREAKGLASS", 400)  # protected_principals: never touched
    backend_users = __import__("cordon.sandbox.aws", fromlist=["x"])._moto_iam_backend(ACCOUNT).users
    backend_users["legacy-ci"].id = "AIDAEXAMPLELEGACY01"
    backend_users["analyst"].id = "AIDAEXAMPLEANALYST1"
    aws.standin.add_config_rule(ACCOUNT, "access-keys-rotated", "ACCESS_KEYS_ROTATED",
                                {"maxAccessKeyAge": str(rule_days)})
    return keys


def statuses(aws) -> dict[str, str]:
    iam = aws.clients("iam", account_id=ACCOUNT)
    out = {}
    for user in ("legacy-ci", "analyst", "build-bot", "break-glass-admin"):
        for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
            out[k["AccessKeyId"]] = k["Status"]
    return out


def test_two_users_one_case_exactly_the_keys_past_the_rules_limit(responder, aws, tmp_path):
    keys = account(aws)
    path = write(tmp_path, "config.jsonl", event("AIDAEXAMPLELEGACY01"), event("AIDAEXAMPLEANALYST1"))
    report = responder.intake([path])
    assert len(report.cases) == 1 and len(report.joined) == 1  # one account, one criterion: one case
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert summary["status"] == "contained" and summary["verified"] is True, summary
    assert summary["playbook"] == "aws-credential-hygiene"
    (plan,) = [r.payload for r in responder.ledger.records(case_id=summary["case_id"], kind_prefix="plan.created")]
    (step,) = plan["steps"]
    calls = [(c["operation"], c["params"]) for c in step["calls"]]
    assert calls == [  # the users in IAM's order, then Config asked to re-evaluate
        ("UpdateAccessKey", {"UserName": "legacy-ci", "AccessKeyId": keys["LEGACYOLD"], "Status": "Inactive"}),
        ("UpdateAccessKey", {"UserName": "analyst", "AccessKeyId": keys["ANALYSTOLD"], "Status": "Inactive"}),
        ("StartConfigRulesEvaluation", {"ConfigRuleNames": ["access-keys-rotated"]})]
    now = statuses(aws)
    assert now == {keys["LEGACYOLD"]: "Inactive", keys["LEGACYNEW"]: "Active", keys["ANALYSTOLD"]: "Inactive",
                   keys["ANALYSTDONE"]: "Inactive", keys["BUILDFRESH"]: "Active", keys["BREAKGLASS"]: "Active"}
    assert aws.standin.evaluations == [(ACCOUNT, ["access-keys-rotated"])]
    (action,) = summary["actions"]
    assert action["before"]["max_age_days"] == 30 and action["before"]["limit_from"] == \
        "access-keys-rotated.maxAccessKeyAge"
    assert any("break-glass-admin" in s and "protected" in s for s in action["before"]["skipped"])
    # rollback: both keys active again, nothing else touched
    outcomes = responder.rollback(summary["case_id"], clients_for("aws", Responder.cloud_for(
        report.cases[0], aws.cloud_params())), "cli:alice")
    assert [o["status"] for o in outcomes] == ["rolled_back"], outcomes
    assert statuses(aws) == {**now, keys["LEGACYOLD"]: "Active", keys["ANALYSTOLD"]: "Active"}
    assert responder.ledger.verify().ok


def test_the_rules_own_parameter_decides_and_a_second_run_does_nothing(responder, aws, tmp_path):
    keys = account(aws, rule_days=120)  # only break-glass's 400-day key is that old, and it is protected
    report = responder.intake([write(tmp_path, "c.json", event("AIDAEXAMPLEANALYST1"))])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    (action,) = summary["actions"]
    assert action["status"] == "already_contained" and action["before"]["stale"] == [], action
    assert statuses(aws)[keys["ANALYSTOLD"]] == "Active" and aws.standin.evaluations == []


def test_a_rule_that_is_not_the_criterion_is_refused(responder, aws, tmp_path):
    account(aws)
    aws.standin.add_config_rule(ACCOUNT, "access-keys-rotated", "IAM_PASSWORD_POLICY", {})
    report = responder.intake([write(tmp_path, "c.json", event("AIDAEXAMPLEANALYST1"))])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert summary["status"] == "refused" and "IAM_PASSWORD_POLICY" in json.dumps(summary), summary
    assert "Inactive" not in {v for k, v in statuses(aws).items() if "DONE" not in k}


@pytest.mark.parametrize(("rule", "compliance", "outcome"), [
    ("access-keys-rotated", "COMPLIANT", "suppressed"),
    ("s3-bucket-versioning-enabled", "NON_COMPLIANT", "suppressed"),
    ("securityhub-iam-user-unused-credentials-check-a1b2c3", "NON_COMPLIANT", "unused"),
    ("iam-root-access-key-check", "NON_COMPLIANT", "triage"),
])
def test_what_each_config_evaluation_becomes(responder, tmp_path, rule, compliance, outcome):
    report = responder.intake([write(tmp_path, "c.json", event("AIDAEXAMPLEANALYST1", rule, compliance))])
    if outcome == "suppressed":
        (det,) = report.suppressed
        assert rule in det.suppressed and report.cases == []
        return
    (case,) = report.cases
    if outcome == "triage":
        # the root user's key: no key named, root never contained by a rule: recorded, no playbook
        assert case.detection.credential is None and case.playbook is None
        assert case.detection.technique_ids == ["T1098.001"]
    else:
        assert case.detection.credential.uid == f"{ACCOUNT}:unused"
        assert case.detection.credential.attributes["config_rule"] == rule


def test_the_sweeps_evaluation_result_shape_is_the_same_detection(responder, tmp_path):
    sweep = {"EvaluationResultIdentifier": {"EvaluationResultQualifier": {
        "ConfigRuleName": "access-keys-rotated", "ResourceType": "AWS::IAM::User",
        "ResourceId": "AIDAEXAMPLEANALYST1"}, "OrderingTimestamp": "2026-12-04T06:12:31Z"},
        "ComplianceType": "NON_COMPLIANT", "ResultRecordedTime": "2026-12-04T06:12:39Z",
        "awsAccountId": ACCOUNT, "awsRegion": "us-east-1"}
    report = responder.intake([write(tmp_path, "a.json", event("AIDAEXAMPLELEGACY01")),
                               write(tmp_path, "b.json", sweep)])
    assert len(report.cases) == 1 and len(report.joined) == 1
    broken = copy.deepcopy(sweep)
    del broken["awsAccountId"]
    bad = responder.intake([write(tmp_path, "bad.json", broken)])
    (rej,) = bad.rejected
    assert rej.field == "awsAccountId" and rej.origin.endswith("bad.json") and rej.position == 0


@pytest.mark.skipif(not ASR.is_dir(), reason="../shared/data/real is not beside the project")
def test_security_hub_iam3_and_iam8_samples_open_the_hygiene_case(responder, tmp_path):
    """AWS ASR's own IAM.3 / IAM.8 (and CIS 1.3 / 1.4) samples: no longer triage only."""
    report = responder.intake([ASR / "afsbp-iam.3.json", ASR / "afsbp-iam.8.json", ASR / "cis13.json",
                               ASR / "cis14.json"])
    uids = sorted(c.detection.credential.uid for c in report.cases)
    # IAM.3 and CIS 1.4 are rotation, IAM.8 and CIS 1.3 unused; two accounts: four cases
    assert uids == ["111111111111:rotation", "111111111111:unused", "111122223333:rotation", "111122223333:unused"]
    assert {c.playbook.name for c in report.cases} == {"aws-credential-hygiene"}


def test_unused_keys_by_last_use_from_a_security_hub_iam8_finding(responder, aws, tmp_path):
    aws.use_account("111111111111")
    aws.ensure_user("sharrtest")
    aws.ensure_access_key("sharrtest", "AKIASHARRUSEDLONGAGO", create_date=NOW - timedelta(days=300))
    aws.mark_key_used("AKIASHARRUSEDLONGAGO", NOW - timedelta(days=120))
    aws.ensure_access_key("sharrtest", "AKIASHARRUSEDTODAY0", create_date=NOW - timedelta(days=300))
    aws.mark_key_used("AKIASHARRUSEDTODAY0", NOW - timedelta(hours=2))
    finding = json.loads((ASR / "afsbp-iam.8.json").read_text())
    report = responder.intake([write(tmp_path, "iam8.json", finding)])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert summary["status"] == "contained", summary
    (plan,) = [r.payload for r in responder.ledger.records(case_id=summary["case_id"], kind_prefix="plan.created")]
    (step,) = plan["steps"]
    assert [c["params"]["AccessKeyId"] for c in step["calls"]] == ["AKIASHARRUSEDLONGAGO"]  # no Config rule named
    iam = aws.clients("iam", account_id="111111111111")
    assert {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="sharrtest")["AccessKeyMetadata"]} \
        == {"AKIASHARRUSEDLONGAGO": "Inactive", "AKIASHARRUSEDTODAY0": "Active"}


def test_the_config_sweep_sensor_answers_each_evaluation_once(responder, aws, tmp_path):
    from cordon.sensors import build_sensor
    from cordon.sensors.runner import run_pass
    from cordon.sensors.store import SensorStore

    account(aws)
    aws.standin.add_config_rule(ACCOUNT, "s3-bucket-versioning-enabled", "S3_BUCKET_VERSIONING_ENABLED")
    aws.standin.set_compliance(ACCOUNT, "s3-bucket-versioning-enabled", "AIDAEXAMPLEANALYST1")  # not swept
    aws.standin.set_compliance(ACCOUNT, "access-keys-rotated", "AIDAEXAMPLELEGACY01")
    aws.standin.set_compliance(ACCOUNT, "access-keys-rotated", "AIDAEXAMPLEANALYST1")
    aws.standin.set_compliance(ACCOUNT, "access-keys-rotated", "AIDAEXAMPLEBUILDBOT", "COMPLIANT")
    sensor = build_sensor("aws-config", responder.config, clients_for, aws.cloud_params())
    store = SensorStore(responder.ledger.engine)
    first = run_pass(sensor, store, responder, None)
    assert first.error is None and first.read == 2, first
    (case,) = responder.ledger.cases()
    assert case["playbook"] == "aws-credential-hygiene"
    assert json.loads(case["detection"])["credential"]["uid"] == f"{ACCOUNT}:rotation"
    again = run_pass(sensor, store, responder, None)
    assert again.error is None and again.cases == [] and len(responder.ledger.cases()) == 1
    dead = responder.ledger.dead_letters()
    assert dead == []
