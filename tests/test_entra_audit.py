"""Reading the Entra audit log (:mod:`cordon.providers.azure.audit`) with msgraph-sdk's request
adapter over HTTP to the Graph stand-in: a time window over every page, throttling (429 with
``Retry-After``) waited out and retried, and a refusal raised.

The records are Graph ``directoryAudit`` JSON built from the ``properties`` of Panther's Azure
test logs (panther-labs/panther-analysis, ``azure_service_principal_credentials_added.yml``,
Apache-2.0): the Azure Monitor diagnostic export wraps exactly the Graph record in ``properties``;
``id``, ``category`` and ``correlationId`` are added as Graph carries them (their values are ours)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from cordon.detections.intake import read_bytes
from cordon.providers.azure.audit import directory_audits
from tests.azure_fixtures import *  # noqa: F403 - azure, azure_sandbox fixtures

PANTHER = (Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "panther-analysis" / "rules"
           / "azure_signin_rules" / "azure_service_principal_credentials_added.yml")
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def graph_records(n: int) -> list[dict]:
    """``n`` Graph directoryAudit records, one minute apart from :data:`T0`."""
    spec = yaml.safe_load(PANTHER.read_text())
    log = spec["Tests"][0]["Log"]
    props = json.loads(log) if isinstance(log, str) else log
    props = props["properties"]
    out = []
    for i in range(n):
        rec = json.loads(json.dumps(props))
        rec.update(id=f"Directory_{i:04d}_ABCDE", category="ApplicationManagement", correlationId=f"corr-{i}",
                   activityDateTime=(T0 + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        out.append(rec)
    return out


def test_every_page_of_the_window_and_nothing_outside_it(azure):  # noqa: F811
    records = graph_records(7)
    azure.standin.add_directory_audits(*records)
    azure.standin.page_size = 2
    got = list(directory_audits(azure.client_factory(), T0 + timedelta(minutes=1), T0 + timedelta(minutes=6),
                                page_size=2))
    assert sorted(r["id"] for r in got) == [records[i]["id"] for i in range(1, 6)]
    pages = [r for r in azure.standin.api_requests("graph") if r["path"] == "/v1.0/auditLogs/directoryAudits"]
    assert len(pages) == 3  # 5 records, 2 a page
    # what Graph sent is what the intake reads: each an Entra audit record
    body = json.dumps({"value": got}).encode()
    assert [r.kind for r in read_bytes("graph:directoryAudits", body)] == ["entra_audit"] * 5


def test_throttling_is_waited_out_and_retried(azure):  # noqa: F811
    azure.standin.add_directory_audits(*graph_records(2))
    azure.fail_next("GET /v1.0/auditLogs/directoryAudits", 429, times=2, headers={"Retry-After": "1"})
    started = time.monotonic()
    got = list(directory_audits(azure.client_factory(), T0, T0 + timedelta(hours=1)))
    waited = time.monotonic() - started
    assert len(got) == 2
    statuses = [r["status"] for r in azure.standin.api_requests("graph")
                if r["path"] == "/v1.0/auditLogs/directoryAudits"]
    assert statuses == [429, 429, 200]
    assert waited >= 2.0  # Retry-After: 1, twice (behaviour, not speed: the waits were honoured)


def test_a_refusal_is_raised(azure):  # noqa: F811
    azure.fail_next("GET /v1.0/auditLogs/directoryAudits", 403, times=1)
    with pytest.raises(Exception) as err:
        list(directory_audits(azure.client_factory(), T0, T0 + timedelta(hours=1)))
    assert getattr(err.value, "response_status_code", None) == 403
