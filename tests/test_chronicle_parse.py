import json

import pytest

from cordon.providers.gcp.chronicle import MalformedDetection, parse_text

# Shape as documented in api-samples-python detect/v2/stream_detection_alerts.py.
DET = {
    "id": "de_1", "type": "RULE_DETECTION",
    "createdTime": "2026-01-01T00:00:05Z", "detectionTime": "2026-01-01T00:00:00Z",
    "timeWindow": {"startTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:00Z"},
    "detection": [{"ruleName": "gcp_sa_key_created", "ruleId": "ru_1", "ruleVersion": "ru_1@v_1_0"}],
    "collectionElements": [{"label": "e", "references": [{"event": {"metadata": {
        "productEventType": "google.iam.admin.v1.CreateServiceAccountKey"}}}]}],
}


def test_page_and_jsonlines_parse_the_same():
    page = parse_text(json.dumps({"detections": [DET]}))
    lines = parse_text(json.dumps(DET) + "\n" + json.dumps({**DET, "id": "de_2"}))
    assert page[0].dedup_key == "de_1@ru_1@v_1_0"
    assert [d.id for d in lines] == ["de_1", "de_2"]
    assert page[0].events[0]["metadata"]["productEventType"].endswith("CreateServiceAccountKey")


def test_malformed_names_origin_position_field():
    bad = {**DET, "detection": [{"ruleId": "x"}]}
    with pytest.raises(MalformedDetection, match=r"f.json#1: .*detection\[0\].ruleName"):
        parse_text(json.dumps([DET, bad]), origin="f.json")
