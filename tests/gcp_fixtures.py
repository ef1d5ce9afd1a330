"""GCP pytest fixtures (imported by GCP test modules with ``from tests.gcp_fixtures import *``).

``gcp_sandbox``: one :class:`~cordon.sandbox.gcp.GcpSandbox` per test session (the stand-in on
127.0.0.1 plus Cordon's generated service-account key); ``gcp``: the same sandbox, reset before
the test. ``gcp_detection(kind, uid, ...)`` builds a GCP :class:`~cordon.detections.model.Detection`
directly from the model (no GCP parser is needed for action tests).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef, record_sha256
from cordon.sandbox.gcp import GcpSandbox

__all__ = ["GCP_FIXTURES", "PROJECT", "gcp", "gcp_detection", "gcp_sandbox", "real_audit_entry"]

PROJECT = "p1"
GCP_FIXTURES = (Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "gcp-security-analytics"
                / "test" / "fixtures")


@pytest.fixture(scope="session")
def gcp_sandbox() -> Iterator[GcpSandbox]:
    """The GCP stand-in, started once for the session (default project ``p1``)."""
    sandbox = GcpSandbox(project=PROJECT).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def gcp(gcp_sandbox: GcpSandbox) -> GcpSandbox:
    """The session sandbox, emptied (state, recorded requests, failures, hooks)."""
    gcp_sandbox.reset()
    return gcp_sandbox


def real_audit_entry(name: str) -> dict[str, Any]:
    """A sanitised Cloud Audit Log entry from GoogleCloudPlatform/security-analytics @ 2dd85655
    (``test/fixtures/<name>.json``, Apache-2.0)."""
    return json.loads((GCP_FIXTURES / f"{name}.json").read_text())


def gcp_detection(kind: str, uid: str, *, owner: str | None = None, project: str = PROJECT,
                  target: str | None = None, actor_email: str | None = "eve@example.com",
                  attributes: dict[str, Any] | None = None, raw: dict[str, Any] | None = None,
                  event_name: str = "google.iam.admin.v1.CreateServiceAccountKey") -> Detection:
    """A GCP Detection naming credential ``kind``/``uid`` owned by ``owner`` in ``project``."""
    raw = raw if raw is not None else {"protoPayload": {"methodName": event_name}}
    return Detection(
        uid=f"test-{record_sha256([kind, uid])[:16]}", provider="gcp", source="gcp_audit", event_name=event_name,
        technique_ids=["T1098.001"], rule=RuleRef(type="sigma", uid="test-rule", name="test rule"),
        severity="high", time=datetime(2024, 7, 30, 21, 53, 13, tzinfo=UTC), account_uid=project,
        actor=Actor(user=Principal(uid=actor_email, type="user") if actor_email else Principal(),
                    src_ip="198.51.100.7" if actor_email else None,
                    user_agent="google-cloud-sdk gcloud/480.0.0" if actor_email else None,
                    access_path="api" if actor_email else "unknown"),
        target=Principal(uid=target or owner),
        credential=Credential(kind=kind, uid=uid, owner=Principal(uid=owner), attributes=attributes or {}),
        raw_ref=RawRef(origin="test", position=0, sha256=record_sha256(raw)), raw=raw,
    )
