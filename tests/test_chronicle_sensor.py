"""The ``chronicle`` sensor (Google SecOps ``legacySearchDetections``) against the Chronicle stand-in:
real HTTP (google-auth's AuthorizedSession with the GCP sandbox's service account and token
endpoint), the real runner, intake and SQLite ledger and checkpoint store. ``cordon sensor
rehearse chronicle`` end to end (the example contained) is in ``tests/test_sensor_rehearse.py``.

What the intake makes of a detection object is the lead's (``cordon.providers.gcp.chronicle``);
these tests count what the sensor hands to the intake: the pass's fresh deliveries
(``read - duplicates``), the store's ``records_total`` and its seen IDs (``{id}@{ruleVersion}``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from cordon.audit.ledger import Ledger
from cordon.clouds import clients_for
from cordon.config import ConfigError, load_config
from cordon.engine import Responder
from cordon.providers.gcp.chronicle_sensor import ChronicleSensor, ChronicleSettings
from cordon.sandbox.chronicle import ChronicleStandIn
from cordon.sensors import build_sensor, settings_for
from cordon.sensors.runner import run_pass
from cordon.sensors.store import SensorStore
from tests.gcp_fixtures import *  # noqa: F403 - gcp, gcp_sandbox fixtures

NOW = datetime.now(UTC).replace(microsecond=0)


def rfc3339(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def detection(n: int, at: datetime, version: str = "v_1_0", rule: str = "ru_sa_key") -> dict:
    """A detection object in the documented shape (api-samples-python stream_detection_alerts.py)."""
    return {
        "id": f"de_{n:04d}", "type": "RULE_DETECTION",
        "createdTime": rfc3339(at + timedelta(seconds=5)), "detectionTime": rfc3339(at),
        "timeWindow": {"startTime": rfc3339(at), "endTime": rfc3339(at)},
        "detection": [{"ruleName": "gcp_sa_key_created", "ruleId": rule, "ruleVersion": f"{rule}@{version}",
                       "alertState": "ALERTING", "ruleType": "SINGLE_EVENT"}],
        "collectionElements": [{"label": "e", "references": [{"event": {"metadata": {
            "productEventType": "google.iam.admin.v1.CreateServiceAccountKey"}}}]}],
    }


@pytest.fixture
def chronicle(gcp):  # noqa: F811
    """The GCP sandbox's SecOps stand-in (emptied with the sandbox by the ``gcp`` fixture)."""
    return gcp.chronicle()


def world(gcp, chronicle, tmp_path: Path, **settings):  # noqa: F811
    d = tmp_path / "config"
    d.mkdir(exist_ok=True)
    section = {"base_url": chronicle.url, "project": "p1", "instance": "cust-1", "page_size": 2,
               "overlap_seconds": 3600, "max_window_seconds": 7200, **settings}
    (d / "cordon.yaml").write_text(yaml.safe_dump({"sensors": {"chronicle": section}}))
    cfg = load_config(d)
    responder = Responder(config=cfg, ledger=Ledger(f"sqlite:///{tmp_path}/ledger.db"))
    sensor = build_sensor("chronicle", cfg, clients_for, gcp.cloud_params())
    return responder, sensor, SensorStore(responder.ledger.engine)


def searches(chronicle) -> list[dict]:
    return [r for r in chronicle.requests if r["path"].endswith("legacy:legacySearchDetections")]


def test_pages_deliver_each_detection_once_and_a_second_pass_nothing(gcp, chronicle, tmp_path):  # noqa: F811
    dets = [detection(i, NOW - timedelta(minutes=50 - i)) for i in range(5)]
    chronicle.add_detections(*dets, detection(99, NOW - timedelta(hours=3)))  # before the first window
    responder, sensor, store = world(gcp, chronicle, tmp_path)
    first = run_pass(sensor, store, responder, None, now=lambda: NOW)
    assert first.error is None, first.error
    assert (first.read, first.duplicates) == (5, 0)
    pages = searches(chronicle)
    assert len(pages) == 3  # 2 + 2 + 1
    q = pages[0]["query"]
    assert (q["ruleId"], q["listBasis"], q["pageSize"]) == ("-", "CREATED_TIME", "2") and "pageToken" not in q
    assert all(p["query"]["startTime"] == q["startTime"] and p["query"]["endTime"] == q["endTime"] for p in pages)
    assert [bool(p["query"].get("pageToken")) for p in pages] == [False, True, True]
    assert all(p["path"] == "/v1alpha/projects/p1/locations/us/instances/cust-1/legacy:legacySearchDetections"
               for p in pages)
    state = store.state("chronicle")
    assert state.records_total == 5 and state.last_error is None
    assert state.watermark is not None and state.watermark <= NOW
    assert store.unseen("chronicle", [f"de_{i:04d}@ru_sa_key@v_1_0" for i in range(5)]) == set()
    assert store.unseen("chronicle", ["de_0099@ru_sa_key@v_1_0"]) == {"de_0099@ru_sa_key@v_1_0"}

    # the next pass starts at the watermark minus the overlap: what it reads again is dropped
    chronicle.requests.clear()
    second = run_pass(sensor, store, responder, None, now=lambda: NOW + timedelta(minutes=1))
    assert second.error is None and second.read == second.duplicates == 5
    assert store.state("chronicle").records_total == 5
    assert _window(searches(chronicle)[0]) == (state.watermark - timedelta(seconds=3600),
                                               NOW + timedelta(minutes=1))

    # a new version of the rule re-detects de_0004: a new delivery (same id, new ruleVersion)
    chronicle.add_detections(detection(4, NOW - timedelta(seconds=30), version="v_2_0"))
    third = run_pass(sensor, store, responder, None, now=lambda: NOW + timedelta(minutes=2))
    assert third.error is None
    assert third.read - third.duplicates == 1
    assert store.unseen("chronicle", ["de_0004@ru_sa_key@v_2_0"]) == set()
    assert store.state("chronicle").records_total == 6


def test_a_detection_without_its_rule_is_handed_over_once_for_the_intake_to_refuse(gcp, chronicle, tmp_path):  # noqa: F811
    broken = {**detection(1, NOW - timedelta(minutes=20)), "detection": []}
    chronicle.add_detections(broken, detection(2, NOW - timedelta(minutes=10)))
    responder, sensor, store = world(gcp, chronicle, tmp_path)
    first = run_pass(sensor, store, responder, None, now=lambda: NOW)
    assert first.error is None and (first.read, first.duplicates, first.rejected) == (2, 0, 0)
    again = run_pass(sensor, store, responder, None, now=lambda: NOW + timedelta(minutes=1))
    assert again.error is None and again.read == again.duplicates == 2  # not handed over a second time
    assert store.state("chronicle").records_total == 2


def test_a_window_without_detections_moves_the_checkpoint(gcp, chronicle, tmp_path):  # noqa: F811
    responder, sensor, store = world(gcp, chronicle, tmp_path)
    result = run_pass(sensor, store, responder, None, now=lambda: NOW)
    assert result.error is None and result.read == 0
    assert store.state("chronicle").watermark == NOW
    assert searches(chronicle)[0]["status"] == 200


def _window(request: dict) -> tuple[datetime, datetime]:
    q = request["query"]
    return (datetime.fromisoformat(q["startTime"].replace("Z", "+00:00")),
            datetime.fromisoformat(q["endTime"].replace("Z", "+00:00")))


@pytest.mark.parametrize(("status", "body"), [(500, None), (200, b"<html>upstream proxy error</html>")],
                         ids=["http-500", "not-json"])
def test_a_bad_page_keeps_the_checkpoint_and_the_next_pass_recovers(gcp, chronicle, tmp_path, status, body):  # noqa: F811
    chronicle.add_detections(*[detection(i, NOW - timedelta(minutes=30 - i)) for i in range(5)])
    responder, sensor, store = world(gcp, chronicle, tmp_path)
    run_pass(sensor, store, responder, None, now=lambda: NOW - timedelta(minutes=40))  # a checkpoint before them
    before = store.state("chronicle")
    assert before.watermark is not None and before.records_total == 0

    chronicle.fail_next(status, body, after=1)  # page 2 of the next search fails
    failed = run_pass(sensor, store, responder, None, now=lambda: NOW)
    assert failed.error and "page 2" in failed.error and failed.read == 0
    after = store.state("chronicle")
    assert after.watermark == before.watermark and after.records_total == 0
    assert after.last_error == failed.error

    recovered = run_pass(sensor, store, responder, None, now=lambda: NOW)
    assert recovered.error is None and (recovered.read, recovered.duplicates) == (5, 0)
    state = store.state("chronicle")
    assert state.records_total == 5 and state.last_error is None and state.watermark > before.watermark


def test_a_token_the_instance_does_not_take_is_an_error_naming_401(gcp, tmp_path):  # noqa: F811
    fixed = ChronicleStandIn(token="only-this-one").start()  # not the sandbox's tokens
    try:
        fixed.add_detections(detection(1, NOW - timedelta(minutes=5)))
        responder, sensor, store = world(gcp, fixed, tmp_path)
        result = run_pass(sensor, store, responder, None, now=lambda: NOW)
        assert result.error and "HTTP 401" in result.error and "UNAUTHENTICATED" in result.error
        assert store.state("chronicle").watermark is None
    finally:
        fixed.stop()


def test_credentials_file_is_used_for_the_session(gcp, chronicle, tmp_path):  # noqa: F811
    key = tmp_path / "sa.json"
    key.write_text(json.dumps(gcp.cloud_params()["credentials_info"]))
    chronicle.add_detections(detection(7, NOW - timedelta(minutes=5)))
    settings = ChronicleSettings(base_url=chronicle.url, project="p1", instance="cust-1", credentials_file=str(key),
                                 max_window_seconds=7200)
    sensor = ChronicleSensor(settings, clients=None)  # no provider credentials: only the file's
    fetched = sensor.fetch(SensorStore(Ledger(f"sqlite:///{tmp_path}/l.db").engine).state("chronicle"), NOW)
    assert [d.record_id for d in fetched.deliveries] == ["de_0007@ru_sa_key@v_1_0"]
    assert json.loads(fetched.deliveries[0].body)["id"] == "de_0007"  # the detection object as it came
    assert fetched.deliveries[0].origin == "chronicle:projects/p1/locations/us/instances/cust-1"


@pytest.mark.parametrize(("section", "field"), [
    ({"instance": "c"}, "sensors.chronicle.project"),
    ({"project": "p"}, "sensors.chronicle.instance"),
    ({"project": "p", "instance": "c", "region": "US East"}, "sensors.chronicle.region"),
    ({"project": "p", "instance": "c", "base_url": "chronicle.example"}, "sensors.chronicle.base_url"),
    ({"project": "p", "instance": "c", "credentials_file": "/nonexistent/sa.json"},
     "sensors.chronicle.credentials_file"),
    ({"project": "p", "instance": "c", "page_size": 0}, "sensors.chronicle.page_size"),
    ({"project": "p", "instance": "c", "list_basis": "INGESTION_TIME"}, "sensors.chronicle.list_basis"),
    ({"project": "p", "instance": "c", "poll_window": 60}, "sensors.chronicle.poll_window"),
])
def test_settings_errors_name_the_field(tmp_path, section, field):
    (tmp_path / "cordon.yaml").write_text(yaml.safe_dump({"sensors": {"chronicle": section}}))
    with pytest.raises(ConfigError, match=rf"field '{field}'"):
        settings_for("chronicle", load_config(tmp_path))


def test_rehearse_loads_the_files_into_a_stand_in_the_sensor_reads(gcp, tmp_path):  # noqa: F811
    page = {"detections": [detection(1, NOW - timedelta(hours=2)), detection(2, NOW - timedelta(minutes=3))],
            "nextPageToken": ""}
    lines = json.dumps(detection(3, NOW - timedelta(minutes=1))) + "\n"
    settings = ChronicleSensor.settings_model.model_validate(
        ChronicleSensor.rehearse(gcp, [("page.json", json.dumps(page).encode()), ("more.jsonl", lines.encode())]))
    sensor = ChronicleSensor(settings, clients_for("gcp", gcp.cloud_params()))
    fetched = sensor.fetch(SensorStore(Ledger(f"sqlite:///{tmp_path}/l.db").engine).state("chronicle"),
                           datetime.now(UTC))
    assert [d.record_id.split("@")[0] for d in fetched.deliveries] == ["de_0001", "de_0002", "de_0003"]
