"""Shared pytest fixtures.

AWS: ``aws_sandbox`` (one :class:`~cordon.sandbox.aws.AwsSandbox` per test session: moto's
server plus Cordon's CloudTrail / service-specific-credential stand-in on 127.0.0.1) and ``aws``
(the same sandbox, reset before the test). ``make_detection(event)`` turns a raw CloudTrail
event into a :class:`~cordon.detections.model.Detection`; ``stratus_events(name)`` reads a
Stratus Red Team detonation log from ``../shared/data/real/stratus-red-team``
(DataDog/stratus-red-team @ 7c9a7a5a, ``docs/detonation-logs/<name>.json``, Apache-2.0).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cordon.sandbox.aws import AwsSandbox
from tests.dbs import fresh_postgres_schema, postgres_unavailable

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
STRATUS_LOGS = SHARED_DATA / "stratus-red-team" / "docs" / "detonation-logs"


@pytest.fixture(scope="session")
def aws_sandbox() -> Iterator[AwsSandbox]:
    """moto's ThreadedMotoServer + the stand-in, started once for the session."""
    sandbox = AwsSandbox().start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def aws(aws_sandbox: AwsSandbox) -> AwsSandbox:
    """The session sandbox, emptied (moto reset, stand-in cleared, default account)."""
    aws_sandbox.reset()
    return aws_sandbox


@pytest.fixture(scope="session")
def k8s_sandbox() -> Iterator[Any]:
    """The local Kubernetes API stand-in (:class:`cordon.sandbox.kubernetes.KubernetesSandbox`),
    started once for the session."""
    from cordon.sandbox.kubernetes import KubernetesSandbox

    sandbox = KubernetesSandbox().start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def k8s(k8s_sandbox: Any) -> Any:
    """The session's Kubernetes stand-in, emptied."""
    k8s_sandbox.reset()
    return k8s_sandbox


@pytest.fixture(scope="session")
def gcp_sandbox() -> Iterator[Any]:
    """The GCP stand-in (:class:`cordon.sandbox.gcp.GcpSandbox`), started once for the session
    (modules that define their own keep theirs)."""
    from cordon.sandbox.gcp import GcpSandbox

    sandbox = GcpSandbox().start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def gcp(gcp_sandbox: Any) -> Any:
    """The session's GCP stand-in, emptied."""
    gcp_sandbox.reset()
    return gcp_sandbox


def panther_k8s_event(rule_file: str, name: str) -> dict[str, Any]:
    """The audit Event of the Panther test called ``name`` in ``kubernetes_rules/<rule_file>``
    (../shared/data/real), without Panther's ``p_`` fields and stamped with a time (Panther keeps
    it in ``p_event_time``)."""
    import yaml

    spec = yaml.safe_load((SHARED_DATA / "panther-analysis" / "rules" / "kubernetes_rules" / rule_file).read_text())
    test = next(t for t in spec["Tests"] if t["Name"] == name)
    event = {k: v for k, v in test["Log"].items() if not k.startswith("p_")}
    event.setdefault("requestReceivedTimestamp", "2026-12-05T10:00:00Z")
    return event


def stratus_events(name: str) -> list[dict[str, Any]]:
    """The CloudTrail events of one Stratus Red Team detonation log (a JSON array)."""
    return json.loads((STRATUS_LOGS / f"{name}.json").read_text())


def stratus_event(name: str, event_name: str) -> dict[str, Any]:
    """The one event called ``event_name`` in detonation log ``name``."""
    return next(e for e in stratus_events(name) if e["eventName"] == event_name)


def detection_from_event(event: dict[str, Any], origin: str = "test", position: int = 0) -> Any:
    """A Detection for a raw CloudTrail event, through the real parser
    (:func:`cordon.providers.aws.cloudtrail.detection_from_cloudtrail`) with a stand-in Sigma match."""
    from cordon.providers.aws.cloudtrail import detection_from_cloudtrail

    match = SimpleNamespace(id="test-rule", title="test rule", path=None, level="high",
                            technique_ids=["T1098.001"])
    return detection_from_cloudtrail(event, match, origin, position)


@pytest.fixture
def make_detection() -> Callable[..., Any]:
    """``make_detection(event)`` -> Detection (see :func:`detection_from_event`)."""
    return detection_from_event


@pytest.fixture(name="stratus_event")
def stratus_event_fixture() -> Callable[[str, str], dict[str, Any]]:
    """``stratus_event(log_name, event_name)`` -> the raw event (a fresh copy each call)."""
    return stratus_event


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path) -> Iterator[str]:
    """A ledger database URL: a SQLite file, then a fresh PostgreSQL schema (skipped, with the
    reason, when no PostgreSQL server answers; see :mod:`tests.dbs`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    url, cleanup = fresh_postgres_schema()
    yield url
    cleanup()


@pytest.fixture(scope="module")
def prefect_server():
    """Prefect's test harness (a temporary API server and database) for one test module: flows run
    in process against it, as ``cordon respond`` runs them on its temporary server."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
