"""Azure pytest fixtures (imported by Azure test modules with ``from tests.azure_fixtures import *``).

``azure_sandbox``: one :class:`~cordon.sandbox.azure.AzureSandbox` per test session (the Graph
stand-in over http, the ARM + token stand-in over TLS with a trustme CA, Cordon's own app
registration); ``azure``: the same sandbox, reset before the test. ``azure_detection(kind, uid,
...)`` builds an Azure :class:`~cordon.detections.model.Detection` directly from the model;
``app_role_grant_record(...)`` an Entra "Add app role assignment to service principal" record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef, record_sha256
from cordon.sandbox.azure import DEFAULT_SUBSCRIPTION, DEFAULT_TENANT, AzureSandbox

__all__ = ["SUBSCRIPTION", "TENANT", "app_role_grant_record", "azure", "azure_detection", "azure_sandbox"]

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


#: Ids of :func:`app_role_grant_record`: the tenant's Microsoft Graph service principal (the resource),
#: the client service principal that is granted the permission (the assignee) and its appId.
GRAPH_SP = "3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b"
ASSIGNEE = "6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d"
ASSIGNEE_APP_ID = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"
GRAPH_SPNS = ("00000003-0000-0000-c000-000000000000/ags.windows.net;00000003-0000-0000-c000-000000000000;"
              "https://canary.graph.microsoft.com;https://graph.microsoft.com;https://ags.windows.net;"
              "https://graph.microsoft.us;https://graph.microsoft.com/;https://dod-graph.microsoft.us")


def app_role_grant_record(value: str, role_id: str, *, resource: str = GRAPH_SP,
                          resource_name: str = "Microsoft Graph", spns: str | None = GRAPH_SPNS,
                          assignee: str | None = ASSIGNEE, form: str = "monitor", result: str = "success",
                          client_target: bool = True) -> dict[str, Any]:
    """An Entra "Add app role assignment to service principal" record, laid out as the captured ones
    are (Splunk attack_data T1098.003/azure_ad_bypass_admin_consent, Azure Monitor diagnostic form;
    see :func:`cordon.providers.azure.detections._app_role_grant`): ``targetResources[0]`` is the resource
    (``resource``, ``resource_name``) carrying the ``AppRole.*`` properties, ``ServicePrincipal.*``
    name the assignee, ``TargetId.ServicePrincipalNames`` the resource's names (``spns``; ``None``: not
    logged); ``targetResources[1]`` the assignee again (``client_target``). No appRoleAssignment id, as
    in the real records. ``form``: ``"monitor"`` (Event Hub / storage export) or ``"graph"``
    (``directoryAudit``). The ids are made up."""
    def prop(name: str, value: Any) -> dict[str, Any]:
        return {"displayName": name, "oldValue": None, "newValue": None if value is None else json.dumps(value)}

    props = [prop("AppRole.Id", role_id), prop("AppRole.Value", value), prop("AppRole.DisplayName", f"{value} role"),
             prop("AppRoleAssignment.CreatedDateTime", "2024-07-30T21:53:13.1209346Z"),
             prop("AppRoleAssignment.LastModifiedDateTime", "2024-07-30T21:53:13.1209346Z")]
    if assignee:
        props.append(prop("ServicePrincipal.ObjectID", assignee))
    props += [prop("ServicePrincipal.DisplayName", "sync-bot"), prop("ServicePrincipal.AppId", ASSIGNEE_APP_ID),
              prop("ServicePrincipal.Name", None)]
    if spns is not None:
        props.append(prop("TargetId.ServicePrincipalNames", spns))
    targets: list[dict[str, Any]] = [{"id": resource, "displayName": resource_name, "type": "ServicePrincipal",
                                      "userPrincipalName": None, "groupType": None, "modifiedProperties": props}]
    if client_target and assignee:
        targets.append({"id": assignee, "displayName": None, "type": "ServicePrincipal", "userPrincipalName": None,
                        "groupType": None, "modifiedProperties": []})
    graph = {"id": "Directory_ed53faec-0000-4000-8000-00000000a001_XH34Q_1", "category": "ApplicationManagement",
             "correlationId": "ed53faec-0000-4000-8000-00000000a001", "result": result, "resultReason": "",
             "activityDisplayName": "Add app role assignment to service principal",
             "activityDateTime": "2024-07-30T21:53:13.1650000+00:00", "loggedByService": "Core Directory",
             "operationType": "Assign",
             "initiatedBy": {"user": {"id": "8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f", "displayName": None,
                                      "userPrincipalName": "eve@contoso.example", "ipAddress": "198.51.100.7"}},
             "targetResources": targets,
             "additionalDetails": [{"key": "User-Agent", "value": "python-requests/2.31.0"}]}
    if form == "graph":
        return graph
    return {"time": "2024-07-30T21:53:13.1650000Z", "resourceId": f"/tenants/{TENANT}/providers/Microsoft.aadiam",
            "operationName": "Add app role assignment to service principal", "operationVersion": "1.0",
            "category": "AuditLogs", "tenantId": TENANT, "resultSignature": "None", "durationMs": 0,
            "correlationId": graph["correlationId"], "identity": "eve", "Level": 4, "properties": graph}
