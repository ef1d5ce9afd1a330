"""``GET /metrics`` of Cordon's server (Prometheus text format), over real HTTP under uvicorn,
parsed with ``prometheus_client``'s own parser; the ledger is filled through its real methods,
on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cordon.audit.ledger import Ledger
from cordon.audit.refusals import RefusalCounter
from cordon.sensors.store import SensorStore
from cordon.server import create_app
from tests.test_server import SECRET, Decider, serve

TOKEN = "metrics-token-0123456789abcdef"


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_cases_dead_letters_refusals_and_the_oldest_wait(ledger_url):
    ledger = Ledger(ledger_url)
    opened = []
    for i in range(4):
        opened.append(ledger.open_case(f"key-{i}", f"det-{i}", {"uid": f"det-{i}"}, "aws-access-key-created").case_id)
    ledger.set_case(opened[0], status="awaiting_approval")
    time.sleep(1.1)
    ledger.set_case(opened[1], status="awaiting_approval")
    ledger.set_case(opened[2], status="contained")
    ledger.dead_letter("s3://trail/file.json.gz", 7, "Records[7].eventTime", "not a timestamp", "{}")
    SensorStore(ledger.engine).record_pass("gcp-pubsub", seen=["m-1", "m-2"], records=2, seconds=0.4,
                                           lag_seconds=12.5)
    SensorStore(ledger.engine).record_pass("entra-audit", seen=(), records=0, seconds=0.1, lag_seconds=0,
                                           error="APIError: 403")
    counter = RefusalCounter(ledger)
    app = create_app(signing_secret=SECRET, ledger=ledger, decide=Decider(), metrics_token=TOKEN, refusals=counter)
    with serve(app) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = _samples(r.text)
    assert got[("cordon_cases", (("status", "awaiting_approval"),))] == 2
    assert got[("cordon_cases", (("status", "contained"),))] == 1
    assert got[("cordon_cases", (("status", "open"),))] == 1
    assert got[("cordon_dead_letters_total", ())] == 1
    assert got[("cordon_ledger_records_total", ())] == max(r.seq for r in ledger.records())
    # the oldest waiting case waited at least the 1.1 s between the two
    assert 1.0 <= got[("cordon_oldest_awaiting_approval_seconds", ())] < 120
    # the two refused scrapes, counted as the metrics endpoint's refusals
    assert got[("cordon_refusals_total", (("reason", "no_bearer"), ("source", "metrics")))] == 1
    assert got[("cordon_refusals_total", (("reason", "wrong_bearer"), ("source", "metrics")))] == 1
    # the sensors' checkpoints: lag, records, last pass, failing
    assert got[("cordon_sensor_lag_seconds", (("sensor", "gcp-pubsub"),))] == 12.5
    assert got[("cordon_sensor_records_total", (("sensor", "gcp-pubsub"),))] == 2
    assert got[("cordon_sensor_errors", (("sensor", "entra-audit"),))] == 1
    assert got[("cordon_sensor_errors", (("sensor", "gcp-pubsub"),))] == 0
    assert abs(got[("cordon_sensor_last_pass_timestamp_seconds", (("sensor", "gcp-pubsub"),))] - time.time()) < 120


def test_metrics_are_closed_without_a_token(tmp_path):
    app = create_app(signing_secret=SECRET, ledger=Ledger(f"sqlite:///{tmp_path}/l.db"), decide=Decider())
    with serve(app) as url:
        assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 503
