"""Azure containment added for issue 3 against the stand-ins (real msgraph-sdk, real HTTP): removing a
member from a privileged directory role (and rolling it back), never a non-privileged one; a secret
or certificate found on the paired object (application vs service principal); the keyCredentials
PATCH verified by a read after it; Graph faults reported clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordon.action import ActionContext, get_action
from cordon.playbooks.schema import load_playbooks, route
from cordon.providers.azure.detections import detections_from_entra_audit
from tests.azure_fixtures import *  # noqa: F401,F403
from tests.azure_fixtures import azure_detection

pytestmark = [pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:GetQueryParameters is deprecated:DeprecationWarning")]

PLAYBOOKS = Path(__file__).resolve().parents[1] / "cordon" / "defaults" / "playbooks"
GA = "62e90394-69f5-4237-9190-012177145e10"
APP_ADMIN = "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3"
READERS = "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"
MEMBER = "4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d"
OTHER = "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e"
SP = "5b1f6a8e-4c1d-4d8e-9a8b-0c1d2e3f4a5b"
APP = "7e2d9c1b-3a4f-4b6e-8d7c-1a2b3c4d5e6f"
APP_ID = "aaaa0000-1111-4222-8333-444455556666"
KEY = "0f8e7d6c-5b4a-4938-8271-6a5b4c3d2e1f"
OTHER_KEY = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
CERT = "6b5a4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d"
DUMMY = type("M", (), {"id": "r", "title": "Principal Added to an Entra Directory Role", "path": None,
                       "level": "high", "technique_ids": ["T1098.003"]})()


def ctx(azure, detection, **params):
    return ActionContext(detection=detection, params=params, clients=azure.client_factory())


def mutating(azure):
    return [(r["method"], r["path"], r["body"]) for r in azure.standin.api_requests(mutating=True)]


def role_record(template: str, name: str, member: str = MEMBER, member_type: str = "User") -> dict:
    """A Graph ``directoryAudit`` record of "Add member to role" (shape of Microsoft's reference)."""
    return {
        "id": "Directory_5e1b3a2c", "category": "RoleManagement", "activityDisplayName": "Add member to role",
        "activityDateTime": "2024-07-30T21:53:13Z", "loggedByService": "Core Directory", "result": "success",
        "operationType": "Assign", "tenantId": "72f988bf-0000-4000-8000-00000000c0d0",
        "initiatedBy": {"user": {"id": "8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f",
                                 "userPrincipalName": "eve@contoso.example", "ipAddress": "198.51.100.7"}},
        "targetResources": [{
            "id": member, "type": member_type, "userPrincipalName": "bob@contoso.example", "displayName": None,
            "modifiedProperties": [
                {"displayName": "Role.ObjectID", "oldValue": None,
                 "newValue": '"0d6f1e1a-0000-4000-8000-000000000001"'},
                {"displayName": "Role.DisplayName", "oldValue": None, "newValue": f'"{name}"'},
                {"displayName": "Role.TemplateId", "oldValue": None, "newValue": f'"{template}"'}]}],
        "additionalDetails": [],
    }


@pytest.fixture
def ga_grant(azure):
    """MEMBER (a user) was made Global Administrator; MEMBER is also a legitimate Application
    Administrator and OTHER is another Global Administrator: both must survive."""
    (det,) = detections_from_entra_audit(role_record(GA, "Global Administrator"), DUMMY, "t", 0)
    report = azure.seed_from_detection(det)
    assert report["directory_roles"] == [f"{GA}#{MEMBER}"]
    azure.standin.add_directory_role_member(APP_ADMIN, MEMBER)
    azure.standin.ensure_user(OTHER, "other@contoso.example")
    azure.standin.add_directory_role_member(GA, OTHER)
    azure.standin.requests.clear()
    return det


def roles_of(azure, principal):
    return sorted(a["roleDefinitionId"] for a in azure.standin.directory_role_assignments.values()
                  if a["principalId"] == principal)


def test_privileged_role_routes_to_containment_and_others_to_triage():
    books = load_playbooks(PLAYBOOKS)
    (ga,) = detections_from_entra_audit(role_record(GA, "Global Administrator"), DUMMY, "t", 0)
    assert ga.credential.uid == f"{GA}#{MEMBER}" and route(books, ga).name == "azure-directory-role"
    (reader,) = detections_from_entra_audit(role_record(READERS, "Directory Readers"), DUMMY, "t", 0)
    assert reader.credential.uid is None and reader.credential.attributes["privileged"] is False
    assert not reader.suppressed
    book = route(books, reader)
    assert book.name == "azure-directory-role-triage" and book.contain == []
    # a role known only by a display name the table lacks is not judged privileged either
    (custom,) = detections_from_entra_audit(role_record("0000aaaa-0000-4000-8000-00000000dead", "Custom Ops"),
                                            DUMMY, "t", 0)
    assert route(books, custom).name == "azure-directory-role-triage"


def test_remove_member_from_global_administrator_and_roll_back(azure, ga_grant):
    action = get_action("azure.remove-directory-role-member")()
    c = ctx(azure, ga_grant, credential=ga_grant.credential.uid)
    planned = action.plan(c)
    (assignment,) = planned.before["assignments"]
    assert [(p.operation, p.params) for p in planned.calls] == [
        ("roleManagement.directory.roleAssignments.delete", {"id": assignment["id"]})]
    assert mutating(azure) == []
    (listing,) = azure.standin.api_requests("graph")
    assert listing["path"] == "/v1.0/roleManagement/directory/roleAssignments"
    assert listing["query"]["$filter"] == (f"principalId eq '{MEMBER}' and roleDefinitionId eq '{GA}' "
                                           "and directoryScopeId eq '/'")

    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["role_name"] == "Global Administrator" and result.before["present"] is True
    assert result.after == {**result.before, "present": False, "assignments": []}
    assert mutating(azure) == [("DELETE", f"/v1.0/roleManagement/directory/roleAssignments/{assignment['id']}", {})]
    # exactly that membership: the member keeps Application Administrator, the other GA stays
    assert roles_of(azure, MEMBER) == [APP_ADMIN] and roles_of(azure, OTHER) == [GA]

    azure.standin.requests.clear()
    assert action.run(c).status == "already_contained" and mutating(azure) == []
    assert action.verify(c)[0] is True

    back = action.rollback(c, result)
    assert back.status == "rolled_back", back.error
    assert mutating(azure) == [("POST", "/v1.0/roleManagement/directory/roleAssignments",
                                {"directoryScopeId": "/", "principalId": MEMBER, "roleDefinitionId": GA})]
    assert roles_of(azure, MEMBER) == sorted([APP_ADMIN, GA])
    assert back.after["present"] is True


def test_role_named_by_display_name_is_resolved(azure):
    """Panther's PIM record carries a placeholder template id next to the real display name: the uid
    names the role by whatever the record gave; the action resolves it through the attributes."""
    det = azure_detection("azure_directory_role", f"12345#{MEMBER}", owner=MEMBER, owner_type="User",
                          attributes={"roleTemplateId": "12345", "roleDisplayName": "Application Administrator"})
    azure.seed_from_detection(det)
    azure.standin.ensure_user(MEMBER)
    azure.standin.add_directory_role_member(APP_ADMIN, MEMBER)
    result = get_action("azure.remove-directory-role-member")().run(ctx(azure, det, credential=f"12345#{MEMBER}"))
    assert result.status == "contained", result.error
    assert result.before["role_template_id"] == APP_ADMIN and roles_of(azure, MEMBER) == []


def test_non_privileged_role_and_foreign_or_own_members_are_refused(azure, ga_grant):
    action = get_action("azure.remove-directory-role-member")()
    azure.standin.add_directory_role_member(READERS, MEMBER)
    det = azure_detection("azure_directory_role", f"{READERS}#{MEMBER}", owner=MEMBER, owner_type="User")
    refused = action.run(ctx(azure, det, credential=f"{READERS}#{MEMBER}"))
    assert refused.status == "refused" and "Directory Readers is not privileged" in refused.error
    # another member than the detection's
    other = action.run(ctx(azure, ga_grant, credential=f"{GA}#{OTHER}"))
    assert other.status == "refused" and "is not the detection's" in other.error
    # Cordon's own service principal
    own = azure.own_sp_id
    azure.standin.add_directory_role_member(GA, own)
    mine = azure_detection("azure_directory_role", f"{GA}#{own}", owner=own, owner_type="ServicePrincipal")
    assert action.run(ctx(azure, mine, credential=f"{GA}#{own}")).status == "refused"
    assert mutating(azure) == [] and GA in roles_of(azure, own) and READERS in roles_of(azure, MEMBER)


def test_graph_404_on_the_delete_is_reported_and_nothing_else_changes(azure, ga_grant):
    """The assignment vanished between the read and the DELETE (someone else removed it): the run
    fails naming the HTTP status; a second run finds it contained."""
    azure.fail_next("DELETE /v1.0/roleManagement/directory/roleAssignments/", 404)
    action = get_action("azure.remove-directory-role-member")()
    c = ctx(azure, ga_grant, credential=ga_grant.credential.uid)
    result = action.run(c)
    assert result.status == "failed" and "404" in result.error, result.error
    assert roles_of(azure, MEMBER) == sorted([APP_ADMIN, GA])  # the injected 404 applied nothing
    assert action.run(c).status == "contained"


# -- the paired object --------------------------------------------------------------------------------
@pytest.fixture
def pair(azure):
    azure.standin.ensure_application(APP, "payments-api", app_id=APP_ID)
    azure.standin.ensure_service_principal(SP, "payments-api", app_id=APP_ID)
    azure.standin.add_password(SP, OTHER_KEY, "sp-secret")
    azure.standin.requests.clear()


@pytest.mark.parametrize("named,holder,store,collection", [
    (SP, APP, "applications", "applications"), (APP, SP, "service_principals", "servicePrincipals")])
def test_secret_on_the_paired_object_is_removed_there(azure, pair, named, holder, store, collection):
    """The audit log names one object but the keyId is on the other (same appId): found and removed
    there; the named object's own secrets are untouched."""
    azure.standin.add_password(holder, KEY, "added")
    otype = "ServicePrincipal" if named == SP else "Application"
    det = azure_detection("azure_sp_password", KEY, owner=named, owner_type=otype)
    result = get_action("azure.remove-sp-password")().run(ctx(azure, det, object_id=named, key_id=KEY))
    assert result.status == "contained", result.error
    assert result.before["found_on"] == {"object_type": "Application" if holder == APP else "ServicePrincipal",
                                         "object_id": holder}
    assert [(m, p) for m, p, _ in mutating(azure)] == [("POST", f"/v1.0/{collection}/{holder}/removePassword")]
    assert KEY not in [c["keyId"] for c in getattr(azure.standin, store)[holder]["passwordCredentials"]]
    assert [c["keyId"] for c in azure.standin.service_principals[SP]["passwordCredentials"]] == [OTHER_KEY]
    assert result.after["present"] is False and result.after["found_on"] is None


def test_certificate_on_the_paired_application(azure, pair):
    azure.standin.add_key(APP, CERT, "CN=evil")
    det = azure_detection("azure_sp_key", CERT, owner=SP, owner_type="ServicePrincipal")
    result = get_action("azure.remove-sp-key")().run(ctx(azure, det, object_id=SP, key_id=CERT))
    assert result.status == "contained", result.error
    assert [(m, p) for m, p, _ in mutating(azure)] == [("PATCH", f"/v1.0/applications/{APP}")]
    assert azure.standin.applications[APP]["keyCredentials"] == []


def test_key_patch_that_does_not_hold_fails_the_run(azure, pair):
    """The PATCH is acknowledged (204) but a read right after still shows the certificate (a lost
    write or a lagging replica): the run fails saying what it saw, instead of reporting contained."""
    azure.standin.add_key(SP, CERT, "CN=evil")
    azure.standin.ack_without_applying(f"PATCH /v1.0/servicePrincipals/{SP}")
    det = azure_detection("azure_sp_key", CERT, owner=SP, owner_type="ServicePrincipal")
    action = get_action("azure.remove-sp-key")()
    c = ctx(azure, det, object_id=SP, key_id=CERT)
    result = action.run(c)
    assert result.status == "failed" and "after PATCH" in result.error and CERT in result.error
    assert [k["keyId"] for k in azure.standin.service_principals[SP]["keyCredentials"]] == [CERT]
    assert action.run(c).status == "contained"  # the next run (the write applied) holds


def test_app_role_assignment_not_naming_the_resource_goes_to_triage_with_the_assignee_enriched():
    """A dangerous Graph permission, but the record names the assignee as its only target and logs no
    AppRole.Id: the assignment cannot be named, so no containment (tests/test_azure_app_roles.py covers
    the records that can be)."""
    record = {
        "activityDisplayName": "Add app role assignment to service principal", "activityDateTime":
        "2024-07-30T21:53:13Z", "category": "ApplicationManagement", "result": "success",
        "tenantId": "72f988bf-0000-4000-8000-00000000c0d0",
        "initiatedBy": {"user": {"id": "8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f",
                                 "userPrincipalName": "eve@contoso.example"}},
        "targetResources": [{"id": SP, "type": "ServicePrincipal", "displayName": "payments-api",
                             "modifiedProperties": [
            {"displayName": "AppRole.Value", "oldValue": None, "newValue": '"RoleManagement.ReadWrite.Directory"'},
            {"displayName": "ServicePrincipal.ObjectID", "oldValue": None, "newValue": f'"{SP}"'}]}]}
    (det,) = detections_from_entra_audit(record, DUMMY, "t", 0)
    assert det.credential.kind == "azure_app_role_assignment" and det.credential.uid is None
    assert det.credential.attributes["reason"] == ("the record does not name the resource service principal, "
                                                   "AppRole.Id")
    assert det.target.uid == SP
    book = route(load_playbooks(PLAYBOOKS), det)
    assert book.name == "azure-app-role-assignment-triage" and book.contain == []
    assert [s.action for s in book.enrich] == ["azure.service-principal", "azure.actor"]
