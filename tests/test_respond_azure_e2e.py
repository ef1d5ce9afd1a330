"""The Entra ID path end to end, in process: an audit record of "Add service principal
credentials" -> Sigma -> case -> the respond flow (real Prefect) -> msgraph-sdk over real HTTP to
the Graph stand-in (tokens from the TLS token stand-in) -> exactly the new password removed ->
verified -> a ledger that verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordon.audit.ledger import Ledger
from cordon.engine import Responder
from cordon.sandbox.azure import AzureSandbox

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "entra-add-sp-credentials.json"
SP = "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40"
NEW_KEY = "e4a7c9b1-3d5f-4e6a-8b0c-2d4f6a8c0e1b"
OLD_KEY = "6c2f1e0a-9b8d-4c7e-a5f3-1d2e3f4a5b6c"


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


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
    (s,) = list(responder.run_all(report, approval="auto", sandbox=azure))
    assert s["playbook"] == "azure-sp-credential-added" and s["status"] == "contained", s
    assert s["detection"]["credential"]["uid"] == NEW_KEY and s["verified"] is True
    remaining = [c["keyId"] for c in azure.standin.service_principals[SP]["passwordCredentials"]]
    assert remaining == [OLD_KEY]
    removes = [r for r in azure.standin.api_requests("graph", mutating=True)]
    assert [(r["method"], r["path"].rsplit("/", 1)[-1], r["body"]) for r in removes] == [
        ("POST", "removePassword", {"keyId": NEW_KEY})]
    assert responder.ledger.verify().ok


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "real").exists(),
                    reason="../shared/data/real is absent")
def test_panther_credential_add_without_key_id_disables_the_service_principal(tmp_path, monkeypatch,
                                                                              prefect_server, azure):
    """panther-analysis @ daa10c88, azure_service_principal_credentials_added.yml, "Add Service Principal
    Credentials": the record logs no KeyIdentifier, so the key cannot be named; the owner is disabled."""
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
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", sandbox=azure))
    assert s["playbook"] == "azure-sp-credential-unnamed" and s["status"] == "contained", s
    owner = s["detection"]["credential"]["owner"]["uid"]
    (action,) = s["actions"]
    assert action["name"] == "azure.disable-service-principal" and owner in action["target"], action
    assert action["before"] != action["after"], action
    assert responder.ledger.verify().ok
