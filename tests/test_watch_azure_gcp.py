"""The watch after containment for Entra and GCP (issue 14, item 2): ``credential_usage`` searches the
Entra sign-in log (Graph beta ``auditLogs/signIns`` through msgraph-sdk) and Cloud Audit Logs (Logging
v2 ``entries.list`` through google-api-python-client) over real HTTP against the stand-ins, which
honour the filters they receive; then :func:`cordon.watch.watch_case` raises a use found after a real
containment by the respond flow.

The sign-ins and log entries are written here in the vendors' documented shapes (signIn resource,
https://learn.microsoft.com/graph/api/resources/signin?view=graph-rest-beta; ``LogEntry`` with an
``AuditLog`` payload, https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry): the shared
corpus has no record of a contained credential being used again.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cordon.clouds import clients_for
from cordon.providers.azure.watch import credential_usage as azure_usage
from cordon.providers.gcp.watch import credential_usage as gcp_usage
from cordon.watch import due, watch_case
from tests.azure_fixtures import *  # noqa: F401,F403 - the azure fixture
from tests.azure_fixtures import azure_detection
from tests.gcp_fixtures import *  # noqa: F401,F403 - the gcp fixture
from tests.gcp_fixtures import gcp_detection
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

REPO = Path(__file__).resolve().parents[1]
SP = "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40"
APP = "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
KEY = "e4a7c9b1-3d5f-4e6a-8b0c-2d4f6a8c0e1b"
OTHER_KEY = "6c2f1e0a-9b8d-4c7e-a5f3-1d2e3f4a5b6c"
USER = "5d7b0c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"
SINCE = datetime(2026, 11, 20, 4, 0, 0, tzinfo=UTC)
GCP_PROJECT = "acme-prod-4821"
SA = f"deploy-bot@{GCP_PROJECT}.iam.gserviceaccount.com"
KEY_ID = "3f1c9a7e5b2d4c6e8f0a1b2c3d4e5f6071829304"
KEY_NAME = f"projects/{GCP_PROJECT}/serviceAccounts/{SA}/keys/{KEY_ID}"


def azure_clients(azure):
    return clients_for("azure", azure.cloud_params())


def sp_detection(kind: str = "azure_sp_password", uid: str = KEY):
    return azure_detection(kind, uid, owner=SP, owner_name="payments-api", owner_type="ServicePrincipal")


# -- Entra sign-ins ---------------------------------------------------------------------------------------------
def test_sp_secret_sign_ins_after_since_with_that_secret_only(azure):
    azure.standin.ensure_service_principal(SP, "payments-api", app_id=APP)
    add = azure.standin.add_sign_in
    used = add(APP, when=SINCE + timedelta(minutes=3), ip="198.51.100.23", credential_key_id=KEY)
    add(APP, when=SINCE - timedelta(minutes=1), credential_key_id=KEY)  # before containment
    add(APP, when=SINCE + timedelta(minutes=4), credential_key_id=OTHER_KEY)  # the legitimate secret
    add(APP, when=SINCE + timedelta(minutes=5), user="bob@contoso.example", user_id=str(uuid.uuid4()))  # a user
    rows = azure_usage(sp_detection(), SINCE, azure_clients(azure))
    assert [(r["event_id"], r["source_ip"], r["credential_key_id"]) for r in rows] == [
        (used["id"], "198.51.100.23", KEY)]
    assert rows[0]["succeeded"] is True and rows[0]["event_time"].startswith("2026-11-20T04:03:00")
    (req,) = [r for r in azure.standin.api_requests("graph") if r["path"] == "/beta/auditLogs/signIns"]
    assert req["query"]["$filter"] == (f"servicePrincipalId eq '{SP}' and createdDateTime ge 2026-11-20T04:00:00Z"
                                       " and signInEventTypes/any(t: t eq 'servicePrincipal')")


def test_actor_service_principal_every_sign_in_newest_first_failed_ones_too(azure):
    azure.standin.ensure_service_principal(SP, "payments-api", app_id=APP)
    add = azure.standin.add_sign_in
    first = add(APP, when=SINCE + timedelta(minutes=1), credential_key_id=OTHER_KEY, status=7000112)  # disabled
    second = add(APP, when=SINCE + timedelta(minutes=2), credential_key_id=KEY)
    azure.standin.page_size = 1
    rows = azure_usage(sp_detection("azure_sp_sign_in", SP), SINCE, azure_clients(azure))
    assert [r["event_id"] for r in rows] == [second["id"], first["id"]]
    assert rows[1]["succeeded"] is False and rows[1]["error_code"] == 7000112
    assert azure_usage(sp_detection("azure_sp_sign_in", SP), SINCE + timedelta(minutes=3), azure_clients(azure)) == []


def test_results_are_paged_and_every_page_is_read(azure):
    azure.standin.ensure_service_principal(SP, "payments-api", app_id=APP)
    ids = [azure.standin.add_sign_in(APP, when=SINCE + timedelta(seconds=i + 1))["id"] for i in range(5)]
    det = sp_detection("azure_sp_sign_in", SP)
    assert [r["event_id"] for r in azure_usage(det, SINCE, azure_clients(azure), limit=2)] == ids[::-1][:2]
    azure.standin.page_size = 2  # Graph pages as it likes: five sign-ins are three pages
    assert [r["event_id"] for r in azure_usage(det, SINCE, azure_clients(azure))] == ids[::-1]
    assert len([r for r in azure.standin.api_requests("graph") if r["path"] == "/beta/auditLogs/signIns"]) == 1 + 3


def test_user_sessions_interactive_and_non_interactive_after_since(azure):
    azure.standin.ensure_user(USER, "mallory@contoso.example")
    add = azure.standin.add_sign_in
    a = add(APP, when=SINCE + timedelta(minutes=1), user="mallory@contoso.example", user_id=USER)
    b = add(APP, when=SINCE + timedelta(minutes=2), user="mallory@contoso.example", user_id=USER,
            event_type="nonInteractiveUser", status=50133)  # a revoked refresh token presented again
    add(APP, when=SINCE - timedelta(minutes=2), user="mallory@contoso.example", user_id=USER)
    add(APP, when=SINCE + timedelta(minutes=2), user="bob@contoso.example", user_id=str(uuid.uuid4()))
    det = azure_detection("azure_user_sessions", USER, owner=USER, owner_type="User")
    rows = azure_usage(det, SINCE, azure_clients(azure))
    assert [r["event_id"] for r in rows] == [b["id"], a["id"]]
    assert rows[0]["event_name"] == "Sign-in (nonInteractiveUser)" and rows[0]["error_code"] == 50133


def test_kinds_not_searched_are_none(azure):
    det = azure_detection("azure_role_assignment", "/subscriptions/s/providers/Microsoft.Authorization/"
                                                   "roleAssignments/0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40")
    assert azure_usage(det, SINCE, azure_clients(azure)) is None


def test_the_stand_in_refuses_a_filter_it_does_not_serve(azure):
    import pytest

    graph = azure_clients(azure)
    base = str(graph("graph").request_adapter.base_url).rsplit("/v1.0", 1)[0]
    with pytest.raises(Exception, match="400|Unsupported"):
        graph.run(graph("graph").audit_logs.sign_ins.with_url(
            f"{base}/beta/auditLogs/signIns?$filter=startswith(appDisplayName,'x')").get())


# -- Cloud Audit Logs -------------------------------------------------------------------------------------------
def log_entry(key_name: str | None, when: datetime, project: str = GCP_PROJECT,
              method: str = "google.storage.v1.Storage.ListBuckets", ip: str = "198.51.100.44") -> dict:
    auth = {"principalEmail": SA}
    if key_name:
        auth["serviceAccountKeyName"] = f"//iam.googleapis.com/{key_name}"
    return {"insertId": uuid.uuid4().hex[:12],
            "logName": f"projects/{project}/logs/cloudaudit.googleapis.com%2Factivity",
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "severity": "NOTICE",
            "resource": {"type": "audited_resource", "labels": {"project_id": project}},
            "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog", "methodName": method,
                             "serviceName": "storage.googleapis.com", "authenticationInfo": auth,
                             "requestMetadata": {"callerIp": ip, "callerSuppliedUserAgent": "python-requests/2.32"},
                             "resourceName": f"projects/_/buckets/{project}-data", "status": {}}}


def test_sa_key_entries_after_since_with_that_key_only(gcp):
    used = log_entry(KEY_NAME, SINCE + timedelta(minutes=2))
    later = log_entry(KEY_NAME, SINCE + timedelta(minutes=6), method="google.iam.admin.v1.CreateServiceAccountKey")
    gcp.standin.add_log_entries(
        used, later,
        log_entry(KEY_NAME, SINCE - timedelta(minutes=1)),  # before containment
        log_entry(KEY_NAME.replace(KEY_ID, "9" * 40), SINCE + timedelta(minutes=3)),  # another key
        log_entry(None, SINCE + timedelta(minutes=3)),  # no key (metadata-server token)
        log_entry(KEY_NAME, SINCE + timedelta(minutes=3), project="elsewhere"))  # a project not searched
    det = gcp_detection("gcp_sa_key", KEY_NAME, owner=SA, project=GCP_PROJECT)
    rows = gcp_usage(det, SINCE, gcp.client_factory())
    assert [(r["event_id"], r["event_name"]) for r in rows] == [
        (later["insertId"], "google.iam.admin.v1.CreateServiceAccountKey"),
        (used["insertId"], "google.storage.v1.Storage.ListBuckets")]
    assert rows[1]["source_ip"] == "198.51.100.44" and rows[1]["key_name"].endswith(KEY_ID)
    (req,) = [r for r in gcp.standin.requests if r["api"] == "logging"]
    assert req["path"] == "/logging/v2/entries:list" and req["body"]["resourceNames"] == [f"projects/{GCP_PROJECT}"]
    assert req["body"]["filter"] == (f'protoPayload.authenticationInfo.serviceAccountKeyName:"{KEY_ID}" '
                                     'AND timestamp>="2026-11-20T04:00:00.000000Z"')
    assert gcp_usage(det, SINCE + timedelta(minutes=7), gcp.client_factory()) == []
    assert gcp_usage(gcp_detection("gcp_api_key", "projects/p/locations/global/keys/k"), SINCE,
                     gcp.client_factory()) is None


def test_gcp_entries_are_paged(gcp):
    gcp.standin.add_log_entries(*[log_entry(KEY_NAME, SINCE + timedelta(seconds=i + 1)) for i in range(5)])
    det = gcp_detection("gcp_sa_key", KEY_NAME, owner=SA, project=GCP_PROJECT)
    assert len(gcp_usage(det, SINCE, gcp.client_factory(), limit=2)) == 2
    gcp.standin.log_page_size = 2
    rows = gcp_usage(det, SINCE, gcp.client_factory())
    assert len(rows) == 5 and [r["event_time"] for r in rows] == sorted((r["event_time"] for r in rows), reverse=True)
    calls = [r for r in gcp.standin.requests if r["api"] == "logging"]
    assert [c["body"].get("pageToken") for c in calls] == [None, None, "2", "4"]


# -- the watch after a real containment --------------------------------------------------------------------------
def test_watch_raises_a_sign_in_of_the_actor_after_her_sessions_were_revoked(tmp_path, monkeypatch, prefect_server,
                                                                            azure):
    from tests.test_actor_access import responder_with

    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    azure.standin.ensure_service_principal(SP, display_name="payments-api")
    report = responder.intake([REPO / "examples" / "entra-add-sp-credentials.json"])
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=azure)}
    actor = by_playbook["azure-actor-user-sessions"]
    assert actor["status"] == "contained"
    ledger, now = responder.ledger, datetime.now(UTC)
    items = {i.case_id: i for i in due(ledger, {"azure-actor-user-sessions": 1800, "azure-sp-credential-added": 1800},
                                       now)}
    item = items[actor["case_id"]]
    clients = azure_clients(azure)
    quiet = watch_case(ledger, item, clients, now)
    assert quiet["held"] is True and quiet["used"] == [] and not quiet["alert"]
    azure.standin.add_sign_in(APP, when=item.contained_at - timedelta(minutes=1), user="mallory@contoso.example",
                              user_id=actor["detection"]["credential"]["uid"])  # before: not raised
    assert watch_case(ledger, item, clients, now)["used"] == []
    sign_in = azure.standin.add_sign_in(APP, when=item.contained_at + timedelta(seconds=5),
                                        user="mallory@contoso.example", ip="203.0.113.99",
                                        user_id=actor["detection"]["credential"]["uid"])
    used = watch_case(ledger, item, clients, now)
    assert used["alert"] and [e["event_id"] for e in used["used"]] == [sign_in["id"]]
    assert used["used"][0]["source_ip"] == "203.0.113.99"
    assert not watch_case(ledger, item, clients, now)["alert"]  # raised once
    (alert,) = [r for r in ledger.records(case_id=actor["case_id"]) if r.kind == "watch.alert"]
    assert "used 1 time(s)" in alert.payload["reason"]


def test_watch_raises_a_call_signed_with_the_disabled_key(responder, gcp):
    report = responder.intake([REPO / "examples" / "gcp-create-sa-key.json"])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=gcp))
    assert summary["status"] == "contained"
    key = summary["detection"]["credential"]["uid"]
    ledger, now = responder.ledger, datetime.now(UTC)
    (item,) = due(ledger, {"gcp-sa-key-created": 1800}, now)
    clients = gcp.client_factory()
    assert watch_case(ledger, item, clients, now)["used"] == []
    entry = log_entry(key, item.contained_at + timedelta(seconds=30))
    gcp.standin.add_log_entries(log_entry(key, item.contained_at - timedelta(seconds=30)), entry)
    used = watch_case(ledger, item, clients, now)
    assert used["alert"] and used["held"] and [e["event_id"] for e in used["used"]] == [entry["insertId"]]
    checked = [r for r in ledger.records(case_id=summary["case_id"]) if r.kind == "watch.checked"]
    assert all(r.payload["searched"] for r in checked)
    json.dumps(used)  # the rows are JSON as the ledger keeps them
