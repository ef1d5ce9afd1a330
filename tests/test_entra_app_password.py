"""Entra app passwords (issue 17): "Create application password for user" -> the user joins the group a
Conditional Access policy blocks legacy authentication for, the sessions are revoked, and the case waits
for the one step Graph has no call for (deleting the app passwords on the per-user MFA page) until a
person marks it done from the CLI or Slack.

Real parts: the Sigma rules and intake, the respond flow (real Prefect), msgraph-sdk over real HTTP to
the Graph stand-in, the CLI through Typer's runner, Cordon's server with the real decider and the Slack
stand-in for the *Mark done* button. The audit record is written here in the documented
``directoryAudit`` shape (https://learn.microsoft.com/graph/api/resources/directoryaudit): the shared
corpus has no app-password record."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cordon.audit.ledger import Ledger
from cordon.cli import app
from cordon.config import load_config
from cordon.engine import Responder
from cordon.manual_steps import AWAITING, ManualStepError, mark_done, pending
from cordon.sandbox.azure import AzureSandbox
from cordon.sigma.normalise import FieldNormalisation
from tests.helpers import one_credential_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "entra-app-password.json"
USER = "9a3e1f7c-2b4d-4e6f-8a0b-1c2d3e4f5a6b"
GROUP = "5b0c7d1e-8f2a-4c3b-9d4e-6f7a8b9c0d1e"


def record(name: str = "Create application password for user", result: str = "success") -> dict:
    rec = json.loads(EXAMPLE.read_text())
    rec["activityDisplayName"], rec["result"] = name, result
    return rec


@pytest.fixture
def azure():
    sb = AzureSandbox().start()
    yield sb
    sb.stop()


def world(tmp_path, monkeypatch, **azure_section) -> Responder:
    cfg = one_credential_config(tmp_path / "config", azure=azure_section) if azure_section else \
        one_credential_config(tmp_path / "config")
    monkeypatch.setenv("CORDON_CONFIG", str(cfg))
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    return Responder(config=load_config(cfg), ledger=Ledger(url))


@pytest.mark.parametrize("name", ["Create application password for user",
                                  "Create application password for user.",  # the unified audit log's spelling
                                  "Create application password for user ",
                                  "create application password  for user."])
def test_every_spelling_of_the_activity_is_one_app_password_detection(tmp_path, monkeypatch, name):
    responder = world(tmp_path, monkeypatch)
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(record(name)))
    (case,) = responder.intake([path]).cases
    cred = case.detection.credential
    assert (cred.kind, cred.uid, case.playbook.name) == ("azure_user_app_password", USER, "azure-app-password")
    assert case.detection.technique_ids == ["T1098.001"]


def test_a_failed_creation_matches_no_rule_and_opens_no_case(tmp_path, monkeypatch):
    responder = world(tmp_path, monkeypatch)
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(record(result="failure")))
    report = responder.intake([path])
    assert report.records_read == 1 and report.detections == 0 and report.cases == []


def test_the_name_spelling_drops_a_trailing_period_only():
    names = FieldNormalisation(fields=("activityDisplayName",))
    assert names.text("Create application password for user.") == "Create application password for user"
    assert names.text("Update application – Certificates and secrets management .") == \
        "Update application-Certificates and secrets management"
    op = "Microsoft.Authorization/roleAssignments/write"
    assert names.text(op) == op


def test_group_sessions_and_the_manual_step_then_done_from_the_cli(tmp_path, monkeypatch, prefect_server, azure):
    responder = world(tmp_path, monkeypatch, legacy_auth_block_group=GROUP)
    report = responder.intake([EXAMPLE])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=azure))
    case_id = summary["case_id"]
    assert summary["status"] == AWAITING and summary["verified"] is True, summary
    assert [m["id"] for m in summary["manual"]] == ["delete-app-passwords"]
    # exactly: the user joined the configured group, and the user's sessions were revoked; nothing else
    calls = [(r["method"], r["path"]) for r in azure.standin.api_requests("graph", mutating=True)
             if not r["path"].endswith("/checkMemberGroups")]  # a read, though a POST
    assert calls == [("POST", f"/v1.0/groups/{GROUP}/members/$ref"),
                     ("POST", f"/v1.0/users/{USER}/revokeSignInSessions")], calls
    assert azure.standin.groups[GROUP]["members"] == [USER]
    assert azure.standin.users[USER]["accountEnabled"] is True  # not asked to disable
    ledger = responder.ledger
    assert ledger.case(case_id)["status"] == AWAITING
    closed = [r for r in ledger.records(case_id=case_id) if r.kind == "case.closed"]
    assert closed[-1].payload["manual"][0]["id"] == "delete-app-passwords"
    # the run is over: recovery leaves the case alone; a person is what it waits for
    from cordon.recovery import open_cases

    assert case_id not in {c["case_id"] for c in open_cases(ledger)}

    cli = CliRunner()
    listed = cli.invoke(app, ["case", "pending", "--output", "json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout.splitlines()[0])["case_id"] == case_id
    wrong = cli.invoke(app, ["case", "done", case_id, "--step", "rotate-ca", "--by", "alice"])
    assert wrong.exit_code == 1 and ledger.case(case_id)["status"] == AWAITING
    done = cli.invoke(app, ["case", "done", case_id, "--by", "alice", "--note", "deleted on the MFA page"])
    assert done.exit_code == 0, done.output
    assert ledger.case(case_id)["status"] == "contained"
    (rec,) = ledger.records(case_id=case_id, kind_prefix="manual.done")
    assert rec.payload == {"step": "delete-app-passwords", "by": "cli:alice", "note": "deleted on the MFA page"}
    assert rec.actor == "cli:alice"
    again = cli.invoke(app, ["case", "done", case_id, "--by", "alice"])
    assert again.exit_code == 1 and "not awaiting" in again.output
    shown = cli.invoke(app, ["audit", "show", case_id])
    assert "manual.done" in shown.stdout and "cli:alice" in shown.stdout
    assert ledger.verify().ok


def test_without_the_group_configured_the_case_is_refused_naming_the_key(tmp_path, monkeypatch, prefect_server,
                                                                       azure):
    responder = world(tmp_path, monkeypatch)
    report = responder.intake([EXAMPLE])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=azure))
    assert summary["status"] == "refused", summary
    assert "azure.legacy_auth_block_group" in json.dumps(summary)
    assert [r for r in azure.standin.api_requests("graph", mutating=True)
            if not r["path"].endswith("/checkMemberGroups")] == []


def test_disable_account_too_and_roll_back_both(tmp_path, monkeypatch, prefect_server, azure):
    responder = world(tmp_path, monkeypatch, legacy_auth_block_group=GROUP, app_password_disable_account=True)
    report = responder.intake([EXAMPLE])
    (summary,) = list(responder.run_all(report, approval="auto", stand_ins=azure))
    assert summary["status"] == AWAITING, summary
    assert azure.standin.users[USER]["accountEnabled"] is False
    assert azure.standin.groups[GROUP]["members"] == [USER]
    from cordon.clouds import clients_for

    case = responder.ledger.case(summary["case_id"])
    clients = clients_for("azure", azure.cloud_params())
    outcomes = responder.rollback(summary["case_id"], clients, "cli:alice")
    block = next(o for o in outcomes if o["name"] == "azure.block-app-passwords")
    assert block["status"] == "rolled_back", outcomes
    assert azure.standin.users[USER]["accountEnabled"] is True and azure.standin.groups[GROUP]["members"] == []
    assert case["playbook"] == "azure-app-password"


def test_mark_done_refuses_what_is_not_awaited(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    with pytest.raises(ManualStepError, match="no case"):
        mark_done(ledger, "case-nope", "cli:alice")
    assert pending(ledger, "case-nope") == []


def test_the_slack_message_lists_the_step_with_a_mark_done_button():
    from cordon.slack.blocks import summary_blocks

    steps = [{"id": "delete-app-passwords", "text": "Delete the app passwords on the per-user MFA page."}]
    blocks = summary_blocks({"case_id": "case-1", "playbook": "azure-app-password", "flow_run_id": "r1",
                             "status": AWAITING, "verified": True, "plan": {"hash": "h"}, "manual": steps,
                             "detection": {}, "approval": {"decision": "approve", "approver": "auto"}})
    text = json.dumps(blocks)
    assert "per-user MFA page" in text and "Contained; a step is left to a person" in text
    (button,) = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert button["action_id"] == "cordon_manual_done"
    assert json.loads(button["value"]) == {"case_id": "case-1", "decision": "manual_done", "plan_hash": "h",
                                           "run_id": "r1"}
    plain = summary_blocks({**copy.deepcopy({"case_id": "case-1", "playbook": "p", "status": "contained"}),
                            "manual": steps})
    assert "cordon_manual_done" not in json.dumps(plain)  # only while the case awaits the step


def test_the_azure_section_is_checked_naming_the_field(tmp_path):
    from cordon.providers import get_provider
    from cordon.providers.azure.settings import AzureSettingsError

    good = load_config(one_credential_config(tmp_path / "good", azure={"legacy_auth_block_group": GROUP}))
    assert GROUP in get_provider("azure").check_config(good)
    bad = load_config(one_credential_config(tmp_path / "bad", azure={"legacy_auth_block_group": "admins"}))
    with pytest.raises(AzureSettingsError, match=r"cordon.yaml: azure.legacy_auth_block_group"):
        get_provider("azure").check_config(bad)
    typo = load_config(one_credential_config(tmp_path / "typo", azure={"legacy_auth_group": GROUP}))
    with pytest.raises(AzureSettingsError, match=r"azure.legacy_auth_group"):
        get_provider("azure").check_config(typo)


def test_two_people_marking_the_same_step_at_once_record_it_once(ledger_url):
    """Eight concurrent ``mark_done`` of the one step left (two replicas, two clicks): one records
    ``manual.done`` and closes the case, the others are refused; the chain verifies. On SQLite and
    PostgreSQL (``ledger_url``)."""
    import threading

    ledger = Ledger(ledger_url)
    opened = ledger.open_case("k8s-or-entra:race", "det-race", {"uid": "det-race"}, "azure-app-password")
    ledger.close_case(opened.case_id, AWAITING, {"status": AWAITING, "verified": True, "manual": [
        {"id": "delete-app-passwords", "text": "delete them"}]})
    results: list[object] = []
    start = threading.Barrier(8)

    def click(i: int) -> None:
        start.wait()
        try:
            results.append(mark_done(ledger, opened.case_id, f"slack:U{i}"))
        except ManualStepError as exc:
            results.append(exc)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done = [r for r in results if isinstance(r, dict)]
    assert len(results) == 8 and len(done) == 1, results
    assert done[0]["status"] == "contained"
    kinds = [r.kind for r in ledger.records(case_id=opened.case_id)]
    assert kinds.count("manual.done") == 1 and kinds.count("case.closed") == 2, kinds
    assert ledger.case(opened.case_id)["status"] == "contained"
    assert ledger.verify().ok
