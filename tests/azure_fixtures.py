"""Azure pytest fixtures (imported by Azure test modules with ``from tests.azure_fixtures import *``).

``azure_sandbox``: one :class:`~cordon.sandbox.azure.AzureSandbox` per test session (the Graph
stand-in over http, the ARM + token stand-in over TLS with a trustme CA, Cordon's own app
registration); ``azure``: the same sandbox, reset before the test. ``azure_detection(kind, uid,
...)`` builds an Azure :class:`~cordon.detections.model.Detection` directly from the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef, record_sha256
from cordon.sandbox.azure import DEFAULT_SUBSCRIPTION, DEFAULT_TENANT, AzureSandbox

__all__ = ["SUBSCRIPTION", "TENANT", "azure", "azure_detection", "azure_sandbox"]

TENANT = DEFAULT_TENANT
SUBSCRIPTION = DEFAULT_SUBSCRIPTION


@pytest.fixture(scope="session")
def azure_sandbox() -> Iterator[AzureSandbox]:
    """The Azure stand-ins, started once for the session."""
    sandbox = AzureSandbox().start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def azure(azure_sandbox: AzureSandbox) -> AzureSandbox:
    """The session sandbox, emptied (state, recorded requests, failures)."""
    azure_sandbox.reset()
    return azure_sandbox


def azure_detection(kind: str, uid: str, *, owner: str | None = None, owner_name: str | None = None,
                    owner_type: str | None = None, target: str | None = None, account: str = TENANT,
                    attributes: dict[str, Any] | None = None,
                    event_name: str = "Update application - Certificates and secrets management") -> Detection:
    """An Entra / Azure Activity Detection naming credential ``kind``/``uid`` owned by ``owner``."""
    raw = {"operationName": event_name, "category": "ApplicationManagement"}
    return Detection(
        uid=f"test-{record_sha256([kind, uid])[:16]}", provider="azure", source="entra", event_name=event_name,
        technique_ids=["T1098.001"], rule=RuleRef(type="sigma", uid="test-rule", name="test rule"),
        severity="high", time=datetime(2024, 7, 30, 21, 53, 13, tzinfo=UTC), account_uid=account,
        actor=Actor(user=Principal(uid="eve@contoso.example", type="User"), src_ip="198.51.100.7",
                    access_path="api"),
        target=Principal(uid=target or owner, name=owner_name),
        credential=Credential(kind=kind, uid=uid, owner=Principal(uid=owner, name=owner_name, type=owner_type),
                              attributes=attributes or {}),
        raw_ref=RawRef(origin="test", position=0, sha256=record_sha256(raw)), raw=raw,
    )
