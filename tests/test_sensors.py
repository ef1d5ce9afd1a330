"""Sensors (issue 15) end to end through the stand-ins: the real SDK clients over HTTP, Cordon's real
intake and ledger (SQLite and PostgreSQL), the checkpoint in the database.

* ``gcp-pubsub``: real Cloud Audit Log entries (GoogleCloudPlatform/security-analytics fixtures)
  published to a topic, pulled, one case per entry however often it is delivered, a poison message
  dead-lettered and acknowledged; the sensor process **killed** (SIGKILL, by the stand-in, when the
  acknowledgement arrives) between the ledger write and the ack: the redelivered message opens no
  second case.
* ``entra-audit`` / ``azure-activity``: records polled in windows with an overlap; what the overlap
  reads again is dropped by record ID.
* back-pressure: no read while the engine is behind.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from cordon.audit.ledger import Ledger
from cordon.clouds import clients_for
from cordon.config import ConfigError, load_config
from cordon.engine import Responder
from cordon.sandbox.gcp import ApiError
from cordon.sensors import build_sensor, settings_for
from cordon.sensors.runner import run_pass
from cordon.sensors.store import SensorStore
from tests.azure_fixtures import *  # noqa: F403 - azure, azure_sandbox fixtures
from tests.gcp_fixtures import *  # noqa: F403 - gcp, gcp_sandbox fixtures
from tests.gcp_fixtures import real_audit_entry
from tests.test_entra_audit import graph_records

REPO = Path(__file__).resolve().parents[1]
TOPIC = "projects/p1/topics/cordon-audit"
SUB = "projects/p1/subscriptions/cordon-audit-pull"


def config_dir(tmp_path: Path, sensors: dict) -> Path:
    d = tmp_path / "config"
    d.mkdir(exist_ok=True)
    (d / "cordon.yaml").write_text(yaml.safe_dump({"sensors": sensors}))
    return d


def pubsub_world(gcp, tmp_path: Path, ledger_url: str, **settings):  # noqa: F811
    pubsub = clients_for("gcp", gcp.cloud_params())("pubsub")
    pubsub.projects().topics().create(name=TOPIC, body={}).execute()
    pubsub.projects().subscriptions().create(name=SUB, body={"topic": TOPIC, "ackDeadlineSeconds": 60}).execute()
    cfg = load_config(config_dir(tmp_path, {"gcp-pubsub": {"subscription": SUB, **settings}}))
    responder = Responder(config=cfg, ledger=Ledger(ledger_url))
    sensor = build_sensor("gcp-pubsub", cfg, clients_for, gcp.cloud_params())
    return pubsub, responder, sensor, SensorStore(responder.ledger.engine)


def publish(pubsub, *payloads: bytes) -> None:
    msgs = [{"data": base64.b64encode(p).decode()} for p in payloads]
    pubsub.projects().topics().publish(topic=TOPIC, body={"messages": msgs}).execute()


def test_pubsub_entries_open_one_case_each_and_a_poison_message_is_dead_lettered(gcp, tmp_path, ledger_url):  # noqa: F811
    pubsub, responder, sensor, store = pubsub_world(gcp, tmp_path, ledger_url)
    entry = json.dumps(real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator")).encode()
    publish(pubsub, entry, entry, b"{not json")  # the sink published the entry twice
    result = run_pass(sensor, store, responder, None)
    assert (result.read, result.duplicates, result.error) == (3, 1, None)
    assert len(result.cases) == 1 and result.dead_letters == 1
    (dead,) = responder.ledger.dead_letters()
    assert dead["origin"] == f"pubsub:{SUB}" and dead["position"] == 0
    assert gcp.standin.pubsub_backlog(SUB) == 0  # every delivery acknowledged, the poison one too
    state = store.state("gcp-pubsub")
    assert (state.records_total, state.batches_total, state.last_error) == (2, 1, None)
    # delivered again later (a redelivery): dropped by its insertId before the intake
    publish(pubsub, entry)
    again = run_pass(sensor, store, responder, None)
    assert (again.read, again.duplicates, again.cases) == (1, 1, [])
    assert len(responder.ledger.cases()) == 1


def test_a_sensor_killed_between_the_ledger_and_the_ack_opens_no_second_case(gcp, tmp_path):  # noqa: F811
    url = f"sqlite:///{tmp_path}/ledger.db"
    pubsub, responder, _sensor, store = pubsub_world(gcp, tmp_path, url)
    publish(pubsub, json.dumps(real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator")).encode())
    env = {**os.environ, "CORDON_DATABASE_URL": url, "CORDON_CONFIG": str(tmp_path / "config"),
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "cordon.cli", "sensor", "run", "gcp-pubsub", "--once", "--record-only",
           "--output", "json", "--cloud-params", json.dumps(gcp.cloud_params())]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def crash(_standin):
        os.kill(proc.pid, signal.SIGKILL)  # the sensor dies as its acknowledgement goes out
        raise ApiError(503, "UNAVAILABLE", "the sender is gone")

    gcp.standin.on_next(f"POST /pubsub/v1/{SUB}:acknowledge", crash)
    proc.wait(120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert len(responder.ledger.cases()) == 1  # the case is in the ledger
    assert gcp.standin.pubsub_backlog(SUB) == 1  # but the message was never acknowledged
    gcp.standin.expire_ack_deadlines(SUB)  # its deadline passes: Pub/Sub delivers it again
    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    line = json.loads(second.stdout.decode().strip().splitlines()[-1])
    assert (line["read"], line["duplicates"], line["cases"]) == (1, 1, [])
    assert len(responder.ledger.cases()) == 1 and gcp.standin.pubsub_backlog(SUB) == 0
    assert store.state("gcp-pubsub").records_total == 1


def test_back_pressure_reads_nothing_while_the_engine_is_behind(gcp, tmp_path, ledger_url):  # noqa: F811
    pubsub, responder, sensor, store = pubsub_world(gcp, tmp_path, ledger_url, max_pending_cases=0)
    responder.ledger.open_case("k-pending", "d-pending", {"uid": "d-pending"}, "aws-access-key-created")
    publish(pubsub, b"{}")
    result = run_pass(sensor, store, responder, None)
    assert result.read == 0 and "wait for the engine" in (result.waiting or "")
    assert gcp.standin.pubsub_backlog(SUB) == 1 and gcp.standin.subscriptions[SUB]["outstanding"] == {}


def test_entra_audit_windows_overlap_and_what_is_read_again_is_dropped(azure, tmp_path, ledger_url):  # noqa: F811
    now = datetime.now(UTC)
    records = graph_records(3)
    for i, rec in enumerate(records):  # 25, 15 and 5 minutes ago
        rec["activityDateTime"] = (now - timedelta(minutes=25 - 10 * i)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    azure.standin.add_directory_audits(*records)
    cfg = load_config(config_dir(tmp_path, {"entra-audit": {"start_lookback_seconds": 1800, "overlap_seconds": 600,
                                                            "max_window_seconds": 3600}}))
    responder = Responder(config=cfg, ledger=Ledger(ledger_url))
    sensor = build_sensor("entra-audit", cfg, clients_for, azure.cloud_params())
    store = SensorStore(responder.ledger.engine)
    first = run_pass(sensor, store, responder, None)
    assert (first.read, first.duplicates, first.error) == (3, 0, None)
    assert len(first.cases) >= 1  # credentials added to a service principal: the shipped rule's case
    opened = len(responder.ledger.cases())
    mark = store.state("entra-audit").watermark
    assert mark is not None and abs((mark - now).total_seconds()) < 60
    second = run_pass(sensor, store, responder, None)  # the overlap reads the newest record again
    assert (second.read, second.duplicates, second.cases) == (1, 1, [])
    assert len(responder.ledger.cases()) == opened


def test_settings_are_checked_by_the_sensors_model(tmp_path):
    cfg = load_config(config_dir(tmp_path, {"gcp-pubsub": {"max_records": 10}}))
    with pytest.raises(ConfigError, match=r"sensors.gcp-pubsub.subscription"):
        settings_for("gcp-pubsub", cfg)
    cfg = load_config(config_dir(tmp_path, {"entra-audit": {"overlap": 5}}))
    with pytest.raises(ConfigError, match=r"sensors.entra-audit.overlap"):
        settings_for("entra-audit", cfg)


def test_cli_lists_the_sensors_with_their_permissions():
    from typer.testing import CliRunner

    from cordon.cli import app

    res = CliRunner().invoke(app, ["sensor", "list", "--output", "json"])
    assert res.exit_code == 0, res.output
    rows = {json.loads(line)["name"]: json.loads(line) for line in res.output.splitlines() if line.strip()}
    assert {"gcp-pubsub", "entra-audit", "azure-activity"} <= set(rows)
    assert rows["entra-audit"]["permissions"] == ["AuditLog.Read.All"] and rows["gcp-pubsub"]["kind"] == "queue"


def test_grants_are_generated_from_the_sensors_declarations(tmp_path):
    from cordon.providers.aws.grants import sensors_policy
    from cordon.providers.azure.grants import sensors_grants
    from cordon.providers.gcp.grants import sensors_role

    url = "https://sqs.eu-west-1.amazonaws.com/111122223333/cordon-trail"
    cfg = load_config(config_dir(tmp_path, {"aws-s3-sqs": {"queue_url": url}}))
    by_sid = {st["Sid"]: st for st in sensors_policy(cfg)["Statement"]}
    assert by_sid["AwsS3SqsQueue"]["Resource"] == "arn:aws:sqs:eu-west-1:111122223333:cordon-trail"
    assert by_sid["AwsS3SqsQueue"]["Action"] == ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage",
                                                 "sqs:ReceiveMessage"]
    assert by_sid["AwsS3SqsObjects"]["Action"] == ["s3:GetObject"]
    assert by_sid["AwsEventbridgeSqsQueue"]["Resource"] == "arn:aws:sqs:*:*:*"  # no queue configured
    assert sensors_role()["includedPermissions"] == ["chronicle.legacies.legacySearchDetections",
                                                    "pubsub.subscriptions.consume"]
    azure = sensors_grants()
    assert azure["graph_application_permissions"] == ["AuditLog.Read.All"]
    assert azure["role_definition"]["Actions"] == ["Microsoft.Insights/eventtypes/values/read"]


def test_a_running_sensor_picks_up_what_arrives_later_and_stops_on_sigterm(gcp, tmp_path):  # noqa: F811
    """Unattended: ``cordon sensor run`` as a process on a fresh ledger; records published after it
    started become cases without anyone asking; SIGTERM ends it cleanly (exit 0)."""
    from tests.helpers import wait_for

    url = f"sqlite:///{tmp_path}/ledger.db"
    pubsub, responder, _sensor, store = pubsub_world(gcp, tmp_path, url, interval_seconds=0.5)
    env = {**os.environ, "CORDON_DATABASE_URL": url, "CORDON_CONFIG": str(tmp_path / "config"),
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "cordon.cli", "sensor", "run", "gcp-pubsub", "--record-only",
                             "--output", "json", "--cloud-params", json.dumps(gcp.cloud_params())],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: store.state("gcp-pubsub").last_pass_at is not None, 120, "the sensor's first pass")
        assert responder.ledger.cases() == []
        publish(pubsub, json.dumps(real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator")).encode())
        wait_for(lambda: len(responder.ledger.cases()) == 1, 60, "the published entry to become a case")
        wait_for(lambda: gcp.standin.pubsub_backlog(SUB) == 0, 60, "the message to be acknowledged")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    assert store.state("gcp-pubsub").records_total == 1


def test_the_configured_sensors_run_side_by_side_for_a_while(gcp, tmp_path, ledger_url):  # noqa: F811
    """What the ``sensors`` deployment's flow runs (cordon.flows.sensors): every configured sensor in
    its thread for the given time; an unconfigured one is not started."""
    from cordon.sensors.runner import run_configured

    pubsub, responder, _sensor, _store = pubsub_world(gcp, tmp_path, ledger_url, interval_seconds=0.2)
    publish(pubsub, json.dumps(real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator")).encode())
    tally = run_configured(responder, clients_for, 2.0, None, clouds={"gcp": gcp.cloud_params()})
    assert set(tally) == {"gcp-pubsub"} and tally["gcp-pubsub"]["records"] == 1
    assert tally["gcp-pubsub"]["passes"] >= 2 and tally["gcp-pubsub"]["errors"] == 0
    assert len(responder.ledger.cases()) == 1 and gcp.standin.pubsub_backlog(SUB) == 0
    (tmp_path / "none").mkdir()
    empty = Responder(config=load_config(config_dir(tmp_path / "none", {})), ledger=responder.ledger)
    assert run_configured(empty, clients_for, 30.0, None) == {}  # nothing configured: at once
