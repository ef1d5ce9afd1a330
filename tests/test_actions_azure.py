"""Azure actions against the stand-ins: the real msgraph-sdk (over http to the loopback Graph
stand-in) and azure-mgmt-authorization (over TLS, verified with the stand-in's trustme CA), both
authenticated by azure-identity's ClientSecretCredential against the stand-in's token endpoint.
No mocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import urllib.error
import urllib.request

import pytest

from cordon.action import ActionContext, ActionParamError, all_actions, get_action
from cordon.providers.azure.clients import SECRET_ENV_PREFIX, azure_clients
from tests.azure_fixtures import *  # noqa: F401,F403
from tests.azure_fixtures import SUBSCRIPTION, azure_detection

SP = "5b1f6a8e-4c1d-4d8e-9a8b-0c1d2e3f4a5b"
APP = "7e2d9c1b-3a4f-4b6e-8d7c-1a2b3c4d5e6f"
OTHER_SP = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
KEY = "0f8e7d6c-5b4a-4938-8271-6a5b4c3d2e1f"
OTHER_KEY = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
OWNER_USER = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
#: msgraph 1.65's generated request builders warn about their own deprecated config classes.
pytestmark = [pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:GetQueryParameters is deprecated:DeprecationWarning")]

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ARM_SCOPE = "https://management.azure.com/.default"
OWNER_ROLE = (f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
              "8e3af657-a8ff-443c-a75c-2fe8c4bcb635")
RA = (f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleAssignments/"
      "4d5e6f7a-8b9c-4dae-8f00-112233445566")
OTHER_RA = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg1/providers/Microsoft.Authorization/roleAssignments/"
            "6f7a8b9c-0d1e-4f2a-8b3c-445566778899")
FIC_ID = "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7"
USER = "8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f"


def ctx(azure, detection, **params):
    return ActionContext(detection=detection, params=params, clients=azure.client_factory())


def run(azure, name, detection, **params):
    return get_action(name)().run(ctx(azure, detection, **params))


def mutating(azure):
    return [(r["method"], r["path"], r["body"]) for r in azure.standin.api_requests(mutating=True)]


def passwords(azure, store, oid):
    return [c["keyId"] for c in getattr(azure.standin, store)[oid]["passwordCredentials"]]


@pytest.fixture
def sp_password(azure):
    """A client secret KEY added to service principal SP (owned by a user), plus OTHER_SP with its
    own secret OTHER_KEY and a second secret on SP that must survive."""
    det = azure_detection("azure_sp_password", KEY, owner=SP, owner_name="evil-sp", owner_type="ServicePrincipal",
                          attributes={"appId": "aaaa0000-1111-4222-8333-444455556666"})
    report = azure.seed_from_detection(det)
    assert report["passwords"] == [KEY] and report["service_principals"] == [SP]
    azure.standin.add_password(SP, OTHER_KEY, "legit-rotation")
    azure.standin.ensure_service_principal(OTHER_SP, "ci-deployer")
    azure.standin.add_password(OTHER_SP, KEY.replace("0f8e", "ffff"))
    azure.standin.ensure_user(OWNER_USER, "alice@contoso.example", "Alice")
    azure.standin.add_owner(SP, OWNER_USER)
    azure.standin.add_key(SP, "6b5a4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d", "CN=evil")
    azure.standin.requests.clear()
    return det


@pytest.fixture
def role_assignment(azure):
    det = azure_detection("azure_role_assignment", RA, owner=SP, target=SP, account=SUBSCRIPTION,
                          attributes={"principalId": SP, "roleDefinitionId": OWNER_ROLE},
                          event_name="Microsoft.Authorization/roleAssignments/write")
    azure.seed_from_detection(det)
    azure.standin.ensure_role_assignment(OTHER_RA, OTHER_SP, OWNER_ROLE)
    azure.standin.requests.clear()
    return det


# -- registry, clients, stand-in -----------------------------------------------------------------
EXPECTED = {"azure.remove-sp-password", "azure.remove-sp-key", "azure.disable-service-principal",
            "azure.remove-role-assignment", "azure.remove-federated-credential", "azure.revoke-user-sessions",
            "azure.service-principal", "azure.actor", "azure.remove-directory-role-member",
            "azure.remove-app-role-assignment", "azure.unnamed-credential", "azure.remove-unnamed-credential",
            "azure.block-app-passwords"}


def test_every_azure_action_is_registered_and_self_describes():
    actions = {n: a for n, a in all_actions().items() if n.startswith("azure.")}
    assert set(actions) == EXPECTED
    assert "gcp.disable-sa-key" in all_actions() and "aws.deactivate-access-key" in all_actions()
    for name, cls in actions.items():
        d = cls.describe()
        assert d["provider"] == "azure" and f"action: {name}" in d["doc"], name
        assert "https://learn.microsoft.com/" in d["doc"], name
        assert d["permissions"], name
        for perm in d["permissions"]:
            assert re.fullmatch(r"[A-Z][A-Za-z]+(\.[A-Za-z]+)+|Microsoft\.Authorization/roleAssignments/[a-z]+",
                                perm), perm
        assert set(d["credential_kinds"]) <= {"azure_sp_password", "azure_sp_key", "azure_federated_credential",
                                              "azure_role_assignment", "azure_user", "azure_service_principal",
                                              "azure_directory_role", "azure_app_role_assignment",
                                              "azure_user_sessions", "azure_sp_sign_in", "azure_user_app_password"}
    assert actions["azure.remove-sp-password"].rollback_supported is False
    assert actions["azure.disable-service-principal"].rollback_supported is True
    assert actions["azure.remove-role-assignment"].rollback_supported is True
    assert actions["azure.remove-directory-role-member"].rollback_supported is True
    assert actions["azure.remove-app-role-assignment"].rollback_supported is True


def test_params_are_validated_and_identify_the_detections_credential(sp_password):
    action = get_action("azure.remove-sp-password")
    action.validate_params({"object_id": SP, "key_id": KEY})
    with pytest.raises(ActionParamError) as err:
        action.validate_params({"object_id": SP, "key_id": "not-a-guid"})
    assert err.value.field == "key_id"
    with pytest.raises(ActionParamError):
        get_action("azure.remove-role-assignment").validate_params({"assignment_id": "/subscriptions/x"})
    assert action.check_identifies({"object_id": SP, "key_id": KEY}, sp_password) is None
    assert "not the detection's" in action.check_identifies({"object_id": OTHER_SP, "key_id": KEY}, sp_password)


def test_token_exchange_and_bearer_on_every_call(azure, sp_password):
    clients = azure.client_factory()
    sp = clients.run(clients("graph").service_principals.by_service_principal_id(SP).get())
    assert sp.display_name == "evil-sp" and str(sp.password_credentials[0].key_id) == KEY
    ra = clients("authorization").role_assignments.list_for_scope(f"/subscriptions/{SUBSCRIPTION}")
    assert list(ra) == []
    reqs = azure.standin.api_requests()
    assert [(r["api"], r["method"]) for r in reqs] == [("graph", "GET"), ("arm", "GET")]
    for r in reqs:
        token = r["auth"].removeprefix("Bearer ")
        grant = azure.standin.tokens[token]
        assert grant["client_id"] == azure.own_client_id == r["client_id"]
        assert grant["scope"] == (GRAPH_SCOPE if r["api"] == "graph" else ARM_SCOPE)
    assert reqs[1]["query"]["api-version"] == "2022-04-01"
    assert clients.own_identity() == azure.own_client_id and clients.own_object_id() == azure.own_sp_id
    # no bearer -> 401 from both stand-ins
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{azure.graph_url}/v1.0/servicePrincipals/{SP}", timeout=5)  # noqa: S310
    assert err.value.code == 401 and json.loads(err.value.read())["error"]["code"] == "InvalidAuthenticationToken"
    tls = ssl.create_default_context(cadata=azure.standin.ca_pem)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{azure.arm_url}{RA}?api-version=2022-04-01", timeout=5, context=tls)  # noqa: S310
    assert err.value.code == 401
    # the ARM stand-in is real TLS: without the CA the handshake fails
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"{azure.arm_url}{RA}?api-version=2022-04-01", timeout=5,  # noqa: S310
                               context=ssl.create_default_context())
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)


def test_fresh_process_clients_from_cloud_params_and_a_wrong_secret(azure, sp_password):
    params = json.loads(json.dumps(azure.cloud_params()))  # what a worker in another process receives
    assert params["authority"].startswith("https://127.0.0.1:") and params["graph_url"].startswith("http://")
    clients = azure_clients(params)
    try:
        got = clients.run(clients("graph").service_principals.by_service_principal_id(SP).get())
        assert got.id == SP
        logins = [r for r in azure.standin.requests if r["api"] == "login" and r["method"] == "POST"]
        assert len(logins) == 1 and logins[0]["body"]["grant_type"] == "client_credentials"
        assert logins[0]["body"]["scope"] == GRAPH_SCOPE and "client_secret" not in logins[0]["body"]
    finally:
        clients.close()
    from azure.core.exceptions import ClientAuthenticationError

    bad_env = f"{SECRET_ENV_PREFIX}WRONG1"
    os.environ[bad_env] = "wrong"
    bad = azure_clients({**params, "client_secret_env": bad_env})
    try:
        azure.standin.requests.clear()
        with pytest.raises(ClientAuthenticationError):
            bad("authorization").role_assignments.get_by_id(RA)
        assert azure.standin.api_requests() == []
    finally:
        bad.close()
        os.environ.pop(bad_env, None)


def test_the_client_secret_never_travels_as_a_parameter(azure):
    """Issue 11: cloud parameters land in Prefect's database, so the sandbox's client secret is handed
    over in the environment, and the factory refuses a secret in the parameters or a variable name that
    could point it at another of the process's secrets."""
    params = azure.cloud_params()
    assert azure._secret not in json.dumps(params) and params["client_secret_env"].startswith(SECRET_ENV_PREFIX)
    with pytest.raises(ValueError, match="not accepted as a parameter"):
        azure_clients({**params, "client_secret": azure._secret})
    with pytest.raises(ValueError, match="client_secret_env must be"):
        azure_clients({**params, "client_secret_env": "CORDON_SLACK_BOT_TOKEN"})
    with pytest.raises(ValueError, match="CORDON_SANDBOX_AZURE_SECRET_NOTSET is not set"):
        azure_clients({**params, "client_secret_env": f"{SECRET_ENV_PREFIX}NOTSET"})


def test_run_works_from_inside_a_running_event_loop(azure, sp_password):
    clients = azure.client_factory()

    async def caller():  # a sync helper called by code that is itself inside a loop
        return clients.run(clients("graph").service_principals.by_service_principal_id(SP).get())

    assert asyncio.run(caller()).display_name == "evil-sp"


def test_run_is_safe_from_many_threads_and_refuses_its_own_loop_thread(azure, sp_password):
    from concurrent.futures import ThreadPoolExecutor

    from cordon.providers.azure.clients import LoopThread

    clients = azure.client_factory()

    def read(_):
        return clients.run(clients("graph").service_principals.by_service_principal_id(SP).get()).id

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(read, range(8))) == [SP] * 8
    assert len(azure.standin.api_requests()) == 8
    loop = LoopThread()
    try:
        async def inner():
            return loop.run(asyncio.sleep(0, result=1))

        with pytest.raises(RuntimeError, match="own loop thread"):
            loop.run(inner())
    finally:
        loop.close()


def test_seeding_is_idempotent_and_exact(azure, sp_password):
    azure.seed_from_detection(sp_password)
    assert passwords(azure, "service_principals", SP) == [KEY, OTHER_KEY]
    assert azure.standin.service_principals[SP]["passwordCredentials"][0]["startDateTime"] == "2024-07-30T21:53:13Z"
    app_det = azure_detection("azure_sp_password", KEY, owner=APP, owner_type="Application", owner_name="evil-app")
    assert azure.seed_from_detection(app_det)["applications"] == [APP]
    assert passwords(azure, "applications", APP) == [KEY]


# -- azure.remove-sp-password -------------------------------------------------------------------
def test_remove_sp_password_removes_exactly_that_secret(azure, sp_password):
    result = run(azure, "azure.remove-sp-password", sp_password, object_id=SP, key_id=KEY)
    assert result.status == "contained", result.error
    assert result.before["present"] is True and result.after["present"] is False
    assert [c["key_id"] for c in result.before["password_credentials"]] == [KEY, OTHER_KEY]
    assert [c["key_id"] for c in result.after["password_credentials"]] == [OTHER_KEY]
    assert "secretText" not in json.dumps(result.model_dump()) and result.rollback is None
    assert result.before["password_credentials"][0]["start"] == "2024-07-30T21:53:13Z"
    assert [c.describe() for c in result.calls] == [f"graph:servicePrincipals.removePassword(id={SP}, keyId={KEY})"]
    assert mutating(azure) == [("POST", f"/v1.0/servicePrincipals/{SP}/removePassword", {"keyId": KEY})]
    assert azure.standin.api_requests(mutating=True)[0]["auth"].startswith("Bearer ")
    assert passwords(azure, "service_principals", SP) == [OTHER_KEY]
    assert len(passwords(azure, "service_principals", OTHER_SP)) == 1

    azure.standin.requests.clear()
    again = run(azure, "azure.remove-sp-password", sp_password, object_id=SP, key_id=KEY)
    assert again.status == "already_contained" and again.calls == [] and mutating(azure) == []
    action = get_action("azure.remove-sp-password")()
    assert action.verify(ctx(azure, sp_password, object_id=SP, key_id=KEY))[0] is True
    with pytest.raises(Exception, match="cannot be rolled back"):
        action.rollback(ctx(azure, sp_password, object_id=SP, key_id=KEY), result)
    assert mutating(azure) == []


def test_remove_password_on_an_application(azure):
    det = azure_detection("azure_sp_password", KEY, owner=APP, owner_type="Application", owner_name="evil-app")
    azure.seed_from_detection(det)
    azure.standin.requests.clear()
    result = run(azure, "azure.remove-sp-password", det, object_id=APP, key_id=KEY)
    assert result.status == "contained" and result.target == f"Application {APP} password {KEY}"
    assert mutating(azure) == [("POST", f"/v1.0/applications/{APP}/removePassword", {"keyId": KEY})]
    assert passwords(azure, "applications", APP) == []


def test_plan_lists_the_call_and_changes_nothing(azure, sp_password):
    planned = get_action("azure.remove-sp-password")().plan(ctx(azure, sp_password, object_id=SP, key_id=KEY))
    assert planned.status == "planned" and planned.before["present"] is True
    assert [(c.service, c.operation, c.params) for c in planned.calls] == [
        ("graph", "servicePrincipals.removePassword", {"id": SP, "keyId": KEY})]
    assert mutating(azure) == [] and passwords(azure, "service_principals", SP) == [KEY, OTHER_KEY]


@pytest.mark.parametrize("params", [
    {"object_id": OTHER_SP, "key_id": KEY},  # another service principal
    {"object_id": SP, "key_id": OTHER_KEY},  # another secret of the same one
])
def test_wrong_target_is_refused_and_nothing_changes(azure, sp_password, params):
    result = run(azure, "azure.remove-sp-password", sp_password, **params)
    assert result.status == "refused" and "GuardError" in result.error and result.calls == []
    assert azure.standin.api_requests() == []  # refused before any call
    assert passwords(azure, "service_principals", SP) == [KEY, OTHER_KEY]


def test_cordons_own_service_principal_is_refused(azure):
    det = azure_detection("azure_sp_password", KEY, owner=azure.own_sp_id)
    azure.standin.add_password(azure.own_sp_id, KEY)
    azure.standin.requests.clear()
    result = run(azure, "azure.remove-sp-password", det, object_id=azure.own_sp_id, key_id=KEY)
    assert result.status == "refused" and "Cordon's own identity" in result.error
    result = run(azure, "azure.disable-service-principal", det, object_id=azure.own_sp_id)
    assert result.status == "refused" and mutating(azure) == []
    assert azure.standin.service_principals[azure.own_sp_id]["accountEnabled"] is True
    assert passwords(azure, "service_principals", azure.own_sp_id) == [KEY]


def test_missing_object_is_already_contained(azure):
    det = azure_detection("azure_sp_password", KEY, owner=OTHER_SP)
    result = run(azure, "azure.remove-sp-password", det, object_id=OTHER_SP, key_id=KEY)
    assert result.status == "already_contained" and result.data == {"missing": True}
    assert [(r["method"], r["status"]) for r in azure.standin.api_requests()] == [("GET", 404)]


@pytest.mark.parametrize("status", [429, 503])
def test_graph_throttling_and_5xx_are_retried_by_kiota(azure, sp_password, status):
    # kiota's RetryHandler treats "Retry-After: 0" as absent (falsy) and backs off >= 3 s; 1 s is the
    # shortest honoured value.
    azure.fail_next(f"POST /v1.0/servicePrincipals/{SP}/removePassword", status, headers={"Retry-After": "1"})
    result = run(azure, "azure.remove-sp-password", sp_password, object_id=SP, key_id=KEY)
    assert result.status == "contained", result.error
    posts = [r["status"] for r in azure.standin.api_requests(mutating=True)]
    assert posts == [status, 204]
    assert passwords(azure, "service_principals", SP) == [OTHER_KEY]


def test_graph_error_that_persists_fails_the_run(azure, sp_password):
    azure.fail_next(f"POST /v1.0/servicePrincipals/{SP}/removePassword", 500)
    result = run(azure, "azure.remove-sp-password", sp_password, object_id=SP, key_id=KEY)
    assert result.status == "failed" and "ODataError" in result.error
    assert passwords(azure, "service_principals", SP) == [KEY, OTHER_KEY]


# -- azure.remove-sp-key --------------------------------------------------------------------------
CERT = "6b5a4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d"
OTHER_CERT = "7c6b5a4d-3e2f-4b1a-8d9e-0f1a2b3c4d5e"


@pytest.mark.parametrize("otype,store,collection", [("Application", "applications", "applications"),
                                                    ("ServicePrincipal", "service_principals", "servicePrincipals")])
def test_remove_sp_key_patches_the_collection_without_that_certificate(azure, otype, store, collection):
    oid = APP if otype == "Application" else SP
    det = azure_detection("azure_sp_key", CERT, owner=oid, owner_type=otype, owner_name="evil")
    assert azure.seed_from_detection(det)["keys"] == [CERT]
    kept = azure.standin.add_key(oid, OTHER_CERT, "CN=legit")
    azure.standin.add_password(oid, KEY)
    azure.standin.requests.clear()
    action = get_action("azure.remove-sp-key")()
    c = ctx(azure, det, object_id=oid, key_id=CERT)
    planned = action.plan(c)
    assert [(p.operation, p.params) for p in planned.calls] == [(f"{collection}.removeKeyCredential",
                                                                 {"id": oid, "keyId": CERT})]
    assert mutating(azure) == [] and len(getattr(azure.standin, store)[oid]["keyCredentials"]) == 2
    result = action.run(c)
    assert result.status == "contained", result.error
    assert [k["key_id"] for k in result.before["key_credentials"]] == [CERT, OTHER_CERT]
    assert [k["key_id"] for k in result.after["key_credentials"]] == [OTHER_CERT]
    assert "key\"" not in json.dumps(result.before)  # metadata only, never key material
    reads = [r for r in azure.standin.api_requests() if r["query"].get("$select")]
    # read with the key material before the PATCH, and again after it to verify
    assert len(reads) == 2 and all("keyCredentials" in r["query"]["$select"] for r in reads)
    sent = azure.standin.api_requests(mutating=True)
    assert [(r["method"], r["path"]) for r in sent] == [("PATCH", f"/v1.0/{collection}/{oid}")]
    order = [(r["method"], bool(r["query"].get("$select"))) for r in azure.standin.api_requests("graph")]
    at = order.index(("PATCH", False))
    assert order[at - 1:at + 2] == [("GET", True), ("PATCH", False), ("GET", True)]
    body_keys = sent[0]["body"]["keyCredentials"]
    assert [k["keyId"] for k in body_keys] == [OTHER_CERT] and body_keys[0]["key"] == kept["key"]
    assert [k["keyId"] for k in getattr(azure.standin, store)[oid]["keyCredentials"]] == [OTHER_CERT]
    assert passwords(azure, store, oid) == [KEY]  # secrets untouched

    azure.standin.requests.clear()
    assert action.run(c).status == "already_contained" and mutating(azure) == []
    azure.standin.requests.clear()
    refused = action.run(ctx(azure, det, object_id=oid, key_id=OTHER_CERT))
    assert refused.status == "refused" and azure.standin.api_requests() == []
    assert [k["keyId"] for k in getattr(azure.standin, store)[oid]["keyCredentials"]] == [OTHER_CERT]


# -- azure.disable-service-principal ------------------------------------------------------------
def test_disable_service_principal_and_roll_back(azure, sp_password):
    action = get_action("azure.disable-service-principal")()
    c = ctx(azure, sp_password, object_id=SP)
    planned = action.plan(c)
    assert planned.calls[0].params == {"id": SP, "accountEnabled": False} and mutating(azure) == []
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["account_enabled"] is True and result.after["account_enabled"] is False
    sent = mutating(azure)
    assert [(m, p) for m, p, _ in sent] == [("PATCH", f"/v1.0/servicePrincipals/{SP}")]
    assert sent[0][2]["accountEnabled"] is False
    assert azure.standin.service_principals[SP]["accountEnabled"] is False
    assert azure.standin.service_principals[OTHER_SP]["accountEnabled"] is True

    azure.standin.requests.clear()
    again = action.run(c)
    assert again.status == "already_contained" and mutating(azure) == []
    assert action.verify(c)[0] is True
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back" and undone.after["account_enabled"] is True
    assert [(m, p, b["accountEnabled"]) for m, p, b in mutating(azure)] == [
        ("PATCH", f"/v1.0/servicePrincipals/{SP}", True)]
    assert azure.standin.service_principals[SP]["accountEnabled"] is True
    azure.standin.requests.clear()
    assert action.rollback(c, again).calls == [] and mutating(azure) == []


def test_disable_service_principal_refuses_another_one(azure, sp_password):
    result = run(azure, "azure.disable-service-principal", sp_password, object_id=OTHER_SP)
    assert result.status == "refused" and azure.standin.api_requests() == []
    assert azure.standin.service_principals[OTHER_SP]["accountEnabled"] is True


# -- azure.remove-role-assignment ---------------------------------------------------------------
def test_remove_role_assignment_and_recreate_it(azure, role_assignment):
    action = get_action("azure.remove-role-assignment")()
    c = ctx(azure, role_assignment, assignment_id=RA)
    planned = action.plan(c)
    assert [(p.service, p.operation, p.params) for p in planned.calls] == [
        ("authorization", "role_assignments.delete_by_id", {"role_assignment_id": RA})]
    assert mutating(azure) == []
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before == {"assignment_id": RA, "name": RA.rsplit("/", 1)[1],
                             "scope": f"/subscriptions/{SUBSCRIPTION}", "principal_id": SP,
                             "principal_type": "ServicePrincipal", "role_definition_id": OWNER_ROLE,
                             "condition": None, "condition_version": None, "description": None}
    assert result.after is None
    assert mutating(azure) == [("DELETE", RA, {})]
    assert RA.lower() not in azure.standin.role_assignments and OTHER_RA.lower() in azure.standin.role_assignments
    arm = azure.standin.api_requests(api="arm")
    assert all(r["query"]["api-version"] == "2022-04-01" and r["auth"].startswith("Bearer ") for r in arm)

    azure.standin.requests.clear()
    again = action.run(c)
    assert again.status == "already_contained" and again.data == {"missing": True} and mutating(azure) == []
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back", undone.error
    assert mutating(azure) == [("PUT", RA, {"properties": {"roleDefinitionId": OWNER_ROLE, "principalId": SP,
                                                           "principalType": "ServicePrincipal"}})]
    restored = azure.standin.role_assignments[RA.lower()]["properties"]
    assert (restored["principalId"], restored["roleDefinitionId"]) == (SP, OWNER_ROLE)
    assert undone.after["principal_id"] == SP


def test_remove_role_assignment_refuses_another_assignment_and_cordons_own(azure, role_assignment):
    result = run(azure, "azure.remove-role-assignment", role_assignment, assignment_id=OTHER_RA)
    assert result.status == "refused" and azure.standin.api_requests() == []
    assert OTHER_RA.lower() in azure.standin.role_assignments
    mine = RA.replace("4d5e6f7a", "aaaaaaaa")
    azure.standin.ensure_role_assignment(mine, azure.own_sp_id, OWNER_ROLE)
    det = azure_detection("azure_role_assignment", mine, target=azure.own_sp_id, account=SUBSCRIPTION)
    result = run(azure, "azure.remove-role-assignment", det, assignment_id=mine)
    assert result.status == "refused" and "Cordon's own identity" in result.error
    assert mutating(azure) == [] and mine.lower() in azure.standin.role_assignments


@pytest.mark.parametrize("status", [429, 500, 503])
def test_arm_throttling_and_5xx_are_retried_by_azure_core(azure, role_assignment, status):
    azure.fail_next(f"DELETE {RA}", status, headers={"Retry-After": "0"})
    result = run(azure, "azure.remove-role-assignment", role_assignment, assignment_id=RA)
    assert result.status == "contained", result.error
    assert [r["status"] for r in azure.standin.api_requests(mutating=True)] == [status, 200]
    assert RA.lower() not in azure.standin.role_assignments


def test_arm_404_on_read_is_missing(azure, role_assignment):
    azure.fail_next(f"GET {RA}", 404)
    result = run(azure, "azure.remove-role-assignment", role_assignment, assignment_id=RA)
    assert result.status == "already_contained" and result.data == {"missing": True} and mutating(azure) == []


# -- azure.remove-federated-credential / azure.revoke-user-sessions ------------------------------
def test_remove_federated_credential(azure):
    uid = f"{APP}/federatedIdentityCredentials/{FIC_ID}"
    det = azure_detection("azure_federated_credential", uid, owner=APP, owner_type="Application",
                          attributes={"subject": "repo:evil/x:ref:refs/heads/main"})
    azure.seed_from_detection(det)
    azure.standin.add_federated(APP, "0e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b", "repo:good/y:ref:main")
    azure.standin.requests.clear()
    action = get_action("azure.remove-federated-credential")()
    c = ctx(azure, det, credential=uid)
    assert action.plan(c).calls[0].params == {"id": APP, "federatedIdentityCredentialId": FIC_ID}
    assert mutating(azure) == []
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["subject"] == "repo:evil/x:ref:refs/heads/main" and result.after is None
    assert mutating(azure) == [("DELETE", f"/v1.0/applications/{APP}/federatedIdentityCredentials/{FIC_ID}", {})]
    assert list(azure.standin.federated[APP]) == ["0e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b"]
    azure.standin.requests.clear()
    assert action.run(c).status == "already_contained" and mutating(azure) == []
    other = f"{APP}/federatedIdentityCredentials/0e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b"
    refused = action.run(ctx(azure, det, credential=other))
    assert refused.status == "refused" and mutating(azure) == [] and len(azure.standin.federated[APP]) == 1


def test_revoke_user_sessions_is_idempotent_against_the_detection_time(azure):
    det = azure_detection("azure_user", USER, target=USER, event_name="Add user")
    azure.seed_from_detection(det)
    azure.standin.requests.clear()
    action = get_action("azure.revoke-user-sessions")()
    c = ctx(azure, det, user_id=USER)
    assert action.plan(c).before["revoked_since_detection"] is False and mutating(azure) == []
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["sessions_valid_from"] == "2024-01-01T00:00:00Z"
    assert result.after["revoked_since_detection"] is True
    assert mutating(azure) == [("POST", f"/v1.0/users/{USER}/revokeSignInSessions", {})]
    azure.standin.requests.clear()
    assert action.run(c).status == "already_contained" and mutating(azure) == []
    assert run(azure, "azure.revoke-user-sessions", det, user_id=OTHER_SP).status == "refused"
    assert mutating(azure) == []


# -- azure.service-principal enrichment ---------------------------------------------------------
def test_service_principal_facts(azure, sp_password):
    facts = get_action("azure.service-principal")().run(ctx(azure, sp_password, object_id=SP))
    assert facts["exists"] is True and facts["object_type"] == "ServicePrincipal"
    assert facts["display_name"] == "evil-sp" and facts["app_id"] == "aaaa0000-1111-4222-8333-444455556666"
    assert facts["account_enabled"] is True
    assert facts["owners"] == [{"id": OWNER_USER, "type": "user", "display_name": "Alice",
                                "user_principal_name": "alice@contoso.example", "app_id": None}]
    assert [p["key_id"] for p in facts["password_credentials"]] == [KEY, OTHER_KEY]
    assert facts["password_credentials"][1]["display_name"] == "legit-rotation"
    assert [k["key_id"] for k in facts["key_credentials"]] == ["6b5a4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d"]
    assert facts["key_credentials"][0]["type"] == "AsymmetricX509Cert"
    assert facts["credential_in_detection_present"] is True and facts["password_count"] == 2
    assert "key\"" not in json.dumps(facts["key_credentials"]) and mutating(azure) == []
    paths = [r["path"] for r in azure.standin.api_requests()]
    assert paths[:3] == [f"/v1.0/servicePrincipals/{SP}", "/v1.0/applications(appId='aaaa0000-1111-4222-8333-"
                         "444455556666')", f"/v1.0/servicePrincipals/{SP}/owners"]
    assert facts["application"] is None and facts["unavailable"] == {}
    gone = get_action("azure.service-principal")().run(ctx(azure, sp_password, object_id=OTHER_SP.replace("9", "1")))
    assert gone["exists"] is False
