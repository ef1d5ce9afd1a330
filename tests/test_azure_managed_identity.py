"""Issue 14, item 3 (managed identities): Azure rotates a managed identity's certificate itself, and
Cordon must not remove the new one.

The records are built in Microsoft's documented ``directoryAudit`` shape
(https://learn.microsoft.com/graph/api/resources/directoryaudit); the shared corpus has no record of a
managed identity. What the Managed Service Identity app's records carry is taken from a published
record of that app (SumoLogic/sumologic-documentation,
docs/integrations/saas-cloud/microsoft-graph-azure-ad-reporting.md, "Audit Activity Message": a "Hard
delete service principal" of a managed identity): ``initiatedBy.app`` ``{appId: null, displayName:
"Managed Service Identity", servicePrincipalId: <the app's service principal in that tenant>}``, the
actor's names in ``ActorId.ServicePrincipalNames`` (``"ef5d5c69-a5df-46bb-acaf-426f161a21a2;
https://serviceidentity.azure.net/"``) and the managed identity's in ``TargetId.ServicePrincipalNames``
(``"<appId>;https://identity.azure.net/<hash>="``). The certificate itself is logged as Entra logs any
credential add (``KeyDescription`` old and new lists, ``[KeyIdentifier=...,KeyType=AsymmetricX509Cert,...]``).

Record in -> suppressed detection with the reason (intake, shipped rules, the ledger); and a credential
add that does not show it in the record but reaches enrichment: the guard refuses once enrichment (or
Graph) says ``servicePrincipalType`` ``ManagedIdentity``. The Graph side is the Graph stand-in over real
HTTP with msgraph-sdk; nothing of Cordon's is mocked.
"""

from __future__ import annotations

import copy
import json

import pytest

from cordon.audit.ledger import Ledger
from cordon.config import load_config
from cordon.detections.intake import read_bytes
from cordon.detections.pipeline import DetectStats, detect
from cordon.engine import Responder
from cordon.playbooks.schema import load_playbooks, route
from cordon.providers import get_provider, shipped_rule_dirs
from cordon.providers.azure.detections import MANAGED_SERVICE_IDENTITY_APP_ID
from cordon.providers.azure.guard import enriched_service_principal_type, managed_identity_refusal
from cordon.respond import build_plan, enrich, guard
from cordon.sigma import RuleSet
from tests.azure_fixtures import *  # noqa: F401,F403
from tests.azure_fixtures import TENANT

MI_SP = "4d1c9e2a-7b3f-4a6e-9c0d-2e8f1a3b5c7d"  # the managed identity's service principal
MI_APP_ID = "551d1b05-a73a-493a-b348-dab7d1193c03"
MSI_SP_IN_TENANT = "3a0e6816-ad4e-44fa-9cae-ffc0ad8a2ff2"  # the Managed Service Identity app's SP here
OLD_CERT = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
NEW_CERT = "7f6e5d4c-3b2a-4190-8e7d-6c5b4a392817"


def cert(key_id: str) -> str:
    return f"[KeyIdentifier={key_id},KeyType=AsymmetricX509Cert,KeyUsage=Verify,DisplayName=CN={MI_APP_ID}]"


def rotation_record(*, app: dict | None = None, user: dict | None = None, actor_spns: str | None = None,
                    target_spns: str | None = None, name: str = "Add service principal credentials") -> dict:
    """Graph directoryAudit of Azure adding a new certificate to a system-assigned managed identity."""
    modified = [
        {"displayName": "KeyDescription", "oldValue": json.dumps([cert(OLD_CERT)]),
         "newValue": json.dumps([cert(OLD_CERT), cert(NEW_CERT)])},
        {"displayName": "Included Updated Properties", "oldValue": None, "newValue": '"KeyDescription"'},
    ]
    if target_spns is not None:
        modified.append({"displayName": "TargetId.ServicePrincipalNames", "oldValue": None,
                         "newValue": json.dumps(target_spns)})
    if actor_spns is not None:
        modified.append({"displayName": "ActorId.ServicePrincipalNames", "oldValue": None,
                         "newValue": json.dumps(actor_spns)})
    return {
        "id": "Directory_5b2c8e1f-0a3d-4c6e-9f12-7a8b9c0d1e2f_R8QJ7_12345678",
        "category": "ApplicationManagement",
        "correlationId": "5b2c8e1f-0a3d-4c6e-9f12-7a8b9c0d1e2f",
        "result": "success",
        "resultReason": "",
        "activityDisplayName": name,
        "activityDateTime": "2026-11-20T03:12:45.6789012Z",
        "loggedByService": "Core Directory",
        "operationType": "Update",
        "initiatedBy": {"user": user, "app": app},
        "targetResources": [{"id": MI_SP, "displayName": "vm-payments", "type": "ServicePrincipal",
                             "userPrincipalName": None, "groupType": None, "modifiedProperties": modified}],
        "additionalDetails": [{"key": "AppId", "value": MI_APP_ID}],
    }


MSI_APP = {"appId": None, "displayName": "Managed Service Identity", "servicePrincipalId": MSI_SP_IN_TENANT,
           "servicePrincipalName": None}
MSI_SPNS = f"{MANAGED_SERVICE_IDENTITY_APP_ID};https://serviceidentity.azure.net/"
MI_SPNS = f"{MI_APP_ID};https://identity.azure.net/4ZA1q0sKiZEg6SXU8aYi7Lci6VKrg+aVo//Dp2vYGuU="


def msi_rotation(**over) -> dict:
    return rotation_record(**{"app": MSI_APP, "actor_spns": MSI_SPNS, "target_spns": MI_SPNS, **over})


def diagnostic(graph: dict) -> dict:
    """The Azure Monitor diagnostic form of a Graph record (Azure Monitor audit log schema)."""
    return {"time": "2026-11-20T03:12:46.0000000Z", "resourceId": f"/tenants/{TENANT}/providers/Microsoft.aadiam",
            "operationName": graph["activityDisplayName"], "operationVersion": "1.0", "category": "AuditLogs",
            "tenantId": TENANT, "resultSignature": "None", "durationMs": 0, "callerIpAddress": None,
            "correlationId": graph["correlationId"], "Level": 4, "properties": copy.deepcopy(graph)}


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def run(rules: RuleSet, record: dict, stats: DetectStats | None = None) -> list:
    return list(detect(read_bytes("mi.json", json.dumps(record).encode()), rules, stats))


# -- from the record ------------------------------------------------------------------------------


def test_rotation_by_the_managed_service_identity_app_is_a_suppressed_detection(shipped):
    for record in (msi_rotation(), diagnostic(msi_rotation()), msi_rotation(name="Add service principal credentials "),
                   msi_rotation(app={**MSI_APP, "appId": MANAGED_SERVICE_IDENTITY_APP_ID}, actor_spns=None)):
        stats = DetectStats()
        (det,) = run(shipped, record, stats)
        assert det.rule.name == "Credentials Added to an Entra Application or Service Principal"
        assert stats.suppressed == 1 and det.suppressed
        assert "Managed Service Identity" in det.suppressed and MANAGED_SERVICE_IDENTITY_APP_ID in det.suppressed
        assert "ManagedIdentity" in det.suppressed and "https://identity.azure.net/" in det.suppressed
        assert "nothing to contain" in det.suppressed
        # the credential stays on the detection, for the record of what Azure did
        assert (det.credential.kind, det.credential.uid) == ("azure_sp_key", NEW_CERT)
        assert det.credential.owner.uid == MI_SP
        assert det.credential.attributes["servicePrincipalType"] == "ManagedIdentity"
        assert det.actor.user.name == "Managed Service Identity" and det.actor.access_path == "service"


def test_half_the_evidence_is_not_enough(shipped):
    attacker_app = {"appId": "c0ffee00-aaaa-4bbb-8ccc-123456789abc", "displayName": "Managed Service Identity",
                    "servicePrincipalId": "d00d0000-1111-4222-8333-444455556666"}
    cases = {
        # any tenant can name an app "Managed Service Identity": its appId and names are its own
        "look-alike app": msi_rotation(app=attacker_app, actor_spns=f"{attacker_app['appId']}"),
        # the Managed Service Identity app on a service principal that is not a managed identity
        "not a managed identity": msi_rotation(target_spns="a1b2c3d4-0000-4111-8222-333344445555;api://payments"),
        # the record does not say what the target is (the guard asks enrichment)
        "target names not logged": msi_rotation(target_spns=None),
        # a person adding a certificate to a managed identity is not Azure rotating it
        "a user": msi_rotation(app=None, user={"id": "6b6d44f0-b13a-46a0-bfde-161324d4c34d",
                                               "userPrincipalName": "mallory@contoso.com",
                                               "displayName": "Mallory", "ipAddress": "203.0.113.7"}),
    }
    for why, record in cases.items():
        (det,) = run(shipped, record)
        assert det.suppressed is None, why
        assert (det.credential.kind, det.credential.uid) == ("azure_sp_key", NEW_CERT), why
        assert "servicePrincipalType" not in det.credential.attributes, why


def test_intake_records_it_as_suppressed_and_opens_no_case(tmp_path):
    path = tmp_path / "rotation.json"
    path.write_text(json.dumps(msi_rotation()))
    responder = Responder(config=load_config(tmp_path), ledger=Ledger(f"sqlite:///{tmp_path}/ledger.db"))
    report = responder.intake([path])
    assert report.cases == [] and report.joined == [] and report.rejected == []
    (det,) = report.suppressed
    assert det.credential.uid == NEW_CERT
    (rec,) = [r for r in responder.ledger.records() if r.kind == "detection.suppressed"]
    assert "Managed Service Identity" in rec.payload["reason"] and responder.ledger.verify().ok


# -- from enrichment: the guard ---------------------------------------------------------------------


@pytest.fixture
def managed_identity(azure):
    """The stand-in's service principal of a managed identity holding the old and the new certificate."""
    sp = azure.standin.ensure_service_principal(MI_SP, display_name="vm-payments", app_id=MI_APP_ID)
    sp["servicePrincipalType"] = "ManagedIdentity"
    azure.standin.add_key(MI_SP, key_id=OLD_CERT)
    azure.standin.add_key(MI_SP, key_id=NEW_CERT)
    return sp


def unrecognised(shipped):
    """A credential add on the managed identity whose record does not show the rotation."""
    (det,) = run(shipped, msi_rotation(target_spns=None))
    assert det.suppressed is None
    return det


def test_guard_refuses_once_enrichment_says_managed_identity(azure, managed_identity, shipped, tmp_path):
    config = load_config(tmp_path)
    det = unrecognised(shipped)
    playbook = route(load_playbooks(config.playbooks_dir), det)
    assert playbook.name == "azure-sp-certificate-added"
    clients = azure.client_factory()
    facts = enrich(playbook, det, clients)
    assert facts["azure.service-principal"]["service_principal_type"] == "ManagedIdentity"
    assert enriched_service_principal_type(facts) == "ManagedIdentity"

    outcome = guard(playbook, det, config, clients, facts)
    assert not outcome.ok and "managed identity" in outcome.reason and "servicePrincipalType" in outcome.reason
    # the provider's own hook reads the enrichment when it is given: no Graph call of its own
    azure.standin.requests.clear()
    refusal = get_provider("azure").guard(det, clients, None, facts)
    assert "from enrichment" in refusal and azure.standin.api_requests("graph") == []
    # without enrichment it asks Graph ($select servicePrincipalType) and refuses the same
    refusal = get_provider("azure").guard(det, clients, None)
    assert "from Graph" in refusal
    (read,) = azure.standin.api_requests("graph")
    assert read["method"] == "GET" and read["path"] == f"/v1.0/servicePrincipals/{MI_SP}"
    # nothing was changed: both certificates are still there
    assert azure.standin.api_requests("graph", mutating=True) == []
    assert [k["keyId"] for k in managed_identity["keyCredentials"]] == [OLD_CERT, NEW_CERT]


def test_an_ordinary_service_principal_is_still_contained(azure, shipped, tmp_path):
    config = load_config(tmp_path)
    azure.standin.ensure_service_principal(MI_SP, display_name="vm-payments", app_id=MI_APP_ID)
    azure.standin.add_key(MI_SP, key_id=OLD_CERT)
    azure.standin.add_key(MI_SP, key_id=NEW_CERT)
    det = unrecognised(shipped)
    playbook = route(load_playbooks(config.playbooks_dir), det)
    clients = azure.client_factory()
    facts = enrich(playbook, det, clients)
    assert facts["azure.service-principal"]["service_principal_type"] == "Application"
    assert guard(playbook, det, config, clients, facts).ok
    assert get_provider("azure").guard(det, clients, None) is None
    (step,) = build_plan("case-1", playbook, det, clients, facts).steps
    assert step.action == "azure.remove-sp-key" and step.calls


def test_guard_refuses_nothing_it_cannot_read(shipped):
    det = unrecognised(shipped)
    assert managed_identity_refusal(det, lambda service: None) is None  # not an Azure factory: no type
    assert managed_identity_refusal(det, lambda service: None, {"azure.service-principal": {"error": "403"}}) is None
    # other credential kinds are not its business
    role = det.model_copy(update={"credential": det.credential.model_copy(update={"kind": "azure_role_assignment"})})
    facts = {"azure.service-principal": {"exists": True, "service_principal_type": "ManagedIdentity"}}
    assert managed_identity_refusal(role, lambda service: None, facts) is None
    assert managed_identity_refusal(det, lambda service: None, facts) is not None
