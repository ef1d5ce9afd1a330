"""A credential an Entra audit record adds without logging its KeyIdentifier (issue 14, item 5): the
one password (or certificate) on the object or its pair whose ``startDateTime`` is the record's time is
removed alone; only when no single credential matches (none, or several) is the service principal
disabled, and the plan says why.

Real parts: the credentials are added through Graph's ``addPassword`` with msgraph-sdk over HTTP to the
Graph stand-in (``cordon/sandbox/azure.py``), which stamps ``startDateTime`` as Graph does; the records
go through the real Entra parser and, at the end, the respond flow on Prefect's test server. The records
are Graph ``directoryAudit`` objects in Microsoft's documented shape
(https://learn.microsoft.com/graph/api/resources/directoryaudit?view=graph-rest-1.0 ), laid out as
Panther's "Add Service Principal Credentials" test record (panther-analysis @ daa10c88,
azure_service_principal_credentials_added.yml) is: ``modifiedProperties`` with a ``KeyDescription`` text
and a ``KeyType``, no ``KeyIdentifier``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from cordon.action import ActionContext, get_action
from tests.azure_fixtures import *  # noqa: F401,F403
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

pytestmark = [pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:GetQueryParameters is deprecated:DeprecationWarning")]

SP = "4c1e9d2a-7b3f-4e8a-9c6d-2f1e0a9b8c7d"
APP = "8d2f0e3b-6a4c-4f9b-8d7e-3a2b1c0d9e8f"
APP_ID = "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b"
OLD_KEY = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
CERT = "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e"
DUMMY = SimpleNamespace(id="test-rule", title="Credentials Added to an Entra Application or Service Principal",
                        path=None, level="high", technique_ids=["T1098.001"])


def record(when: datetime, *, target: str = SP, target_type: str = "ServicePrincipal",
           key_type: str = "Password") -> dict:
    """A Graph directoryAudit "Add service principal credentials" at ``when`` naming no KeyIdentifier."""
    return {
        "id": "Directory_5c1d_UNNAMED_1",
        "category": "ApplicationManagement",
        "correlationId": "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        "result": "success",
        "resultReason": "",
        "activityDisplayName": "Add service principal credentials",
        "activityDateTime": when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "loggedByService": "Core Directory",
        "operationType": "Update",
        "initiatedBy": {"user": {"id": "6b6d44f0-b13a-46a0-bfde-161324d4c34d", "displayName": "Mallory",
                                 "userPrincipalName": "mallory@contoso.example", "ipAddress": "203.0.113.7"}},
        "targetResources": [{
            "id": target, "displayName": "payments-api", "type": target_type, "userPrincipalName": None,
            "modifiedProperties": [
                {"displayName": "KeyDescription", "oldValue": None, "newValue": '"Client Secret for API Access"'},
                {"displayName": "KeyType", "oldValue": None, "newValue": json.dumps(key_type)},
            ],
        }],
        "additionalDetails": [{"key": "User-Agent", "value": "python-requests/2.31"}],
    }


def detection(rec: dict):
    from cordon.providers.azure.detections import detections_from_entra_audit

    (det,) = detections_from_entra_audit(rec, DUMMY, "test", 0)
    assert det.credential.uid is None and not det.suppressed, det
    return det


def add_password(azure, object_id: str, *, collection: str = "service_principals",
                 start: datetime | None = None) -> dict:
    """Graph ``POST /{servicePrincipals|applications}/{id}/addPassword`` with msgraph-sdk (as the attacker
    would), optionally with the caller's own ``startDateTime``; returns the stored credential."""
    from msgraph.generated.models.password_credential import PasswordCredential

    factory = azure.client_factory()
    graph = factory("graph")
    if collection == "service_principals":
        from msgraph.generated.service_principals.item.add_password.add_password_post_request_body import (
            AddPasswordPostRequestBody,
        )
        builder = graph.service_principals.by_service_principal_id(object_id)
    else:
        from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
            AddPasswordPostRequestBody,
        )
        builder = graph.applications.by_application_id(object_id)
    body = AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="sync",
                                                                              start_date_time=start))
    created = factory.run(builder.add_password.post(body))
    assert created.secret_text  # Graph returns the secret once
    return next(c for c in azure.standin._object(object_id)["passwordCredentials"]
                if c["keyId"] == str(created.key_id))


def started(cred: dict) -> datetime:
    return datetime.fromisoformat(cred["startDateTime"].replace("Z", "+00:00"))


def ctx(azure, det, **params):
    return ActionContext(detection=det, params=params, clients=azure.client_factory())


def facts(azure, det, **params) -> dict:
    return get_action("azure.unnamed-credential")().run(ctx(azure, det, object_id=det.credential.owner.uid,
                                                            **params))


def contain(azure, det, found: dict, **params):
    return get_action("azure.remove-unnamed-credential")().run(
        ctx(azure, det, object_id=det.credential.owner.uid, key_id=found["key_id"], **params))


def mutating(azure):
    """``(method, path, body)`` of the Graph writes (body without the SDK's ``@odata.type``)."""
    return [(r["method"], r["path"].removeprefix("/v1.0/"),
             {k: v for k, v in r["body"].items() if not k.startswith("@odata")} if isinstance(r["body"], dict)
             else r["body"]) for r in azure.standin.api_requests(mutating=True)]


def passwords(azure, oid):
    return sorted(c["keyId"] for c in azure.standin._object(oid)["passwordCredentials"])


@pytest.fixture
def sp(azure):
    """Service principal SP (app APP, appId APP_ID) with an old secret and a certificate, both long started."""
    azure.standin.ensure_application(APP, "payments-api", app_id=APP_ID)
    azure.standin.ensure_service_principal(SP, "payments-api", app_id=APP_ID)
    azure.standin.add_password(SP, OLD_KEY, "ci-deploy", start=datetime.now(UTC) - timedelta(days=40))
    azure.standin.add_key(SP, CERT, "CN=payments", start=datetime.now(UTC) - timedelta(days=90))
    return azure


# -- the stand-in ----------------------------------------------------------------------------
def test_graph_stand_in_gives_every_credential_its_start_time(sp):
    azure = sp
    before = datetime.now(UTC).replace(microsecond=0)
    new = add_password(azure, SP)
    assert before <= started(new) <= datetime.now(UTC) + timedelta(seconds=1)
    assert started(new) + timedelta(days=730) == datetime.fromisoformat(new["endDateTime"].replace("Z", "+00:00"))
    backdated = add_password(azure, SP, start=datetime(2024, 1, 1, tzinfo=UTC))
    assert backdated["startDateTime"] == "2024-01-01T00:00:00Z"
    sp_json = azure.standin.service_principals[SP]
    creds = sp_json["passwordCredentials"] + sp_json["keyCredentials"]
    assert all(c["startDateTime"] and c["endDateTime"] for c in creds)


# -- one credential started at the record's time -------------------------------------------------
def test_the_one_password_started_at_the_record_time_is_removed_alone(sp):
    azure = sp
    new = add_password(azure, SP)
    det = detection(record(started(new) + timedelta(milliseconds=420)))  # the audit record, a moment later
    found = facts(azure, det)
    assert found["key_id"] == new["keyId"] and found["decision"] == "remove", found
    assert found["found_on"] == {"object_type": "ServicePrincipal", "object_id": SP}
    assert "exactly one password" in found["reason"] and found["in_window"] == [new["keyId"]]
    azure.standin.requests.clear()

    action = get_action("azure.remove-unnamed-credential")()
    c = ctx(azure, det, object_id=SP, key_id=found["key_id"])
    assert f"password {new['keyId']} (the only password that started within 120 s" in action.target(c)
    result = action.run(c)
    assert result.status == "contained", result.error
    assert mutating(azure) == [("POST", f"servicePrincipals/{SP}/removePassword", {"keyId": new["keyId"]})]
    assert passwords(azure, SP) == [OLD_KEY]
    assert [k["keyId"] for k in azure.standin.service_principals[SP]["keyCredentials"]] == [CERT]
    assert azure.standin.service_principals[SP]["accountEnabled"] is True
    assert result.before["present"] is True and result.after["present"] is False
    assert result.after["service_principal"]["account_enabled"] is True
    assert [x["key_id"] for x in result.after["credentials"]] == [OLD_KEY]  # passwords only: the kind named
    assert action.verify(c)[0] is True
    again = action.run(c)
    assert again.status == "already_contained" and again.calls == []
    # a secret cannot be restored: rollback says so rather than pretend
    undone = action.rollback(c, result)
    assert undone.status == "failed" and "cannot be restored" in undone.error and passwords(azure, SP) == [OLD_KEY]


def test_a_password_put_on_the_application_is_found_there(sp):
    """The record names the service principal; the secret was added to its application (same appId)."""
    azure = sp
    new = add_password(azure, APP, collection="applications")
    det = detection(record(started(new)))
    found = facts(azure, det)
    assert found["key_id"] == new["keyId"] and found["found_on"] == {"object_type": "Application", "object_id": APP}
    azure.standin.requests.clear()
    result = contain(azure, det, found)
    assert result.status == "contained", result.error
    assert mutating(azure) == [("POST", f"applications/{APP}/removePassword", {"keyId": new["keyId"]})]
    assert passwords(azure, APP) == [] and passwords(azure, SP) == [OLD_KEY]


def test_a_certificate_started_at_the_record_time_is_removed_alone(sp):
    azure = sp
    when = datetime.now(UTC).replace(microsecond=0)
    azure.standin.add_key(APP, "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f", "CN=evil", start=when)
    det = detection(record(when + timedelta(seconds=1), target=APP, target_type="Application",
                           key_type="AsymmetricX509Cert"))
    assert det.credential.kind == "azure_sp_key"
    found = facts(azure, det)
    assert found["key_id"] == "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f" and found["kind"] == "certificate"
    azure.standin.requests.clear()
    result = contain(azure, det, found)
    assert result.status == "contained", result.error
    assert [(m, p) for m, p, _ in mutating(azure)] == [("PATCH", f"applications/{APP}")]
    assert azure.standin.applications[APP]["keyCredentials"] == []
    assert [k["keyId"] for k in azure.standin.service_principals[SP]["keyCredentials"]] == [CERT]
    assert passwords(azure, SP) == [OLD_KEY]


def test_a_key_id_outside_the_window_is_refused(sp):
    """``key_id`` must still be a credential that started at the record's time: the old secret is not."""
    azure = sp
    new = add_password(azure, SP)
    det = detection(record(started(new)))
    azure.standin.requests.clear()
    result = contain(azure, det, {"key_id": OLD_KEY})
    assert result.status == "refused" and "is not the credential the record added" in result.error
    assert mutating(azure) == [] and passwords(azure, SP) == sorted([OLD_KEY, new["keyId"]])


# -- no single match: the service principal is disabled, and the plan says why -----------------------------
def test_two_passwords_in_the_window_fall_back_to_disabling_with_the_reason(sp):
    azure = sp
    first, second = add_password(azure, SP), add_password(azure, SP)
    det = detection(record(started(first)))
    found = facts(azure, det)
    assert found["key_id"] is None and found["decision"] == "disable"
    assert sorted(found["in_window"]) == sorted([first["keyId"], second["keyId"]])
    assert found["reason"].startswith("2 passwords") and "cannot be told apart" in found["reason"]
    azure.standin.requests.clear()

    action = get_action("azure.remove-unnamed-credential")()
    c = ctx(azure, det, object_id=SP, key_id=None)
    plan = action.plan(c)
    assert plan.target.startswith(f"ServicePrincipal {SP}: disable sign-in (fallback: no single password")
    assert [x.describe() for x in plan.calls] == [f"graph:servicePrincipals.update(accountEnabled=False, id={SP})"]
    result = action.run(c)
    assert result.status == "contained", result.error
    assert mutating(azure) == [("PATCH", f"servicePrincipals/{SP}", {"accountEnabled": False})]
    assert azure.standin.service_principals[SP]["accountEnabled"] is False
    assert passwords(azure, SP) == sorted([OLD_KEY, first["keyId"], second["keyId"]])  # none removed
    assert result.before["decision"] == "disable" and len(result.before["in_window"]) == 2
    assert action.verify(c)[0] is True and action.run(c).status == "already_contained"
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back" and azure.standin.service_principals[SP]["accountEnabled"] is True


def test_no_password_in_the_window_falls_back_to_disabling(sp):
    """The attacker chose the secret's startDateTime (a day earlier): nothing started at the record's time."""
    azure = sp
    now = datetime.now(UTC).replace(microsecond=0)
    add_password(azure, SP, start=now - timedelta(days=1))
    det = detection(record(now))
    found = facts(azure, det)
    assert found["key_id"] is None and found["reason"].startswith("no password of the 2 on")
    result = contain(azure, det, found)
    assert result.status == "contained" and azure.standin.service_principals[SP]["accountEnabled"] is False
    assert len(passwords(azure, SP)) == 2


def test_the_window_is_the_tolerance(sp):
    azure = sp
    new = add_password(azure, SP)
    det = detection(record(started(new) + timedelta(seconds=150)))
    assert facts(azure, det)["key_id"] is None  # 150 s away: outside the default 120 s
    assert facts(azure, det, tolerance_seconds=300)["key_id"] == new["keyId"]


def test_an_application_without_a_service_principal_here_is_refused_when_nothing_matches(azure):
    azure.standin.ensure_application(APP, "multi-tenant-app", app_id=APP_ID)
    det = detection(record(datetime.now(UTC), target=APP, target_type="Application"))
    found = facts(azure, det)
    assert found["key_id"] is None and found["service_principal"] is None
    result = contain(azure, det, found)
    assert result.status == "refused" and "no service principal in this tenant" in result.error
    assert mutating(azure) == []


def test_cordon_itself_is_never_touched(azure):
    me = azure.own_sp_id
    det = detection(record(datetime.now(UTC), target=me))
    with pytest.raises(Exception, match="Cordon's own identity"):
        facts(azure, det)
    result = contain(azure, det, {"key_id": None})
    assert result.status == "refused" and "Cordon's own identity" in result.error


def test_the_renderer_says_which_credential_or_why_none():
    from cordon.providers.azure import render  # noqa: F401 - registers the renderers
    from cordon.slack.render import RENDERERS

    one = RENDERERS["azure.unnamed-credential"]({"key_id": OLD_KEY, "reason": "exactly one password ..."})
    assert OLD_KEY in one[0] and "exactly one" in one[0]
    none = RENDERERS["azure.unnamed-credential"]({"key_id": None, "reason": "2 passwords (a, b) ... <x>"})
    assert "cannot be named" in none[0] and "&lt;x&gt;" in none[0]


# -- the respond flow ----------------------------------------------------------------------------
def _respond(responder, azure, tmp_path, rec):
    path = tmp_path / "entra.json"
    path.write_text(json.dumps(rec))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=azure))
    assert s["playbook"] == "azure-sp-credential-unnamed", s
    return s


def test_flow_removes_only_the_credential_added_at_the_record_time(responder, sp, tmp_path):
    """The sandbox seeds what the record says: one secret started at its time (``not logged``)."""
    azure = sp
    s = _respond(responder, azure, tmp_path, record(datetime.now(UTC).replace(microsecond=0)))
    assert s["status"] == "contained" and s["verified"] is True, s
    (action,) = s["actions"]
    assert action["name"] == "azure.remove-unnamed-credential" and "the only password" in action["target"]
    assert [c["operation"] for c in action["calls"]] == ["servicePrincipals.removePassword"]
    assert passwords(azure, SP) == [OLD_KEY] and azure.standin.service_principals[SP]["accountEnabled"] is True
    assert responder.ledger.verify().ok


def test_flow_disables_the_service_principal_when_two_credentials_match(responder, sp, tmp_path):
    azure = sp
    when = datetime.now(UTC).replace(microsecond=0)
    azure.standin.add_password(SP, None, "also at that time", start=when + timedelta(seconds=3))
    s = _respond(responder, azure, tmp_path, record(when))
    assert s["status"] == "contained" and s["verified"] is True, s
    (action,) = s["actions"]
    assert "disable sign-in (fallback: no single password" in action["target"]
    assert [(c["operation"], c["params"]) for c in action["calls"]] == [
        ("servicePrincipals.update", {"id": SP, "accountEnabled": False})]
    assert "2 passwords" in s["enrichment"]["azure.unnamed-credential"]["reason"]
    assert azure.standin.service_principals[SP]["accountEnabled"] is False and len(passwords(azure, SP)) == 3
    assert responder.ledger.verify().ok
