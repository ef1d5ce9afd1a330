"""A dangerous Microsoft Graph application permission granted to a service principal ("Add app role
assignment to service principal", T1098.003): the Entra parser names the assignment by its three ids,
routing sends dangerous Graph permissions to containment and everything else to triage, and
``azure.remove-app-role-assignment`` deletes exactly that appRoleAssignment through the real
msgraph-sdk over HTTP to the Graph stand-in (asserted on the requests the stand-in received), idempotent,
with rollback.

The public corpus (../shared/data/real, SOURCES.md) holds no record of this activity: Panther's Azure
rules have no such test case, and SigmaHQ has only the rule ``azure_app_privileged_permissions.yml``
(read in place below). The records here are built by :func:`tests.azure_fixtures.app_role_grant_record`
in the layout of a captured one (Splunk attack_data, see :func:`cordon.providers.azure.detections._app_role_grant`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cordon.action import ActionContext, get_action
from cordon.detections.intake import read_bytes
from cordon.detections.pipeline import DetectStats, detect
from cordon.playbooks.schema import load_playbooks, route
from cordon.providers import shipped_rule_dirs
from cordon.providers.azure.detections import RISKY_GRAPH_PERMISSIONS, detections_from_entra_audit, entra_match_view
from cordon.sandbox.azure import GRAPH_APP_ID, GRAPH_APP_ROLES
from cordon.sigma import RuleSet
from tests.azure_fixtures import *  # noqa: F401,F403
from tests.azure_fixtures import (
    ASSIGNEE,
    ASSIGNEE_APP_ID,
    GRAPH_SP,
    GRAPH_SPNS,
    app_role_grant_record,
    azure_detection,
)

pytestmark = [pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:GetQueryParameters is deprecated:DeprecationWarning")]

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
RMRWD = GRAPH_APP_ROLES["RoleManagement.ReadWrite.Directory"]
APP_RW = GRAPH_APP_ROLES["Application.ReadWrite.All"]
USER_READ = GRAPH_APP_ROLES["User.Read.All"]
MAIL_READ = GRAPH_APP_ROLES["Mail.Read"]
OTHER_SP = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
CUSTOM_API = "4b5c6d7e-8f90-4a1b-9c2d-3e4f5a6b7c8d"
CUSTOM_ROLE = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
UID = f"{ASSIGNEE}#{GRAPH_SP}#{RMRWD}"
DUMMY = SimpleNamespace(id="r", title="App Role Assignment or Owner Added to an Entra Application", path=None,
                        level="medium", technique_ids=["T1098.003"])


def parse(record):
    (det,) = detections_from_entra_audit(record, DUMMY, "t", 0)
    return det


def ctx(azure, detection, **params):
    return ActionContext(detection=detection, params=params, clients=azure.client_factory())


def mutating(azure):
    return [(r["method"], r["path"], r["body"]) for r in azure.standin.api_requests(mutating=True)]


def held(azure, principal):
    """``(resourceId, appRoleId)`` of every app role assignment ``principal`` holds, sorted."""
    return sorted((a["resourceId"], a["appRoleId"]) for a in azure.standin.app_role_assignments.values()
                  if a["principalId"] == principal)


# -- the parser -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["monitor", "graph"])
def test_the_assignee_is_servicePrincipal_objectid_and_the_resource_the_target_carrying_the_role(form):
    det = parse(app_role_grant_record("RoleManagement.ReadWrite.Directory", RMRWD, form=form))
    cred = det.credential
    assert (cred.kind, cred.uid) == ("azure_app_role_assignment", UID)
    assert cred.owner.uid == det.target.uid == ASSIGNEE and cred.owner.type == "ServicePrincipal"
    assert cred.attributes == {
        "app_role_value": "RoleManagement.ReadWrite.Directory", "app_role_id": RMRWD,
        "app_role_display_name": "RoleManagement.ReadWrite.Directory role", "privileged": True,
        "resource_id": GRAPH_SP, "resource_display_name": "Microsoft Graph", "resource_app_id": GRAPH_APP_ID,
        "appId": ASSIGNEE_APP_ID, "displayName": "sync-bot", "objectType": "ServicePrincipal"}
    assert det.actor.user.name == "eve@contoso.example" and not det.suppressed
    assert det.technique_ids == ["T1098.003"]


def test_the_assignee_falls_back_to_the_target_without_approle_properties():
    det = parse(app_role_grant_record("Application.ReadWrite.All", APP_RW, assignee=None))
    assert det.credential.uid is None and "ServicePrincipal.ObjectID" in det.credential.attributes["reason"]
    record = app_role_grant_record("Application.ReadWrite.All", APP_RW)
    props = record["properties"]["targetResources"][0]["modifiedProperties"]
    props[:] = [p for p in props if p["displayName"] != "ServicePrincipal.ObjectID"]
    det = parse(record)  # targetResources[1] is the client service principal
    assert det.credential.uid == f"{ASSIGNEE}#{GRAPH_SP}#{APP_RW}" and det.target.uid == ASSIGNEE


@pytest.mark.parametrize("value,role,resource,name,spns,why", [
    ("Mail.Read", MAIL_READ, GRAPH_SP, "Microsoft Graph", GRAPH_SPNS, "Mail.Read of Microsoft Graph"),
    # a line-of-business API may define a role with the same value: not Microsoft Graph's
    ("Directory.ReadWrite.All", CUSTOM_ROLE, CUSTOM_API, "payroll-api", f"{CUSTOM_API};api://payroll",
     "Directory.ReadWrite.All of payroll-api"),
    # the layout of Splunk's capture: Exchange Online's full_access_as_app (not in the Graph list)
    ("full_access_as_app", "dc890d15-9560-4a4c-9b7f-a736ec74ec40", "8429eb5c-0000-4000-8000-000000000001",
     "Office 365 Exchange Online", "00000002-0000-0ff1-ce00-000000000000;https://outlook.office365.com",
     "full_access_as_app of Office 365 Exchange Online"),
])
def test_other_permissions_are_named_but_not_privileged(value, role, resource, name, spns, why):
    det = parse(app_role_grant_record(value, role, resource=resource, resource_name=name, spns=spns))
    cred = det.credential
    assert cred.kind == "azure_app_role_assignment" and cred.uid is None and cred.attributes["privileged"] is False
    assert why in cred.attributes["reason"] and det.target.uid == ASSIGNEE  # the assignee, never the resource
    assert cred.attributes["resource_id"] == resource and not det.suppressed


def test_graph_recognised_by_name_only_when_no_service_principal_names_are_logged():
    det = parse(app_role_grant_record("Directory.ReadWrite.All", GRAPH_APP_ROLES["Directory.ReadWrite.All"],
                                      spns=None))
    assert det.credential.attributes["resource_app_id"] == GRAPH_APP_ID and det.credential.uid
    spoof = parse(app_role_grant_record("Directory.ReadWrite.All", CUSTOM_ROLE, resource=CUSTOM_API,
                                        spns=f"{CUSTOM_API};api://fake-graph"))
    assert spoof.credential.uid is None  # named "Microsoft Graph", but its appId says otherwise


def test_missing_role_id_and_failed_grant():
    record = app_role_grant_record("RoleManagement.ReadWrite.Directory", RMRWD)
    props = record["properties"]["targetResources"][0]["modifiedProperties"]
    props[:] = [p for p in props if p["displayName"] != "AppRole.Id"]
    det = parse(record)
    assert det.credential.uid is None and det.credential.attributes["privileged"] is True
    assert det.credential.attributes["reason"] == "the record does not name AppRole.Id"
    failed = parse(app_role_grant_record("RoleManagement.ReadWrite.Directory", RMRWD, result="failure"))
    assert failed.suppressed and failed.credential is None and failed.target.uid == ASSIGNEE


def test_every_privileged_value_is_the_one_shared_list():
    import cordon.providers.azure.actions as azure_actions

    assert azure_actions.RISKY_GRAPH_PERMISSIONS is RISKY_GRAPH_PERMISSIONS
    assert {"RoleManagement.ReadWrite.Directory", "AppRoleAssignment.ReadWrite.All", "Application.ReadWrite.All",
            "Directory.ReadWrite.All"} <= RISKY_GRAPH_PERMISSIONS


def test_shipped_rule_matches_and_routing_splits_contain_from_triage():
    shipped = RuleSet.load(shipped_rule_dirs())
    books = load_playbooks(REPO / "cordon" / "defaults" / "playbooks")
    for value, role, book in (("RoleManagement.ReadWrite.Directory", RMRWD, "azure-app-role-assignment"),
                              ("Mail.Read", MAIL_READ, "azure-app-role-assignment-triage")):
        data = json.dumps(app_role_grant_record(value, role)).encode()
        (det,) = list(detect(read_bytes("grant.json", data), shipped, DetectStats()))
        assert det.rule.name == "App Role Assignment or Owner Added to an Entra Application"
        playbook = route(books, det)
        assert playbook.name == book, (value, playbook.name)
    contain = next(b for b in books if b.name == "azure-app-role-assignment")
    assert contain.approval.required and [s.action for s in contain.contain] == ["azure.remove-app-role-assignment"]
    assert [s.action for s in contain.enrich] == ["azure.service-principal", "azure.actor"]


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
def test_sigmahq_rule_for_this_activity_matches_no_real_record_shape():
    """SigmaHQ/sigma @ 8eaafff1, rules/cloud/azure/audit_logs/azure_app_privileged_permissions.yml (DRL 1.1,
    Bailey Bercik, Mark Morowczynski) selects ``properties.message``, a field neither the Graph
    ``directoryAudit`` nor the Azure Monitor form carries: as written it matches nothing, which is why
    Cordon ships its own rule on ``activityDisplayName``."""
    rule = RuleSet.load(REAL / "sigma" / "rules" / "cloud" / "azure" / "audit_logs"
                        / "azure_app_privileged_permissions.yml")
    for form in ("monitor", "graph"):
        record = app_role_grant_record("RoleManagement.ReadWrite.Directory", RMRWD, form=form)
        assert rule.match(entra_match_view(record), product="azure", service="auditlogs") == []


# -- the action against the Graph stand-in ----------------------------------------------------------------
@pytest.fixture
def granted(azure):
    """ASSIGNEE was granted RoleManagement.ReadWrite.Directory (the detection). It also legitimately holds
    User.Read.All and Application.ReadWrite.All on Graph, and OTHER_SP holds RoleManagement.ReadWrite.Directory
    too: all three must survive."""
    det = parse(app_role_grant_record("RoleManagement.ReadWrite.Directory", RMRWD))
    report = azure.seed_from_detection(det)
    assert report["service_principals"] == [ASSIGNEE, GRAPH_SP] and len(report["app_role_assignments"]) == 1
    assert azure.seed_from_detection(det)["app_role_assignments"] == report["app_role_assignments"]  # idempotent
    assert azure.standin.service_principals[ASSIGNEE]["appId"] == ASSIGNEE_APP_ID
    azure.standin.assign_app_role(ASSIGNEE, GRAPH_SP, USER_READ)
    azure.standin.assign_app_role(ASSIGNEE, GRAPH_SP, APP_RW)
    azure.standin.ensure_service_principal(OTHER_SP, "ci-deployer")
    azure.standin.assign_app_role(OTHER_SP, GRAPH_SP, RMRWD)
    azure.standin.requests.clear()
    return det


def test_remove_exactly_that_assignment_idempotently_and_roll_back(azure, granted):
    action = get_action("azure.remove-app-role-assignment")()
    c = ctx(azure, granted, credential=UID)
    planned = action.plan(c)
    (assignment,) = planned.before["assignments"]
    assert assignment["principal_id"] == ASSIGNEE and assignment["resource_id"] == GRAPH_SP
    assert planned.before["app_role_value"] == "RoleManagement.ReadWrite.Directory"
    assert [(p.operation, p.params) for p in planned.calls] == [
        ("servicePrincipals.appRoleAssignments.delete", {"id": ASSIGNEE, "appRoleAssignmentId": assignment["id"]})]
    assert [(r["method"], r["path"]) for r in azure.standin.api_requests("graph")] == [
        ("GET", f"/v1.0/servicePrincipals/{GRAPH_SP}"),
        ("GET", f"/v1.0/servicePrincipals/{ASSIGNEE}/appRoleAssignments")]

    result = action.run(c)
    assert result.status == "contained", result.error
    assert mutating(azure) == [("DELETE", f"/v1.0/servicePrincipals/{ASSIGNEE}/appRoleAssignments/{assignment['id']}",
                                {})]
    assert result.after == {**result.before, "present": False, "assignments": []}
    # exactly that one: the assignee keeps its other Graph permissions, the other service principal its grant
    assert held(azure, ASSIGNEE) == sorted([(GRAPH_SP, USER_READ), (GRAPH_SP, APP_RW)])
    assert held(azure, OTHER_SP) == [(GRAPH_SP, RMRWD)]

    azure.standin.requests.clear()
    again = action.run(c)
    assert again.status == "already_contained" and mutating(azure) == []
    assert action.verify(c)[0] is True

    back = action.rollback(c, result)
    assert back.status == "rolled_back", back.error
    assert mutating(azure) == [("POST", f"/v1.0/servicePrincipals/{ASSIGNEE}/appRoleAssignments", {
        "@odata.type": "#microsoft.graph.appRoleAssignment", "principalId": ASSIGNEE, "resourceId": GRAPH_SP,
        "appRoleId": RMRWD})]
    assert back.after["present"] is True and (GRAPH_SP, RMRWD) in held(azure, ASSIGNEE)
    # a second rollback finds it granted again and makes no call
    azure.standin.requests.clear()
    assert action.rollback(c, result).status == "rolled_back" and mutating(azure) == []


def test_the_listing_is_followed_across_pages(azure, granted):
    """Graph pages appRoleAssignments (@odata.nextLink): the assignment on the last page is found."""
    azure.standin.page_size = 1
    for value in ("Directory.Read.All", "Mail.Read", "User.ReadWrite.All"):
        azure.standin.assign_app_role(ASSIGNEE, GRAPH_SP, GRAPH_APP_ROLES[value])
    store = azure.standin.app_role_assignments
    target = next(a["id"] for a in store.values() if (a["principalId"], a["appRoleId"]) == (ASSIGNEE, RMRWD))
    store[target] = store.pop(target)  # the detection's assignment is now listed last, on the sixth page
    result = get_action("azure.remove-app-role-assignment")().run(ctx(azure, granted, credential=UID))
    assert result.status == "contained", result.error
    lists = [r["query"] for r in azure.standin.api_requests("graph")
             if r["path"] == f"/v1.0/servicePrincipals/{ASSIGNEE}/appRoleAssignments"]
    pages = [{}] + [{"$skiptoken": str(i)} for i in range(1, 6)]
    assert lists == pages + pages[:5]  # six pages before the DELETE, five after
    assert [(m, p) for m, p, _ in mutating(azure)] == [
        ("DELETE", f"/v1.0/servicePrincipals/{ASSIGNEE}/appRoleAssignments/{target}")]
    assert len(held(azure, ASSIGNEE)) == 5 and (GRAPH_SP, RMRWD) not in held(azure, ASSIGNEE)


def test_a_permission_that_is_not_dangerous_is_refused(azure, granted):
    action = get_action("azure.remove-app-role-assignment")()
    mail = azure_detection("azure_app_role_assignment", f"{ASSIGNEE}#{GRAPH_SP}#{MAIL_READ}", owner=ASSIGNEE,
                           owner_type="ServicePrincipal")
    azure.standin.assign_app_role(ASSIGNEE, GRAPH_SP, MAIL_READ)
    refused = action.run(ctx(azure, mail, credential=mail.credential.uid))
    assert refused.status == "refused" and "(Mail.Read) is not a dangerous Graph application permission" \
        in refused.error, refused.error
    # a custom API's role named like a Graph permission is not Graph's
    azure.standin.ensure_service_principal(CUSTOM_API, "payroll-api")
    azure.standin.add_app_role(CUSTOM_API, CUSTOM_ROLE, "Directory.ReadWrite.All")
    azure.standin.assign_app_role(ASSIGNEE, CUSTOM_API, CUSTOM_ROLE)
    custom = azure_detection("azure_app_role_assignment", f"{ASSIGNEE}#{CUSTOM_API}#{CUSTOM_ROLE}", owner=ASSIGNEE)
    refused = action.run(ctx(azure, custom, credential=custom.credential.uid))
    assert refused.status == "refused" and "is not Microsoft Graph" in refused.error, refused.error
    assert mutating(azure) == [] and (GRAPH_SP, MAIL_READ) in held(azure, ASSIGNEE)


def test_another_assignment_than_the_detections_and_cordons_own_are_refused(azure, granted):
    action = get_action("azure.remove-app-role-assignment")()
    other = action.run(ctx(azure, granted, credential=f"{OTHER_SP}#{GRAPH_SP}#{RMRWD}"))
    assert other.status == "refused" and "is not the detection's" in other.error
    own = azure.own_sp_id
    azure.standin.assign_app_role(own, GRAPH_SP, RMRWD)
    mine = azure_detection("azure_app_role_assignment", f"{own}#{GRAPH_SP}#{RMRWD}", owner=own)
    refused = action.run(ctx(azure, mine, credential=mine.credential.uid))
    assert refused.status == "refused" and "Cordon's own identity" in refused.error
    assert mutating(azure) == [] and held(azure, OTHER_SP) == [(GRAPH_SP, RMRWD)]
    assert (GRAPH_SP, RMRWD) in held(azure, own)


def test_a_deleted_assignee_is_already_contained(azure, granted):
    del azure.standin.service_principals[ASSIGNEE]
    result = get_action("azure.remove-app-role-assignment")().run(ctx(azure, granted, credential=UID))
    assert result.status == "already_contained" and result.data == {"missing": True} and mutating(azure) == []


def test_graph_404_on_the_delete_fails_the_run_and_the_next_run_contains(azure, granted):
    azure.fail_next(f"DELETE /v1.0/servicePrincipals/{ASSIGNEE}/appRoleAssignments/", 404)
    action = get_action("azure.remove-app-role-assignment")()
    c = ctx(azure, granted, credential=UID)
    result = action.run(c)
    assert result.status == "failed" and "404" in result.error, result.error
    assert (GRAPH_SP, RMRWD) in held(azure, ASSIGNEE)  # the injected 404 applied nothing
    assert action.run(c).status == "contained" and (GRAPH_SP, RMRWD) not in held(azure, ASSIGNEE)


def test_the_action_declares_what_it_needs():
    d = get_action("azure.remove-app-role-assignment").describe()
    assert d["permissions"] == ["AppRoleAssignment.ReadWrite.All", "Application.Read.All"]
    assert d["credential_kinds"] == ["azure_app_role_assignment"] and d["rollback_supported"] is True
    assert "azure.remove-app-role-assignment" in d["doc"] and "code-block:: yaml" in d["doc"]
