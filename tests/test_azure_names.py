"""Issue 14, item 4: Entra and Activity names as real records spell them, end to end.

Real Entra audit records carry "Update application – Certificates and secrets management " (a
trailing space, an en dash) where the documentation and the rules write the name plainly. Every
operation name a shipped Azure rule matches on (read from the rules themselves, so a new rule or
name is covered or this test fails) is sent through intake and the pipeline with the shipped rules
(record in, detection out) padded with spaces and, where it has a dash, with the en dash, the em
dash and the hyphen, with and without the spaces around it; in both record forms of its source
(Entra: the Graph ``directoryAudit`` resource and the Azure Monitor diagnostic form; Activity Log: the
REST form with ``operationName.value`` and the storage / Event Hub form with a plain
``operationName``). Each must give exactly that rule's detection, parsed as the plain name is
(same credential kind, not suppressed), with ``event_name`` the record's own name, trimmed.

Records are built in Microsoft's documented shapes (Graph directoryAudit,
https://learn.microsoft.com/graph/api/resources/directoryaudit ; Azure Monitor audit log schema;
Activity Log event schema, https://learn.microsoft.com/azure/azure-monitor/essentials/activity-log-schema).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from cordon.detections.errors import Rejected
from cordon.detections.intake import read_bytes
from cordon.detections.pipeline import detect
from cordon.providers import shipped_rule_dirs
from cordon.sigma import RuleSet

RULES = Path(__file__).resolve().parents[1] / "cordon" / "providers" / "azure" / "rules"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
SP_ID = "5e1ab3c2-7a9d-4f31-8c2e-0d4b6f8a9e10"
APP_OBJ = "2c4e6a8b-1d3f-4a5b-9c7d-0e2f4a6b8c0d"
USER_ID = "8d0c1b2a-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
NEW_KEY = "9f7c2a1e-6b4d-4e8f-a0c3-1d2e3f4a5b6c"
GRAPH_SP = "3f1c2a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b"
GA = "62e90394-69f5-4237-9190-012177145e10"
ROLE_APP_ID = "9e3f62cf-ca93-4989-b6ce-bf83c28f9fe8"  # RoleManagement.ReadWrite.Directory
OPERATION_FIELDS = {"auditlogs": "activityDisplayName", "activitylogs": "operationName.value"}


def _mp(name: str, new, old=None) -> dict:
    """One ``modifiedProperties`` entry: values are JSON-encoded text, as Entra writes them."""
    return {"displayName": name, "oldValue": None if old is None else json.dumps(old), "newValue": json.dumps(new)}


def _sp(modified: list, **over) -> dict:
    return {"id": SP_ID, "displayName": "payments-api", "type": "ServicePrincipal", "userPrincipalName": None,
            "modifiedProperties": modified, **over}


#: Entra targets by the activity name as the shipped rules write it.
_ROLE_TARGETS = [{"id": USER_ID, "type": "User", "userPrincipalName": "b@contoso.com", "modifiedProperties": [
    _mp("Role.TemplateId", GA), _mp("Role.DisplayName", "Global Administrator")]}]
_CERT_TARGETS = [{"id": APP_OBJ, "displayName": "payments", "type": "Application", "modifiedProperties": [
    _mp("KeyDescription", [f"[KeyIdentifier={NEW_KEY},KeyType=AsymmetricX509Cert,KeyUsage=Verify,DisplayName=CN=x]"],
        [])]}]
ENTRA = {
    "Add service principal credentials": [_sp([_mp(
        "KeyDescription", [f"[KeyIdentifier={NEW_KEY},KeyType=Password,KeyUsage=Verify,DisplayName=x]"], [])])],
    "Update application \u2013 Certificates and secrets management": _CERT_TARGETS,
    "Update application - Certificates and secrets management": _CERT_TARGETS,
    "Add app role assignment to service principal": [_sp(
        [_mp("AppRole.Id", ROLE_APP_ID), _mp("AppRole.Value", "RoleManagement.ReadWrite.Directory"),
         _mp("ServicePrincipal.ObjectID", SP_ID), _mp("ServicePrincipal.DisplayName", "payments-api"),
         _mp("TargetId.ServicePrincipalNames", "00000003-0000-0000-c000-000000000000;https://graph.microsoft.com")],
        id=GRAPH_SP, displayName="Microsoft Graph")],
    "Add owner to application": [{"id": USER_ID, "type": "User", "userPrincipalName": "o@contoso.com"},
                                 {"id": APP_OBJ, "type": "Application", "displayName": "payments"}],
    "Add owner to service principal": [{"id": USER_ID, "type": "User", "userPrincipalName": "o@contoso.com"}, _sp([])],
    "User has elevated their access to User Access Administrator for their Azure Resources": [],
    "Update application": [{"id": APP_OBJ, "displayName": "payments", "type": "Application", "modifiedProperties": [
        _mp("FederatedIdentityCredentials",
            [{"Name": "evil", "Issuer": "https://attacker.example", "Subject": "s",
              "Audiences": ["api://AzureADTokenExchange"], "Id": "f1c00000-0000-4000-8000-000000000001"}], [])]}],
    "Add member to role": _ROLE_TARGETS,
    "Add eligible member to role": _ROLE_TARGETS,
    "Add scoped member to role": _ROLE_TARGETS,
    "Add member to role in PIM completed (permanent)": _ROLE_TARGETS,
    "Add member to role in PIM completed (timebound)": _ROLE_TARGETS,
    "Add service principal": [_sp([_mp("AppId", ["a1b2c3d4-0000-4111-8222-333344445555"], [])])],
    "Add application": [{"id": APP_OBJ, "displayName": "payments", "type": "Application"}],
    "Add user": [{"id": USER_ID, "type": "User", "userPrincipalName": "b@contoso.com"}],
    "Create application password for user": [{"id": USER_ID, "type": "User", "userPrincipalName": "b@contoso.com"}],
}

_ASSIGNMENT = (f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments/"
               "0d3c7a9e-1111-4222-8333-444455556666")
#: Activity Log ``resourceId`` and ``properties`` by the operation name as the shipped rules write it.
ACTIVITY = {
    "Microsoft.Authorization/roleAssignments/write": (_ASSIGNMENT, {"requestbody": json.dumps({"Properties": {
        "PrincipalId": SP_ID, "PrincipalType": "ServicePrincipal", "Scope": f"/subscriptions/{SUB}",
        "RoleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    }}), "entity": _ASSIGNMENT}),
    "Microsoft.Authorization/elevateAccess/action": ("/providers/Microsoft.Authorization", {}),
    "Microsoft.KeyVault/vaults/secrets/write": (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/secrets/s1", {}),
    "Microsoft.ManagedIdentity/userAssignedIdentities/write": (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u", {}),
}


def shipped_operation_names() -> list[tuple[str, str, str]]:
    """``(rule id, Sigma service, name)`` for every operation name a shipped Azure rule selects on
    (the values of ``activityDisplayName`` / ``operationName.value`` in its non-filter selections)."""
    out = []
    for path in sorted(RULES.glob("*.yml")):
        rule = yaml.safe_load(path.read_text(encoding="utf-8"))
        field = OPERATION_FIELDS[rule["logsource"]["service"]]
        for name, selection in rule["detection"].items():
            if name == "condition" or name.startswith("filter") or not isinstance(selection, dict):
                continue
            values = selection.get(field)
            for value in values if isinstance(values, list) else [values] if values else []:
                out.append((rule["id"], rule["logsource"]["service"], value))
    return out


NAMES = shipped_operation_names()


def spellings(name: str) -> list[str]:
    """``name`` as logs write it: padded, and with every dash variant, spaced or not."""
    out = [f"{name} ", f"  {name}", f"{name}\u00a0", name.replace(" ", "  ", 1) + " "]
    for dash in ("-", "\u2013", "\u2014"):
        for sep in (f" {dash} ", dash, f" {dash}"):
            for d in ("-", "\u2013"):
                if f" {d} " in name:
                    variant = name.replace(f" {d} ", sep)
                    out += [variant, f"{variant} "]
    return list(dict.fromkeys(s for s in out if s != name))


def entra_record(shipped_name: str, name: str, form: str) -> dict:
    """An Entra audit record of activity ``name`` (a spelling of ``shipped_name``), Graph or diagnostic form."""
    targets = ENTRA[shipped_name]
    graph = {
        "id": "Directory_0b1f-ABC", "category": "ApplicationManagement",
        "correlationId": "d3b07384-d9a0-4f9e-8a6b-111111111111", "result": "success", "resultReason": "",
        "activityDisplayName": name, "activityDateTime": "2026-11-20T10:15:30.1234567Z",
        "loggedByService": "Core Directory", "operationType": "Update",
        "initiatedBy": {"user": {"id": "6b6d44f0-b13a-46a0-bfde-161324d4c34d", "displayName": "Mallory",
                                 "userPrincipalName": "mallory@contoso.com", "ipAddress": "203.0.113.7"}},
        "targetResources": copy.deepcopy(targets),
        "additionalDetails": [{"key": "User-Agent", "value": "python-requests/2.31"}],
    }
    if form == "graph":
        return graph
    return {"time": "2026-11-20T10:15:31.0000000Z", "resourceId": f"/tenants/{TENANT}/providers/Microsoft.aadiam",
            "operationName": name, "operationVersion": "1.0", "category": "AuditLogs", "tenantId": TENANT,
            "resultSignature": "None", "durationMs": 0, "callerIpAddress": "203.0.113.7",
            "correlationId": graph["correlationId"], "Level": 4, "properties": graph}


def activity_record(shipped_name: str, name: str, form: str) -> dict:
    """An Activity Log event of operation ``name`` (a spelling of ``shipped_name``), REST or storage form."""
    resource_id, properties = ACTIVITY[shipped_name]
    record = {"resourceId": resource_id, "properties": copy.deepcopy(properties), "location": "global",
              "caller": "mallory@contoso.com",
              "claims": {"http://schemas.microsoft.com/identity/claims/objectidentifier": USER_ID}}
    if form == "rest":
        return {**record, "eventTimestamp": "2026-11-20T11:00:00.5Z", "subscriptionId": SUB,
                "operationName": {"value": name, "localizedValue": name}, "status": {"value": "Succeeded"},
                "category": {"value": "Administrative"}}
    return {**record, "time": "2026-11-20T11:00:00.5Z", "operationName": name, "resultType": "Success",
            "category": "Administrative"}


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def run(rules: RuleSet, record: dict) -> list:
    return list(detect(read_bytes("names.json", json.dumps(record, ensure_ascii=False).encode()), rules))


def test_every_shipped_operation_name_has_a_record_here():
    assert len(NAMES) >= 20
    for _rule, service, name in NAMES:
        assert name in (ENTRA if service == "auditlogs" else ACTIVITY), name


@pytest.mark.parametrize(("rule_id", "service", "name"), NAMES, ids=[n for _, _, n in NAMES])
def test_padded_and_dash_variants_give_the_rule_s_detection(shipped, rule_id, service, name):
    forms = ("graph", "monitor") if service == "auditlogs" else ("rest", "storage")
    build = entra_record if service == "auditlogs" else activity_record
    (plain,) = run(shipped, build(name, name, forms[0]))
    assert not isinstance(plain, Rejected), plain.message()
    assert plain.rule.uid == rule_id and not plain.suppressed
    kind = plain.credential.kind if plain.credential else None
    tried = 0
    for spelling in spellings(name):
        for form in forms:
            out = run(shipped, build(name, spelling, form))
            assert [type(d).__name__ for d in out] == ["Detection"], (spelling, form, out)
            (det,) = out
            assert det.rule.uid == rule_id, (spelling, form, det.rule.name)
            assert not det.suppressed, (spelling, form, det.suppressed)
            assert (det.credential.kind if det.credential else None) == kind, (spelling, form)
            assert det.event_name == spelling.strip(), (spelling, form)
            tried += 1
    assert tried >= 6


def test_the_real_certificates_name_of_the_issue(shipped):
    """The spelling issue 14 quotes, in the diagnostic form, as the only thing in the input."""
    record = entra_record("Update application - Certificates and secrets management",
                          "Update application \u2013 Certificates and secrets management ", "monitor")
    (det,) = run(shipped, record)
    assert det.rule.name == "Credentials Added to an Entra Application or Service Principal"
    assert det.credential.kind == "azure_sp_key" and det.credential.uid == NEW_KEY
    assert det.event_name == "Update application \u2013 Certificates and secrets management"


def test_other_names_still_do_not_match(shipped):
    for name in ("Update application \u2013 Certificates", "Add service principal credentials x",
                 "Add  service principal credentialss", "Update user", "Add-user"):
        assert run(shipped, entra_record("Add user", name, "graph")) == [], name
    delete = "Microsoft.Authorization/roleAssignments/delete"
    assert run(shipped, activity_record("Microsoft.Authorization/roleAssignments/write", delete, "rest")) == []


def test_a_padded_modified_property_name(shipped):
    """The federated credential rule also matches ``targetResources.modifiedProperties.displayName``:
    padded there too, the new credential is still found and named."""
    record = entra_record("Update application", "Update application ", "graph")
    record["targetResources"][0]["modifiedProperties"][0]["displayName"] = "FederatedIdentityCredentials "
    (det,) = run(shipped, record)
    assert det.rule.name == "Federated Identity Credential Added to an Entra Application" and not det.suppressed
    assert det.credential.uid == f"{APP_OBJ}/federatedIdentityCredentials/f1c00000-0000-4000-8000-000000000001"
