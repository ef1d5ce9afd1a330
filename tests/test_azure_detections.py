"""Entra audit and Azure Activity Log: intake shapes, the parsers field by field, the shipped
``cordon/providers/azure/rules`` rules through the pipeline, and bad input named by origin, position and field.

Record shapes follow the Microsoft Graph ``directoryAudit`` resource, the Azure Monitor audit log
schema (diagnostic settings: ``properties`` holding the Graph fields) and the Activity Log event schema
(REST form with ``operationName.value`` / ``status.value``, storage form with ``resultType``).
"""

from __future__ import annotations

import copy
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from cordon.detections.errors import RecordError, Rejected
from cordon.detections.intake import RawRecord, classify, read_bytes, read_inputs
from cordon.detections.pipeline import DetectStats, detect
from cordon.providers import shipped_rule_dirs
from cordon.providers.azure.detections import (
    activity_match_view,
    detections_from_azure_activity,
    detections_from_entra_audit,
    entra_activity_key,
    entra_match_view,
)
from cordon.sigma import RuleSet

REPO = Path(__file__).resolve().parents[1]
DUMMY = SimpleNamespace(id="dummy", title="dummy", path=None, level="high", technique_ids=[])

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
SP_ID = "5e1ab3c2-7a9d-4f31-8c2e-0d4b6f8a9e10"
APP_ID = "a1b2c3d4-0000-4111-8222-333344445555"
OLD_KEY = "11111111-2222-3333-4444-555555555555"
NEW_KEY = "9f7c2a1e-6b4d-4e8f-a0c3-1d2e3f4a5b6c"
CERT_KEY = "c0ffee00-1234-4abc-9def-0123456789ab"


def key_desc(key_id: str, key_type: str = "Password", name: str = "secret") -> str:
    return f"[KeyIdentifier={key_id},KeyType={key_type},KeyUsage=Verify,DisplayName={name}]"


def graph_sp_credentials(**over) -> dict:
    """Graph directoryAudit: "Add service principal credentials" adding one password."""
    record = {
        "id": "Directory_0b1f-ABC",
        "category": "ApplicationManagement",
        "correlationId": "d3b07384-d9a0-4f9e-8a6b-111111111111",
        "result": "success",
        "resultReason": "",
        "activityDisplayName": "Add service principal credentials",
        "activityDateTime": "2026-11-20T10:15:30.1234567Z",
        "loggedByService": "Core Directory",
        "operationType": "Update",
        "initiatedBy": {
            "user": {
                "id": "6b6d44f0-b13a-46a0-bfde-161324d4c34d",
                "displayName": "Mallory",
                "userPrincipalName": "mallory@contoso.com",
                "ipAddress": "203.0.113.7",
            }
        },
        "targetResources": [
            {
                "id": SP_ID,
                "displayName": "payments-api",
                "type": "ServicePrincipal",
                "userPrincipalName": None,
                "modifiedProperties": [
                    {
                        "displayName": "KeyDescription",
                        "oldValue": json.dumps([key_desc(OLD_KEY, name="old")]),
                        "newValue": json.dumps([key_desc(OLD_KEY, name="old"), key_desc(NEW_KEY, name="ci, nightly")]),
                    },
                    {"displayName": "Included Updated Properties", "oldValue": None, "newValue": '"KeyDescription"'},
                ],
            }
        ],
        "additionalDetails": [
            {"key": "User-Agent", "value": "python-requests/2.31"},
            {"key": "AppId", "value": APP_ID},
        ],
    }
    record.update(over)
    return record


def diagnostic(graph: dict) -> dict:
    """The Azure Monitor diagnostic form of a Graph record."""
    return {
        "time": "2026-11-20T10:15:31.0000000Z",
        "resourceId": f"/tenants/{TENANT}/providers/Microsoft.aadiam",
        "operationName": graph["activityDisplayName"],
        "operationVersion": "1.0",
        "category": "AuditLogs",
        "tenantId": TENANT,
        "resultSignature": "None",
        "durationMs": 0,
        "callerIpAddress": "203.0.113.7",
        "correlationId": graph["correlationId"],
        "Level": 4,
        "properties": copy.deepcopy(graph),
    }


def activity_rest(**over) -> dict:
    """Activity Log event, REST form: a role assignment of Owner to a service principal."""
    assignment = (
        f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments/0d3c7a9e-1111-4222-8333-444455556666"
    )
    body = {
        "Id": "0d3c7a9e-1111-4222-8333-444455556666",
        "Properties": {
            "PrincipalId": SP_ID,
            "PrincipalType": "ServicePrincipal",
            "RoleDefinitionId": f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/"
            "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
            "Scope": f"/subscriptions/{SUB}",
        },
    }
    record = {
        "authorization": {"action": "Microsoft.Authorization/roleAssignments/write", "scope": assignment},
        "caller": "mallory@contoso.com",
        "claims": {
            "http://schemas.microsoft.com/identity/claims/objectidentifier": "6b6d44f0-b13a-46a0-bfde-161324d4c34d",
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": "mallory@contoso.com",
        },
        "correlationId": "7c1e0b6a-2222-4333-8444-555566667777",
        "category": {"value": "Administrative", "localizedValue": "Administrative"},
        "eventDataId": "e1e1e1e1-0000-4000-8000-000000000001",
        "eventTimestamp": "2026-11-20T11:00:00.5Z",
        "httpRequest": {"clientIpAddress": "203.0.113.7"},
        "operationName": {"value": "Microsoft.Authorization/roleAssignments/write", "localizedValue": "Create role"},
        "properties": {"requestbody": json.dumps(body), "entity": assignment},
        "resourceId": assignment,
        "status": {"value": "Succeeded", "localizedValue": "Succeeded"},
        "subscriptionId": SUB,
        "location": "global",
    }
    record.update(over)
    return record


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def run(rules: RuleSet, record: dict, stats: DetectStats | None = None) -> list:
    return list(detect(read_bytes("t.json", json.dumps(record).encode()), rules, stats))


# -- intake --------------------------------------------------------------------------------------


def test_classify_shapes():
    graph = graph_sp_credentials()
    assert classify(graph) == "entra_audit"
    assert classify(diagnostic(graph)) == "entra_audit"
    assert classify(activity_rest()) == "azure_activity"
    storage = {
        "time": "2026-11-20T11:00:00Z",
        "resourceId": "/subscriptions/x/providers/Microsoft.KeyVault/vaults/v",
        "operationName": "MICROSOFT.KEYVAULT/VAULTS/SECRETS/WRITE",
        "category": "Administrative",
        "resultType": "Success",
    }
    assert classify(storage) == "azure_activity"
    assert classify({"category": "SignInLogs", "operationName": "Sign-in activity", "properties": {}}) == "entra_signin"
    assert (
        classify(
            {"createdDateTime": "2026-11-20T00:00:00Z", "appDisplayName": "Azure Portal", "status": {"errorCode": 0}}
        )
        == "entra_signin"
    )
    # Neither: an operationName alone, or an activityDisplayName without initiatedBy / targetResources
    assert classify({"operationName": "x"}) is None
    assert classify({"activityDisplayName": "Add user"}) is None


def test_envelopes_records_value_jsonlines_gzip():
    graph = graph_sp_credentials()
    for body in (
        {"records": [diagnostic(graph), activity_rest()]},
        {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/directoryAudits",
            "value": [graph, graph],
        },
    ):
        text = json.dumps(body, indent=2).encode()
        for data in (text, gzip.compress(text)):
            items = list(read_bytes("env.json", data))
            assert all(isinstance(i, RawRecord) for i in items), items
            assert [i.position for i in items] == [0, 1]
    kinds = [i.kind for i in read_bytes("e", json.dumps({"records": [diagnostic(graph), activity_rest()]}).encode())]
    assert kinds == ["entra_audit", "azure_activity"]
    lines = "\n".join(json.dumps(r) for r in (graph, activity_rest(), {"category": "SignInLogs", "properties": {}}))
    assert [i.kind for i in read_bytes("l.jsonl", lines.encode())] == ["entra_audit", "azure_activity", "entra_signin"]


def test_unknown_azure_shape_rejected_naming_keys(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"records": [graph_sp_credentials(), {"operationName": "x", "foo": 1}]}))
    items = list(read_inputs([path]))
    assert isinstance(items[0], RawRecord)
    bad = items[1]
    assert isinstance(bad, Rejected) and bad.origin == str(path) and bad.position == 1
    assert "unrecognised record shape" in bad.reason and "foo, operationName" in bad.reason
    assert "Entra audit record" in bad.reason


def test_envelope_not_an_array_is_rejected():
    (bad,) = list(read_bytes("v.json", json.dumps({"records": {"x": 1}}).encode()))
    assert isinstance(bad, Rejected) and bad.field == "records" and "expected an array" in bad.reason


# -- match views ---------------------------------------------------------------------------------


def test_entra_match_view_is_graph_shape_for_both_forms():
    graph = graph_sp_credentials()
    for record in (graph, diagnostic(graph)):
        view = entra_match_view(record)
        assert view["activityDisplayName"] == "Add service principal credentials"
        assert view["category"] == "ApplicationManagement"
        assert view["result"] == "success"
        assert view["targetResources"][0]["id"] == SP_ID
        assert view["properties"]["activityDisplayName"] == view["activityDisplayName"]
        assert view["operationName"] == "Add service principal credentials"
    assert entra_match_view(diagnostic(graph))["logCategory"] == "AuditLogs"
    # a diagnostic record without properties.activityDisplayName takes operationName, and a top-level result
    bare = {
        "operationName": "Add user",
        "category": "AuditLogs",
        "result": "SUCCESS",
        "properties": {"initiatedBy": {}},
    }
    view = entra_match_view(bare)
    assert view["activityDisplayName"] == "Add user" and view["result"] == "SUCCESS"


def test_activity_match_view_maps_storage_form():
    storage = {
        "time": "2026-11-20T11:00:00Z",
        "resourceId": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v/secrets/s",
        "operationName": "MICROSOFT.KEYVAULT/VAULTS/SECRETS/WRITE",
        "category": "Administrative",
        "resultType": "Success",
        "resultSignature": "Succeeded.OK",
        "callerIpAddress": "203.0.113.9",
        "identity": {"claims": {"http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": "eve@contoso.com"}},
    }
    view = activity_match_view(storage)
    assert view["operationName"]["value"] == "MICROSOFT.KEYVAULT/VAULTS/SECRETS/WRITE"
    assert view["status"]["value"] == "Succeeded"
    assert view["category"]["value"] == "Administrative"
    assert view["subStatus"]["value"] == "Succeeded.OK"
    assert view["eventTimestamp"] == "2026-11-20T11:00:00Z"
    assert view["httpRequest"]["clientIpAddress"] == "203.0.113.9"
    assert view["caller"] == "eve@contoso.com" and view["subscriptionId"] == SUB
    assert activity_match_view({**storage, "resultType": "Failure"})["status"]["value"] == "Failed"
    assert (
        activity_match_view(activity_rest())["operationName"]["value"]
        == "Microsoft.Authorization/roleAssignments/write"
    )


def test_activity_key_normalises_dashes():
    assert (
        entra_activity_key("Update application – Certificates and secrets management")
        == entra_activity_key("Update application - Certificates and secrets management")
        == entra_activity_key("Update application – Certificates and secrets management ")
        == entra_activity_key("Update application—Certificates  and secrets management")
        == "update application-certificates and secrets management"
    )


# -- Entra parser --------------------------------------------------------------------------------


def test_sp_credentials_graph_field_by_field():
    (det,) = detections_from_entra_audit(graph_sp_credentials(), DUMMY, "in.json", 3)
    assert det.provider == "azure" and det.source == "entra"
    assert det.event_name == "Add service principal credentials"
    assert det.time == datetime(2026, 11, 20, 10, 15, 30, 123456, tzinfo=UTC)
    assert det.account_uid is None  # a bare Graph record does not carry the tenant
    assert det.actor.user.uid == "6b6d44f0-b13a-46a0-bfde-161324d4c34d"
    assert det.actor.user.name == "mallory@contoso.com" and det.actor.user.type == "User"
    assert det.actor.src_ip == "203.0.113.7" and det.actor.user_agent == "python-requests/2.31"
    assert det.actor.access_path == "api"
    cred = det.credential
    assert cred.kind == "azure_sp_password" and cred.uid == NEW_KEY  # the new key only, not OLD_KEY
    assert cred.owner.uid == SP_ID and cred.owner.name == "payments-api" and cred.owner.type == "ServicePrincipal"
    assert cred.attributes == {
        "objectType": "ServicePrincipal",
        "displayName": "payments-api",
        "keyType": "Password",
        "keyUsage": "Verify",
        "keyDisplayName": "ci, nightly",
        "appId": APP_ID,
    }
    assert det.target == cred.owner
    assert det.technique_ids == ["T1098.001"] and det.suppressed is None
    assert det.raw_ref.origin == "in.json" and det.raw_ref.position == 3


def test_sp_credentials_diagnostic_form_gives_the_same_credential_and_the_tenant():
    graph = graph_sp_credentials()
    (g,) = detections_from_entra_audit(graph, DUMMY, "a", 0)
    (d,) = detections_from_entra_audit(diagnostic(graph), DUMMY, "b", 0)
    assert d.credential == g.credential.model_copy(
        update={"owner": g.credential.owner.model_copy(update={"account_uid": TENANT})}
    )
    assert d.account_uid == TENANT and d.actor.user.account_uid == TENANT


def test_update_application_certificates_en_dash_and_hyphen():
    for name in (
        "Update application – Certificates and secrets management",
        "Update application - Certificates and secrets management",
    ):
        record = graph_sp_credentials(activityDisplayName=name)
        target = record["targetResources"][0]
        target.update(type="Application", id="app-object-1", displayName="payments")
        target["modifiedProperties"][0]["oldValue"] = "[]"
        target["modifiedProperties"][0]["newValue"] = json.dumps([key_desc(CERT_KEY, "AsymmetricX509Cert", "cert")])
        (det,) = detections_from_entra_audit(record, DUMMY, "x", 0)
        assert det.credential.kind == "azure_sp_key" and det.credential.uid == CERT_KEY
        assert det.credential.owner.type == "Application" and det.credential.owner.uid == "app-object-1"


def test_key_identifier_lists_and_several_new_keys():
    record = graph_sp_credentials()
    record["targetResources"][0]["modifiedProperties"] = [
        {"displayName": "KeyIdentifier", "oldValue": "[]", "newValue": json.dumps([NEW_KEY, CERT_KEY])},
        {"displayName": "KeyType", "oldValue": "[]", "newValue": json.dumps(["Password", "AsymmetricX509Cert"])},
        {"displayName": "KeyUsage", "oldValue": "[]", "newValue": json.dumps(["Verify", "Verify"])},
        {"displayName": "KeyDisplayName", "oldValue": "[]", "newValue": json.dumps(["pw", "cert"])},
    ]
    dets = detections_from_entra_audit(record, DUMMY, "x", 0)
    assert [(d.credential.kind, d.credential.uid, d.credential.attributes["keyDisplayName"]) for d in dets] == [
        ("azure_sp_password", NEW_KEY, "pw"),
        ("azure_sp_key", CERT_KEY, "cert"),
    ]
    assert len({d.uid for d in dets}) == 2


def test_key_removed_is_suppressed_without_credential():
    record = graph_sp_credentials()
    mp = record["targetResources"][0]["modifiedProperties"][0]
    mp["oldValue"], mp["newValue"] = mp["newValue"], mp["oldValue"]
    (det,) = detections_from_entra_audit(record, DUMMY, "x", 0)
    assert det.credential is None and "no credential was added to payments-api" in det.suppressed


def test_failed_result_is_suppressed_with_no_uid():
    (det,) = detections_from_entra_audit(
        graph_sp_credentials(result="failure", resultReason="Insufficient privileges"), DUMMY, "x", 0
    )
    assert det.credential is None and det.target.uid == SP_ID
    assert "did not succeed (result 'failure': Insufficient privileges)" in det.suppressed
    user = graph_sp_credentials(activityDisplayName="Add user", result="failure")
    user["targetResources"] = [{"id": "u-1", "type": "User", "userPrincipalName": "x@contoso.com"}]
    (det,) = detections_from_entra_audit(user, DUMMY, "x", 0)
    assert det.credential.kind == "azure_user" and det.credential.uid is None and det.suppressed


def test_missing_key_identifier_gives_an_unnamed_credential_that_says_why():
    record = diagnostic(graph_sp_credentials())
    record["properties"]["targetResources"][0]["modifiedProperties"] = [
        {"displayName": "KeyDescription", "oldValue": None, "newValue": '"Client Secret"'}
    ]
    (det,) = detections_from_entra_audit(record, DUMMY, "f.json", 7)
    assert det.credential.kind == "azure_sp_password" and det.credential.uid is None
    assert det.credential.owner.uid == record["properties"]["targetResources"][0]["id"]
    assert det.credential.attributes["reason"] == "no KeyIdentifier in properties.targetResources[0].modifiedProperties"
    assert not det.suppressed


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda r: r.pop("activityDisplayName") and r.pop("operationName", None), "activityDisplayName", "missing"),
        (lambda r: r.update(activityDateTime="yesterday"), "activityDateTime", "ISO 8601"),
        (lambda r: r.update(targetResources={"id": 1}), "targetResources", "expected an array"),
        (lambda r: r["targetResources"].__setitem__(0, "x"), "targetResources[0]", "expected an object"),
        (lambda r: r["targetResources"][0].update(id=5), "targetResources[0].id", "expected a string"),
        (lambda r: r["initiatedBy"].update(user="bob"), "initiatedBy.user", "expected an object"),
        (lambda r: r["targetResources"][0].update(id=None), "targetResources[0].id", "required field missing"),
    ],
)
def test_bad_entra_fields_are_named(mutate, field, reason):
    record = graph_sp_credentials()
    mutate(record)
    with pytest.raises(RecordError) as exc:
        detections_from_entra_audit(record, DUMMY, "bad.json", 2)
    assert exc.value.field == field and reason in exc.value.reason
    assert str(exc.value).startswith("bad.json: record 2: field ")


def test_other_entra_activities():
    base = graph_sp_credentials()
    sp = dict(
        base,
        activityDisplayName="Add service principal",
        targetResources=[
            {
                "id": SP_ID,
                "displayName": "new-sp",
                "type": "ServicePrincipal",
                "modifiedProperties": [{"displayName": "AppId", "oldValue": "[]", "newValue": json.dumps([APP_ID])}],
            }
        ],
    )
    (det,) = detections_from_entra_audit(sp, DUMMY, "x", 0)
    assert (det.credential.kind, det.credential.uid, det.credential.attributes["appId"]) == (
        "azure_service_principal",
        SP_ID,
        APP_ID,
    )
    assert det.technique_ids == ["T1136.003"]

    user = dict(
        base,
        activityDisplayName="Add user",
        targetResources=[
            {"id": "u-42", "displayName": None, "type": "User", "userPrincipalName": "backdoor@contoso.com"}
        ],
    )
    (det,) = detections_from_entra_audit(user, DUMMY, "x", 0)
    assert (det.credential.kind, det.credential.uid, det.credential.owner.name) == (
        "azure_user",
        "u-42",
        "backdoor@contoso.com",
    )

    role = dict(
        base,
        activityDisplayName="Add member to role",
        targetResources=[
            {
                "id": "u-42",
                "type": "User",
                "userPrincipalName": "backdoor@contoso.com",
                "modifiedProperties": [
                    {
                        "displayName": "Role.TemplateId",
                        "oldValue": None,
                        "newValue": '"62e90394-69f5-4237-9190-012177145e10"',
                    },
                    {"displayName": "Role.DisplayName", "oldValue": None, "newValue": '"Global Administrator"'},
                ],
            }
        ],
    )
    (det,) = detections_from_entra_audit(role, DUMMY, "x", 0)
    assert det.credential.kind == "azure_directory_role"
    assert det.credential.uid == "62e90394-69f5-4237-9190-012177145e10#u-42"
    assert det.credential.attributes == {
        "roleTemplateId": "62e90394-69f5-4237-9190-012177145e10",
        "roleDisplayName": "Global Administrator",
    }
    assert det.technique_ids == ["T1098.003"]

    app = dict(
        base,
        activityDisplayName="Add application",
        targetResources=[{"id": "app-9", "displayName": "evil", "type": "Application"}],
    )
    (det,) = detections_from_entra_audit(app, DUMMY, "x", 0)
    assert det.credential is None and det.target.uid == "app-9" and det.suppressed is None

    grant = dict(
        base,
        activityDisplayName="Add app role assignment to service principal",
        targetResources=[
            {
                "id": "graph-sp",
                "displayName": "Microsoft Graph",
                "type": "ServicePrincipal",
                "modifiedProperties": [
                    {"displayName": "ServicePrincipal.ObjectID", "newValue": f'"{SP_ID}"'},
                    {"displayName": "ServicePrincipal.DisplayName", "newValue": '"payments-api"'},
                    {"displayName": "AppRole.Value", "newValue": '"RoleManagement.ReadWrite.Directory"'},
                ],
            }
        ],
    )
    (det,) = detections_from_entra_audit(grant, DUMMY, "x", 0)
    # a dangerous Graph permission, but no AppRole.Id: the assignment cannot be named (triage only)
    assert det.credential.kind == "azure_app_role_assignment" and det.credential.uid is None
    assert det.credential.attributes["reason"] == "the record does not name AppRole.Id"
    assert det.target.uid == SP_ID and det.target.name == "payments-api"

    owner = dict(
        base,
        activityDisplayName="Add owner to application",
        targetResources=[
            {"id": "u-7", "type": "User", "userPrincipalName": "o@contoso.com"},
            {"id": "app-9", "type": "Application", "displayName": "evil"},
        ],
    )
    (det,) = detections_from_entra_audit(owner, DUMMY, "x", 0)
    assert det.credential is None and det.target.uid == "u-7"


def test_federated_identity_credential_added():
    old = [
        {
            "Name": "old",
            "Issuer": "https://token.actions.githubusercontent.com",
            "Subject": "repo:a/b:ref:main",
            "Audiences": ["api://AzureADTokenExchange"],
        }
    ]
    new = old + [
        {
            "Name": "evil-fic",
            "Issuer": "https://attacker.example",
            "Subject": "sub",
            "Audiences": ["api://AzureADTokenExchange"],
            "Id": "f1c00000-0000-4000-8000-000000000001",
        }
    ]
    record = graph_sp_credentials(
        activityDisplayName="Update application",
        targetResources=[
            {
                "id": "app-obj",
                "displayName": "payments",
                "type": "Application",
                "modifiedProperties": [
                    {
                        "displayName": "FederatedIdentityCredentials",
                        "oldValue": json.dumps(old),
                        "newValue": json.dumps(new),
                    }
                ],
            }
        ],
    )
    (det,) = detections_from_entra_audit(record, DUMMY, "x", 0)
    assert det.credential.kind == "azure_federated_credential"
    assert det.credential.uid == "app-obj/federatedIdentityCredentials/f1c00000-0000-4000-8000-000000000001"
    assert det.credential.attributes["issuer"] == "https://attacker.example"
    assert det.credential.attributes["name"] == "evil-fic"
    # the same update without a new credential is not a credential change
    record["targetResources"][0]["modifiedProperties"][0]["newValue"] = json.dumps(old)
    (det,) = detections_from_entra_audit(record, DUMMY, "x", 0)
    assert det.credential is None and "no federated identity credential" in det.suppressed


def test_app_initiator():
    record = graph_sp_credentials(
        initiatedBy={"app": {"appId": APP_ID, "displayName": "automation", "servicePrincipalId": SP_ID}}
    )
    (det,) = detections_from_entra_audit(record, DUMMY, "x", 0)
    assert det.actor.user.uid == SP_ID and det.actor.user.type == "ServicePrincipal"
    assert det.actor.user.name == "automation" and det.actor.access_path == "service"
    assert det.actor.session_issuer == APP_ID


# -- Activity Log parser -------------------------------------------------------------------------


def test_role_assignment_rest_field_by_field():
    (det,) = detections_from_azure_activity(activity_rest(), DUMMY, "act.json", 0)
    assert det.provider == "azure" and det.source == "azure_activity"
    assert det.event_name == "Microsoft.Authorization/roleAssignments/write"
    assert det.account_uid == SUB and det.region == "global"
    assert det.time == datetime(2026, 11, 20, 11, 0, 0, 500000, tzinfo=UTC)
    assert det.actor.user.uid == "6b6d44f0-b13a-46a0-bfde-161324d4c34d"
    assert det.actor.user.name == "mallory@contoso.com" and det.actor.src_ip == "203.0.113.7"
    cred = det.credential
    assert cred.kind == "azure_role_assignment"
    assert cred.uid == activity_rest()["resourceId"]
    assert cred.owner.uid == SP_ID and cred.owner.type == "ServicePrincipal"
    assert cred.attributes["roleName"] == "Owner" and cred.attributes["scope"] == f"/subscriptions/{SUB}"
    assert det.suppressed is None and det.technique_ids == ["T1098.003"]


def test_role_assignment_uid_from_properties_entity_and_reader_suppressed():
    record = activity_rest(resourceId=f"/subscriptions/{SUB}")
    (det,) = detections_from_azure_activity(record, DUMMY, "x", 0)
    assert det.credential.uid == record["properties"]["entity"]
    body = json.loads(record["properties"]["requestbody"])
    body["Properties"]["RoleDefinitionId"] = (
        "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
    )
    record["properties"]["requestbody"] = json.dumps(body)
    (det,) = detections_from_azure_activity(record, DUMMY, "x", 0)
    assert "not a privileged role" in det.suppressed and det.credential.uid


def test_activity_failed_and_started_are_suppressed_without_uid():
    for status in ("Failed", "Started"):
        (det,) = detections_from_azure_activity(activity_rest(status={"value": status}), DUMMY, "x", 0)
        assert det.suppressed and f"status '{status}'" in det.suppressed and det.credential.uid is None


def test_keyvault_and_managed_identity_have_no_credential_kind():
    rid = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uami"
    record = {
        "time": "2026-11-20T11:00:00Z",
        "resourceId": rid,
        "category": "Administrative",
        "operationName": "Microsoft.ManagedIdentity/userAssignedIdentities/write",
        "resultType": "Success",
    }
    (det,) = detections_from_azure_activity(record, DUMMY, "x", 0)
    assert det.credential is None and det.target.uid == rid and det.target.name == "uami"
    assert det.target.type == "Microsoft.ManagedIdentity/userAssignedIdentities" and det.account_uid == SUB


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda r: r.pop("operationName"), "operationName", "missing"),
        (lambda r: r.update(operationName={"localizedValue": "x"}), "operationName.value", "missing"),
        (lambda r: r.update(eventTimestamp="soon"), "eventTimestamp", "ISO 8601"),
        (lambda r: r["properties"].update(requestbody="{not json"), "properties.requestbody", "not JSON"),
        (
            lambda r: r.update(resourceId="/subscriptions/x", properties={"entity": "/subscriptions/x"}),
            "resourceId",
            "not a role assignment ID",
        ),
        (lambda r: r.update(claims="x"), "claims", "expected an object"),
    ],
)
def test_bad_activity_fields_are_named(mutate, field, reason):
    record = activity_rest()
    mutate(record)
    with pytest.raises(RecordError) as exc:
        detections_from_azure_activity(record, DUMMY, "bad.json", 4)
    assert exc.value.field == field and reason in exc.value.reason and exc.value.position == 4


# -- pipeline with the shipped rules -------------------------------------------------------------


def test_pipeline_routes_entra_and_activity(shipped):
    graph = graph_sp_credentials()
    for record in (graph, diagnostic(graph)):
        (det,) = run(shipped, record)
        assert det.rule.name == "Credentials Added to an Entra Application or Service Principal"
        assert det.severity == "high" and det.credential.uid == NEW_KEY
    (det,) = run(shipped, activity_rest())
    assert det.rule.name == "Azure RBAC Role Assignment Created" and det.severity == "medium"
    stats = DetectStats()
    assert run(shipped, graph_sp_credentials(result="failure"), stats) == []  # the rule excludes failures
    assert stats.events == 1 and stats.events_unmatched == 1
    assert run(shipped, graph_sp_credentials(activityDisplayName="Update user")) == []


def test_pipeline_seed_rule_on_both_activity_forms(shipped):
    rid = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/secrets/s1"
    storage = {
        "time": "2026-11-20T11:00:00Z",
        "resourceId": rid,
        "category": "Administrative",
        "operationName": "MICROSOFT.KEYVAULT/VAULTS/SECRETS/WRITE",
        "resultType": "Success",
    }
    rest = {
        "eventTimestamp": "2026-11-20T11:00:00Z",
        "resourceId": rid,
        "subscriptionId": SUB,
        "operationName": {"value": "Microsoft.KeyVault/vaults/secrets/write"},
        "status": {"value": "Succeeded"},
    }
    for record in (storage, rest):
        (det,) = run(shipped, record)
        assert det.rule.uid == "13fdbcb8-5d98-4d7a-b36b-025eed673f4b" and det.rule.name.startswith("Azure AD App")
        assert det.credential is None and det.target.uid == rid and det.technique_ids == ["T1098.001"]
    assert run(shipped, {**storage, "resultType": "Failure"}) == []


def test_pipeline_signin_is_not_a_credential_event(shipped):
    stats = DetectStats()
    signin = {
        "time": "2026-11-20T11:00:00Z",
        "category": "SignInLogs",
        "operationName": "Sign-in activity",
        "properties": {"userPrincipalName": "x@contoso.com", "status": {"errorCode": 0}},
    }
    assert run(shipped, signin, stats) == []
    assert stats.events == 1 and stats.events_unmatched == 1 and stats.rejected == 0


def test_pipeline_rejects_bad_record_with_field(shipped):
    record = diagnostic(graph_sp_credentials())
    del record["properties"]["targetResources"][0]["id"]
    (rej,) = run(shipped, record)
    assert isinstance(rej, Rejected) and rej.origin == "t.json" and rej.position == 0
    assert rej.field == "properties.targetResources[0].id"


def test_shipped_azure_rules_load():
    rules = RuleSet.load(REPO / "cordon" / "providers" / "azure" / "rules")
    assert len(rules) == 11
    seed = next(r for r in rules if r.id == "13fdbcb8-5d98-4d7a-b36b-025eed673f4b")
    assert seed.match.author == "CloudSigma" and seed.match.level == "high"
    assert all(r.product == "azure" and r.service in ("auditlogs", "activitylogs") for r in rules)
    assert all(r.match.author in ("Cordon", "CloudSigma") for r in rules)


def test_pipeline_matches_en_dash_and_hyphen_certificates_message(shipped):
    for name in (
        "Update application – Certificates and secrets management",
        "Update application - Certificates and secrets management",
    ):
        record = graph_sp_credentials(activityDisplayName=name)
        (det,) = run(shipped, diagnostic(record))
        assert det.rule.name == "Credentials Added to an Entra Application or Service Principal"
        assert det.event_name == name and det.credential.uid == NEW_KEY
    assert run(shipped, graph_sp_credentials(activityDisplayName="Update application — Certificates")) == []
