"""The public Google Cloud corpus in ../shared/data/real (see its SOURCES.md), read in place, never copied.

* gcp-security-analytics/test/fixtures/*.json (GoogleCloudPlatform/security-analytics @ 2dd85655,
  Apache-2.0): sanitised Cloud Audit Log entries (CreateServiceAccount, SetIamPolicy on a project and
  on service accounts).
* panther-analysis/rules/gcp_audit_rules/*.yml (panther-labs/panther-analysis @ daa10c88, Apache-2.0):
  ``Tests[].Log`` of Panther's GCP audit rules (YAML maps or JSON strings), each with
  ``ExpectedResult``.
* gcp-security-response-automation/**.json (GoogleCloudPlatform/security-response-automation @
  68cc378a, Apache-2.0): Security Command Center notifications ``{"finding": {...}}``.
* sigma/rules/cloud/gcp (SigmaHQ/sigma @ 8eaafff1, DRL 1.1).

Every record is read by intake without a Rejected and parsed; credential-creating entries give the
exact key name / service account email the record names; Panther's cases are run through the
pipeline with the shipped rules, and every case where Cordon judges differently from Panther is
named below with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cordon.detections.errors import RecordError, Rejected
from cordon.detections.intake import RawRecord, read_bytes, read_inputs
from cordon.detections.pipeline import DetectStats, detect
from cordon.providers import shipped_rule_dirs
from cordon.providers.gcp.detections import detections_from_gcp_audit, detections_from_scc
from cordon.sigma import RuleSet

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    pytest.skip(
        f"../shared/data/real is absent: the public corpus is not checked out next to the repo ({REAL})",
        allow_module_level=True,
    )

REPO = Path(__file__).resolve().parents[1]
FIXTURES = sorted((REAL / "gcp-security-analytics" / "test" / "fixtures").glob("*.json"))
SRA = sorted((REAL / "gcp-security-response-automation").rglob("*.json"))
PANTHER = sorted((REAL / "panther-analysis" / "rules" / "gcp_audit_rules").glob("*.yml"))
SIGMAHQ_GCP = REAL / "sigma" / "rules" / "cloud" / "gcp"

DUMMY = SimpleNamespace(id="corpus-dummy", title="dummy", path=None, level="medium", technique_ids=[])


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def panther_cases() -> dict[tuple[str, str], tuple[bool, dict]]:
    cases = {}
    for path in PANTHER:
        spec = yaml.safe_load(path.read_text())
        for test in spec.get("Tests") or []:
            log = test["Log"]
            if isinstance(log, str):
                log = json.loads(log)
            cases[(path.name, test["Name"])] = (bool(test["ExpectedResult"]), log)
    return cases


def read_one(origin: str, data: bytes) -> RawRecord:
    items = list(read_bytes(origin, data))
    assert len(items) == 1 and isinstance(items[0], RawRecord), (origin, items)
    return items[0]


def titles(rules: RuleSet, log: dict) -> list[str]:
    out = []
    for item in detect(read_bytes("panther", json.dumps(log).encode()), rules):
        assert not isinstance(item, Rejected), item.message()
        out.append(item.rule.name)
    return out


def test_corpus_present():
    assert len(FIXTURES) == 4 and len(SRA) == 3 and len(PANTHER) == 6
    assert len(panther_cases()) == 14


# -- gcp-security-analytics ----------------------------------------------------------------------


def test_security_analytics_fixtures_read_and_parse(shipped):
    for path in FIXTURES:
        (item,) = list(read_inputs([path]))
        assert isinstance(item, RawRecord) and item.kind == "gcp_audit", path.name
        pp = item.record["protoPayload"]
        dets = detections_from_gcp_audit(item.record, DUMMY, str(path), item.position)
        assert dets and all(d.event_name == pp["methodName"] for d in dets)
        assert all(d.actor.user.uid == pp["authenticationInfo"]["principalEmail"] for d in dets)
        assert all(d.account_uid == item.record["resource"]["labels"]["project_id"] for d in dets)
        if pp["methodName"] == "google.iam.admin.v1.CreateServiceAccount":
            (det,) = dets
            assert det.credential.kind == "gcp_service_account"
            assert det.credential.uid == pp["response"]["email"] == "sa-200@1234.iam.gserviceaccount.com"
            assert det.technique_ids == ["T1136.003"]
        else:  # SetIamPolicy: one detection per ADD delta (all deltas here add sensitive roles)
            deltas = pp["serviceData"]["policyDelta"]["bindingDeltas"]
            assert [d.credential.kind for d in dets] == ["gcp_iam_binding"] * len(deltas)
            for det, delta in zip(dets, deltas, strict=True):
                assert det.credential.uid.endswith(f"#{delta['role']}#{delta['member']}")
                assert det.target.uid == delta["member"].split(":", 1)[1]
        # and through the pipeline with the shipped rules: every fixture is a detection
        stats = DetectStats()
        out = list(detect(read_inputs([path]), shipped, stats))
        assert stats.events_matched == 1 and stats.rejected == 0, path.name
        assert [d.credential.uid for d in out] == [d.credential.uid for d in dets]


def test_service_account_set_iam_policy_is_named_by_email():
    path = next(p for p in FIXTURES if p.name == "google.iam.admin.v1.SetIamPolicy-keyAdmin.json")
    record = json.loads(path.read_text())
    (det,) = detections_from_gcp_audit(record, DUMMY, path.name, 0)
    # resourceName is projects/-/serviceAccounts/<unique id>; the entry's labels name the account
    assert det.credential.uid == (
        "projects/my-project/serviceAccounts/sa-100@1234.iam.gserviceaccount.com"
        "#roles/iam.serviceAccountKeyAdmin#user:test-user@example.com"
    )


# -- security-response-automation (SCC) ----------------------------------------------------------


def test_scc_notifications_read_and_parse():
    for path in SRA:
        (item,) = list(read_inputs([path]))
        assert isinstance(item, RawRecord) and item.kind == "gcp_scc", path.name
        finding = item.record["finding"]
        (det,) = detections_from_scc(item.record, str(path), item.position)
        assert det.finding_type == finding["category"] and det.rule.uid == finding["name"]
        assert det.suppressed is None  # ACTIVE and not muted
        if finding["category"] == "Persistence: IAM Anomalous Grant":
            delta = finding["sourceProperties"]["properties"]["bindingDeltas"][0]
            assert det.credential.kind == "gcp_iam_binding"
            assert det.credential.uid == f"projects/test-project#{delta['role']}#{delta['member']}"
            assert det.account_uid == "test-project" and det.severity == "high"
            assert det.actor.user.uid == "test-user@test-project.iam.gserviceaccount.com"
            assert det.target.uid == "test-user@gmail.com"
        else:
            # NON_ORG_IAM_MEMBER (Security Health Analytics) names no member or role: no credential
            assert finding["category"] == "NON_ORG_IAM_MEMBER"
            assert det.credential is None and det.account_uid == "test-project" and det.severity == "high"


# -- Panther gcp_audit_rules -----------------------------------------------------------------------

KEY_NAME = (
    "projects/gcp-project1/serviceAccounts/created-service-account@gcp-project1.iam.gserviceaccount.com"
    "/keys/69049163b190437ab9279b28e8afa24bb5c5b076"
)

#: What the shipped rules + parser produce for each Panther case: the rule titles, in order.
EXPECTED_PANTHER = {
    ("gcp_service_account_or_keys_created.yml", "Created Service Account Key"): ["GCP Service Account Key Created"],
    ("gcp_service_account_or_keys_created.yml", "Created Service Account"): ["GCP Service Account Created"],
    ("gcp_permissions_granted_to_create_or_manage_service_account_key.yml", "service account match"): [
        "GCP Sensitive IAM Role Granted",
        "GCP Sensitive IAM Role Granted",
    ],
    ("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "GCP API Key Created"): ["GCP API Key Created"],
    # Judged differently from Panther (ExpectedResult false, Cordon detects):
    # - status {} is success and response.name names the new key; the denied authorizationInfo check
    #   contradicts both (the log is hand-made). AuditLog.status is the call's outcome, so the key is
    #   taken to exist; the denied permission is kept in credential.attributes.deniedPermissions.
    ("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "GCP API Key Not Created"): ["GCP API Key Created"],
    # - Panther's rule requires authorizationInfo; its absence does not undo a successful call whose
    #   response names the key.
    ("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "Log Without authorizationInfo"): [
        "GCP API Key Created"
    ],
}

#: Panther positives on which Cordon raises nothing, with why.
JUDGED_NO_DETECTION = {
    # Deployment Manager inserting a deployment with iam.serviceAccountKeys.create /
    # storage.hmacKeys.create granted: the entry names no key. The key itself is logged by IAM /
    # Cloud Storage as its own CreateServiceAccountKey / storage.hmacKeys.create entry (caller: the
    # Google APIs service agent), which the shipped rules detect with the key's name.
    ("gcp_iam_service_account_key_create.yml", "privilege-escalation"),
    ("gcp_storage_hmac_keys_create.yml", "privilege-escalation"),
    # A CreateServiceAccount denied (status code 7): nothing was created. Panther alerts on the
    # denial (reconnaissance); Cordon contains credentials and accounts, and there is none.
    ("gcp_service_account_access_denied.yml", "service-account.access-denied-should-alert"),
}

#: Panther negatives, benign for Cordon too: no detection.
BENIGN_NEGATIVES = {
    ("gcp_iam_service_account_key_create.yml", "fail"),  # permission not granted, and no key named
    ("gcp_storage_hmac_keys_create.yml", "fail"),
    ("gcp_service_account_or_keys_created.yml", "Other"),  # IAP SetIamPolicy, no binding delta
    ("gcp_permissions_granted_to_create_or_manage_service_account_key.yml", "other event"),  # BigQuery
    # Google itself creating App Engine's default account (no caller identity, callerIp "private")
    ("gcp_service_account_access_denied.yml", "service-account.access-grated-should-not-alert"),
}


def test_every_panther_case_is_accounted_for():
    names = set(panther_cases())
    assert set(EXPECTED_PANTHER) | JUDGED_NO_DETECTION | BENIGN_NEGATIVES == names
    assert not (set(EXPECTED_PANTHER) & (JUDGED_NO_DETECTION | BENIGN_NEGATIVES))


def test_every_panther_log_reads_as_an_audit_entry():
    for (fname, name), (_, log) in panther_cases().items():
        item = read_one(f"{fname}:{name}", json.dumps(log).encode())
        assert item.kind == "gcp_audit", (fname, name)


def test_panther_cases_through_the_pipeline(shipped):
    for key, (_, log) in panther_cases().items():
        assert titles(shipped, log) == EXPECTED_PANTHER.get(key, []), key


def test_panther_key_and_account_creation_name_the_exact_credential(shipped):
    cases = panther_cases()
    _, log = cases[("gcp_service_account_or_keys_created.yml", "Created Service Account Key")]
    (det,) = list(detect(read_bytes("p", json.dumps(log).encode()), shipped))
    assert det.credential.kind == "gcp_sa_key" and det.credential.uid == log["protoPayload"]["response"]["name"]
    assert det.credential.uid == KEY_NAME
    assert det.credential.owner.uid == "created-service-account@gcp-project1.iam.gserviceaccount.com"
    assert det.credential.attributes["keyType"] == "USER_MANAGED"
    assert det.credential.attributes["validAfterTime"] == "2023-03-09T15:50:36Z"
    assert det.actor.access_path == "console" and det.actor.src_ip == "1.2.3.4"  # Panther's callerIP
    assert det.time.isoformat() == "2023-03-09T15:50:36.148000+00:00"  # Panther's space-separated time

    _, log = cases[("gcp_service_account_or_keys_created.yml", "Created Service Account")]
    (det,) = list(detect(read_bytes("p", json.dumps(log).encode()), shipped))
    assert det.credential.kind == "gcp_service_account"
    assert det.credential.uid == log["protoPayload"]["response"]["email"]
    assert det.credential.uid == "created-service-account@gcp-project1.iam.gserviceaccount.com"

    _, log = cases[("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "GCP API Key Created")]
    (det,) = list(detect(read_bytes("p", json.dumps(log).encode()), shipped))
    assert det.credential.uid == "projects/1028347245602/locations/global/keys/bf67db25-d748-4335-ae08-7f0e65fnfy02"
    assert det.actor.session_uid == (
        "projects/some-project/serviceAccounts/some-team@some-project.gserviceaccount.com"
        "/keys/dc5344c246064589v76ec76f66bafc92b093ed41"
    )
    _, log = cases[("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "GCP API Key Not Created")]
    (det,) = list(detect(read_bytes("p", json.dumps(log).encode()), shipped))
    assert det.credential.attributes["deniedPermissions"] == ["serviceusage.apiKeys.create"]


def test_every_panther_log_parses_directly():
    """Each log parsed as if a rule had matched it: no RecordError, failed calls suppressed.

    One log is genuinely unusable for direct parsing and is named: Panther's BigQuery "other event"
    has no top-level timestamp (``timestamp`` / ``receivetimestamp`` sit inside ``protoPayload``)
    and its ``methodName`` is under ``protoPayload.metadata``; no rule matches it, so the pipeline
    never parses it (see test_panther_cases_through_the_pipeline, where it yields nothing)."""
    unusable = ("gcp_permissions_granted_to_create_or_manage_service_account_key.yml", "other event")
    for key, (_, log) in panther_cases().items():
        if key == unusable:
            with pytest.raises(RecordError) as err:
                detections_from_gcp_audit(log, DUMMY, "panther", 0)
            assert err.value.field == "protoPayload.methodName"
            continue
        dets = detections_from_gcp_audit(log, DUMMY, "panther", 0)
        code = (log["protoPayload"].get("status") or {}).get("code")
        if code:
            (det,) = dets
            assert det.suppressed and det.credential is not None and det.credential.uid is None, key
        else:
            assert all(d.suppressed is None or d.credential is None for d in dets), key


# -- SigmaHQ GCP rules -----------------------------------------------------------------------------


def test_sigmahq_gcp_rules_load_and_run_over_the_corpus(shipped):
    files = sorted(SIGMAHQ_GCP.rglob("*.yml"))
    sigmahq = RuleSet.load(SIGMAHQ_GCP)
    # 3 audit rules at the snapshot, plus the GKE (Kubernetes) twins added to the corpus later
    assert len(sigmahq.rules) == len(files) >= 3
    combined = RuleSet([*shipped.rules, *sigmahq.rules])
    records = [json.dumps(log).encode() for _, log in panther_cases().values()]
    records += [p.read_bytes() for p in FIXTURES + SRA]
    for data in records:
        for item in detect(read_bytes("corpus", data), combined):
            assert not isinstance(item, Rejected), item.message()
            # SigmaHQ's audit rules name ECS fields (gcp.audit.method_name), which a raw LogEntry
            # does not have: without a field mapping they never match, and the corpus shows it.
            assert item.rule.uid not in {r.id for r in sigmahq.rules}
