"""The actor's own access for Entra and GCP (issue 14, item 1): the user's sign-in sessions or the
service principal an Entra actor signed in as, and the user-managed service-account key a GCP actor
signed with, derived from the record (``cordon.providers.azure.actor``, ``cordon.providers.gcp.actor``)
and contained through the real SDKs (msgraph-sdk, google-api-python-client) over HTTP against the
stand-ins (``cordon.sandbox.azure``, ``cordon.sandbox.gcp``), by the real respond flow.

Records: the Entra one is ``examples/entra-add-sp-credentials.json`` (Graph ``directoryAudit`` shape,
https://learn.microsoft.com/graph/api/resources/directoryaudit) and, for an app actor, the same record
with ``initiatedBy.app`` in that documented shape (the shared corpus has no app-initiated credential
add with a service principal id); Panther's "Add Service Principal Credentials" test log
(panther-analysis @ daa10c88) names its user without an object id. The GCP human-user records are
GoogleCloudPlatform/security-analytics @ 2dd85655 fixtures; the service-account-key variant is the
real ``SetIamPolicy-tokenCreator`` entry with ``authenticationInfo`` rewritten in the documented
``AuthenticationInfo`` shape
(https://cloud.google.com/logging/docs/reference/audit/auditlog/rest/Shared.Types/AuditLog#authenticationinfo),
since no shared record shows a call signed with a user-managed key by a service account.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cordon.providers import get_provider
from cordon.providers.azure.detections import MANAGED_SERVICE_IDENTITY_APP_ID
from tests.azure_fixtures import *  # noqa: F401,F403 - the azure fixture
from tests.conftest import SHARED_DATA
from tests.gcp_fixtures import *  # noqa: F401,F403 - the gcp fixture
from tests.gcp_fixtures import GCP_FIXTURES, real_audit_entry
from tests.test_actor_access import responder_with

REPO = Path(__file__).resolve().parents[1]
ENTRA_EXAMPLE = REPO / "examples" / "entra-add-sp-credentials.json"
MALLORY = "5d7b0c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"  # initiatedBy.user.id of the example
TARGET_SP = "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40"
ACTOR_SP = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
ACTOR_APP = "2f3e4d5c-6b7a-4988-a766-554433221100"
SA = "ci-runner@acme-prod-4821.iam.gserviceaccount.com"
ACTOR_KEY_ID = "7c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293"
ACTOR_KEY = f"projects/acme-prod-4821/serviceAccounts/{SA}/keys/{ACTOR_KEY_ID}"
needs_corpus = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} is absent")


def entra_record(app: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example record; with ``app``, initiated by that app instead of the user."""
    record = json.loads(ENTRA_EXAMPLE.read_text())
    if app is not None:
        record["initiatedBy"] = {"user": None, "app": app}
    return record


def actor_app(app_id: str | None = ACTOR_APP, sp_id: str | None = ACTOR_SP) -> dict[str, Any]:
    return {"appId": app_id, "displayName": "ci-sync", "servicePrincipalId": sp_id, "servicePrincipalName": None}


_RULES: list[Any] = []


def matched(record: dict[str, Any]) -> list[Any]:
    """The detections the shipped rules make of ``record`` (the real intake pipeline)."""
    from cordon.detections.intake import read_bytes
    from cordon.detections.pipeline import detect
    from cordon.providers import shipped_rule_dirs
    from cordon.sigma import RuleSet

    if not _RULES:
        _RULES.append(RuleSet.load(list(shipped_rule_dirs())))
    return [d for d in detect(read_bytes("test", json.dumps(record).encode()), _RULES[0]) if hasattr(d, "uid")]


def detections(record: dict[str, Any]) -> list[Any]:
    """:func:`matched`, which must not be empty."""
    out = matched(record)
    assert out, "the shipped rules matched nothing"
    return out


def sa_key_entry(email: str | None = SA, key_name: str | None = f"//iam.googleapis.com/{ACTOR_KEY}") -> dict:
    """The real SetIamPolicy (serviceAccountTokenCreator granted) entry, called by ``email`` with
    ``key_name`` (``None``: absent)."""
    entry = copy.deepcopy(real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator"))
    entry = entry[0] if isinstance(entry, list) else entry
    auth: dict[str, Any] = {"principalEmail": email}
    if email and email.endswith("gserviceaccount.com"):
        auth["principalSubject"] = f"serviceAccount:{email}"
    if key_name:
        auth["serviceAccountKeyName"] = key_name
    entry["protoPayload"]["authenticationInfo"] = auth
    return entry


# -- Entra: what is derived ----------------------------------------------------------------------------
def test_the_user_who_added_a_secret_is_answered_by_revoking_her_sessions():
    (det,) = detections(entra_record())
    derived = get_provider("azure").actor_access(det)
    assert derived is not None and derived.playbook == "azure-actor-user-sessions"
    d = derived.detection
    assert (d.credential.kind, d.credential.uid, d.credential.owner.name) == (
        "azure_user_sessions", MALLORY, "mallory@contoso.example")
    assert d.target.uid == MALLORY and d.uid == f"{det.uid}#actor" and "T1078.004" in d.technique_ids
    assert d.credential.attributes["revealed_by"] == {"detection_uid": det.uid, "event_name": det.event_name,
                                                      "credential_uid": det.credential.uid}
    assert d.credential.attributes["ipAddress"] == "203.0.113.77" and d.raw == det.raw
    # the derived detection is about the actor's own sessions: nothing is derived from it again
    assert get_provider("azure").actor_access(d) is None


def test_the_app_that_added_a_secret_is_answered_by_disabling_its_service_principal():
    (det,) = detections(entra_record(actor_app()))
    derived = get_provider("azure").actor_access(det)
    assert derived is not None and derived.playbook == "azure-actor-service-principal"
    cred = derived.detection.credential
    assert (cred.kind, cred.uid, cred.attributes["appId"]) == ("azure_sp_sign_in", ACTOR_SP, ACTOR_APP)
    assert get_provider("azure").actor_access(derived.detection) is None  # the credential itself


@pytest.mark.parametrize("app", [
    actor_app(app_id=MANAGED_SERVICE_IDENTITY_APP_ID),  # Microsoft's first-party Managed Service Identity
    actor_app(app_id="00000003-0000-0000-c000-000000000000"),  # Microsoft Graph
    actor_app(app_id=None),  # Microsoft's own services log appId null
    actor_app(sp_id=None),  # no service principal id: nothing to disable
], ids=["managed-service-identity", "microsoft-graph", "no-app-id", "no-service-principal-id"])
def test_nothing_is_derived_for_first_party_apps_or_an_app_not_named_by_both_ids(app):
    dets = detections(entra_record(app))
    assert dets and all(get_provider("azure").actor_access(d) is None for d in dets)


def test_nothing_is_derived_for_managed_identity_rotation():
    from tests.test_azure_managed_identity import MI_APP_ID, MSI_SP_IN_TENANT, rotation_record

    record = rotation_record(app={"appId": MANAGED_SERVICE_IDENTITY_APP_ID, "displayName": "Managed Service Identity",
                                  "servicePrincipalId": MSI_SP_IN_TENANT},
                             target_spns=f"{MI_APP_ID};https://identity.azure.net/abc=")
    (det,) = detections(record)
    assert det.suppressed and get_provider("azure").actor_access(det) is None


@needs_corpus
def test_nothing_is_derived_for_a_user_named_without_an_object_id():
    """Panther's "Add Service Principal Credentials" log names its user ``admin-123``."""
    path = (SHARED_DATA / "panther-analysis" / "rules" / "azure_signin_rules"
            / "azure_service_principal_credentials_added.yml")
    tests = yaml.safe_load(path.read_text())["Tests"]
    log = next(t["Log"] for t in tests if t["Name"] == "Add Service Principal Credentials")
    dets = detections(json.loads(log) if isinstance(log, str) else log)
    assert all(get_provider("azure").actor_access(d) is None for d in dets)


# -- GCP: what is derived ---------------------------------------------------------------------------------
@needs_corpus
def test_the_service_account_key_that_granted_a_role_is_answered_as_a_key_of_its_own():
    (det,) = detections(sa_key_entry())
    derived = get_provider("gcp").actor_access(det)
    assert derived is not None and derived.playbook == "gcp-sa-key-created"
    d = derived.detection
    assert (d.credential.kind, d.credential.uid, d.credential.owner.uid) == ("gcp_sa_key", ACTOR_KEY, SA)
    assert d.credential.attributes["revealed_by"]["credential_uid"] == det.credential.uid
    assert d.uid == f"{det.uid}#actor" and "T1078.004" in d.technique_ids and d.target.uid == SA
    assert get_provider("gcp").actor_access(d) is None  # the credential itself


@needs_corpus
@pytest.mark.parametrize("name", sorted(p.stem for p in GCP_FIXTURES.glob("*.json")))
def test_nothing_is_derived_for_human_users_in_the_real_records(name):
    """Every shared GCP audit entry is called by a person (``user:...``): no key to disable."""
    entry = real_audit_entry(name)
    dets = [d for record in (entry if isinstance(entry, list) else [entry]) for d in matched(record)]
    assert dets and all(d.actor.user.type == "User" for d in dets)
    assert all(get_provider("gcp").actor_access(d) is None for d in dets)


@needs_corpus
@pytest.mark.parametrize("email,key_name", [
    (SA, None),  # no key signed it: a metadata-server token or an impersonation
    ("service-1028347275902@gcp-sa-cloudbuild.iam.gserviceaccount.com", f"//iam.googleapis.com/{ACTOR_KEY}"),
    ("mallory@example.com", f"//iam.googleapis.com/{ACTOR_KEY}"),  # a person
], ids=["no-key-name", "service-agent", "human-user"])
def test_nothing_is_derived_without_a_user_managed_key_of_a_service_account(email, key_name):
    dets = detections(sa_key_entry(email, key_name))
    assert all(get_provider("gcp").actor_access(d) is None for d in dets)


# -- the whole path: intake opens the actor's case, the sandbox contains it --------------------------------
def test_azure_user_actor_sessions_are_revoked_with_what_she_made(tmp_path, monkeypatch, prefect_server, azure):
    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    azure.standin.ensure_service_principal(TARGET_SP, display_name="payments-api")
    report = responder.intake([ENTRA_EXAMPLE])
    assert sorted(t.playbook.name for t in report.cases) == ["azure-actor-user-sessions", "azure-sp-credential-added"]
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=azure)}
    assert by_playbook["azure-sp-credential-added"]["status"] == "contained"
    actor = by_playbook["azure-actor-user-sessions"]
    assert actor["status"] == "contained" and actor["verified"] is True, actor
    revokes = [r for r in azure.standin.api_requests("graph", mutating=True)
               if r["path"].endswith("revokeSignInSessions")]
    assert [r["path"] for r in revokes] == [f"/v1.0/users/{MALLORY}/revokeSignInSessions"]
    assert azure.standin.users[MALLORY]["signInSessionsValidFromDateTime"] > "2025"
    links = list(responder.ledger.records(kind_prefix="case.actor_access"))
    assert {r.case_id for r in links} == {actor["case_id"], by_playbook["azure-sp-credential-added"]["case_id"]}


def test_azure_on_by_default_and_off_with_actor_access_false(tmp_path, monkeypatch):
    report = responder_with(tmp_path / "default", monkeypatch).intake([ENTRA_EXAMPLE])
    assert sorted(t.playbook.name for t in report.cases) == ["azure-actor-user-sessions", "azure-sp-credential-added"]
    report = responder_with(tmp_path / "off", monkeypatch, actor_access=False).intake([ENTRA_EXAMPLE])
    assert [t.playbook.name for t in report.cases] == ["azure-sp-credential-added"]


def _app_record(tmp_path: Path, name: str = "app.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(entra_record(actor_app())))
    return path


def test_azure_app_actor_service_principal_is_disabled(tmp_path, monkeypatch, prefect_server, azure):
    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    azure.standin.ensure_service_principal(TARGET_SP, display_name="payments-api")
    report = responder.intake([_app_record(tmp_path)])
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=azure)}
    actor = by_playbook["azure-actor-service-principal"]
    assert actor["status"] == "contained" and actor["verified"] is True, actor
    assert azure.standin.service_principals[ACTOR_SP]["accountEnabled"] is False
    assert azure.standin.service_principals[TARGET_SP]["accountEnabled"] is True  # only the actor's


@pytest.mark.parametrize("case", ["protected", "first-party", "managed-identity"])
def test_azure_app_actor_is_never_disabled_when_protected_first_party_or_managed(tmp_path, monkeypatch,
                                                                               prefect_server, azure, case):
    keys = {"protected_principals": [ACTOR_SP]} if case == "protected" else {}
    responder = responder_with(tmp_path, monkeypatch, actor_access=True, **keys)
    azure.standin.ensure_service_principal(TARGET_SP, display_name="payments-api")
    sp = azure.standin.ensure_service_principal(ACTOR_SP, display_name="ci-sync", app_id=ACTOR_APP)
    if case == "first-party":
        sp["appOwnerOrganizationId"] = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"  # Microsoft Services
    elif case == "managed-identity":
        sp["servicePrincipalType"] = "ManagedIdentity"
    report = responder.intake([_app_record(tmp_path)])
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=azure)}
    actor = by_playbook["azure-actor-service-principal"]
    assert actor["status"] == "refused", actor
    (refused,) = [r for r in responder.ledger.records(case_id=actor["case_id"]) if r.kind == "guard.refused"]
    expected = {"protected": "protected principal", "first-party": "first-party",
                "managed-identity": "managed identity"}
    assert expected[case] in refused.payload["reason"]
    assert azure.standin.service_principals[ACTOR_SP]["accountEnabled"] is True


@needs_corpus
def test_gcp_actor_key_is_disabled_with_the_grant_it_made(tmp_path, monkeypatch, prefect_server, gcp):
    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    path = tmp_path / "grant.json"
    path.write_text(json.dumps(sa_key_entry()))
    report = responder.intake([path])
    assert sorted(t.playbook.name for t in report.cases) == ["gcp-iam-grant", "gcp-sa-key-created"]
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=gcp)}
    assert by_playbook["gcp-iam-grant"]["status"] == "contained"
    actor = by_playbook["gcp-sa-key-created"]
    assert actor["status"] == "contained" and actor["verified"] is True, actor
    assert actor["detection"]["credential"]["uid"] == ACTOR_KEY
    key = gcp.clients("iam", "v1").projects().serviceAccounts().keys().get(name=ACTOR_KEY).execute()
    assert key["disabled"] is True


@needs_corpus
def test_gcp_google_managed_key_is_refused_not_disabled(tmp_path, monkeypatch, prefect_server, gcp):
    """A key the record names that IAM says is ``SYSTEM_MANAGED``: ``gcp.disable-sa-key`` refuses."""
    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    gcp.standin.ensure_project("acme-prod-4821")
    gcp.standin.ensure_service_account(SA, "acme-prod-4821")
    gcp.standin.ensure_sa_key(SA, ACTOR_KEY_ID, key_type="SYSTEM_MANAGED")
    path = tmp_path / "grant.json"
    path.write_text(json.dumps(sa_key_entry()))
    report = responder.intake([path])
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=gcp)}
    assert by_playbook["gcp-sa-key-created"]["status"] == "refused", by_playbook["gcp-sa-key-created"]
    key = gcp.clients("iam", "v1").projects().serviceAccounts().keys().get(name=ACTOR_KEY).execute()
    assert not key.get("disabled")
