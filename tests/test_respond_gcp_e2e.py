"""The GCP path end to end, in process: Cloud Audit Log entries and SCC findings -> Sigma ->
cases -> the respond flow (real Prefect) -> containment through google-api-python-client over
real HTTP against the GCP stand-in -> verification -> a ledger that verifies.

Public corpus from ``../shared/data/real`` (see its SOURCES.md): GoogleCloudPlatform/
security-analytics @ 2dd85655, GoogleCloudPlatform/security-response-automation @ 68cc378a,
panther-labs/panther-analysis @ daa10c88 (all Apache-2.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cordon.audit.ledger import Ledger
from cordon.clouds import clients_for
from cordon.config import load_config
from cordon.engine import Responder
from cordon.playbooks.schema import load_playbooks
from cordon.respond import guard
from cordon.sandbox.gcp import GcpSandbox
from tests.conftest import SHARED_DATA

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gcp-create-sa-key.json"
needs_corpus = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason=f"{SHARED_DATA} is absent (../shared not beside the repo)")


@pytest.fixture(scope="module")
def gcp_sandbox():
    sb = GcpSandbox().start()
    yield sb
    sb.stop()


@pytest.fixture
def gcp(gcp_sandbox):
    gcp_sandbox.reset()
    return gcp_sandbox


@pytest.fixture
def responder(tmp_path, monkeypatch, prefect_server):
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    return Responder(ledger=Ledger(url))


def run_file(responder: Responder, sandbox, path: Path):
    report = responder.intake([path])
    return list(responder.run_all(report, approval="auto", stand_ins=sandbox)), report


def test_example_sa_key_is_disabled_exactly(responder, gcp):
    (s,), report = run_file(responder, gcp, EXAMPLE)
    assert s["playbook"] == "gcp-sa-key-created" and s["status"] == "contained" and s["verified"] is True
    key = s["detection"]["credential"]["uid"]
    assert key.endswith("/keys/3f1c9a7e5b2d4c6e8f0a1b2c3d4e5f6071829304")
    (action,) = s["actions"]
    assert action["name"] == "gcp.disable-sa-key" and action["before"]["disabled"] is False
    assert action["after"]["disabled"] is True
    iam = gcp.clients("iam", "v1")
    assert iam.projects().serviceAccounts().keys().get(name=key).execute()["disabled"] is True
    kinds = [r.kind for r in responder.ledger.records(case_id=s["case_id"])]
    assert "enrichment.completed" in kinds and "action.contained" in kinds and "verify.held" in kinds
    assert responder.ledger.verify().ok


def test_guard_refuses_cordons_own_service_account(responder, gcp):
    report = responder.intake([EXAMPLE])
    det = report.cases[0].detection
    clients = clients_for("gcp", gcp.cloud_params())
    me = clients.own_identity()
    det = det.model_copy(update={"target": det.target.model_copy(update={"uid": me}),
                                 "credential": det.credential.model_copy(
                                     update={"owner": det.credential.owner.model_copy(update={"uid": me})})})
    pb = next(p for p in load_playbooks(load_config().playbooks_dir) if p.name == "gcp-sa-key-created")
    outcome = guard(pb, det, load_config(), clients)
    assert not outcome.ok and ("own identity" in outcome.reason or "protected" in outcome.reason)


CORPUS_CONTAINED = {
    "gcp-security-analytics/test/fixtures/google.iam.admin.v1.CreateServiceAccountRequest.json":
        {"gcp-service-account-created"},
    "gcp-security-analytics/test/fixtures/google.iam.admin.v1.SetIamPolicy-keyAdmin.json": {"gcp-iam-grant"},
    "gcp-security-analytics/test/fixtures/google.iam.admin.v1.SetIamPolicy-tokenCreator.json": {"gcp-iam-grant"},
    "gcp-security-analytics/test/fixtures/google.cloud.audit.AuditLog.setIamPolicy.json": {"gcp-iam-grant"},
}


@needs_corpus
@pytest.mark.parametrize("rel", sorted(CORPUS_CONTAINED))
def test_corpus_entries_are_contained_in_the_sandbox(responder, gcp, rel):
    summaries, report = run_file(responder, gcp, SHARED_DATA / rel)
    assert not report.rejected
    assert {s["playbook"] for s in summaries} == CORPUS_CONTAINED[rel]
    for s in summaries:
        assert s["status"] == "contained", (s.get("guard"), s["actions"])
        assert s["verified"] is True
        # each step changed what the record added (not "contained" because nothing was found)
        assert s["actions"] and all(a["status"] == "contained" and a["before"] != a["after"] for a in s["actions"]), \
            s["actions"]
    assert responder.ledger.verify().ok


def panther_gcp_cases():
    out = []
    for path in sorted((SHARED_DATA / "panther-analysis" / "rules" / "gcp_audit_rules").glob("*.yml")):
        for case in yaml.safe_load(path.read_text()).get("Tests", []):
            log = case["Log"]
            log = json.loads(log) if isinstance(log, str) else log
            out.append((path.name, case["Name"], case["ExpectedResult"], log))
    return out


#: Panther GCP cases that Cordon contains (ExpectedResult true, plus two negatives we judge differently).
PANTHER_CONTAINED = {
    ("gcp_service_account_or_keys_created.yml", "Created Service Account Key"): "a user-managed key was created",
    ("gcp_service_account_or_keys_created.yml", "Created Service Account"): "T1136.003",
    ("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "GCP API Key Created"): "an API key was created",
    ("gcp_permissions_granted_to_create_or_manage_service_account_key.yml", "service account match"):
        "a key-admin / token-creator grant",
    ("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "GCP API Key Not Created"):
        "Panther says no because authorizationInfo shows a denied check, but the call succeeded and the response "
        "names the key: the key exists, and missing it is worse than one approval",
    ("gcp_serviceusage_apikeys_create_privilege_escalation.yml", "Log Without authorizationInfo"):
        "the response names the created key; authorizationInfo is not what proves creation",
}

#: Panther GCP cases that produce no containment, and why.
PANTHER_NOT_CONTAINED = {
    ("gcp_iam_service_account_key_create.yml", "fail"): "a failed call",
    ("gcp_permissions_granted_to_create_or_manage_service_account_key.yml", "other event"): "not a grant",
    ("gcp_service_account_access_denied.yml", "service-account.access-grated-should-not-alert"): "a read",
    ("gcp_service_account_access_denied.yml", "service-account.access-denied-should-alert"):
        "Panther alerts on the denial itself; nothing was created, so there is nothing to contain",
    ("gcp_service_account_or_keys_created.yml", "Other"): "not a creation",
    ("gcp_storage_hmac_keys_create.yml", "fail"): "a failed call",
    ("gcp_iam_service_account_key_create.yml", "privilege-escalation"):
        "a Deployment Manager entry that names no key; the key's own IAM entry is what Cordon answers",
    ("gcp_storage_hmac_keys_create.yml", "privilege-escalation"):
        "a Deployment Manager entry that names no HMAC key; the key's own Storage entry is what Cordon answers",
}


@needs_corpus
def test_panther_gcp_cases_judged(gcp, tmp_path, monkeypatch, prefect_server):
    seen = set()
    for rule, name, _expected, log in panther_gcp_cases():
        key = (rule, name)
        if key not in PANTHER_CONTAINED and key not in PANTHER_NOT_CONTAINED:
            continue
        seen.add(key)
        gcp.reset()
        # a ledger per case: several Panther cases name the same key and would otherwise join one case
        url = f"sqlite:///{tmp_path}/ledger-{len(seen)}.db"
        monkeypatch.setenv("CORDON_DATABASE_URL", url)
        responder = Responder(ledger=Ledger(url))
        path = tmp_path / f"{len(seen)}.json"
        path.write_text(json.dumps(log))
        summaries, report = run_file(responder, gcp, path)
        assert not report.rejected, (key, [r.reason for r in report.rejected])
        contained = [s for s in summaries if s["status"] == "contained"]
        if key in PANTHER_CONTAINED:
            assert contained and len(contained) == len(summaries), (key, PANTHER_CONTAINED[key], summaries)
        else:
            assert not contained, (key, PANTHER_NOT_CONTAINED[key])
    assert seen == set(PANTHER_CONTAINED) | set(PANTHER_NOT_CONTAINED)


@needs_corpus
def test_scc_findings_route(responder, gcp):
    base = SHARED_DATA / "gcp-security-response-automation" / "cloudfunctions" / "router" / "testdata"
    report = responder.intake([base / "iam_anomalous_grant-remediated.json", base / "non_org_iam_member.json"])
    assert not report.rejected
    assert {t.playbook.name for t in report.cases} == {"gcp-iam-grant", "gcp-finding-triage"}


def test_scc_anomalous_token_creation_disables_the_service_account(responder, gcp):
    path = Path(__file__).resolve().parents[1] / "examples" / "gcp-scc-anomalous-token.json"
    (s,), _ = run_file(responder, gcp, path)
    assert s["playbook"] == "gcp-scc-anomalous-token-creation" and s["status"] == "contained"
    sa = "deploy-bot@acme-prod-4821.iam.gserviceaccount.com"
    assert s["detection"]["credential"] == {**s["detection"]["credential"], "kind": "gcp_service_account", "uid": sa}
    accounts = gcp.clients("iam", "v1").projects().serviceAccounts()
    assert accounts.get(name=f"projects/acme-prod-4821/serviceAccounts/{sa}").execute().get("disabled") is True
    assert responder.ledger.verify().ok
