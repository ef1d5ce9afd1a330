"""Least-privilege grants generated from the actions' declarations (``cordon permissions``),
and the Slack app manifest (``cordon slack-manifest``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cordon.action import all_actions, load_builtin_actions
from cordon.cli import app
from cordon.config import load_config
from cordon.permissions import actions_in_use, generate, slack_manifest
from cordon.providers.aws.grants import aws_policy
from cordon.sandbox.aws import AwsSandbox

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _allowed(policy: dict) -> set[str]:
    return {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}


def test_aws_policy_grants_exactly_what_the_playbooks_actions_declare():
    config = load_config()
    used = actions_in_use(config)
    policy = generate(config, "aws")
    declared = {p for cls in used if cls.provider == "aws" for p in cls.permissions}
    assert declared and _allowed(policy) == declared | {"sts:GetCallerIdentity"}
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids)) and all(re.fullmatch(r"[A-Za-z0-9]+", s) for s in sids)


def test_only_the_actions_of_the_playbooks_in_use_are_granted(tmp_path):
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "aws-login-profile.yaml").write_text(
        (REPO / "cordon" / "defaults" / "playbooks" / "aws-login-profile.yaml").read_text())
    (tmp_path / "cordon.yaml").write_text("playbooks: playbooks\nprotected_principals: []\n")
    config = load_config(tmp_path)
    names = {cls.name for cls in actions_in_use(config)}
    assert "aws.delete-login-profile" in names and "aws.deactivate-access-key" not in names
    allowed = _allowed(generate(config, "aws"))
    assert "iam:DeleteLoginProfile" in allowed and "iam:UpdateAccessKey" not in allowed


def test_aws_policy_denies_writes_on_protected_principals():
    policy = aws_policy([], ["arn:aws:iam::*:user/break-glass*", "service-*@*.iam.gserviceaccount.com"])
    (deny,) = [s for s in policy["Statement"] if s["Effect"] == "Deny"]
    assert deny["Resource"] == ["arn:aws:iam::*:user/break-glass*"]  # only AWS ARNs belong in an IAM policy
    assert "iam:UpdateAccessKey" in deny["Action"] and "iam:DeleteLoginProfile" in deny["Action"]


def test_generated_aws_policy_is_accepted_by_iam():
    """IAM (moto's implementation of CreatePolicy validates the grammar) accepts the document."""
    sandbox = AwsSandbox().start()
    try:
        iam = sandbox.clients("iam", account_id="123456789012")
        doc = generate(load_config(), "aws", every=True)
        resp = iam.create_policy(PolicyName="cordon-responder", PolicyDocument=json.dumps(doc))
        version = iam.get_policy_version(PolicyArn=resp["Policy"]["Arn"], VersionId="v1")["PolicyVersion"]
        stored = version["Document"]
        stored = json.loads(stored) if isinstance(stored, str) else stored
        assert _allowed(stored) == _allowed(doc)
    finally:
        sandbox.stop()


def test_azure_grants_split_graph_permissions_from_rbac_operations():
    doc = generate(load_config(), "azure", every=True)
    assert "Application.ReadWrite.All" in doc["graph_application_permissions"]
    assert not any(p.startswith("Microsoft.") for p in doc["graph_application_permissions"])
    role = doc["role_definition"]
    assert role["IsCustom"] and "Microsoft.Authorization/roleAssignments/delete" in role["Actions"]
    assert all(a.startswith("Microsoft.") for a in role["Actions"])


def test_gcp_role_lists_every_declared_gcp_permission():
    doc = generate(load_config(), "gcp", every=True)
    load_builtin_actions()
    declared = {p for cls in all_actions().values() if cls.provider == "gcp" for p in cls.permissions}
    assert set(doc["includedPermissions"]) == declared
    assert doc["includedPermissions"] == sorted(doc["includedPermissions"])


def test_unknown_provider_is_refused():
    with pytest.raises(ValueError, match="oracle"):
        generate(load_config(), "oracle")


def test_cli_prints_parseable_documents():
    aws = runner.invoke(app, ["permissions", "aws"])
    assert aws.exit_code == 0, aws.output
    assert json.loads(aws.stdout)["Version"] == "2012-10-17"
    gcp = runner.invoke(app, ["permissions", "gcp", "--all"])
    assert gcp.exit_code == 0 and yaml.safe_load(gcp.stdout)["includedPermissions"]
    bad = runner.invoke(app, ["permissions", "oracle"])
    assert bad.exit_code != 0


def test_slack_manifest_points_at_cordon_serve_and_asks_only_needed_scopes():
    m = slack_manifest("https://cordon.example.com/")
    assert m["settings"]["interactivity"]["request_url"] == "https://cordon.example.com/slack/interactions"
    assert m["features"]["slash_commands"][0]["url"] == "https://cordon.example.com/slack/commands"
    assert set(m["oauth_config"]["scopes"]["bot"]) == {"chat:write", "commands", "users:read", "users:read.email",
                                                       "usergroups:read"}
    with pytest.raises(ValueError, match="https"):
        slack_manifest("http://cordon.example.com")
    out = runner.invoke(app, ["slack-manifest", "--base-url", "http://insecure"])
    assert out.exit_code != 0 and "https" in out.output


def test_deploy_doc_shows_the_current_generated_grants(tmp_path):
    """docs/deploy.md embeds the generated documents (`cordon permissions --all`); when an action's
    permissions change, regenerate them with `python -m cordon.permissions docs/deploy.md`."""
    from cordon.permissions import render, update_doc

    text = (REPO / "docs" / "deploy.md").read_text()
    for provider in ("aws", "azure", "gcp", "kubernetes", "aws-sensors", "azure-sensors", "gcp-sensors"):
        m = re.search(rf"<!-- generated:{provider} -->\n```\w+\n(.*?)```\n<!-- /generated:{provider} -->", text,
                      re.S)
        assert m, f"docs/deploy.md has no generated block for {provider}"
        assert m.group(1) == render(load_config(), provider), (
            f"docs/deploy.md: the {provider} block is stale; run `python -m cordon.permissions docs/deploy.md`")
    # the updater rewrites a stale copy and leaves a current one alone
    stale = tmp_path / "deploy.md"
    stale.write_text(text.replace('"sts:GetCallerIdentity"', '"sts:Nothing"'))
    assert update_doc(str(stale), load_config()) is True and stale.read_text() == text
    assert update_doc(str(stale), load_config()) is False
    (tmp_path / "empty.md").write_text("no blocks here\n")
    with pytest.raises(ValueError, match="generated:aws"):
        update_doc(str(tmp_path / "empty.md"), load_config())
