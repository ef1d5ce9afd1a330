"""Manual playbook runs (``cordon run``, :mod:`cordon.manual`): parameter schemas validated at load,
parameters validated per run with errors naming the parameter and the playbook file, the manual
detection, and the whole path (case, ledger, real Prefect flow, the AWS / GCP sandboxes) in process
and through the ``cordon`` executable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cordon.audit.ledger import Ledger
from cordon.engine import Responder
from cordon.manual import (
    ManualRunError,
    check_params,
    find_playbook,
    manual_detection,
    missing_required,
    parse_pairs,
    runnable,
    validate_params,
)
from cordon.playbooks.schema import PlaybookError, load_playbook_text, load_playbooks

REPO = Path(__file__).resolve().parents[1]
CORDON = str(Path(sys.executable).with_name("cordon"))
KEY = "AKIAMANUALRUN0000001"
AWS_PARAMS = {"access_key_id": KEY, "user_name": "build-bot", "account_id": "111122223333"}


@pytest.fixture(scope="module")
def playbooks():
    return load_playbooks(REPO / "cordon" / "defaults" / "playbooks")


# -- the schema at load ------------------------------------------------------------------------
BASE = """name: manual-test
description: test
when:
  provider: aws
  credential_kinds: [aws_access_key]
contain:
  - action: aws.deactivate-access-key
    with: {user_name: "{{ credential.owner.name }}", access_key_id: "{{ credential.uid }}"}
parameters:
  access_key_id:
    description: the key
"""


@pytest.mark.parametrize("extra,field,reason", [
    ("    pattern: \"^AKIA[\"\n    sets: [credential.uid]\n", "parameters.access_key_id", "pattern does not compile"),
    ("    sets: [credential.secret]\n", "parameters.access_key_id.sets", "not a detection field"),
    ("    type: integer\n    enum: [a, b]\n    sets: [credential.uid]\n", "parameters.access_key_id",
     "does not satisfy the parameter's own schema"),
    ("    type: float\n    sets: [credential.uid]\n", "parameters.access_key_id.type", "Input should be"),
    ("    sets: [credential.uid]\n    colour: red\n", "parameters.access_key_id.colour", "Extra inputs"),
])
def test_bad_parameter_schemas_are_refused_at_load_naming_file_line_field(extra, field, reason):
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(BASE + extra, "pb/manual-test.yaml")
    err = info.value
    assert err.path == "pb/manual-test.yaml" and err.field == field and reason in err.reason
    assert err.line is not None and err.line >= 10  # the parameters block, not the top of the file


def test_parameters_need_a_credential_kind():
    text = BASE.replace("[aws_access_key]", "[aws_access_key, aws_login_profile]") + "    sets: [credential.uid]\n"
    with pytest.raises(PlaybookError, match="credential kind"):
        load_playbook_text(text, "x.yaml")
    ok = load_playbook_text(BASE + "    sets: [credential.uid]\n", "x.yaml")
    assert ok.parameters_schema() == {"type": "object", "additionalProperties": False, "required": ["access_key_id"],
                                      "properties": {"access_key_id": {"type": "string", "description": "the key"}}}


def test_shipped_runnable_playbooks(playbooks):
    names = {pb.name for pb in runnable(playbooks)}
    assert {"aws-access-key-created", "gcp-sa-key-created", "azure-sp-credential-added"} <= names
    assert "aws-finding-triage" not in names  # nothing precise to contain: not runnable
    pb = find_playbook(playbooks, "aws-access-key-created")
    assert pb.parameters["access_key_id"].pattern == "^AKIA[A-Z0-9]{16}$"
    assert set(find_playbook(playbooks, "azure-sp-credential-added").parameters) == {"service_principal_id", "key_id"}
    assert set(find_playbook(playbooks, "gcp-sa-key-created").parameters) == {"key_name"}


# -- parameters per run ------------------------------------------------------------------------
def test_bad_parameters_name_the_parameter_and_the_file(playbooks):
    pb = find_playbook(playbooks, "aws-access-key-created")
    with pytest.raises(ManualRunError) as info:
        validate_params(pb, {**AWS_PARAMS, "access_key_id": "AKIA-not-a-key"})
    msg = str(info.value)
    book = "cordon/defaults/playbooks/aws-access-key-created.yaml"
    assert msg.startswith(f"{book}: playbook 'aws-access-key-created': parameter 'access_key_id':") \
        or f"{REPO}/{book}" in msg
    assert "does not match ^AKIA[A-Z0-9]{16}$" in msg and info.value.errors.keys() == {"access_key_id"}

    params, errors = check_params(pb, {"access_key_id": KEY, "colour": "red", "account_id": "  "})
    assert set(errors) == {"colour", "user_name", "account_id"}
    assert errors["user_name"].startswith("required") and "not a parameter" in errors["colour"]
    assert missing_required(pb, {"access_key_id": KEY}) == ["user_name", "account_id"]
    assert validate_params(pb, {k: f"  {v} " for k, v in AWS_PARAMS.items()}) == AWS_PARAMS  # trimmed


def test_unknown_and_unrunnable_playbooks(playbooks):
    with pytest.raises(ManualRunError, match="no such playbook .runnable: aws-access-key-created"):
        find_playbook(playbooks, "nope")
    with pytest.raises(ManualRunError) as info:
        find_playbook(playbooks, "aws-finding-triage")
    assert info.value.path.endswith("aws-finding-triage.yaml") and "declares no parameters" in str(info.value)


def test_parse_pairs():
    assert parse_pairs(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ManualRunError) as info:
        parse_pairs(["a=1", "a=2", "novalue"], "pb")
    assert info.value.errors == {"a": "given more than once", "novalue": "expected key=value, got 'novalue'"}


def test_manual_detection_shapes(playbooks):
    pb = find_playbook(playbooks, "aws-access-key-created")
    det = manual_detection(pb, validate_params(pb, AWS_PARAMS), {"cli_user": "oncall", "email": "o@example.com"})
    assert det.source == "manual" and det.rule.type == "manual" and det.rule.uid == pb.name
    assert det.credential.kind == "aws_access_key" and det.credential.uid == KEY
    assert det.credential.owner.name == "build-bot" and det.target.uid == "arn:aws:iam::111122223333:user/build-bot"
    assert det.case_key() == f"aws|111122223333|aws_access_key|{KEY}"
    assert det.raw["requested_by"] == {"cli_user": "oncall", "email": "o@example.com"}
    assert det.actor.user.uid is None  # a manual run names the credential, not who made it

    gcp = find_playbook(playbooks, "gcp-sa-key-created")
    name = "projects/p-prod/serviceAccounts/ci@p-prod.iam.gserviceaccount.com/keys/0a1b2c3d"
    det = manual_detection(gcp, validate_params(gcp, {"key_name": name}), {"slack_user_id": "U0CAROL03"})
    assert det.account_uid == "p-prod" and det.credential.owner.uid == "ci@p-prod.iam.gserviceaccount.com"
    with pytest.raises(ValueError, match="unknown key"):
        manual_detection(gcp, {"key_name": name}, {"slack_user": "x"})
    with pytest.raises(ValueError, match="at least one"):
        manual_detection(gcp, {"key_name": name}, {})


# -- the whole path, in process ----------------------------------------------------------------
@pytest.fixture
def responder(tmp_path, monkeypatch, prefect_server):
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    return Responder(ledger=Ledger(url))


def test_manual_run_contains_exactly_that_key_through_the_same_path(responder, aws):
    summary = responder.manual("aws-access-key-created", AWS_PARAMS, {"cli_user": "oncall"}, approval="auto",
                               stand_ins=aws)
    assert summary["status"] == "contained" and summary["verified"] is True
    (action,) = summary["actions"]
    assert action["name"] == "aws.deactivate-access-key" and action["after"]["status"] == "Inactive"
    iam = aws.clients("iam", account_id="111122223333")
    assert {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]} \
        == {KEY: "Inactive"}
    kinds = [r.kind for r in responder.ledger.records(case_id=summary["case_id"])]
    assert kinds[:3] == ["detection.received", "case.opened", "manual.requested"]
    assert "approval.given" in kinds and "action.contained" in kinds and kinds[-1] == "case.closed"
    (req,) = responder.ledger.records(case_id=summary["case_id"], kind_prefix="manual.requested")
    assert req.actor == "cli:oncall" and req.payload["requested_by"] == {"cli_user": "oncall"}
    assert req.payload["parameters"] == AWS_PARAMS
    case = json.loads(responder.ledger.case(summary["case_id"])["detection"])
    assert case["source"] == "manual" and case["raw"]["requested_by"] == {"cli_user": "oncall"}

    again = responder.manual("aws-access-key-created", AWS_PARAMS, {"cli_user": "oncall"}, approval="auto",
                             stand_ins=aws)
    # the same key by hand again, once contained: a case linked to the first reads it again and
    # closes without asking (issue 14: a contained credential is looked at again)
    assert again["status"] == "already_contained" and again["case_id"] != summary["case_id"], again
    (linked,) = responder.ledger.records(case_id=again["case_id"], kind_prefix="case.linked")
    assert linked.payload["previous_case"] == summary["case_id"]
    assert responder.ledger.verify().ok


def test_manual_run_on_a_protected_principal_is_refused_by_the_guard(responder, aws):
    params = {**AWS_PARAMS, "user_name": "break-glass-admin", "access_key_id": "AKIABREAKGLASS000001"}
    summary = responder.manual("aws-access-key-created", params, {"cli_user": "oncall"}, approval="auto", stand_ins=aws)
    assert summary["status"] == "refused" and "protected principal" in summary["guard"]["reason"]
    iam = aws.clients("iam", account_id="111122223333")
    assert iam.list_access_keys(UserName="break-glass-admin")["AccessKeyMetadata"][0]["Status"] == "Active"


def test_self_approval_and_unsandboxed_auto_are_refused_and_recorded(responder):
    with pytest.raises(ManualRunError) as info:
        responder.manual("aws-access-key-created", AWS_PARAMS, {"cli_user": "oncall"}, approval="console")
    assert info.value.errors.keys() == {"approve"} and "no self-approval" in str(info.value)
    with pytest.raises(ManualRunError, match="only with --sandbox"):
        responder.manual("aws-access-key-created", AWS_PARAMS, {"cli_user": "oncall"}, approval="auto")
    with pytest.raises(ManualRunError, match="parameter 'account_id'"):
        responder.manual("aws-access-key-created", {**AWS_PARAMS, "account_id": "12"}, {"cli_user": "oncall"},
                         approval="slack")
    refused = list(responder.ledger.records(kind_prefix="manual.refused"))
    assert [set(r.payload["errors"]) for r in refused] == [{"approve"}, {"approve"}, {"account_id"}]
    assert all(r.actor == "cli:oncall" for r in refused) and responder.ledger.cases() == []


def test_manual_run_of_a_gcp_key(responder):
    from cordon.sandbox.gcp import GcpSandbox

    name = "projects/p-manual/serviceAccounts/ci@p-manual.iam.gserviceaccount.com/keys/0a1b2c3d4e"
    sb = GcpSandbox().start()
    try:
        summary = responder.manual("gcp-sa-key-created", {"key_name": name}, {"slack_user_id": "U0CAROL03"},
                                   approval="auto", stand_ins=sb)
    finally:
        sb.stop()
    assert summary["status"] == "contained" and summary["verified"] is True
    assert summary["actions"][0]["name"] == "gcp.disable-sa-key" and summary["actions"][0]["target"] == name


# -- the command line --------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path):
    return {**os.environ, "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db",
            "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def cordon(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([CORDON, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=None)


def test_cli_run_in_the_sandbox(env):
    res = cordon("run", "aws-access-key-created", "--param", f"access_key_id={KEY}", "-p", "user_name=build-bot",
                 "--param", "account_id=111122223333", "--sandbox", "--approve", "auto", "--output", "json", env=env)
    assert res.returncode == 0, res.stderr
    case = json.loads(res.stdout.strip().splitlines()[-1])
    assert case["status"] == "contained" and case["verified"] is True
    assert case["detection"]["source"] == "manual" and case["detection"]["credential"]["uid"] == KEY
    show = cordon("audit", "show", case["case_id"], "--output", "json", env=env)
    records = [json.loads(ln) for ln in show.stdout.splitlines()]
    (req,) = [r for r in records if r["kind"] == "manual.requested"]
    assert req["actor"].startswith("cli:") and req["payload"]["requested_by"]["cli_user"] == req["actor"][4:]


def test_cli_refusals_name_the_parameter_and_the_file(env):
    bad = cordon("run", "aws-access-key-created", "--param", "access_key_id=AKIA1", "--param", "user_name=x",
                 "--param", "account_id=111122223333", "--sandbox", "--approve", "auto", env=env)
    assert bad.returncode == 2
    assert "aws-access-key-created.yaml" in bad.stderr and "parameter 'access_key_id'" in bad.stderr
    console = cordon("run", "aws-access-key-created", *[f"--param={k}={v}" for k, v in AWS_PARAMS.items()],
                     "--approve", "console", env=env)
    assert console.returncode == 2 and "no self-approval" in console.stderr
    unknown = cordon("run", "aws-finding-triage", env=env)
    assert unknown.returncode == 2 and "declares no parameters" in unknown.stderr


APP = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
CRED = "0b1c2d3e-4f50-4a6b-8c7d-8e9f0a1b2c3d"
SUB = "00000000-1111-4222-8333-444444444444"
#: Every playbook made runnable by hand in issue 11, with parameters naming one credential.
NEWLY_RUNNABLE = {
    "azure-sp-certificate-added": {"service_principal_id": APP, "key_id": CRED},
    "azure-federated-credential-added": {"credential": f"{APP}/federatedIdentityCredentials/{CRED}",
                                         "application_id": APP},
    "azure-user-created": {"user_id": CRED},
    "azure-role-assignment": {"assignment_id": f"/subscriptions/{SUB}/providers/Microsoft.Authorization/"
                                               f"roleAssignments/{CRED}"},
    "gcp-oslogin-ssh-key": {"key_name": "users/eve@example.com/sshPublicKeys/0123456789abcdef0123"},
    "aws-federation-token": {"user_name": "mallory", "account_id": "111122223333"},
    "aws-admin-policy-attached": {"user_name": "mallory", "policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess",
                                  "account_id": "111122223333"},
    "aws-admin-inline-policy": {"user_name": "mallory", "policy_name": "backdoor-admin", "account_id": "111122223333"},
    "azure-service-principal-created": {"object_id": CRED},
    "gcp-iam-grant": {"binding": "projects/cordon-sandbox#roles/owner#user:eve@example.com"},
    "azure-directory-role": {"credential": f"62e90394-69f5-4237-9190-012177145e10#{CRED}"},
}


@pytest.mark.parametrize("playbook", sorted(NEWLY_RUNNABLE))
def test_more_playbooks_run_by_hand_in_the_sandbox(responder, playbook):
    """Each playbook that declares parameters runs by hand end to end: the credential is seeded in
    its provider's stand-in, contained through the same path as a detection, and verified."""
    from cordon.sandbox import Sandboxes

    sb = Sandboxes()
    try:
        summary = responder.manual(playbook, NEWLY_RUNNABLE[playbook], {"slack_user_id": "U0CAROL03"},
                                   approval="auto", stand_ins=sb)
    finally:
        sb.stop()
    assert summary["status"] == "contained" and summary["verified"] is True, summary
    assert summary["actions"] and all(a["status"] in ("contained", "already_contained") for a in summary["actions"])
