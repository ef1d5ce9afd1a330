"""The Entra ID path end to end, in process: an audit record of "Add service principal
credentials" -> Sigma -> case -> the respond flow (real Prefect) -> msgraph-sdk over real HTTP to
the Graph stand-in (tokens from the TLS token stand-in) -> exactly the new password removed ->
verified -> a ledger that verifies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cordon.audit.ledger import Ledger
from cordon.config import load_config
from cordon.engine import Responder
from cordon.sandbox.azure import AzureSandbox
from tests.helpers import one_credential_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "entra-add-sp-credentials.json"
SP = "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40"
NEW_KEY = "e4a7c9b1-3d5f-4e6a-8b0c-2d4f6a8c0e1b"
OLD_KEY = "6c2f1e0a-9b8d-4c7e-a5f3-1d2e3f4a5b6c"


@pytest.fixture
def azure():
    sb = AzureSandbox().start()
    yield sb
    sb.stop()


def test_added_sp_password_is_removed_and_the_existing_one_kept(tmp_path, monkeypatch, prefect_server, azure):
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    responder = Responder(ledger=Ledger(url))
    # the service principal already had a legitimate secret (the record's oldValue)
    azure.standin.ensure_service_principal(SP, display_name="payments-api")
    azure.standin.add_password(SP, key_id=OLD_KEY, display_name="ci-deploy")
    report = responder.intake([EXAMPLE])
    # the shipped configuration: the secret's case, and (actor_access, on by default) the case of the
    # user who added it, whose sign-in sessions are revoked
    by_playbook = {x["playbook"]: x for x in responder.run_all(report, approval="auto", stand_ins=azure)}
    assert sorted(by_playbook) == ["azure-actor-user-sessions", "azure-sp-credential-added"], by_playbook
    s = by_playbook["azure-sp-credential-added"]
    assert s["status"] == "contained", s
    assert s["detection"]["credential"]["uid"] == NEW_KEY and s["verified"] is True
    remaining = [c["keyId"] for c in azure.standin.service_principals[SP]["passwordCredentials"]]
    assert remaining == [OLD_KEY]
    actor = by_playbook["azure-actor-user-sessions"]
    assert actor["status"] == "contained" and actor["verified"] is True, actor
    user = actor["detection"]["credential"]["owner"]["uid"]
    removes = [r for r in azure.standin.api_requests("graph", mutating=True)]
    assert sorted((r["method"], r["path"].rsplit("/", 1)[-1], r["body"]) for r in removes) == [
        ("POST", "removePassword", {"keyId": NEW_KEY}), ("POST", "revokeSignInSessions", {})], removes
    assert [r["path"] for r in removes if r["path"].endswith("revokeSignInSessions")] == [
        f"/v1.0/users/{user}/revokeSignInSessions"]
    assert responder.ledger.verify().ok
    # the flow run's parameters (kept in Prefect's database) name the environment variable, not the secret
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        params = client.read_flow_run(s["flow_run_id"]).parameters
    assert params["cloud"]["client_secret_env"] == azure.secret_env
    assert azure._secret not in json.dumps(params)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "real").exists(),
                    reason="../shared/data/real is absent")
def test_panther_credential_add_without_key_id_removes_the_one_started_at_its_time(tmp_path, monkeypatch,
                                                                                   prefect_server, azure):
    """panther-analysis @ daa10c88, azure_service_principal_credentials_added.yml, "Add Service Principal
    Credentials": the record logs no KeyIdentifier; the one password that Graph started at the record's
    time (the sandbox seeds it, as the record says) is removed alone and the owner stays enabled
    (issue 14, item 5; the fallback to disabling it: tests/test_entra_unnamed_credential.py)."""
    import json

    import yaml

    from tests.conftest import SHARED_DATA

    rules = SHARED_DATA / "panther-analysis" / "rules" / "azure_signin_rules"
    tests = yaml.safe_load((rules / "azure_service_principal_credentials_added.yml").read_text())["Tests"]
    case = next(c for c in tests if c["Name"] == "Add Service Principal Credentials")
    log = json.loads(case["Log"]) if isinstance(case["Log"], str) else case["Log"]
    # Panther's placeholder object id "sp-app-456" is no Entra object id (the action schema refuses it,
    # as it must); give it a well-formed one so the test exercises the judgement, not the placeholder.
    text = json.dumps(log).replace('"sp-app-456"', '"0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"')
    path = tmp_path / "panther.json"
    path.write_text(text)
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    responder = Responder(ledger=Ledger(url))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=azure))
    assert s["playbook"] == "azure-sp-credential-unnamed" and s["status"] == "contained", s
    owner = s["detection"]["credential"]["owner"]["uid"]
    (action,) = s["actions"]
    assert action["name"] == "azure.remove-unnamed-credential" and owner in action["target"], action
    assert action["before"]["present"] is True and action["after"]["present"] is False, action
    assert [c["operation"] for c in action["calls"]] == ["servicePrincipals.removePassword"]
    assert azure.standin.service_principals[owner]["accountEnabled"] is True
    assert responder.ledger.verify().ok


# -- faults through the whole path ------------------------------------------------------------------------
def _responder(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    return Responder(ledger=Ledger(url))


def _one_credential_responder(tmp_path, monkeypatch):
    """A responder on the shipped configuration with ``actor_access: false`` (tests.helpers.one_credential):
    for the tests of Graph faults on one credential's containment, which count every mutating request;
    the example's actor (her sign-in sessions revoked) is test_added_sp_password_is_removed_... 's."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    folder = one_credential_config(tmp_path / "config")
    monkeypatch.setenv("CORDON_CONFIG", str(folder))
    return Responder(config=load_config(folder), ledger=Ledger(url))


def _seed_example(azure):
    azure.standin.ensure_service_principal(SP, display_name="payments-api")
    azure.standin.add_password(SP, key_id=OLD_KEY, display_name="ci-deploy")


def _kinds(responder, case_id):
    return [r.kind for r in responder.ledger.records(case_id=case_id)]


def test_throttled_graph_is_retried_and_the_run_contains(tmp_path, monkeypatch, prefect_server, azure):
    """429 with Retry-After: 1 on the removePassword: kiota waits and retries; one ledger record of
    the action, contained, verified."""
    responder = _one_credential_responder(tmp_path, monkeypatch)
    _seed_example(azure)
    azure.fail_next(f"POST /v1.0/servicePrincipals/{SP}/removePassword", 429, headers={"Retry-After": "1"})
    (s,) = list(responder.run_all(responder.intake([EXAMPLE]), approval="auto", stand_ins=azure))
    assert s["status"] == "contained" and s["verified"] is True, s
    posts = [r["status"] for r in azure.standin.api_requests("graph", mutating=True)]
    assert posts == [429, 204]
    assert [c["keyId"] for c in azure.standin.service_principals[SP]["passwordCredentials"]] == [OLD_KEY]
    assert responder.ledger.verify().ok


def test_graph_5xx_that_persists_is_recorded_failed_and_nothing_is_half_done(tmp_path, monkeypatch,
                                                                             prefect_server, azure):
    """503 on every attempt (kiota's three retries exhausted): the case fails, the ledger holds the
    failed action with the HTTP status, nothing changed in the directory; a later run contains."""
    responder = _one_credential_responder(tmp_path, monkeypatch)
    _seed_example(azure)
    azure.fail_next(f"POST /v1.0/servicePrincipals/{SP}/removePassword", 503, times=4,
                    headers={"Retry-After": "1"})
    report = responder.intake([EXAMPLE])
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=azure))
    assert s["status"] != "contained", s
    (action,) = s["actions"]
    assert action["status"] == "failed" and "503" in action["error"], action
    assert [r["status"] for r in azure.standin.api_requests("graph", mutating=True)] == [503] * 4
    # nothing half done: both secrets are still there, the other object untouched
    assert [c["keyId"] for c in azure.standin.service_principals[SP]["passwordCredentials"]] == [OLD_KEY, NEW_KEY]
    kinds = _kinds(responder, s["case_id"])
    assert any(k.startswith("action.") for k in kinds), kinds
    failed = [r for r in responder.ledger.records(case_id=s["case_id"]) if "503" in json.dumps(r.payload)]
    assert failed, kinds
    assert responder.ledger.verify().ok


def test_graph_404_for_the_owner_is_already_contained_and_said(tmp_path, monkeypatch, prefect_server, azure):
    """The service principal was deleted before Cordon got to it: nothing to remove, said explicitly."""
    responder = _one_credential_responder(tmp_path, monkeypatch)
    report = responder.intake([EXAMPLE])
    (ticket,) = report.cases
    cloud = azure.cloud_params()  # not seeded: the object does not exist
    s = responder.run(ticket, approval="auto", cloud=cloud)
    (action,) = s["actions"]
    assert action["status"] == "already_contained" and action["before"] is None, action
    assert azure.standin.api_requests("graph", mutating=True) == []
    assert responder.ledger.verify().ok


# -- the public corpus: Panther's Azure / Entra cases in the sandbox ------------------------------------
needs_corpus = pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "real").exists(),
                                  reason="../shared/data/real is absent")
MEMBER_ID = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
NEW_SP_ID = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a"
UNNAMED_SP_ID = "0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"

#: Panther says yes, Cordon contains.
CONTAINED = {
    "Owner Role Assignment": "azure.remove-role-assignment",
    "Elevated Role Assignment (Storage Blob Data Owner)": "azure.remove-role-assignment",
    "Successfully added PIM role": "azure.remove-directory-role-member",
    "Add Service Principal Credentials": "azure.remove-unnamed-credential",
}
#: Panther says no, and Cordon agrees: nothing is contained.
BENIGN_FOR_US = {
    "Non-Privileged Role Assignment": "Reader is not a privileged RBAC role: suppressed",
    "requested adding PIM role": "a PIM request that has not completed grants nothing",
    "Same org successful invite": "an invitation is neither a credential nor a role grant",
    "Unsuccessful invite": "a failed invitation",
    "Not external invite": "not an invitation of an outsider",
    "Different Operation": "not an elevation",
}
#: Panther says no; Cordon contains, and why.
CONTAINED_THOUGH_PANTHER_SAYS_NO = {
    "Add member to role (Non PIM)": "Panther's rule is about PIM only; a direct grant of Application Administrator "
                                    "(which can add secrets to any app) is the same persistence, so the member is "
                                    "removed from the role",
    "Create Service Principal": "Panther's rule is about credentials; a new service principal is T1136.003 for "
                                "Cordon: disabled until someone vouches for it",
}
DIFFERENT_ACTIONS = {"Add member to role (Non PIM)": "azure.remove-directory-role-member",
                     "Create Service Principal": "azure.disable-service-principal"}
#: Panther says yes; Cordon does not contain, and why.
NOT_CONTAINED_THOUGH_PANTHER_SAYS_YES = {
    "Successful Invite external user": "a pending guest invitation holds no credential and no role; Cordon ships no "
                                       "rule for it",
    "Elevate Access to All Azure Subscriptions": "elevation gives the caller User Access Administrator at root "
                                                 "scope; no credential is named, so the case is recorded and "
                                                 "left to a responder (no Graph/ARM call can undo it exactly)",
    "User Elevated to User Access Administrator": "as above, from the Entra side",
}


def realistic_ids(log: dict) -> dict:
    """Panther's fixtures use placeholder object ids ("12345", "sp-new-789") no Graph API accepts (the
    action schemas refuse them, as they must): give the user added to a role, the created service
    principal and the credential's owner well-formed ids so the test exercises Cordon's judgement."""
    text = json.dumps(log)
    text = text.replace('"sp-new-789"', f'"{NEW_SP_ID}"').replace('"sp-app-456"', f'"{UNNAMED_SP_ID}"')
    log = json.loads(text)
    props = log.get("properties") if isinstance(log.get("properties"), dict) else log
    for target in props.get("targetResources") or []:
        if isinstance(target, dict) and target.get("type") == "User" and target.get("id") == "12345":
            target["id"] = MEMBER_ID
    return log


def _panther_azure_cases():
    import yaml

    from tests.conftest import SHARED_DATA

    out = {}
    for path in sorted((SHARED_DATA / "panther-analysis" / "rules").glob("azure_*/*.yml")):
        for test in yaml.safe_load(path.read_text()).get("Tests") or []:
            log = json.loads(test["Log"]) if isinstance(test["Log"], str) else test["Log"]
            out[test["Name"]] = (path.name, bool(test["ExpectedResult"]), log)
    return out


@needs_corpus
def test_every_panther_azure_case_is_judged_in_the_sandbox(tmp_path, monkeypatch, prefect_server, azure):
    cases = _panther_azure_cases()
    named = {**CONTAINED, **BENIGN_FOR_US, **CONTAINED_THOUGH_PANTHER_SAYS_NO, **NOT_CONTAINED_THOUGH_PANTHER_SAYS_YES}
    assert set(cases) == set(named), set(cases) ^ set(named)
    responder = _responder(tmp_path, monkeypatch)
    for i, (name, (rule, expected, log)) in enumerate(sorted(cases.items())):
        azure.reset()
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(realistic_ids(log)))
        summaries = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=azure))
        contained = [s for s in summaries if any(a["status"] == "contained" for a in s["actions"])]
        changed = azure.standin.api_requests(mutating=True)
        if name in CONTAINED or name in CONTAINED_THOUGH_PANTHER_SAYS_NO:
            assert expected is (name in CONTAINED), (rule, name)
            why = CONTAINED.get(name) or CONTAINED_THOUGH_PANTHER_SAYS_NO[name]
            assert len(summaries) == 1 and summaries[0]["status"] == "contained", (rule, name, why, summaries)
            assert summaries[0]["verified"] is True, (rule, name, summaries)
            acted = [a["name"] for a in summaries[0]["actions"]]
            assert acted == [{**CONTAINED, **DIFFERENT_ACTIONS}[name]], (rule, name, acted)
            assert changed, (rule, name)
        else:
            reason = BENIGN_FOR_US.get(name) or NOT_CONTAINED_THOUGH_PANTHER_SAYS_YES[name]
            assert expected is (name in NOT_CONTAINED_THOUGH_PANTHER_SAYS_YES), (rule, name)
            assert not contained and changed == [], f"{rule} / {name}: {reason}; got {summaries}"
    assert responder.ledger.verify().ok


@needs_corpus
def test_panther_pim_grant_rollback_re_adds_the_member(tmp_path, monkeypatch, prefect_server, azure):
    """The member removed from Application Administrator is re-added by rollback, recorded in the ledger."""
    from cordon.providers.azure.clients import azure_clients

    responder = _responder(tmp_path, monkeypatch)
    _, _, log = _panther_azure_cases()["Add member to role (Non PIM)"]
    path = tmp_path / "pim.json"
    path.write_text(json.dumps(realistic_ids(log)))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=azure))
    assert s["playbook"] == "azure-directory-role" and s["status"] == "contained", s
    app_admin = "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3"
    held = [a for a in azure.standin.directory_role_assignments.values() if a["principalId"] == MEMBER_ID]
    assert held == []
    clients = azure_clients(azure.cloud_params())
    try:
        outcomes = responder.rollback(s["case_id"], clients, who="test:responder")
    finally:
        clients.close()
    assert [(o["name"], o["status"]) for o in outcomes] == [("azure.remove-directory-role-member", "rolled_back")]
    held = [a["roleDefinitionId"] for a in azure.standin.directory_role_assignments.values()
            if a["principalId"] == MEMBER_ID]
    assert held == [app_admin]
    assert responder.ledger.verify().ok


# -- "Add app role assignment to service principal" ----------------------------------------------------
def test_dangerous_graph_app_role_grant_is_removed_exactly_and_rolled_back(tmp_path, monkeypatch, prefect_server,
                                                                          azure):
    """RoleManagement.ReadWrite.Directory granted on Microsoft Graph (a record laid out as the captured
    ones, tests.azure_fixtures.app_role_grant_record) -> azure-app-role-assignment: the assignee and the
    actor enriched (the permission flagged risky), exactly that appRoleAssignment deleted, verified; the
    assignee's other Graph permission kept; rollback re-creates the assignment."""
    from cordon.providers.azure.clients import azure_clients
    from cordon.sandbox.azure import GRAPH_APP_ROLES
    from tests.azure_fixtures import ASSIGNEE, GRAPH_SP, app_role_grant_record

    rmrwd, user_read = GRAPH_APP_ROLES["RoleManagement.ReadWrite.Directory"], GRAPH_APP_ROLES["User.Read.All"]
    responder = _one_credential_responder(tmp_path, monkeypatch)
    # the assignee already held User.Read.All legitimately
    azure.standin.ensure_graph_resource(GRAPH_SP)
    azure.standin.ensure_service_principal(ASSIGNEE, "sync-bot")
    azure.standin.assign_app_role(ASSIGNEE, GRAPH_SP, user_read)
    path = tmp_path / "grant.json"
    path.write_text(json.dumps(app_role_grant_record("RoleManagement.ReadWrite.Directory", rmrwd)))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=azure))
    assert s["playbook"] == "azure-app-role-assignment" and s["status"] == "contained", s
    assert s["detection"]["credential"]["uid"] == f"{ASSIGNEE}#{GRAPH_SP}#{rmrwd}" and s["verified"] is True
    (action,) = s["actions"]
    assert action["name"] == "azure.remove-app-role-assignment" and action["status"] == "contained", action
    (removed,) = action["before"]["assignments"]
    assert [(r["method"], r["path"], r["body"]) for r in azure.standin.api_requests("graph", mutating=True)] == [
        ("DELETE", f"/v1.0/servicePrincipals/{ASSIGNEE}/appRoleAssignments/{removed['id']}", {})]
    held = [a["appRoleId"] for a in azure.standin.app_role_assignments.values() if a["principalId"] == ASSIGNEE]
    assert held == [user_read]
    facts = {r.payload["action"]: r.payload["result"] for r in responder.ledger.records(case_id=s["case_id"])
             if r.kind == "enrichment.completed"}
    assert set(facts) == {"azure.service-principal", "azure.actor"}
    assert {"permission": "RoleManagement.ReadWrite.Directory", "type": "application",
            "resource": "Microsoft Graph"} in facts["azure.service-principal"]["risky_permissions"]

    clients = azure_clients(azure.cloud_params())
    try:
        outcomes = responder.rollback(s["case_id"], clients, who="test:responder")
    finally:
        clients.close()
    assert [(o["name"], o["status"]) for o in outcomes] == [("azure.remove-app-role-assignment", "rolled_back")]
    held = sorted(a["appRoleId"] for a in azure.standin.app_role_assignments.values() if a["principalId"] == ASSIGNEE)
    assert held == sorted([user_read, rmrwd])
    assert responder.ledger.verify().ok


def test_other_app_role_grant_is_triaged_and_nothing_changes(tmp_path, monkeypatch, prefect_server, azure):
    """Mail.Read (not in the dangerous list) -> azure-app-role-assignment-triage: enrichment only."""
    from cordon.sandbox.azure import GRAPH_APP_ROLES
    from tests.azure_fixtures import app_role_grant_record

    responder = _responder(tmp_path, monkeypatch)
    path = tmp_path / "grant.json"
    path.write_text(json.dumps(app_role_grant_record("Mail.Read", GRAPH_APP_ROLES["Mail.Read"])))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=azure))
    assert s["playbook"] == "azure-app-role-assignment-triage" and s["actions"] == [], s
    cred = s["detection"]["credential"]
    assert cred["kind"] == "azure_app_role_assignment" and "uid" not in cred
    assert cred["attributes"]["privileged"] is False
    assert azure.standin.api_requests(mutating=True) == []
    assert responder.ledger.verify().ok
