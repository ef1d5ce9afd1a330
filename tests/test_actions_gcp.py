"""GCP actions against the stand-in: the real google-api-python-client over real HTTP, with
service-account credentials whose token_uri is the stand-in (so the JWT-bearer token exchange
happens and every API call carries the bearer token). No mocks.
"""

from __future__ import annotations

import copy
import json
import re
import urllib.error
import urllib.request

import pytest

from cordon.action import ActionContext, ActionParamError, GuardError, all_actions, get_action
from cordon.providers.gcp.clients import gcp_clients
from tests.gcp_fixtures import *  # noqa: F401,F403
from tests.gcp_fixtures import PROJECT, gcp_detection, real_audit_entry

EVIL = f"evil-sa@{PROJECT}.iam.gserviceaccount.com"
OTHER = f"ci-deployer@{PROJECT}.iam.gserviceaccount.com"
KEY_ID = "3f1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a"
OTHER_KEY_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
KEY = f"projects/{PROJECT}/serviceAccounts/{EVIL}/keys/{KEY_ID}"
OTHER_KEY = f"projects/{PROJECT}/serviceAccounts/{OTHER}/keys/{OTHER_KEY_ID}"
TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"
BINDING = f"projects/{PROJECT}#{TOKEN_CREATOR}#user:eve@example.com"
IAM_KEYS = f"/iam/v1/projects/{PROJECT}/serviceAccounts"


def ctx(gcp, detection, **params):
    return ActionContext(detection=detection, params=params, clients=gcp.client_factory())


def run(gcp, name, detection, **params):
    return get_action(name)().run(ctx(gcp, detection, **params))


def mutating(gcp):
    return [(r["method"], r["path"]) for r in gcp.standin.api_requests(mutating=True)]


def key_state(gcp, email, key_id):
    return gcp.standin.sa_keys[email].get(key_id)


@pytest.fixture
def sa_key(gcp):
    """A CreateServiceAccountKey detection for EVIL's key, seeded; plus a key of OTHER."""
    det = gcp_detection("gcp_sa_key", KEY, owner=EVIL)
    gcp.seed_from_detection(det)
    gcp.standin.ensure_sa_key(OTHER, OTHER_KEY_ID)
    gcp.standin.requests.clear()
    return det


# -- registry, clients, stand-in -----------------------------------------------------------------
EXPECTED = {"gcp.disable-sa-key", "gcp.delete-sa-key", "gcp.disable-service-account", "gcp.remove-iam-binding",
            "gcp.delete-api-key", "gcp.delete-oslogin-ssh-key", "gcp.deactivate-hmac-key", "gcp.service-account",
            "gcp.actor", "gcp.unnamed-sa-key", "gcp.disable-unnamed-sa-key"}


def test_every_gcp_action_is_registered_and_self_describes():
    actions = {n: a for n, a in all_actions().items() if n.startswith("gcp.")}
    assert set(actions) == EXPECTED
    assert "aws.deactivate-access-key" in all_actions()  # load_builtin_actions imports every provider
    for name, cls in actions.items():
        d = cls.describe()
        assert d["provider"] == "gcp" and f"action: {name}" in d["doc"], name
        assert "https://cloud.google.com/" in d["doc"], name
        for perm in d["permissions"]:
            assert re.fullmatch(r"[a-z]+\.[a-zA-Z]+\.[a-zA-Z]+", perm), perm
        if d["kind"] == "contain":
            assert d["credential_kinds"] and d["permissions"], name
            assert set(d["credential_kinds"]) <= {"gcp_sa_key", "gcp_service_account", "gcp_iam_binding",
                                                  "gcp_api_key", "gcp_oslogin_ssh_key", "gcp_hmac_key"}


def test_params_are_validated_and_identify_the_detections_credential(sa_key):
    action = get_action("gcp.disable-sa-key")
    action.validate_params({"key_name": KEY, "service_account": EVIL})
    with pytest.raises(ActionParamError) as err:
        action.validate_params({"key_name": f"projects/{PROJECT}/serviceAccounts/{EVIL}"})
    assert err.value.field == "key_name"
    with pytest.raises(ActionParamError):
        get_action("gcp.remove-iam-binding").validate_params({"binding": "projects/p1#roles/owner"})
    assert action.check_identifies({"key_name": KEY, "service_account": EVIL}, sa_key) is None
    assert "not the detection's" in action.check_identifies({"key_name": OTHER_KEY}, sa_key)


def test_token_exchange_and_bearer_on_every_call(gcp, sa_key):
    clients = gcp.client_factory()
    key = clients("iam", "v1").projects().serviceAccounts().keys().get(name=KEY).execute()
    assert key["name"] == KEY and key["keyType"] == "USER_MANAGED"
    reqs = gcp.standin.requests
    token_reqs = [r for r in reqs if r["api"] == "oauth2"]
    for r in token_reqs:  # the session's client may hold a token from an earlier test
        assert r["body"]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer" and r["status"] == 200
    api = gcp.standin.api_requests()
    assert api and all(r["auth"].startswith("Bearer ya29.standin-") for r in api)
    # every bearer was issued by the stand-in's /token to Cordon's identity
    assert {gcp.standin.tokens[r["auth"].removeprefix("Bearer ")] for r in api} == {gcp.own_email}
    assert {r["principal"] for r in api} == {f"cordon-responder@{PROJECT}.iam.gserviceaccount.com"}
    assert clients.own_identity() == f"cordon-responder@{PROJECT}.iam.gserviceaccount.com"
    # no bearer -> 401
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{gcp.url}/iam/v1/{KEY}", timeout=5)  # noqa: S310 - loopback
    assert err.value.code == 401
    assert json.loads(err.value.read())["error"]["status"] == "UNAUTHENTICATED"


def test_fresh_process_clients_exchange_a_token_from_cloud_params(gcp, sa_key):
    params = json.loads(json.dumps(gcp.cloud_params()))  # what a worker in another process receives
    assert params["sandbox"] is True and params["token_uri"] == f"{gcp.url}/token"
    assert params["credentials_info"]["client_email"] == f"cordon-responder@{PROJECT}.iam.gserviceaccount.com"
    clients = gcp_clients(params)
    got = clients("storage", "v1")  # servicePath storage/v1/ is part of the endpoint
    gcp.standin.ensure_hmac_key(PROJECT, "GOOG1EXAMPLE", EVIL)
    assert got.projects().hmacKeys().get(projectId=PROJECT, accessId="GOOG1EXAMPLE").execute()["state"] == "ACTIVE"
    token = [r for r in gcp.standin.requests if r["api"] == "oauth2"]
    assert len(token) == 1 and token[0]["body"]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    issued = gcp.standin.api_requests()[-1]["auth"].removeprefix("Bearer ")
    assert gcp.standin.tokens[issued] == params["credentials_info"]["client_email"]
    assert gcp.standin.api_requests()[-1]["path"] == f"/storage/storage/v1/projects/{PROJECT}/hmacKeys/GOOG1EXAMPLE"


def test_token_endpoint_rejects_an_unknown_issuer(gcp):
    from cordon.sandbox.gcp import generate_service_account_info

    info, _ = generate_service_account_info(f"stranger@{PROJECT}.iam.gserviceaccount.com", PROJECT, gcp.token_uri)
    clients = gcp_clients({"sandbox": True, "endpoint": gcp.url, "token_uri": gcp.token_uri,
                           "credentials_info": info, "project": PROJECT})
    from google.auth.exceptions import RefreshError

    with pytest.raises(RefreshError):
        clients("iam", "v1").projects().serviceAccounts().list(name=f"projects/{PROJECT}").execute()
    assert gcp.standin.api_requests() == []


def test_seeding_is_idempotent_and_exact(gcp, sa_key):
    report = gcp.seed_from_detection(sa_key)
    assert report["sa_keys"] == [KEY] and EVIL in report["service_accounts"]
    assert list(gcp.standin.sa_keys[EVIL]) == [KEY_ID]
    assert gcp.standin.sa_keys[EVIL][KEY_ID]["validAfterTime"] == "2024-07-30T21:53:13Z"


# -- gcp.disable-sa-key -----------------------------------------------------------------------------
def test_disable_sa_key_contains_only_the_named_key(gcp, sa_key):
    result = run(gcp, "gcp.disable-sa-key", sa_key, key_name=KEY, service_account=EVIL)
    assert result.status == "contained", result.error
    assert result.target == KEY
    assert result.before["disabled"] is False and result.after["disabled"] is True
    assert result.before["key_type"] == "USER_MANAGED" and result.before["valid_after"] == "2024-07-30T21:53:13Z"
    assert [c.describe() for c in result.calls] == [
        f"iam.v1:projects.serviceAccounts.keys.disable(body={{}}, name={KEY})"]
    assert key_state(gcp, EVIL, KEY_ID)["disabled"] is True
    assert key_state(gcp, OTHER, OTHER_KEY_ID)["disabled"] is False
    sent = gcp.standin.api_requests(mutating=True)
    assert [(r["method"], r["path"], r["body"]) for r in sent] == [("POST", f"/iam/v1/{KEY}:disable", {})]
    assert sent[0]["auth"].startswith("Bearer ")

    gcp.standin.requests.clear()
    again = run(gcp, "gcp.disable-sa-key", sa_key, key_name=KEY, service_account=EVIL)
    assert again.status == "already_contained" and again.calls == [] and again.data is None
    assert mutating(gcp) == []

    action = get_action("gcp.disable-sa-key")()
    c = ctx(gcp, sa_key, key_name=KEY, service_account=EVIL)
    assert action.verify(c)[0] is True
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back" and undone.after["disabled"] is False
    assert mutating(gcp) == [("POST", f"/iam/v1/{KEY}:enable")]
    assert key_state(gcp, EVIL, KEY_ID)["disabled"] is False
    gcp.standin.requests.clear()
    assert action.rollback(c, again).calls == [] and mutating(gcp) == []


def test_plan_lists_the_call_and_changes_nothing(gcp, sa_key):
    planned = get_action("gcp.disable-sa-key")().plan(ctx(gcp, sa_key, key_name=KEY, service_account=EVIL))
    assert planned.status == "planned" and planned.before["disabled"] is False
    assert [(c.service, c.operation, c.params) for c in planned.calls] == [
        ("iam.v1", "projects.serviceAccounts.keys.disable", {"name": KEY, "body": {}})]
    assert mutating(gcp) == [] and key_state(gcp, EVIL, KEY_ID)["disabled"] is False


@pytest.mark.parametrize("params", [
    {"key_name": OTHER_KEY, "service_account": EVIL},  # another account's key, named under it
    {"key_name": f"projects/-/serviceAccounts/UNIQUEID/keys/{OTHER_KEY_ID}", "service_account": EVIL},
])
def test_a_key_of_another_service_account_is_refused(gcp, sa_key, params):
    if "UNIQUEID" in params["key_name"]:
        unique = gcp.standin.service_accounts[OTHER]["uniqueId"]
        params = {**params, "key_name": params["key_name"].replace("UNIQUEID", unique)}
    for name in ("gcp.disable-sa-key", "gcp.delete-sa-key"):
        result = run(gcp, name, sa_key, **params)
        assert result.status == "refused" and OTHER_KEY_ID in result.error and "GuardError" in result.error
        assert result.calls == []
    assert mutating(gcp) == []
    assert key_state(gcp, OTHER, OTHER_KEY_ID)["disabled"] is False
    assert key_state(gcp, EVIL, KEY_ID)["disabled"] is False


def test_system_managed_keys_and_cordons_own_keys_are_refused(gcp, sa_key):
    gcp.standin.ensure_sa_key(EVIL, "f" * 40, key_type="SYSTEM_MANAGED")
    sys_key = f"projects/{PROJECT}/serviceAccounts/{EVIL}/keys/{'f' * 40}"
    result = run(gcp, "gcp.disable-sa-key", sa_key, key_name=sys_key, service_account=EVIL)
    assert result.status == "refused" and "system-managed" in result.error
    me = gcp.own_email
    gcp.standin.ensure_sa_key(me, "e" * 40)
    mine = f"projects/{PROJECT}/serviceAccounts/{me}/keys/{'e' * 40}"
    result = run(gcp, "gcp.disable-sa-key", sa_key, key_name=mine)
    assert result.status == "refused" and "Cordon's own identity" in result.error
    assert mutating(gcp) == [] and key_state(gcp, me, "e" * 40)["disabled"] is False


def test_missing_key_is_already_contained(gcp, sa_key):
    gone = f"projects/{PROJECT}/serviceAccounts/{EVIL}/keys/{'9' * 40}"
    result = run(gcp, "gcp.disable-sa-key", sa_key, key_name=gone, service_account=EVIL)
    assert result.status == "already_contained" and result.data == {"missing": True} and result.before is None
    assert [(r["method"], r["status"]) for r in gcp.standin.api_requests()] == [("GET", 404)]


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_and_5xx_are_retried_by_the_client(gcp, sa_key, status):
    gcp.fail_next(f"POST {IAM_KEYS}", status, times=1, headers={"Retry-After": "0"})
    result = run(gcp, "gcp.disable-sa-key", sa_key, key_name=KEY, service_account=EVIL)
    assert result.status == "contained", result.error
    assert [(r["method"], r["status"]) for r in gcp.standin.api_requests(mutating=True)] == [
        ("POST", status), ("POST", 200)]
    assert key_state(gcp, EVIL, KEY_ID)["disabled"] is True


def test_persistent_5xx_fails_and_changes_nothing(gcp, sa_key):
    gcp.fail_next(f"POST {IAM_KEYS}", 500, times=10)
    import cordon.providers.gcp.actions as gcp_actions

    old = gcp_actions.NUM_RETRIES
    gcp_actions.NUM_RETRIES = 1  # one retry keeps the back-off short; the library does the retrying
    try:
        result = run(gcp, "gcp.disable-sa-key", sa_key, key_name=KEY, service_account=EVIL)
    finally:
        gcp_actions.NUM_RETRIES = old
    assert result.status == "failed" and "500" in result.error
    assert [r["status"] for r in gcp.standin.api_requests(mutating=True)] == [500, 500]
    assert key_state(gcp, EVIL, KEY_ID)["disabled"] is False


# -- gcp.delete-sa-key --------------------------------------------------------------------------------
def test_delete_sa_key_records_before_and_cannot_roll_back(gcp, sa_key):
    result = run(gcp, "gcp.delete-sa-key", sa_key, key_name=KEY, service_account=EVIL)
    assert result.status == "contained", result.error
    assert result.before["key_id"] == KEY_ID and result.after is None and result.rollback is None
    assert mutating(gcp) == [("DELETE", f"/iam/v1/{KEY}")]
    assert key_state(gcp, EVIL, KEY_ID) is None and key_state(gcp, OTHER, OTHER_KEY_ID) is not None
    gcp.standin.requests.clear()
    again = run(gcp, "gcp.delete-sa-key", sa_key, key_name=KEY, service_account=EVIL)
    assert again.status == "already_contained" and again.data == {"missing": True} and mutating(gcp) == []
    with pytest.raises(GuardError):
        get_action("gcp.delete-sa-key")().rollback(ctx(gcp, sa_key, key_name=KEY), result)


# -- gcp.disable-service-account ----------------------------------------------------------------------
def test_disable_service_account_and_roll_back(gcp):
    det = gcp_detection("gcp_service_account", EVIL, owner=None, target=EVIL,
                        event_name="google.iam.admin.v1.CreateServiceAccount")
    gcp.seed_from_detection(det)
    gcp.standin.requests.clear()
    action = get_action("gcp.disable-service-account")()
    c = ctx(gcp, det, service_account=EVIL)
    assert action.check_identifies({"service_account": EVIL}, det) is None
    planned = action.plan(c)
    assert [c_.describe() for c_ in planned.calls] == [
        f"iam.v1:projects.serviceAccounts.disable(body={{}}, name=projects/{PROJECT}/serviceAccounts/{EVIL})"]
    assert mutating(gcp) == []
    result = action.run(c)
    assert result.status == "contained" and result.before["disabled"] is False and result.after["disabled"] is True
    assert mutating(gcp) == [("POST", f"/iam/v1/projects/{PROJECT}/serviceAccounts/{EVIL}:disable")]
    assert gcp.standin.service_accounts[EVIL]["disabled"] is True
    gcp.standin.requests.clear()
    assert action.run(c).status == "already_contained" and mutating(gcp) == []
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back" and gcp.standin.service_accounts[EVIL]["disabled"] is False
    assert mutating(gcp) == [("POST", f"/iam/v1/projects/{PROJECT}/serviceAccounts/{EVIL}:enable")]

    mine = run(gcp, "gcp.disable-service-account", det, service_account=gcp.own_email)
    assert mine.status == "refused" and gcp.standin.service_accounts[gcp.own_email]["disabled"] is False
    missing = run(gcp, "gcp.disable-service-account", det, service_account=f"ghost@{PROJECT}.iam.gserviceaccount.com")
    assert missing.status == "already_contained" and missing.data == {"missing": True}


# -- gcp.remove-iam-binding ---------------------------------------------------------------------------
CONDITION = {"title": "expires-2030", "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")'}


@pytest.fixture
def grant(gcp):
    det = gcp_detection("gcp_iam_binding", BINDING, owner=None, target="eve@example.com",
                        event_name="SetIamPolicy")
    gcp.seed_from_detection(det)
    gcp.standin.add_binding(f"projects/{PROJECT}", TOKEN_CREATOR, "user:bob@example.com")
    gcp.standin.add_binding(f"projects/{PROJECT}", TOKEN_CREATOR, "user:eve@example.com", CONDITION)
    gcp.standin.add_binding(f"projects/{PROJECT}", "roles/viewer", "group:ops@example.com")
    gcp.standin.requests.clear()
    return det


def _bindings(gcp, resource=f"projects/{PROJECT}"):
    return {(b["role"], (b.get("condition") or {}).get("title")): sorted(b["members"])
            for b in gcp.standin.policy(resource)["bindings"]}


def test_remove_iam_binding_removes_one_member_with_the_etag_read(gcp, grant):
    etag_before = gcp.standin.policy(f"projects/{PROJECT}")["etag"]
    result = run(gcp, "gcp.remove-iam-binding", grant, binding=BINDING)
    assert result.status == "contained", result.error
    assert result.before["present"] is True and result.after["present"] is False
    assert result.before["binding_members"] == ["user:bob@example.com", "user:eve@example.com"]
    assert result.before["member_elsewhere"] == [{"role": TOKEN_CREATOR, "condition_title": "expires-2030"}]
    assert _bindings(gcp) == {
        (TOKEN_CREATOR, None): ["user:bob@example.com"],
        (TOKEN_CREATOR, "expires-2030"): ["user:eve@example.com"],  # conditional binding untouched
        ("roles/viewer", None): ["group:ops@example.com"],
    }
    sets = gcp.standin.api_requests(mutating=True)
    assert [(r["method"], r["path"]) for r in sets] == [
        ("POST", f"/cloudresourcemanager/v1/projects/{PROJECT}:setIamPolicy")]
    sent = sets[0]["body"]["policy"]
    assert sent["etag"] == etag_before and sent["version"] == 3
    assert next(b for b in sent["bindings"] if b.get("condition"))["condition"] == CONDITION
    reads = [r for r in gcp.standin.api_requests() if r["path"].endswith(":getIamPolicy")]
    assert reads[0]["body"] == {"options": {"requestedPolicyVersion": 3}}

    gcp.standin.requests.clear()
    again = run(gcp, "gcp.remove-iam-binding", grant, binding=BINDING)
    assert again.status == "already_contained" and mutating(gcp) == []

    action = get_action("gcp.remove-iam-binding")()
    undone = action.rollback(ctx(gcp, grant, binding=BINDING), result)
    assert undone.status == "rolled_back", undone.error
    assert _bindings(gcp)[(TOKEN_CREATOR, None)] == ["user:bob@example.com", "user:eve@example.com"]
    assert _bindings(gcp)[(TOKEN_CREATOR, "expires-2030")] == ["user:eve@example.com"]


def test_remove_iam_binding_plan_changes_nothing(gcp, grant):
    before = gcp.standin.policy(f"projects/{PROJECT}")
    planned = get_action("gcp.remove-iam-binding")().plan(ctx(gcp, grant, binding=BINDING))
    assert [(c.service, c.operation, c.params["resource"]) for c in planned.calls] == [
        ("cloudresourcemanager.v1", "projects.setIamPolicy", PROJECT)]
    assert planned.calls[0].params["body"]["policy"]["etag"] == before["etag"]
    assert mutating(gcp) == [] and gcp.standin.policy(f"projects/{PROJECT}") == before


def test_stale_etag_is_reread_and_the_concurrent_change_survives(gcp, grant):
    def concurrent_change(standin):
        standin.add_binding(f"projects/{PROJECT}", "roles/storage.admin", "user:carol@example.com")
        standin.add_binding(f"projects/{PROJECT}", TOKEN_CREATOR, "user:dave@example.com")

    gcp.standin.on_next(f"POST /cloudresourcemanager/v1/projects/{PROJECT}:setIamPolicy", concurrent_change)
    result = run(gcp, "gcp.remove-iam-binding", grant, binding=BINDING)
    assert result.status == "contained", result.error
    sets = [r for r in gcp.standin.api_requests(mutating=True)]
    assert [r["status"] for r in sets] == [409, 200]
    assert sets[0]["body"]["policy"]["etag"] != sets[1]["body"]["policy"]["etag"]
    assert _bindings(gcp) == {
        (TOKEN_CREATOR, None): ["user:bob@example.com", "user:dave@example.com"],
        (TOKEN_CREATOR, "expires-2030"): ["user:eve@example.com"],
        ("roles/viewer", None): ["group:ops@example.com"],
        ("roles/storage.admin", None): ["user:carol@example.com"],
    }
    # the call recorded is the one that succeeded (with the fresh etag)
    assert result.calls[0].params["body"]["policy"]["etag"] == sets[1]["body"]["policy"]["etag"]


def test_remove_iam_binding_gives_up_after_bounded_retries(gcp, grant):
    def bump(standin):
        standin.add_binding(f"projects/{PROJECT}", "roles/viewer", f"user:u{len(standin.requests)}@example.com")

    for _ in range(5):
        gcp.standin.on_next(f"POST /cloudresourcemanager/v1/projects/{PROJECT}:setIamPolicy", bump)
    result = run(gcp, "gcp.remove-iam-binding", grant, binding=BINDING)
    assert result.status == "failed" and "409" in result.error
    assert [r["status"] for r in gcp.standin.api_requests(mutating=True)] == [409] * 4
    assert "user:eve@example.com" in _bindings(gcp)[(TOKEN_CREATOR, None)]


def test_remove_binding_on_a_service_account_policy(gcp):
    resource = f"projects/{PROJECT}/serviceAccounts/{EVIL}"
    uid = f"{resource}#{TOKEN_CREATOR}#user:test-user@example.com"
    det = gcp_detection("gcp_iam_binding", uid, target=EVIL, event_name="google.iam.admin.v1.SetIAMPolicy")
    assert gcp.seed_from_detection(det)["bindings"] == [uid]
    gcp.standin.add_binding(resource, "roles/iam.serviceAccountUser", "user:test-user@example.com")
    gcp.standin.requests.clear()
    result = run(gcp, "gcp.remove-iam-binding", det, binding=uid)
    assert result.status == "contained", result.error
    assert _bindings(gcp, resource) == {("roles/iam.serviceAccountUser", None): ["user:test-user@example.com"]}
    assert mutating(gcp) == [("POST", f"/iam/v1/{resource}:setIamPolicy")]
    get = next(r for r in gcp.standin.api_requests() if r["path"].endswith(":getIamPolicy"))
    assert get["query"]["options.requestedPolicyVersion"] == "3"
    undone = get_action("gcp.remove-iam-binding")().rollback(ctx(gcp, det, binding=uid), result)
    assert undone.status == "rolled_back" and TOKEN_CREATOR in {r for r, _ in _bindings(gcp, resource)}


def test_removing_cordons_own_membership_is_refused(gcp):
    uid = f"projects/{PROJECT}#roles/iam.securityAdmin#serviceAccount:{gcp.own_email}"
    det = gcp_detection("gcp_iam_binding", uid)
    gcp.seed_from_detection(det)
    gcp.standin.requests.clear()
    result = run(gcp, "gcp.remove-iam-binding", det, binding=uid)
    assert result.status == "refused" and mutating(gcp) == []
    assert _bindings(gcp)[("roles/iam.securityAdmin", None)] == [f"serviceAccount:{gcp.own_email}"]


# -- gcp.delete-api-key -------------------------------------------------------------------------------
def test_delete_api_key_and_undelete(gcp):
    name = f"projects/{PROJECT}/locations/global/keys/6f1e6c6e-1b2c-4d5e-8f90-a1b2c3d4e5f6"
    det = gcp_detection("gcp_api_key", name, event_name="google.api.apikeys.v2.ApiKeys.CreateKey")
    gcp.seed_from_detection(det)
    gcp.standin.requests.clear()
    etag = gcp.standin.api_keys[name]["etag"]
    result = run(gcp, "gcp.delete-api-key", det, key_name=name)
    assert result.status == "contained", result.error
    assert result.before["deleted"] is False and result.after["deleted"] is True
    assert "keyString" not in json.dumps(result.model_dump())
    sent = gcp.standin.api_requests(mutating=True)
    assert [(r["method"], r["path"], r["query"].get("etag")) for r in sent] == [("DELETE", f"/apikeys/v2/{name}", etag)]
    assert gcp.standin.api_keys[name]["deleteTime"]
    gcp.standin.requests.clear()
    assert run(gcp, "gcp.delete-api-key", det, key_name=name).status == "already_contained"
    assert mutating(gcp) == []
    undone = get_action("gcp.delete-api-key")().rollback(ctx(gcp, det, key_name=name), result)
    assert undone.status == "rolled_back" and undone.after["deleted"] is False
    assert mutating(gcp) == [("POST", f"/apikeys/v2/{name}:undelete")]
    assert "deleteTime" not in gcp.standin.api_keys[name]


# -- gcp.delete-oslogin-ssh-key -----------------------------------------------------------------------
def test_delete_oslogin_ssh_key_records_the_key_material(gcp):
    fp = "e0d96d6fad35a61a0577f467940509b5aa08b6dea8d99456ec19a6e47126bc52"
    name = f"users/{EVIL}/sshPublicKeys/{fp}"
    material = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5bWF0ZXJpYWwwMDAwMDAwMDAwMDAw {EVIL}"
    det = gcp_detection("gcp_oslogin_ssh_key", name, owner=EVIL, attributes={"key": material},
                        event_name="google.cloud.oslogin.v1.OsLoginService.ImportSshPublicKey")
    gcp.seed_from_detection(det)
    gcp.standin.ensure_ssh_key(EVIL, "a" * 64)
    gcp.standin.requests.clear()
    result = run(gcp, "gcp.delete-oslogin-ssh-key", det, key_name=name)
    assert result.status == "contained", result.error
    assert result.before["key"] == material and result.after is None
    assert mutating(gcp) == [("DELETE", f"/oslogin/v1/{name}")]
    assert list(gcp.standin.ssh_keys[EVIL]) == ["a" * 64]
    gcp.standin.requests.clear()
    assert run(gcp, "gcp.delete-oslogin-ssh-key", det, key_name=name).data == {"missing": True}
    assert mutating(gcp) == []
    mine = f"users/{gcp.own_email}/sshPublicKeys/{'b' * 64}"
    gcp.standin.ensure_ssh_key(gcp.own_email, "b" * 64)
    assert run(gcp, "gcp.delete-oslogin-ssh-key", det, key_name=mine).status == "refused"
    assert mutating(gcp) == []


# -- gcp.deactivate-hmac-key --------------------------------------------------------------------------
def test_deactivate_hmac_key_with_etag_and_roll_back(gcp):
    name = f"projects/{PROJECT}/hmacKeys/GOOG1EXAMPLEACCESSID"
    det = gcp_detection("gcp_hmac_key", name, owner=EVIL, event_name="CreateHmacKey")
    gcp.seed_from_detection(det)
    gcp.standin.requests.clear()
    etag = gcp.standin.hmac_keys[(PROJECT, "GOOG1EXAMPLEACCESSID")]["etag"]
    action = get_action("gcp.deactivate-hmac-key")()
    c = ctx(gcp, det, key_name=name)
    result = action.run(c)
    assert result.status == "contained", result.error
    assert result.before["state"] == "ACTIVE" and result.after["state"] == "INACTIVE"
    assert result.before["service_account_email"] == EVIL
    sent = gcp.standin.api_requests(mutating=True)
    assert [(r["method"], r["path"], r["body"]) for r in sent] == [
        ("PUT", f"/storage/storage/v1/{name}", {"state": "INACTIVE", "etag": etag})]
    gcp.standin.requests.clear()
    assert action.run(c).status == "already_contained" and mutating(gcp) == []
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back" and undone.after["state"] == "ACTIVE"
    assert gcp.standin.hmac_keys[(PROJECT, "GOOG1EXAMPLEACCESSID")]["state"] == "ACTIVE"


def test_injected_404_on_read_is_missing(gcp):
    name = f"projects/{PROJECT}/hmacKeys/GOOG1GONE"
    det = gcp_detection("gcp_hmac_key", name, owner=EVIL)
    gcp.seed_from_detection(det)
    gcp.fail_next("GET /storage/", 404)
    result = run(gcp, "gcp.deactivate-hmac-key", det, key_name=name)
    assert result.status == "already_contained" and result.data == {"missing": True}
    assert gcp.standin.hmac_keys[(PROJECT, "GOOG1GONE")]["state"] == "ACTIVE" and mutating(gcp) == []


# -- enrichment ---------------------------------------------------------------------------------------
def test_service_account_enrichment_reads_keys_roles_and_who_can_act_as_it(gcp, sa_key):
    gcp.standin.ensure_sa_key(EVIL, "c" * 40, key_type="SYSTEM_MANAGED")
    gcp.standin.sa_keys[EVIL][KEY_ID]["disabled"] = True
    gcp.standin.add_binding(f"projects/{PROJECT}", "roles/owner", f"serviceAccount:{EVIL}")
    gcp.standin.add_binding(f"projects/{PROJECT}", "roles/iam.serviceAccountUser", "user:mallory@example.com")
    gcp.standin.add_binding(f"projects/{PROJECT}/serviceAccounts/{EVIL}", TOKEN_CREATOR, "user:eve@example.com")
    facts = get_action("gcp.service-account")().run(ctx(gcp, sa_key, service_account=EVIL))
    assert facts["exists"] is True and facts["email"] == EVIL and facts["project"] == PROJECT
    assert facts["unique_id"] == gcp.standin.service_accounts[EVIL]["uniqueId"] and facts["disabled"] is False
    assert {(k["key_id"], k["key_type"], k["disabled"]) for k in facts["keys"]} == {
        (KEY_ID, "USER_MANAGED", True), ("c" * 40, "SYSTEM_MANAGED", False)}
    assert facts["user_managed_key_count"] == 1 and facts["enabled_user_managed_key_count"] == 0
    assert facts["project_roles"] == [{"role": "roles/owner", "condition_title": None}]
    assert sorted((a["member"], a["role"], a["where"]) for a in facts["can_act_as"]) == [
        ("user:eve@example.com", TOKEN_CREATOR, "service_account"),
        ("user:mallory@example.com", "roles/iam.serviceAccountUser", "project")]
    assert mutating(gcp) == []
    ghost = get_action("gcp.service-account")().run(
        ctx(gcp, sa_key, service_account=f"ghost@{PROJECT}.iam.gserviceaccount.com"))
    assert ghost == {"exists": False, "email": f"ghost@{PROJECT}.iam.gserviceaccount.com"}


def test_service_account_enrichment_reads_folder_and_organisation_where_readable(gcp, sa_key):
    gcp.standin.set_ancestry(PROJECT, "folders/1001", "organizations/42")
    gcp.standin.add_binding("organizations/42", "roles/viewer", f"serviceAccount:{EVIL}")
    gcp.standin.add_binding("folders/1001", TOKEN_CREATOR, "group:ops@example.com")
    facts = get_action("gcp.service-account")().run(ctx(gcp, sa_key, service_account=EVIL))
    assert facts["hierarchy"] == [{"resource": "folders/1001", "readable": True},
                                  {"resource": "organizations/42", "readable": True}]
    assert facts["inherited_roles"] == [{"resource": "organizations/42", "role": "roles/viewer",
                                         "condition_title": None}]
    assert ("group:ops@example.com", TOKEN_CREATOR, "folders/1001") in {
        (a["member"], a["role"], a["where"]) for a in facts["can_act_as"]}
    paths = [r["path"] for r in gcp.standin.requests]
    assert any(p.endswith(":getAncestry") for p in paths) and any("folders/1001:getIamPolicy" in p for p in paths)

    # an organisation policy Cordon may not read is reported as unreadable, not an error
    gcp.standin.set_ancestry(PROJECT, "folders/1001", "organizations/42", readable=False)
    facts = get_action("gcp.service-account")().run(ctx(gcp, sa_key, service_account=EVIL))
    assert facts["hierarchy"] == [{"resource": "folders/1001", "readable": False},
                                  {"resource": "organizations/42", "readable": False}]
    assert facts["inherited_roles"] == [] and facts["exists"] is True


def test_actor_facts_from_a_real_audit_log_entry():
    raw = real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator")
    det = gcp_detection("gcp_iam_binding", f"projects/my-project/serviceAccounts/{EVIL}#{TOKEN_CREATOR}"
                        "#user:test-user@example.com", project="my-project", actor_email=None, raw=raw,
                        target=EVIL)
    facts = get_action("gcp.actor")().run(ActionContext(detection=det, params={}, clients=None))
    assert facts["principal_email"] == "admin@example.com" and facts["caller_ip"] == "203.0.113.255"
    assert facts["principal_subject"] == "user:admin@example.com" and facts["is_service_account"] is False
    assert facts["delegation_chain"] == [] and facts["actor_is_target"] is False

    delegated = copy.deepcopy(raw)
    delegated["protoPayload"]["authenticationInfo"] = {
        "principalEmail": EVIL,
        "serviceAccountKeyName": f"//iam.googleapis.com/{KEY}",
        "serviceAccountDelegationInfo": [{"firstPartyPrincipal": {"principalEmail": "eve@example.com"}},
                                         {"firstPartyPrincipal": {"principalEmail": OTHER}}]}
    det2 = gcp_detection("gcp_sa_key", KEY, owner=EVIL, actor_email=None, raw=delegated)
    facts2 = get_action("gcp.actor")().run(ActionContext(detection=det2, params={}, clients=None))
    assert facts2["delegation_chain"] == ["eve@example.com", OTHER] and facts2["delegated"] is True
    assert facts2["is_service_account"] is True and facts2["actor_is_target"] is True
    assert facts2["service_account_key_name"] == f"//iam.googleapis.com/{KEY}"
    det3 = gcp_detection("gcp_sa_key", KEY, owner=EVIL, attributes={"delegationChain": ["eve@example.com"]})
    facts3 = get_action("gcp.actor")().run(ActionContext(detection=det3, params={}, clients=None))
    assert facts3["delegation_chain"] == ["eve@example.com"] and facts3["principal_email"] == "eve@example.com"
    assert facts3["caller_ip"] == "198.51.100.7" and facts3["actor_is_target"] is False
