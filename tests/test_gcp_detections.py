"""GCP detections: intake of Cloud Audit Log entries, SCC findings and Pub/Sub push envelopes; the
shipped GCP Sigma rules; the audit-log and SCC parsers; the pipeline wiring.

Records are built here in the shapes of the Cloud Logging ``LogEntry`` / ``AuditLog`` references
and of the public corpus (GoogleCloudPlatform/security-analytics fixtures, Panther gcp_audit_rules);
tests/test_corpus_gcp.py reads that corpus itself.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest

from cordon.detections.errors import RecordError, Rejected
from cordon.detections.intake import RawRecord, classify, read_bytes
from cordon.detections.pipeline import DetectStats, detect
from cordon.providers.gcp.detections import (
    credential_kind,
    detection_from_gcp_audit,
    detection_from_scc,
    detections_from_gcp_audit,
    detections_from_scc,
)
from cordon.sigma import RuleSet, SigmaMatch

REPO = Path(__file__).resolve().parents[1]
GCP_RULES = REPO / "cordon" / "providers" / "gcp" / "rules"

MATCH = SigmaMatch(
    id="rule-1", title="A rule", path="x.yml", level="high", technique_ids=(), tags=(), author=None, references=()
)

KEY = "projects/p1/serviceAccounts/backdoor@p1.iam.gserviceaccount.com/keys/0123456789abcdef0123456789abcdef01234567"


def entry(method: str, *, request=None, response=None, status=None, service="iam.googleapis.com", **extra) -> dict:
    """A Cloud Audit Log entry as Cloud Logging exports it."""
    pp = {
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "status": status if status is not None else {},
        "authenticationInfo": {"principalEmail": "mallory@example.com", "principalSubject": "user:mallory@example.com"},
        "requestMetadata": {
            "callerIp": "203.0.113.7",
            "callerSuppliedUserAgent": "google-cloud-sdk gcloud/470.0.0 command/gcloud.iam.service-accounts.keys",
        },
        "serviceName": service,
        "methodName": method,
        "resourceName": "projects/-/serviceAccounts/1122334455",
    }
    if request is not None:
        pp["request"] = request
    if response is not None:
        pp["response"] = response
    pp.update(extra.pop("pp", {}))
    record = {
        "protoPayload": pp,
        "insertId": "abc123",
        "resource": {
            "type": "service_account",
            "labels": {"project_id": "p1", "email_id": "backdoor@p1.iam.gserviceaccount.com"},
        },
        "timestamp": "2024-05-01T10:00:00.123456789Z",
        "receiveTimestamp": "2024-05-01T10:00:01Z",
        "severity": "NOTICE",
        "logName": "projects/p1/logs/cloudaudit.googleapis.com%2Factivity",
    }
    record.update(extra)
    return record


def key_created(**kw) -> dict:
    return entry(
        "google.iam.admin.v1.CreateServiceAccountKey",
        request={"name": "projects/p1/serviceAccounts/backdoor@p1.iam.gserviceaccount.com", "private_key_type": 2},
        response={
            "@type": "type.googleapis.com/google.iam.admin.v1.ServiceAccountKey",
            "name": KEY,
            "key_algorithm": 2,
            "key_origin": 2,
            "key_type": 1,
            "private_key_type": 2,
            "private_key_data": "c2VjcmV0LWtleS1tYXRlcmlhbA==",
            "valid_after_time": {"seconds": 1714557600},
            "valid_before_time": {"seconds": 253402300799},
        },
        **kw,
    )


def set_iam_policy(deltas: list[dict], *, where: str = "serviceData") -> dict:
    delta_doc = {
        "@type": "type.googleapis.com/google.iam.v1.logging.AuditData",
        "policyDelta": {"bindingDeltas": deltas},
    }
    record = entry(
        "SetIamPolicy",
        service="cloudresourcemanager.googleapis.com",
        request={"resource": "p1", "policy": {"bindings": []}},
        response={"bindings": []},
        pp={where: delta_doc, "resourceName": "projects/p1"},
    )
    record["resource"] = {"type": "project", "labels": {"project_id": "p1"}}
    return record


SCC_FINDING = {
    "name": "organizations/111/sources/222/findings/f333",
    "parent": "organizations/111/sources/222",
    "resourceName": "//cloudresourcemanager.googleapis.com/projects/424242",
    "state": "ACTIVE",
    "category": "Persistence: IAM Anomalous Grant",
    "sourceProperties": {
        "properties": {
            "project_id": "p1",
            "principalEmail": "mallory@example.com",
            "sensitiveRoleGrant": {
                "principalEmail": "mallory@example.com",
                "bindingDeltas": [
                    {"action": "ADD", "role": "roles/owner", "member": "user:eve@gmail.com"},
                    {"action": "REMOVE", "role": "roles/viewer", "member": "user:bob@example.com"},
                ],
                "members": ["user:eve@gmail.com"],
            },
        }
    },
    "severity": "HIGH",
    "eventTime": "2024-05-01T10:00:00Z",
    "createTime": "2024-05-01T10:00:05Z",
}


def read_one(obj, origin="in.json") -> RawRecord | Rejected:
    items = list(read_bytes(origin, json.dumps(obj).encode()))
    assert len(items) == 1, items
    return items[0]


def pubsub(data: str | bytes | dict, **message) -> dict:
    if isinstance(data, dict):
        data = base64.b64encode(json.dumps(data).encode()).decode()
    elif isinstance(data, bytes):
        data = base64.b64encode(data).decode()
    return {
        "message": {"data": data, "messageId": "9001", "publishTime": "2024-05-01T10:00:02Z", **message},
        "subscription": "projects/p1/subscriptions/cordon",
    }


# -- intake --------------------------------------------------------------------------------------


def test_classify_audit_entries_and_other_payloads():
    assert classify(key_created()) == "gcp_audit"
    panther = key_created()
    panther["protoPayload"]["at_sign_type"] = panther["protoPayload"].pop("@type")
    assert classify(panther) == "gcp_audit"
    untyped = key_created()
    del untyped["protoPayload"]["@type"]
    assert classify(untyped) == "gcp_audit"
    # without @type, a protoPayload alone (no LogEntry fields) is not enough
    assert classify({"protoPayload": {"methodName": "x"}}) is None
    other = key_created()
    other["protoPayload"]["@type"] = "type.googleapis.com/google.appengine.logging.v1.RequestLog"
    assert classify(other) is None


def test_classify_scc_shapes():
    assert classify(SCC_FINDING) == "gcp_scc"
    assert classify({"finding": SCC_FINDING}) == "gcp_scc"
    assert classify({"finding": SCC_FINDING, "resource": {"name": "//x"}}) == "gcp_scc"
    assert (
        classify({"notificationConfigName": "organizations/111/notificationConfigs/n", "finding": SCC_FINDING})
        == "gcp_scc"
    )
    v2 = dict(SCC_FINDING, name="projects/p1/sources/222/locations/global/findings/f333")
    assert classify(v2) == "gcp_scc"
    assert classify({k: v for k, v in SCC_FINDING.items() if k != "category"}) is None
    assert classify(dict(SCC_FINDING, name="organizations/111/findings/f333")) is None


def test_json_lines_of_log_entries_as_exported_to_cloud_storage():
    lines = "\n".join(json.dumps(r) for r in (key_created(), set_iam_policy([]), {"hello": 1})).encode()
    items = list(read_bytes("gs-export.json", lines))
    assert [type(i).__name__ for i in items] == ["RawRecord", "RawRecord", "Rejected"]
    assert [i.kind for i in items[:2]] == ["gcp_audit", "gcp_audit"]
    assert items[2].position == 2 and "Google Cloud Audit Log" in items[2].reason


def test_entries_list_and_list_findings_results_are_unwrapped():
    items = list(read_bytes("entries.json", json.dumps({"entries": [key_created(), key_created()]}).encode()))
    assert [(i.kind, i.position) for i in items] == [("gcp_audit", 0), ("gcp_audit", 1)]
    listed = {
        "listFindingsResults": [{"finding": SCC_FINDING, "resource": {"projectDisplayName": "p1"}}],
        "totalSize": 1,
    }
    (item,) = list(read_bytes("findings.json", json.dumps(listed).encode()))
    assert item.kind == "gcp_scc" and item.record["resource"] == {"projectDisplayName": "p1"}


def test_pubsub_push_envelope_is_unwrapped():
    item = read_one(pubsub(key_created()))
    assert isinstance(item, RawRecord) and item.kind == "gcp_audit"
    assert item.record["protoPayload"]["methodName"] == "google.iam.admin.v1.CreateServiceAccountKey"
    assert item.envelope == {
        "messageId": "9001",
        "publishTime": "2024-05-01T10:00:02Z",
        "subscription": "projects/p1/subscriptions/cordon",
    }
    note = {"notificationConfigName": "organizations/111/notificationConfigs/n", "finding": SCC_FINDING}
    item = read_one(pubsub(note, attributes={"k": "v"}))
    assert item.kind == "gcp_scc" and item.envelope["attributes"] == {"k": "v"}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("%%%not-base64%%%", "not base64"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (12, "expected a base64 string"),
    ],
)
def test_pubsub_bad_data_is_rejected_naming_message_data(data, why):
    env = pubsub("x")
    env["message"]["data"] = data if not isinstance(data, bytes) else base64.b64encode(data).decode()
    lines = (json.dumps(key_created()) + "\n" + json.dumps(env) + "\n").encode()
    good, bad = list(read_bytes("push.jsonl", lines))
    assert isinstance(good, RawRecord)
    assert isinstance(bad, Rejected)
    assert (bad.origin, bad.position, bad.field) == ("push.jsonl", 1, "message.data")
    assert why in bad.reason and "line 2" in bad.reason
    assert "9001" in bad.raw_text


def test_pubsub_data_of_unknown_shape_is_rejected():
    bad = read_one(pubsub({"hello": "world"}))
    assert isinstance(bad, Rejected) and "unrecognised record shape" in bad.reason and "hello" in bad.reason


# -- Sigma rules ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcp_rules() -> RuleSet:
    return RuleSet.load(GCP_RULES)


def titles(rules: RuleSet, record: dict) -> set[str]:
    return {m.title for m in rules.match(record, product="gcp", service="gcp.audit")}


def test_gcp_rules_metadata(gcp_rules):
    assert len(gcp_rules.rules) == 7
    ids = [r.id for r in gcp_rules.rules]
    assert len(set(ids)) == len(ids)
    for r in gcp_rules.rules:
        sr = r.sigma_rule
        assert sr.author == "Cordon" and sr.status is not None and sr.description and sr.level is not None
        assert sr.references and sr.falsepositives and sr.date is not None
        assert any("cloud.google.com" in ref for ref in sr.references), r.path
        assert "attack.persistence" in [str(t) for t in sr.tags], r.path
        assert r.match.technique_ids, r.path
        assert (r.product, r.service) == ("gcp", "gcp.audit"), r.path
        assert "protoPayload.status.code|gt: 0" in Path(r.path).read_text(), f"{r.path} must filter failed calls"


SUCCESS_CASES = {
    "GCP Service Account Key Created": key_created(),
    "GCP Service Account Key Uploaded": entry("google.iam.admin.v1.UploadServiceAccountKey", response={"name": KEY}),
    "GCP Service Account Created": entry(
        "google.iam.admin.v1.CreateServiceAccount", response={"email": "backdoor@p1.iam.gserviceaccount.com"}
    ),
    "GCP Sensitive IAM Role Granted": set_iam_policy(
        [{"action": "ADD", "role": "roles/iam.serviceAccountTokenCreator", "member": "user:eve@example.com"}]
    ),
    "GCP API Key Created": entry(
        "google.api.apikeys.v2.ApiKeys.CreateKey", response={"name": "projects/123/locations/global/keys/k-1"}
    ),
    "GCP OS Login SSH Public Key Added": entry(
        "google.cloud.oslogin.v1.OsLoginService.ImportSshPublicKey",
        request={"parent": "users/eve@example.com", "sshPublicKey": {"key": "ssh-ed25519 AAAA eve"}},
        response={"loginProfile": {"sshPublicKeys": {"fp1": {"key": "ssh-ed25519 AAAA eve", "fingerprint": "fp1"}}}},
    ),
    "GCP Cloud Storage HMAC Key Created": entry(
        "storage.hmacKeys.create",
        service="storage.googleapis.com",
        request={"projectId": "p1", "serviceAccountEmail": "backdoor@p1.iam.gserviceaccount.com"},
        response={
            "metadata": {"accessId": "GOOG1EXAMPLE", "serviceAccountEmail": "backdoor@p1.iam.gserviceaccount.com"},
            "secret": "hmac-secret-value",
        },
    ),
}


@pytest.mark.parametrize("title", sorted(SUCCESS_CASES))
def test_each_rule_fires_on_success_and_never_on_failure(gcp_rules, title):
    record = SUCCESS_CASES[title]
    assert titles(gcp_rules, record) == {title}
    for status in ({"code": 7, "message": "Permission denied"}, {"code": "7"}, {"code": 5}):
        failed = copy.deepcopy(record)
        failed["protoPayload"]["status"] = status
        assert titles(gcp_rules, failed) == set(), (title, status)
    ok = copy.deepcopy(record)
    ok["protoPayload"]["status"] = {"code": 0, "message": "OK"}
    assert titles(gcp_rules, ok) == {title}
    del ok["protoPayload"]["status"]
    assert titles(gcp_rules, ok) == {title}


def test_sensitive_grant_rule_needs_an_added_sensitive_role(gcp_rules):
    title = "GCP Sensitive IAM Role Granted"
    viewer = set_iam_policy([{"action": "ADD", "role": "roles/viewer", "member": "user:eve@example.com"}])
    assert titles(gcp_rules, viewer) == set()
    removed = set_iam_policy([{"action": "REMOVE", "role": "roles/owner", "member": "user:eve@example.com"}])
    assert titles(gcp_rules, removed) == set()
    newer = set_iam_policy(
        [{"action": "ADD", "role": "roles/owner", "member": "user:eve@example.com"}], where="metadata"
    )
    assert titles(gcp_rules, newer) == {title}
    flat = set_iam_policy([])
    flat["protoPayload"]["metadata"] = {
        "bindingDeltas": [{"action": "ADD", "role": "roles/editor", "member": "user:eve@example.com"}]
    }
    assert titles(gcp_rules, flat) == {title}
    sa = copy.deepcopy(SUCCESS_CASES[title])
    sa["protoPayload"]["methodName"] = "google.iam.admin.v1.SetIAMPolicy"  # IAM's spelling
    assert titles(gcp_rules, sa) == {title}
    getter = copy.deepcopy(SUCCESS_CASES[title])
    getter["protoPayload"]["methodName"] = "GetIamPolicy"
    assert titles(gcp_rules, getter) == set()


def test_service_account_rule_ignores_google_internal_creation(gcp_rules):
    record = copy.deepcopy(SUCCESS_CASES["GCP Service Account Created"])
    record["protoPayload"]["authenticationInfo"] = {}
    assert titles(gcp_rules, record) == set()
    record["protoPayload"]["authenticationInfo"] = {
        "principalSubject": "principal://iam.googleapis.com/locations/global/workforcePools/p/subject/eve"
    }
    assert titles(gcp_rules, record) == {"GCP Service Account Created"}


def test_gcp_rules_do_not_fire_on_cloudtrail(gcp_rules):
    ct = {"eventName": "CreateAccessKey", "eventSource": "iam.amazonaws.com", "eventTime": "2024-01-01T00:00:00Z"}
    assert gcp_rules.match(ct, product="aws", service="cloudtrail") == []


# -- audit log parser ----------------------------------------------------------------------------


def test_service_account_key_created():
    det = detection_from_gcp_audit(key_created(), MATCH, "f.json", 3)
    assert (det.provider, det.source, det.event_name) == (
        "gcp",
        "gcp_audit",
        "google.iam.admin.v1.CreateServiceAccountKey",
    )
    assert det.account_uid == "p1" and det.region is None and det.severity == "high"
    assert det.time.isoformat() == "2024-05-01T10:00:00.123456+00:00"
    assert det.technique_ids == ["T1098.001"]  # the rule carries none: fallback for keys
    cred = det.credential
    assert cred.kind == "gcp_sa_key" and cred.uid == KEY
    assert cred.owner.uid == "backdoor@p1.iam.gserviceaccount.com" and cred.owner.type == "ServiceAccount"
    assert det.target == cred.owner and det.target.account_uid == "p1"
    assert cred.attributes == {
        "keyType": "USER_MANAGED",
        "keyAlgorithm": "KEY_ALG_RSA_2048",
        "keyOrigin": "GOOGLE_PROVIDED",
        "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
        "validAfterTime": "2024-05-01T10:00:00Z",
        "validBeforeTime": "9999-12-31T23:59:59Z",
    }
    assert "c2VjcmV0" not in json.dumps(det.summary())
    a = det.actor
    assert (a.user.uid, a.user.name, a.user.type) == ("mallory@example.com", "mallory@example.com", "User")
    assert (a.src_ip, a.access_path) == ("203.0.113.7", "api") and a.user_agent.startswith("google-cloud-sdk")
    assert det.suppressed is None and det.raw_ref.position == 3 and det.case_key() == f"gcp|p1|gcp_sa_key|{KEY}"


def test_actor_from_a_key_impersonation_chain_and_console():
    record = key_created()
    record["protoPayload"]["authenticationInfo"] = {
        "principalEmail": "deployer@p1.iam.gserviceaccount.com",
        "serviceAccountKeyName": "//iam.googleapis.com/projects/p1/serviceAccounts/"
        "deployer@p1.iam.gserviceaccount.com/keys/k9",
        "serviceAccountDelegationInfo": [
            {"firstPartyPrincipal": {"principalEmail": "mallory@example.com"}},
            {"principalSubject": "serviceAccount:hop@p1.iam.gserviceaccount.com"},
        ],
    }
    record["protoPayload"]["requestMetadata"] = {
        "callerIP": "198.51.100.4",  # Panther's spelling
        "callerSuppliedUserAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0,gzip(gfe)",
    }
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    a = det.actor
    assert a.user.type == "ServiceAccount" and a.user.account_uid == "p1"
    assert a.session_uid == "projects/p1/serviceAccounts/deployer@p1.iam.gserviceaccount.com/keys/k9"
    assert a.session_issuer == "mallory@example.com"
    assert det.credential.attributes["delegationChain"] == [
        "mallory@example.com",
        "serviceAccount:hop@p1.iam.gserviceaccount.com",
    ]
    assert (a.src_ip, a.access_path) == ("198.51.100.4", "console")


def test_google_service_agent_is_access_path_service():
    record = key_created()
    record["protoPayload"]["authenticationInfo"] = {"principalEmail": "123@cloudservices.gserviceaccount.com"}
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert det.actor.access_path == "service" and det.actor.invoked_by == "123@cloudservices.gserviceaccount.com"


def test_key_name_with_unique_id_is_rewritten_with_the_email():
    record = key_created()
    record["protoPayload"]["response"]["name"] = "projects/-/serviceAccounts/1122334455/keys/abc"
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential.uid == "projects/p1/serviceAccounts/backdoor@p1.iam.gserviceaccount.com/keys/abc"
    assert det.credential.attributes["nameAsLogged"] == "projects/-/serviceAccounts/1122334455/keys/abc"


def test_key_created_without_response_name_is_a_record_error():
    record = key_created()
    del record["protoPayload"]["response"]["name"]
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(record, MATCH, "in.jsonl", 7)
    assert (err.value.origin, err.value.position, err.value.field) == ("in.jsonl", 7, "protoPayload.response.name")
    record["protoPayload"]["response"]["name"] = "keys/abc"
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(record, MATCH, "in.jsonl", 7)
    assert err.value.field == "protoPayload.response.name" and "serviceAccounts" in err.value.reason


def test_failed_key_creation_is_suppressed_and_names_no_key():
    record = key_created()
    record["protoPayload"]["status"] = {"code": 7, "message": "Permission 'iam.serviceAccountKeys.create' denied"}
    del record["protoPayload"]["response"]
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential.kind == "gcp_sa_key" and det.credential.uid is None
    assert det.credential.owner.uid == "backdoor@p1.iam.gserviceaccount.com"
    assert det.credential.attributes["statusCode"] == 7
    assert "failed (status code 7" in det.suppressed and "denied" in det.suppressed
    assert det.case_key() == "gcp|p1|principal|backdoor@p1.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("protoPayload"), "protoPayload"),
        (lambda r: r["protoPayload"].pop("methodName"), "protoPayload.methodName"),
        (lambda r: (r.pop("timestamp"), r.pop("receiveTimestamp")), "timestamp"),
        (lambda r: r.__setitem__("timestamp", "yesterday"), "timestamp"),
        (lambda r: r["protoPayload"].__setitem__("response", "ok"), "protoPayload.response"),
        (lambda r: r["protoPayload"].__setitem__("status", {"code": "denied"}), "protoPayload.status.code"),
        (
            lambda r: r["protoPayload"]["authenticationInfo"].__setitem__("principalEmail", 5),
            "protoPayload.authenticationInfo.principalEmail",
        ),
        (lambda r: r["protoPayload"].__setitem__("authorizationInfo", ["x"]), "protoPayload.authorizationInfo[0]"),
    ],
)
def test_bad_audit_entries_name_the_field(mutate, field):
    record = key_created()
    mutate(record)
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(record, MATCH, "bad.json", 2)
    assert (err.value.origin, err.value.position, err.value.field) == ("bad.json", 2, field)
    assert f"bad.json: record 2: field '{field}'" in str(err.value)


def test_receive_timestamp_is_used_when_timestamp_is_absent():
    record = key_created()
    del record["timestamp"]
    assert detection_from_gcp_audit(record, MATCH, "f", 0).time.isoformat() == "2024-05-01T10:00:01+00:00"


def test_upload_service_account_key():
    det = detection_from_gcp_audit(SUCCESS_CASES["GCP Service Account Key Uploaded"], MATCH, "f", 0)
    assert det.credential.kind == "gcp_sa_key" and det.credential.uid == KEY


def test_create_service_account_and_fallback_from_request():
    record = entry(
        "google.iam.admin.v1.CreateServiceAccount",
        request={"account_id": "backdoor", "name": "projects/p1"},
        response={"email": "backdoor@p1.iam.gserviceaccount.com", "unique_id": "9988", "display_name": "b"},
    )
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential.kind == "gcp_service_account" and det.credential.uid == "backdoor@p1.iam.gserviceaccount.com"
    assert det.credential.attributes == {"uniqueId": "9988", "displayName": "b"}
    assert det.target.uid == "backdoor@p1.iam.gserviceaccount.com" and det.technique_ids == ["T1136.003"]
    del record["protoPayload"]["response"]
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential.uid == "backdoor@p1.iam.gserviceaccount.com"
    assert det.credential.attributes == {"emailDerivedFromRequest": True}
    del record["protoPayload"]["request"]["account_id"]
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(record, MATCH, "f", 0)
    assert err.value.field == "protoPayload.response.email"


def test_set_iam_policy_gives_one_detection_per_added_sensitive_binding():
    record = set_iam_policy(
        [
            {"action": "ADD", "role": "roles/iam.serviceAccountTokenCreator", "member": "user:eve@example.com"},
            {"action": "ADD", "role": "roles/owner", "member": "serviceAccount:bd@p1.iam.gserviceaccount.com"},
            {"action": "ADD", "role": "roles/viewer", "member": "user:eve@example.com"},
            {"action": "REMOVE", "role": "roles/editor", "member": "user:bob@example.com"},
        ]
    )
    dets = detections_from_gcp_audit(record, MATCH, "f", 0)
    assert [d.credential.uid for d in dets] == [
        "projects/p1#roles/iam.serviceAccountTokenCreator#user:eve@example.com",
        "projects/p1#roles/owner#serviceAccount:bd@p1.iam.gserviceaccount.com",
    ]
    assert len({d.uid for d in dets}) == 2
    assert [(d.target.uid, d.target.type) for d in dets] == [
        ("eve@example.com", "User"),
        ("bd@p1.iam.gserviceaccount.com", "ServiceAccount"),
    ]
    assert dets[0].credential.attributes["role"] == "roles/iam.serviceAccountTokenCreator"
    assert dets[0].credential.attributes["resource"] == "projects/p1"
    assert dets[0].credential.attributes["member"] == "user:eve@example.com"
    assert all(d.technique_ids == ["T1098.003"] and d.suppressed is None for d in dets)
    with pytest.raises(ValueError, match="2 detections"):
        detection_from_gcp_audit(record, MATCH, "f", 0)


def test_set_iam_policy_on_a_service_account_names_it_by_email():
    record = set_iam_policy([{"action": "ADD", "role": "roles/iam.serviceAccountKeyAdmin", "member": "user:eve@x.com"}])
    record["protoPayload"]["methodName"] = "google.iam.admin.v1.SetIAMPolicy"
    record["protoPayload"]["resourceName"] = "projects/-/serviceAccounts/1122334455"
    record["protoPayload"]["request"]["resource"] = "projects/p1/serviceAccounts/1122334455"
    record["resource"] = {
        "type": "service_account",
        "labels": {"project_id": "p1", "email_id": "sa@p1.iam.gserviceaccount.com"},
    }
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert (
        det.credential.uid
        == "projects/p1/serviceAccounts/sa@p1.iam.gserviceaccount.com#roles/iam.serviceAccountKeyAdmin#user:eve@x.com"
    )


def test_set_iam_policy_without_sensitive_addition_is_one_suppressed_detection():
    record = set_iam_policy([{"action": "REMOVE", "role": "roles/owner", "member": "user:eve@example.com"}])
    (det,) = detections_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential is None and "added no sensitive role binding" in det.suppressed
    assert "REMOVE roles/owner user:eve@example.com" in det.suppressed


def test_set_iam_policy_newer_metadata_shape_and_bad_delta():
    record = set_iam_policy(
        [{"action": "ADD", "role": "roles/editor", "member": "group:g@example.com"}], where="metadata"
    )
    (det,) = detections_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential.uid == "projects/p1#roles/editor#group:g@example.com" and det.target.type == "Group"
    assert det.credential.attributes["deltaPath"] == "protoPayload.metadata.policyDelta.bindingDeltas"
    record = set_iam_policy(["ADD roles/owner"])
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(record, MATCH, "f", 4)
    assert err.value.field == "protoPayload.serviceData.policyDelta.bindingDeltas[0]"
    record = set_iam_policy([{"action": "ADD", "member": "user:eve@example.com"}])
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(record, MATCH, "f", 4)
    assert err.value.field == "protoPayload.serviceData.policyDelta.bindingDeltas[0].role"


def test_api_key_created_and_long_running_operation_entries():
    record = SUCCESS_CASES["GCP API Key Created"]
    record = copy.deepcopy(record)
    record["protoPayload"]["response"]["keyString"] = "AIzaSECRET"
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential.kind == "gcp_api_key" and det.credential.uid == "projects/123/locations/global/keys/k-1"
    assert det.credential.owner.uid == "mallory@example.com" and "AIzaSECRET" not in json.dumps(det.summary())
    first = copy.deepcopy(record)
    first["protoPayload"]["response"] = {
        "@type": "type.googleapis.com/google.longrunning.Operation",
        "name": "operations/akmf.1",
    }
    first["operation"] = {"id": "operations/akmf.1", "first": True, "producer": "apikeys.googleapis.com"}
    det = detection_from_gcp_audit(first, MATCH, "f", 0)
    assert det.credential.uid is None and "long-running operation" in det.suppressed
    assert det.credential.attributes["operationId"] == "operations/akmf.1"
    del first["operation"]
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(first, MATCH, "f", 0)
    assert err.value.field == "protoPayload.response.name"


def test_oslogin_import_picks_the_imported_key():
    record = copy.deepcopy(SUCCESS_CASES["GCP OS Login SSH Public Key Added"])
    record["protoPayload"]["response"]["loginProfile"]["sshPublicKeys"]["fp0"] = {
        "key": "ssh-rsa OLD",
        "fingerprint": "fp0",
        "name": "users/eve@example.com/sshPublicKeys/fp0",
    }
    det = detection_from_gcp_audit(record, MATCH, "f", 0)
    assert det.credential.kind == "gcp_oslogin_ssh_key"
    assert det.credential.uid == "users/eve@example.com/sshPublicKeys/fp1"
    assert det.credential.owner.uid == "eve@example.com" and det.target.uid == "eve@example.com"
    del record["protoPayload"]["request"]["sshPublicKey"]
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(record, MATCH, "f", 0)
    assert err.value.field == "protoPayload.response.loginProfile.sshPublicKeys" and "which key" in err.value.reason
    snake = entry(
        "google.cloud.oslogin.v1.OsLoginService.ImportSshPublicKey",
        request={"parent": "users/sa@p1.iam.gserviceaccount.com", "ssh_public_key": {"key": "k"}},
        response={"login_profile": {"ssh_public_keys": {"abc": {"key": "k", "fingerprint": "abc"}}}},
    )
    det = detection_from_gcp_audit(snake, MATCH, "f", 0)
    assert det.credential.uid == "users/sa@p1.iam.gserviceaccount.com/sshPublicKeys/abc"
    assert det.credential.owner.type == "ServiceAccount"


def test_hmac_key_created():
    det = detection_from_gcp_audit(SUCCESS_CASES["GCP Cloud Storage HMAC Key Created"], MATCH, "f", 0)
    assert det.credential.kind == "gcp_hmac_key" and det.credential.uid == "projects/p1/hmacKeys/GOOG1EXAMPLE"
    assert det.credential.owner.uid == "backdoor@p1.iam.gserviceaccount.com"
    assert "hmac-secret-value" not in json.dumps(det.summary())
    by_name = entry(
        "storage.hmacKeys.create",
        request={"serviceAccountEmail": "x@p2.iam.gserviceaccount.com"},
        pp={"resourceName": "projects/p2/hmacKeys/GOOG1OTHER"},
    )
    det = detection_from_gcp_audit(by_name, MATCH, "f", 0)
    assert det.credential.uid == "projects/p2/hmacKeys/GOOG1OTHER" and det.credential.owner.account_uid == "p2"
    by_name["protoPayload"]["resourceName"] = "projects/_/buckets"
    with pytest.raises(RecordError) as err:
        detections_from_gcp_audit(by_name, MATCH, "f", 0)
    assert err.value.field == "protoPayload.response.metadata.accessId"


def test_rule_techniques_win_and_other_methods_have_no_credential():
    m = SigmaMatch(
        id="r", title="t", path="p", level="medium", technique_ids=("T1531",), tags=(), author=None, references=()
    )
    record = entry("google.iam.admin.v1.DeleteServiceAccount", request={"name": "projects/p1/serviceAccounts/a@b"})
    det = detection_from_gcp_audit(record, m, "f", 0)
    assert det.technique_ids == ["T1531"] and det.credential is None and det.suppressed is None
    assert credential_kind("google.cloud.resourcemanager.v3.Projects.SetIamPolicy") == "gcp_iam_binding"
    assert credential_kind("google.iam.admin.v1.GetServiceAccountKey") is None


# -- SCC parser ----------------------------------------------------------------------------------


def test_scc_anomalous_grant_notification():
    note = {
        "notificationConfigName": "organizations/111/notificationConfigs/cordon",
        "finding": {
            **SCC_FINDING,
            "access": {
                "principalEmail": "mallory@example.com",
                "callerIp": "203.0.113.9",
                "userAgentFamily": "GCLOUD",
                "methodName": "SetIamPolicy",
            },
        },
        "resource": {"name": "//cloudresourcemanager.googleapis.com/projects/424242", "projectDisplayName": "p1"},
    }
    (det,) = detections_from_scc(note, "pubsub", 5)
    assert (det.provider, det.source, det.finding_type) == ("gcp", "gcp_scc", "Persistence: IAM Anomalous Grant")
    assert det.rule.type == "gcp_scc" and det.rule.uid == SCC_FINDING["name"]
    assert det.severity == "high" and det.account_uid == "p1" and det.technique_ids == ["T1098.003"]
    assert det.time.isoformat() == "2024-05-01T10:00:00+00:00" and det.event_name == "SetIamPolicy"
    assert (
        det.credential.kind == "gcp_iam_binding" and det.credential.uid == "projects/p1#roles/owner#user:eve@gmail.com"
    )
    assert det.target.uid == "eve@gmail.com"
    assert (det.actor.user.uid, det.actor.src_ip, det.actor.user_agent) == (
        "mallory@example.com",
        "203.0.113.9",
        "GCLOUD",
    )
    assert det.suppressed is None and det.raw == note
    # the same grant seen in the audit log is the same case
    audit = set_iam_policy([{"action": "ADD", "role": "roles/owner", "member": "user:eve@gmail.com"}])
    (from_log,) = detections_from_gcp_audit(audit, MATCH, "f", 0)
    assert from_log.case_key() == det.case_key()
    assert detection_from_scc(note, "pubsub", 5).uid == det.uid


def test_scc_iam_bindings_field_and_several_grants():
    finding = {k: v for k, v in SCC_FINDING.items() if k != "sourceProperties"}
    finding["iamBindings"] = [
        {"action": "ADD", "role": "roles/iam.serviceAccountTokenCreator", "member": "user:a@x.com"},
        {"action": "ADD", "role": "roles/owner", "member": "user:b@x.com"},
        {"action": "REMOVE", "role": "roles/owner", "member": "user:c@x.com"},
    ]
    dets = detections_from_scc(finding, "f", 0)
    # no project ID anywhere: the project number from resourceName
    assert [d.credential.uid for d in dets] == [
        "projects/424242#roles/iam.serviceAccountTokenCreator#user:a@x.com",
        "projects/424242#roles/owner#user:b@x.com",
    ]
    assert dets[0].account_uid == "424242" and len({d.uid for d in dets}) == 2
    with pytest.raises(ValueError):
        detection_from_scc(finding, "f", 0)


def test_scc_key_finding_names_the_key_and_state_mute_suppress():
    finding = {
        "name": "organizations/111/sources/333/findings/k1",
        "category": "USER_MANAGED_SERVICE_ACCOUNT_KEY",
        "state": "ACTIVE",
        "resourceName": f"//iam.googleapis.com/{KEY}",
        "severity": "MEDIUM",
        "eventTime": "2024-05-02T00:00:00Z",
    }
    det = detection_from_scc({"finding": finding, "resource": {}}, "f", 0)
    assert det.credential.kind == "gcp_sa_key" and det.credential.uid == KEY
    assert det.account_uid == "p1" and det.severity == "medium" and det.technique_ids == []
    assert det.case_key() == detection_from_gcp_audit(key_created(), MATCH, "f", 0).case_key()
    assert "INACTIVE" in detection_from_scc(dict(finding, state="INACTIVE"), "f", 0).suppressed
    assert "muted" in detection_from_scc(dict(finding, mute="MUTED"), "f", 0).suppressed


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"finding": {k: v for k, v in SCC_FINDING.items() if k != "category"}}, "finding.category"),
        ({k: v for k, v in SCC_FINDING.items() if k != "category"}, "category"),
        ({"finding": {**SCC_FINDING, "eventTime": "soon", "createTime": None}}, "finding.eventTime"),
        (
            {"finding": {k: v for k, v in SCC_FINDING.items() if k not in ("eventTime", "createTime")}},
            "finding.createTime",
        ),
        (
            {"finding": {**SCC_FINDING, "iamBindings": [{"action": "ADD", "role": "roles/owner"}]}},
            "finding.iamBindings[0].member",
        ),
        ({"finding": "x"}, "finding"),
        ({"finding": {**SCC_FINDING, "access": []}}, "finding.access"),
    ],
)
def test_bad_scc_findings_name_the_field(record, field):
    with pytest.raises(RecordError) as err:
        detections_from_scc(record, "scc.json", 1)
    assert (err.value.origin, err.value.position, err.value.field) == ("scc.json", 1, field)


# -- pipeline ------------------------------------------------------------------------------------


def test_pipeline_routes_gcp_records(gcp_rules):
    grant = set_iam_policy(
        [
            {"action": "ADD", "role": "roles/owner", "member": "user:eve@example.com"},
            {"action": "ADD", "role": "roles/editor", "member": "user:eve@example.com"},
        ]
    )
    benign = entry("google.iam.admin.v1.GetServiceAccount")
    broken = key_created()
    del broken["protoPayload"]["response"]["name"]
    note = {"notificationConfigName": "organizations/111/notificationConfigs/n", "finding": SCC_FINDING}
    lines = [key_created(), grant, benign, broken, note, pubsub(key_created())]
    body = "\n".join(json.dumps(r) for r in lines).encode()
    stats = DetectStats()
    out = list(detect(read_bytes("mixed.jsonl", body), gcp_rules, stats))
    rejected = [o for o in out if isinstance(o, Rejected)]
    assert len(rejected) == 1 and (rejected[0].position, rejected[0].field) == (3, "protoPayload.response.name")
    dets = [o for o in out if not isinstance(o, Rejected)]
    assert [d.credential.kind for d in dets] == [
        "gcp_sa_key",
        "gcp_iam_binding",
        "gcp_iam_binding",
        "gcp_iam_binding",
        "gcp_sa_key",
    ]
    assert [d.source for d in dets] == ["gcp_audit"] * 3 + ["gcp_scc", "gcp_audit"]
    # the record its parser rejects counts as rejected only (not as an event): every record once
    assert stats.as_dict() == {
        "records_read": 6,
        "events": 4,
        "events_matched": 3,
        "events_unmatched": 1,
        "findings": 1,
        "detections": 5,
        "suppressed": 0,
        "rejected": 1,
        "records_detected": 4,
        "records_empty": 0,
    }


def test_scc_caller_ip_geo_becomes_the_actors_location():
    note = {"finding": {**SCC_FINDING, "access": {"principalEmail": "mallory@example.com", "callerIp": "198.51.100.4",
                                                  "callerIpGeo": {"regionCode": "NG"}, "methodName": "SetIamPolicy"}}}
    (det,) = detections_from_scc(note, "pubsub", 0)
    assert det.actor.src_location is not None and det.actor.src_location.country == "NG"
    without = {"finding": {**SCC_FINDING, "access": {"principalEmail": "mallory@example.com"}}}
    (det,) = detections_from_scc(without, "pubsub", 0)
    assert det.actor.src_location is None
