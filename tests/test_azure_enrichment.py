"""Azure enrichment against the stand-ins (real msgraph-sdk over http, real azure-mgmt-authorization
over TLS): ``azure.service-principal`` reads the service principal *and* its application, owners,
publisher, credentials, federated credentials, permissions (flagging the dangerous Graph ones),
directory roles, RBAC at subscription and management-group scope and recent sign-ins;
``azure.actor`` says who made the change and whether they own the app. No mocks."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cordon.action import ActionContext, get_action
from cordon.detections.model import Actor, Principal
from cordon.sandbox.azure import GRAPH_APP_ID
from tests.azure_fixtures import *  # noqa: F401,F403
from tests.azure_fixtures import SUBSCRIPTION, TENANT, azure_detection

pytestmark = [pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:GetQueryParameters is deprecated:DeprecationWarning")]

SP = "5b1f6a8e-4c1d-4d8e-9a8b-0c1d2e3f4a5b"
APP = "7e2d9c1b-3a4f-4b6e-8d7c-1a2b3c4d5e6f"
APP_ID = "aaaa0000-1111-4222-8333-444455556666"
#: the service principal's own sign-ins, as Graph's beta sign-in log filters them
SP_SIGN_INS = f"servicePrincipalId eq '{SP}' and signInEventTypes/any(t: t eq 'servicePrincipal')"
KEY = "0f8e7d6c-5b4a-4938-8271-6a5b4c3d2e1f"
APP_KEY = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
CERT = "6b5a4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d"
ALICE = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
EVE = "8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f"
ACTOR_SP = "3f4e5d6c-7b8a-4c9d-8e0f-a1b2c3d4e5f6"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
RA_SUB = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleAssignments/" \
         "4d5e6f7a-8b9c-4dae-8f00-112233445566"
RA_RG = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg1/providers/Microsoft.Authorization/roleAssignments/" \
        "6f7a8b9c-0d1e-4f2a-8b3c-445566778899"
RA_MG = "/providers/Microsoft.Management/managementGroups/contoso-root/providers/Microsoft.Authorization/" \
        "roleAssignments/7a8b9c0d-1e2f-4a3b-8c4d-5566778899aa"
RA_OTHER = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleAssignments/" \
           "8b9c0d1e-2f3a-4b4c-8d5e-66778899aabb"
GA = "62e90394-69f5-4237-9190-012177145e10"


def ctx(azure, detection, **params):
    return ActionContext(detection=detection, params=params, clients=azure.client_factory())


def enrich(azure, name, detection, **params):
    return get_action(name)().run(ctx(azure, detection, **params))


@pytest.fixture
def app_pair(azure):
    """Application APP and its service principal SP (same appId), a secret KEY on the SP (the
    detection's), a secret APP_KEY and a certificate on the application, owners Alice (app) and Eve
    (SP), a federated credential, Graph permissions (two dangerous, one not), a delegated grant,
    Global Administrator, Owner at subscription, Reader on a resource group, Owner at a management
    group, and two sign-ins."""
    s = azure.standin
    s.ensure_application(APP, "payments-api", app_id=APP_ID)
    s.ensure_service_principal(SP, "payments-api", app_id=APP_ID)
    s.add_password(SP, KEY, "added-by-eve")
    s.add_password(APP, APP_KEY, "ci-deploy")
    s.add_key(APP, CERT, "CN=payments")
    s.ensure_user(ALICE, "alice@contoso.example", "Alice")
    s.ensure_user(EVE, "eve@contoso.example", "Eve")
    s.add_owner(APP, ALICE)
    s.add_owner(SP, EVE)
    s.add_federated(APP, "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", subject="repo:evil/x:ref:refs/heads/main")
    for perm in ("RoleManagement.ReadWrite.Directory", "Application.ReadWrite.All", "User.Read.All"):
        s.grant_app_role(SP, perm)
    s.grant_delegated(SP, "openid Directory.AccessAsUser.All offline_access")
    s.add_directory_role_member(GA, SP)
    s.ensure_role_assignment(RA_SUB, SP, f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/"
                             f"roleDefinitions/{OWNER}")
    s.ensure_role_assignment(RA_RG, SP, f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/"
                             f"roleDefinitions/{READER}")
    s.ensure_role_assignment(RA_MG, SP, f"/providers/Microsoft.Authorization/roleDefinitions/{OWNER}")
    s.ensure_role_assignment(RA_OTHER, ALICE, f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/"
                             f"roleDefinitions/{OWNER}", principal_type="User")
    s.add_sign_in(APP_ID, ip="198.51.100.7", when=datetime(2024, 7, 30, 21, 50, tzinfo=UTC))
    s.add_sign_in(APP_ID, ip="198.51.100.8", status=7000215, when=datetime(2024, 7, 30, 21, 55, tzinfo=UTC))
    # a person signing in to the app: not the service principal's own use of its credentials
    s.add_sign_in(APP_ID, ip="198.51.100.9", user="bob@contoso.com", when=datetime(2024, 7, 30, 21, 57, tzinfo=UTC))
    s.requests.clear()
    det = azure_detection("azure_sp_password", KEY, owner=SP, owner_name="payments-api",
                          owner_type="ServicePrincipal", attributes={"appId": APP_ID})
    return det.model_copy(update={"actor": Actor(user=Principal(uid=EVE, name="eve@contoso.example", type="User"),
                                                 src_ip="198.51.100.7", user_agent="python-requests/2.31",
                                                 access_path="api")})


def test_service_principal_and_its_application_in_full(azure, app_pair):
    f = enrich(azure, "azure.service-principal", app_pair, object_id=SP, management_groups=["contoso-root"])
    assert f["exists"] and f["app_id"] == APP_ID and f["object_type"] == "ServicePrincipal"
    # the application and the service principal, each with its own credentials
    assert f["application"]["object_id"] == APP and f["service_principal"]["object_id"] == SP
    assert [c["key_id"] for c in f["application"]["password_credentials"]] == [APP_KEY]
    assert [c["key_id"] for c in f["application"]["key_credentials"]] == [CERT]
    assert f["application"]["key_credentials"][0]["type"] == "AsymmetricX509Cert"
    assert [c["key_id"] for c in f["service_principal"]["password_credentials"]] == [KEY]
    assert f["credential_in_detection_present"] is True
    assert f["credential_in_detection"]["on"] == "ServicePrincipal"
    assert f["credential_in_detection"]["display_name"] == "added-by-eve"
    (fic,) = f["application"]["federated_identity_credentials"]
    assert fic["subject"] == "repo:evil/x:ref:refs/heads/main" and fic["audiences"] == ["api://AzureADTokenExchange"]
    # owners of both objects, each saying which it owns
    assert {o["user_principal_name"]: o["of"] for o in f["all_owners"]} == {
        "alice@contoso.example": ["Application"], "eve@contoso.example": ["ServicePrincipal"]}
    assert [o["id"] for o in f["owners"]] == [EVE]
    # publisher: this tenant's own app, not verified
    assert f["publisher"]["verified"] is False and f["publisher"]["home_tenant"] is True
    assert f["publisher"]["domain"] == "contoso.example"
    # permissions: the names resolved from Microsoft Graph's own appRoles; the dangerous ones flagged
    assert sorted(g["permission"] for g in f["app_role_assignments"]) == [
        "Application.ReadWrite.All", "RoleManagement.ReadWrite.Directory", "User.Read.All"]
    assert all(g["resource_app_id"] == GRAPH_APP_ID for g in f["app_role_assignments"])
    assert sorted((r["permission"], r["type"]) for r in f["risky_permissions"]) == [
        ("Application.ReadWrite.All", "application"), ("Directory.AccessAsUser.All", "delegated"),
        ("RoleManagement.ReadWrite.Directory", "application")]
    assert f["oauth2_permission_grants"][0]["scopes"] == ["openid", "Directory.AccessAsUser.All", "offline_access"]
    assert [(r["display_name"], r["role_template_id"]) for r in f["directory_roles"]] == [
        ("Global Administrator", GA)]
    # RBAC: subscription and below, and the management group; never another principal's assignment
    rbac = {r["id"]: (r["scope_level"], r["role_name"]) for r in f["rbac_role_assignments"]}
    assert rbac == {RA_SUB: ("subscription", "Owner"), RA_RG: ("resource_group", "Reader"),
                    RA_MG: ("management_group", "Owner")}
    # recent sign-ins, newest first
    assert f["sign_ins"]["available"] is True
    assert [(e["ip"], e["status"]) for e in f["sign_ins"]["events"]] == [
        ("198.51.100.8", "error 7000215"), ("198.51.100.7", "success")]
    assert f["unavailable"] == {}
    # read-only, and the filters went to the APIs as Microsoft documents them
    assert azure.standin.api_requests(mutating=True) == []
    reqs = azure.standin.api_requests()
    arm = [r for r in reqs if r["api"] == "arm"]
    assert {r["path"] for r in arm} == {
        f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleAssignments",
        "/providers/Microsoft.Management/managementGroups/contoso-root/providers/Microsoft.Authorization/"
        "roleAssignments"}
    assert all(r["query"]["$filter"] == f"principalId eq '{SP}'" for r in arm)
    (signin,) = [r for r in reqs if r["path"] == "/beta/auditLogs/signIns"]  # v1.0 lists user sign-ins only
    assert signin["query"]["$filter"] == SP_SIGN_INS and signin["query"]["$top"] == "10"
    assert any(r["path"] == f"/v1.0/applications(appId='{APP_ID}')" for r in reqs)
    assert "secretText" not in json.dumps(f) and '"key"' not in json.dumps(f)


def test_enriching_the_application_finds_its_service_principal(azure, app_pair):
    det = azure_detection("azure_sp_password", APP_KEY, owner=APP, owner_type="Application")
    f = enrich(azure, "azure.service-principal", det, object_id=APP)
    assert f["object_type"] == "Application" and f["account_enabled"] is None
    assert f["service_principal"]["object_id"] == SP and f["service_principal"]["account_enabled"] is True
    assert f["credential_in_detection"]["on"] == "Application"
    assert [o["id"] for o in f["owners"]] == [ALICE]
    assert {r["permission"] for r in f["risky_permissions"]} >= {"RoleManagement.ReadWrite.Directory"}


def test_multi_tenant_app_has_no_application_here(azure):
    """A service principal of another tenant's application: no application object in this tenant,
    the publisher's tenant differs, no permissions: all said, nothing fails."""
    azure.standin.ensure_service_principal(SP, "vendor-app", app_id=APP_ID)
    azure.standin.service_principals[SP]["appOwnerOrganizationId"] = "11111111-2222-4333-8444-555555555555"
    azure.standin.service_principals[SP]["verifiedPublisher"] = {
        "displayName": "Vendor Ltd", "verifiedPublisherId": "1234567", "addedDateTime": "2023-05-01T00:00:00Z"}
    det = azure_detection("azure_sp_password", KEY, owner=SP, owner_type="ServicePrincipal")
    f = enrich(azure, "azure.service-principal", det, object_id=SP)
    assert f["application"] is None and f["publisher"]["home_tenant"] is False
    assert f["publisher"]["verified"] is True and f["publisher"]["verified_publisher"]["display_name"] == "Vendor Ltd"
    assert f["credential_in_detection_present"] is False and f["credential_in_detection"] is None
    assert f["risky_permissions"] == [] and f["directory_roles"] == [] and f["rbac_role_assignments"] == []
    assert f["sign_ins"] == {"available": True, "scope": f"{SP_SIGN_INS}, newest 10", "events": []}
    assert f["unavailable"] == {}


def test_sign_in_log_unavailable_is_said_not_failed(azure, app_pair):
    """A tenant without Entra ID P1/P2 answers 403 to the sign-in log: the result says so."""
    azure.fail_next("GET /beta/auditLogs/signIns", 403)
    f = enrich(azure, "azure.service-principal", app_pair, object_id=SP)
    assert f["sign_ins"]["available"] is False and f["sign_ins"]["reason"].startswith("HTTP 403")
    assert f["risky_permissions"] and f["directory_roles"]


def test_a_section_that_fails_is_reported_and_the_rest_returned(azure, app_pair):
    # 403 is not retried: the permissions section is reported unavailable
    azure.fail_next(f"GET /v1.0/servicePrincipals/{SP}/appRoleAssignments", 403)
    f = enrich(azure, "azure.service-principal", app_pair, object_id=SP)
    assert f["app_role_assignments"] == [] and f["unavailable"]["app_role_assignments"].startswith("HTTP 403")
    assert [r["permission"] for r in f["risky_permissions"]] == ["Directory.AccessAsUser.All"]
    assert f["directory_roles"] and f["rbac_role_assignments"]


def test_actor_who_added_the_credential_owns_the_app(azure, app_pair):
    a = enrich(azure, "azure.actor", app_pair, object_id=SP)
    assert a["actor"] == {"uid": EVE, "name": "eve@contoso.example", "type": "User"}
    assert (a["src_ip"], a["user_agent"]) == ("198.51.100.7", "python-requests/2.31")
    assert a["exists"] is True and a["display_name"] == "Eve" and a["account_enabled"] is True
    assert a["owns_app"] is True and a["owner_of"] == ["ServicePrincipal"]
    assert a["directory_roles"] == [] and a["unavailable"] == {}
    assert azure.standin.api_requests(mutating=True) == []


def test_actor_by_upn_not_an_owner(azure, app_pair):
    det = app_pair.model_copy(update={"actor": Actor(
        user=Principal(uid=None, name="mallory@contoso.example", type="User"), src_ip="203.0.113.66")})
    azure.standin.ensure_user("4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b", "mallory@contoso.example", "Mallory")
    a = enrich(azure, "azure.actor", det, object_id=SP)
    assert a["exists"] is True and a["display_name"] == "Mallory" and a["src_ip"] == "203.0.113.66"
    assert a["owns_app"] is False and a["owner_of"] == []
    assert any(r["path"] == "/v1.0/users/mallory@contoso.example" for r in azure.standin.api_requests())
    gone = det.model_copy(update={"actor": Actor(user=Principal(name="nobody@contoso.example", type="User"))})
    assert enrich(azure, "azure.actor", gone, object_id=SP)["exists"] is False


def test_service_principal_actor_with_a_directory_role(azure, app_pair):
    azure.standin.ensure_service_principal(ACTOR_SP, "automation", app_id="bbbb0000-1111-4222-8333-444455556666")
    azure.standin.add_directory_role_member("9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3", ACTOR_SP)
    azure.standin.add_owner(APP, ACTOR_SP)
    det = app_pair.model_copy(update={"actor": Actor(
        user=Principal(uid=ACTOR_SP, name="automation", type="ServicePrincipal"), access_path="service")})
    a = enrich(azure, "azure.actor", det, object_id=SP)
    assert a["exists"] is True and a["app_id"] == "bbbb0000-1111-4222-8333-444455556666"
    assert [r["display_name"] for r in a["directory_roles"]] == ["Application Administrator"]
    # owner of the application, hence of the service principal's app
    assert a["owns_app"] is True and a["owner_of"] == ["Application"]


def test_actor_without_object_id_does_not_judge_ownership(azure, app_pair):
    a = enrich(azure, "azure.actor", app_pair)
    assert a["owns_app"] is None and a["exists"] is True
    assert TENANT  # the fixture's tenant is the sandbox's


def test_approval_message_shows_the_app_its_permissions_and_the_exact_credential(azure, app_pair):
    """The Slack approval blocks built from the real enrichment of an Azure case."""
    from cordon.slack.blocks import approval_blocks

    facts = {"azure.service-principal": enrich(azure, "azure.service-principal", app_pair, object_id=SP,
                                               management_groups=["contoso-root"]),
             "azure.actor": enrich(azure, "azure.actor", app_pair, object_id=SP)}
    blocks = approval_blocks("case-1", "azure-sp-credential-added", app_pair.summary(), facts,
                             [{"action": "azure.remove-sp-password", "target": f"ServicePrincipal {SP} password {KEY}",
                               "calls": [{"service": "graph", "operation": "servicePrincipals.removePassword",
                                          "params": {"id": SP, "keyId": KEY}}]}],
                             "a" * 64, "run-1", None)
    text = json.dumps(blocks)
    assert len(blocks) <= 50
    for wanted in (f"appId `{APP_ID}`", "*unverified* publisher (contoso.example)",
                   f"*Credential of this detection*: password keyId `{KEY}` `added-by-eve` on the ServicePrincipal",
                   "`RoleManagement.ReadWrite.Directory` (application)", "`Application.ReadWrite.All` (application)",
                   "`Directory.AccessAsUser.All` (delegated)", "*Directory roles*: `Global Administrator`",
                   f"`Owner` at subscription `{RA_SUB.split('/providers')[0]}`", "`Owner` at management_group",
                   "`alice@contoso.example` (Application)", "`eve@contoso.example` (ServicePrincipal)",
                   "*Recent sign-ins*: 2 (latest 2024-07-30T21:55:00Z from `198.51.100.8`)",
                   "*Actor* `eve@contoso.example` (User) from `198.51.100.7` with `python-requests/2.31`; "
                   "owns the app"):
        assert wanted.replace('"', '\\"') in text, wanted


def test_approval_lines_for_a_vanished_app_and_unreadable_parts():
    from cordon.slack.render import enrichment_lines as _enrichment_lines

    gone = _enrichment_lines({"azure.service-principal": {"exists": False, "object_id": SP,
                                                          "object_type": "ServicePrincipal"}}, KEY)
    assert gone == [f":warning: ServicePrincipal `{SP}` does not exist (any more)"]
    partial = _enrichment_lines({"azure.service-principal": {
        "exists": True, "object_id": SP, "object_type": "ServicePrincipal", "display_name": "x", "app_id": APP_ID,
        "credential_in_detection_present": False, "sign_ins": {"available": False, "reason": "HTTP 403 nope"},
        "unavailable": {"app_role_assignments": "HTTP 403 Authorization_RequestDenied: denied"}}}, KEY)
    assert f":warning: keyId `{KEY}` is on neither the application nor its service principal (already removed?)" \
        in partial
    assert "*Sign-ins*: not available (HTTP 403 nope)" in partial
    assert ":warning: not read: app_role_assignments (HTTP 403 Authorization_RequestDenied: denied)" in partial
