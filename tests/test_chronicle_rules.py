"""Google SecOps detections built from the real YARA-L rules that would make them
(../shared/data/real/chronicle-detection-rules, chronicle/detection-rules @ 19793ebd, Apache-2.0):
``google_cloud_service_account_key_created_or_uploaded`` and ``entra_id_secret_added_to_app``. Each
detection carries exactly the UDM fields the rule's ``events:`` section matches (snake_case in
YARA-L, camelCase in the API's detection objects), the rule's ``meta`` as ``ruleLabels`` and its
constant ``outcome`` values as ``outcomes``, in the shape Google's sample documents
(chronicle-api-samples-python ``detect/v2/stream_detection_alerts.py``: ``detection`` a one-element
list; ``ruleVersion`` only on ``RULE_DETECTION``). What the rule alone carries must not be taken as
the key (its ``key_id`` match variable can be the caller's key); with the fields that name the
service account and key, the detection is the one the raw record would give."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cordon.detections.errors import Rejected
from cordon.detections.intake import read_inputs
from cordon.detections.pipeline import detect
from cordon.providers import shipped_rule_dirs
from cordon.providers.gcp.chronicle import detection_key, is_detection
from cordon.sigma import RuleSet
from tests.conftest import SHARED_DATA

RULES = SHARED_DATA / "chronicle-detection-rules" / "rules" / "community"
GCP_RULE = RULES / "gcp" / "google_cloud_service_account_key_created_or_uploaded.yaral"
ENTRA_RULE = RULES / "microsoft" / "entra_id" / "entra_id_secret_added_to_app.yaral"
SAMPLE = SHARED_DATA / "chronicle-api-samples-python" / "detect" / "v2" / "stream_detection_alerts.py"
pytestmark = pytest.mark.skipif(not GCP_RULE.exists(), reason="../shared/data/real is not there")

SA = "deploy-bot@acme-prod-4821.iam.gserviceaccount.com"
KEY = f"projects/acme-prod-4821/serviceAccounts/{SA}/keys/5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ff"
CALLER_KEY_ID = "1dead1dead1dead1dead1dead1dead1dead1dead"


def camel(path: str) -> str:
    """A YARA-L UDM path (``metadata.product_event_type``) as the API's JSON spells it."""
    return ".".join(re.sub(r"_([a-z])", lambda m: m.group(1).upper(), p) for p in path.split("."))


def yaral(path: Path) -> dict[str, Any]:
    """The parts of a YARA-L 2.0 rule this test needs: ``name``, ``meta`` (key -> text),
    ``equals`` (UDM path -> list of literal alternatives), ``regex`` (UDM path -> pattern),
    ``fields`` (``detection_fields`` keys matched), ``outcomes`` (name -> literal), ``match``
    (the match variables)."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    name = re.search(r"^\s*rule\s+(\w+)\s*\{", text, re.M).group(1)

    def section(title: str) -> str:
        m = re.search(rf"^\s*{title}:\s*$(.*?)(?=^\s*(?:meta|events|match|outcome|condition):\s*$|\Z)", text,
                      re.M | re.S)
        return m.group(1) if m else ""

    meta = dict(re.findall(r'^\s*(\w+)\s*=\s*"([^"]*)"', section("meta"), re.M))
    events = section("events")
    equals: dict[str, list[str]] = {}
    for p, v in re.findall(r'\$\w+\.([\w.]+)\s*=\s*"([^"]*)"', events):
        equals.setdefault(p, []).append(v)
    regex = dict(re.findall(r"\$\w+\.([\w.]+)\s*=\s*/(.*?)/\s*$", events, re.M))
    fields = re.findall(r'detection_fields\["(\w+)"\]', events)
    outcomes = dict(re.findall(r'^\s*\$(\w+)\s*=\s*"([^"]*)"', section("outcome"), re.M))
    match = re.findall(r"\$(\w+)\s+over\b", section("match"))
    return {"name": name, "meta": meta, "equals": equals, "regex": regex, "fields": fields, "outcomes": outcomes,
            "match": match}


def put(obj: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        obj = obj.setdefault(p, {})
    obj[last] = value


def detection_from_rule(rule: dict[str, Any], event_type: str, extra: dict[str, Any], n: int = 1) -> dict:
    """A RULE_DETECTION of ``rule`` whose one UDM event carries the rule's matched fields
    (``metadata.product_event_type`` = ``event_type``), plus ``extra`` (camelCase path -> value)."""
    event: dict[str, Any] = {}
    for p, values in rule["equals"].items():
        if p == "metadata.product_event_type":
            continue
        if p == "security_result.action":
            event["securityResult"] = [{"action": values[:1]}]
        else:
            put(event, camel(p), values[0])
    put(event, "metadata.productEventType", event_type)
    put(event, "metadata.eventTimestamp", "2026-11-20T03:30:12.287193Z")
    for key in rule["fields"]:  # the match variable: here the key that signed the call
        event.setdefault("securityResult", [{}])[0].setdefault("detectionFields", []).append(
            {"key": key, "value": CALLER_KEY_ID})
    for p, v in extra.items():
        put(event, p, v)
    rule_id = rule["meta"].get("rule_id", "ru_test")
    return {
        "type": "RULE_DETECTION", "id": f"de_{rule['name'][:12]}_{n}", "detectionTime": "2026-11-20T03:30:12.287Z",
        "createdTime": "2026-11-20T03:31:02.114Z",
        "detection": [{"ruleName": rule["name"], "ruleId": rule_id, "ruleVersion": f"{rule_id}@v_1_0",
                       "alertState": "ALERTING", "ruleType": "SINGLE_EVENT",
                       "ruleLabels": [{"key": k, "value": v} for k, v in rule["meta"].items()],
                       "outcomes": [{"key": k, "value": v} for k, v in rule["outcomes"].items()],
                       # the match variables' values (here the key_id the rule grouped on)
                       "detectionFields": [{"key": v, "value": CALLER_KEY_ID if v.endswith("key_id") else "x"}
                                           for v in rule["match"]]}],
        "collectionElements": [{"label": "e", "references": [{"event": event}]}],
    }


def run(tmp_path: Path, *records: dict) -> list:
    path = tmp_path / "detections.json"
    path.write_text(json.dumps({"detections": list(records)}))
    return list(detect(read_inputs([path]), RuleSet.load(shipped_rule_dirs())))


def test_the_sample_documents_the_shape_these_detections_follow():
    """The sample's own words about a detection object, which the fixtures here and Cordon's reader follow."""
    text = SAMPLE.read_text()
    assert 'detection["detection"] is always a list that has one element' in text
    assert "ruleVersion is only populated for RULE_DETECTION" in text
    assert '"type": "RULE_DETECTION"/"GCTI_FINDING"' in text and '"collectionElements": [' in text
    assert '"severity": "INFORMATIONAL"/"LOW"/"HIGH"' in text  # a GCTI finding's, in detection[0]


def test_a_gcti_finding_without_rule_version_is_read_and_suppressed(tmp_path):
    gcti = {"type": "GCTI_FINDING", "id": "de_gcti_1", "detectionTime": "2026-11-20T03:30:12Z",
            "detection": [{"ruleName": "Suspicious download", "ruleId": "ur_gcti", "severity": "HIGH",
                           "ruleSet": "rs_1", "summary": "Rule Detection"}],
            "collectionElements": [{"label": "e", "references": [{"event": {"metadata": {
                "productEventType": "storage.objects.get", "eventTimestamp": "2026-11-20T03:30:12Z"}}}]}],
            "tags": ["TA0010"]}
    assert is_detection(gcti) and detection_key(gcti) == "de_gcti_1@"  # no ruleVersion: keyed by its id
    (d,) = run(tmp_path, gcti)
    assert d.suppressed and "Suspicious download" in d.suppressed and d.severity == "high"


@pytest.mark.parametrize("event_type", yaral(GCP_RULE)["equals"]["metadata.product_event_type"])
def test_what_the_gcp_rule_alone_carries_is_not_taken_as_the_key(tmp_path, event_type):
    """The rule matches on metadata and the key_id detection field only: a detection carrying just
    that names no service account or key, so it is a dead letter naming the field (never a case on
    key_id, which can be the key that signed the call)."""
    rule = yaral(GCP_RULE)
    (out,) = run(tmp_path, detection_from_rule(rule, event_type, {}))
    assert isinstance(out, Rejected), out
    assert out.field.endswith("(target.user.userid)") and "names neither the key nor its service account" in out.reason
    assert out.field.startswith("collectionElements[0].references[0].event") and out.position == 0


@pytest.mark.parametrize("event_type", yaral(GCP_RULE)["equals"]["metadata.product_event_type"])
def test_the_gcp_rule_with_the_key_named_is_the_raw_records_detection(tmp_path, event_type):
    rule = yaral(GCP_RULE)
    det = detection_from_rule(rule, event_type, {
        "principal.user.userid": "mallory@example.com", "principal.ip": ["203.0.113.77"],
        "target.user.userid": SA, "target.resource.name": KEY,
        "target.cloud.project.name": "acme-prod-4821"})
    (d,) = run(tmp_path, det)
    assert not isinstance(d, Rejected), d
    assert (d.source, d.event_name, d.credential.kind, d.credential.uid) == ("gcp_audit", event_type, "gcp_sa_key", KEY)
    assert CALLER_KEY_ID not in d.credential.uid
    assert d.case_key() == f"gcp|acme-prod-4821|gcp_sa_key|{KEY}"
    # the rule's meta and outcome: severity from its label, the technique from its outcome
    assert d.severity == rule["meta"]["severity"].lower() and d.technique_ids == [
        rule["outcomes"]["mitre_attack_technique_id"]]
    assert d.rule.type == "chronicle" and d.rule.name == rule["name"] and d.rule.uid == rule["meta"]["rule_id"]


def test_the_entra_rule_is_an_application_credential(tmp_path):
    """entra_id_secret_added_to_app matches ``/Update application.*Certificates and secrets
    management/``: each spelling Entra writes that the pattern matches becomes a credential of the
    application its outcome names (target.resource.product_object_id), whose key is then found by
    its start time (the Entra unnamed-credential playbook)."""
    rule = yaral(ENTRA_RULE)
    pattern = re.compile(rule["regex"]["metadata.product_event_type"])
    app = "8d2f0e3b-6a4c-4f9b-8d7e-3a2b1c0d9e8f"
    spellings = ["Update application \u2013 Certificates and secrets management ",
                 "Update application - Certificates and secrets management"]
    dets = []
    for i, spelled in enumerate(spellings):
        assert pattern.search(spelled), spelled
        dets.append(detection_from_rule(rule, spelled, {
            "principal.user.userid": "mallory@contoso.example", "principal.ip": ["203.0.113.7"],
            "target.resource.name": "payments", "target.resource.productObjectId": app}, n=i))
    out = run(tmp_path, *dets)
    assert len(out) == 2 and not any(isinstance(o, Rejected) for o in out), out
    for d in out:
        assert (d.provider, d.credential.kind, d.credential.uid) == ("azure", "azure_sp_password", None)
        assert (d.credential.owner.uid, d.credential.owner.type) == (app, "Application")
        assert d.actor.user.name == "mallory@contoso.example" and d.rule.name == rule["name"]
    assert out[0].case_key() == out[1].case_key()


def test_another_rule_is_suppressed_with_its_name(tmp_path):
    rule = yaral(GCP_RULE)
    det = detection_from_rule(rule, "google.iam.admin.v1.DeleteServiceAccountKey", {"target.user.userid": SA})
    det["detection"][0]["ruleName"] = "gcp_service_account_key_deleted"
    (d,) = run(tmp_path, det)
    assert d.suppressed and "gcp_service_account_key_deleted" in d.suppressed and d.source == "chronicle"


def test_an_unnamed_key_keeps_the_rules_key_id_as_a_key_not_to_take(tmp_path):
    """With the service account but no key named, the detection carries the key_id the rule matched
    on (UDM detection field and the rule's match variable) as a key gcp-sa-key-unnamed never takes."""
    rule = yaral(GCP_RULE)
    det = detection_from_rule(rule, "google.iam.admin.v1.CreateServiceAccountKey", {
        "principal.user.userid": "mallory@example.com", "target.user.userid": SA,
        "target.cloud.project.name": "acme-prod-4821"})
    assert det["detection"][0]["detectionFields"] == [{"key": "sa_key_id", "value": CALLER_KEY_ID}]
    (d,) = run(tmp_path, det)
    assert d.credential.uid is None and d.credential.attributes["notKeys"] == [CALLER_KEY_ID], d.credential
