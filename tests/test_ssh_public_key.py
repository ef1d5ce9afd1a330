"""The action added to check the house's guide (issue 12): an SSH public key uploaded to an IAM user
(CloudTrail ``UploadSSHPublicKey``, ATT&CK T1098.001) is matched by its Sigma rule, routed to the
``aws-ssh-public-key`` playbook and deactivated exactly (``UpdateSSHPublicKey Status=Inactive``) in
the sandbox through the real respond flow, with rollback; the grant follows from the declaration.

The event (``examples/cloudtrail-upload-ssh-public-key.json``) has CloudTrail's record shape: the API's
``SSHPublicKey`` response member is written ``sSHPublicKey`` (first letter lowered, as CloudTrail
does for every member)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cordon.audit.ledger import Ledger
from cordon.config import load_config
from cordon.engine import Responder
from cordon.providers import shipped_rule_dirs
from tests.helpers import one_credential_config

EVENT = Path(__file__).resolve().parents[1] / "examples" / "cloudtrail-upload-ssh-public-key.json"
KEY = "APKAEXAMPLEBUILDBOT9"
OTHER = "APKAEXAMPLEOTHERKEY1"


@pytest.fixture
def responder(tmp_path, monkeypatch, prefect_server):
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    # the SSH key's case alone: the actor's own key is tests/test_actor_access.py's (tests.helpers.one_credential)
    folder = one_credential_config(tmp_path / "config")
    monkeypatch.setenv("CORDON_CONFIG", str(folder))
    return Responder(config=load_config(folder), ledger=Ledger(url))


def test_the_upload_is_a_detection_naming_the_key_and_its_user():
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.sigma import RuleSet

    rules = RuleSet.load(shipped_rule_dirs())
    (det,) = list(detect(read_inputs([EVENT]), rules))
    assert det.credential.kind == "aws_ssh_public_key" and det.credential.uid == KEY
    assert det.credential.owner.name == "build-bot" and det.credential.attributes["status"] == "Active"
    assert det.rule.name == "IAM SSH Public Key Uploaded" and det.technique_ids == ["T1098.001"]
    assert det.actor.user.name == "mallory" and det.actor.session_uid == "AKIAEXAMPLEMALLORY01"


def test_exactly_that_key_is_deactivated_and_rolled_back(responder, aws):
    from cordon.clouds import clients_for

    aws.use_account("111122223333")
    aws.ensure_user("build-bot")
    aws.ensure_ssh_public_key("build-bot", OTHER)  # the user's own key: never touched
    (s,) = list(responder.run_all(responder.intake([EVENT]), approval="auto", stand_ins=aws))
    assert s["playbook"] == "aws-ssh-public-key" and s["status"] == "contained" and s["verified"] is True, s
    (action,) = s["actions"]
    assert action["name"] == "aws.deactivate-ssh-public-key"
    assert action["before"]["status"] == "Active" and action["after"]["status"] == "Inactive"
    assert [(c["operation"], c["params"]) for c in action["calls"]] == [
        ("UpdateSSHPublicKey", {"UserName": "build-bot", "SSHPublicKeyId": KEY, "Status": "Inactive"})]
    iam = aws.clients("iam", account_id="111122223333")
    keys = {k["SSHPublicKeyId"]: k["Status"] for k in iam.list_ssh_public_keys(UserName="build-bot")["SSHPublicKeys"]}
    assert keys == {OTHER: "Active", KEY: "Inactive"}

    clients = clients_for("aws", {**aws.cloud_params(), "account_id": "111122223333"})
    outcomes = responder.rollback(s["case_id"], clients, who="test:responder")
    assert [(o["name"], o["status"]) for o in outcomes] == [("aws.deactivate-ssh-public-key", "rolled_back")]
    keys = {k["SSHPublicKeyId"]: k["Status"] for k in iam.list_ssh_public_keys(UserName="build-bot")["SSHPublicKeys"]}
    assert keys == {OTHER: "Active", KEY: "Active"}
    assert responder.ledger.verify().ok


def test_the_grant_follows_from_the_declaration():
    from cordon.action import get_action
    from cordon.providers.aws.grants import aws_policy

    cls = get_action("aws.deactivate-ssh-public-key")
    (stmt,) = [s for s in aws_policy([cls])["Statement"] if s["Sid"] == "AwsDeactivateSshPublicKey"]
    assert stmt["Action"] == ["iam:GetSSHPublicKey", "iam:UpdateSSHPublicKey"]
    assert "iam:UpdateSSHPublicKey" in json.dumps(aws_policy([cls]))
