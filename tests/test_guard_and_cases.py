"""The guard (protected principals, Cordon itself, the exact credential) and case dedup across
sources, with the real parsers and the AWS sandbox over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cordon.audit.ledger import Ledger
from cordon.clouds import clients_for
from cordon.config import load_config
from cordon.engine import Responder
from cordon.playbooks.schema import load_playbook_text, load_playbooks
from cordon.respond import guard
from tests.conftest import SHARED_DATA
from tests.helpers import one_credential_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def responder(tmp_path):
    # cases of the credential alone: the actor's own key is tests/test_actor_access.py's (tests.helpers.one_credential)
    return Responder(config=load_config(one_credential_config(tmp_path / "config")),
                     ledger=Ledger(f"sqlite:///{tmp_path}/ledger.db"))


def playbook(name: str):
    return next(p for p in load_playbooks(load_config().playbooks_dir) if p.name == name)


def detection(responder: Responder, path: Path):
    report = responder.intake([path])
    return report.cases[0].detection


def test_guard_passes_the_exact_credential(responder, aws):
    det = detection(responder, EXAMPLES / "cloudtrail-create-access-key.json")
    clients = clients_for("aws", {**aws.cloud_params(), "account_id": det.account_uid})
    outcome = guard(playbook("aws-access-key-created"), det, load_config(), clients)
    assert outcome.ok, outcome


def test_guard_refuses_cordons_own_identity(responder, aws):
    det = detection(responder, EXAMPLES / "cloudtrail-create-access-key.json")
    clients = clients_for("aws", {**aws.cloud_params(), "account_id": det.account_uid})
    me = clients("sts").get_caller_identity()["Arn"]
    det = det.model_copy(update={"target": det.target.model_copy(update={"uid": me})})
    outcome = guard(playbook("aws-access-key-created"), det, load_config(), clients)
    assert not outcome.ok and "Cordon's own identity" in outcome.reason


def test_guard_refuses_a_step_naming_another_key(responder, aws):
    det = detection(responder, EXAMPLES / "cloudtrail-create-access-key.json")
    clients = clients_for("aws", {**aws.cloud_params(), "account_id": det.account_uid})
    rogue = load_playbook_text("""\
name: rogue
description: names a fixed key instead of the detection's
when: {provider: aws, credential_kinds: [aws_access_key]}
contain:
  - action: aws.deactivate-access-key
    with: {user_name: "{{ credential.owner.name }}", access_key_id: AKIAEXAMPLEOTHERKEY1}
""", "rogue.yaml")
    outcome = guard(rogue, det, load_config(), clients)
    assert not outcome.ok and "access_key_id" in outcome.reason and "AKIAEXAMPLEOTHERKEY1" in outcome.reason


def test_guard_refuses_protected_patterns(responder, aws):
    det = detection(responder, EXAMPLES / "cloudtrail-create-access-key.json")
    clients = clients_for("aws", {**aws.cloud_params(), "account_id": det.account_uid})
    config = load_config()
    config.protected_principals.append("arn:aws:iam::111122223333:user/build-*")
    outcome = guard(playbook("aws-access-key-created"), det, config, clients)
    assert not outcome.ok and "build-*" in outcome.reason


def test_one_case_for_the_same_key_across_cloudtrail_and_guardduty(responder):
    report = responder.intake([EXAMPLES / "cloudtrail-create-access-key.json", EXAMPLES / "guardduty-same-key.json"])
    assert len(report.cases) == 1
    assert {t.detection.source for t in report.joined} == {"cloudtrail", "guardduty"}
    assert {t.case_id for t in report.joined} == {report.cases[0].case_id}
    kinds = [r.kind for r in responder.ledger.records(case_id=report.cases[0].case_id)]
    assert kinds.count("case.opened") == 1 and kinds.count("case.joined") == 2


def test_guardduty_finding_alone_routes_to_key_containment(responder):
    report = responder.intake([EXAMPLES / "guardduty-same-key.json"])
    (ticket,) = report.cases
    assert ticket.playbook.name == "aws-access-key-created"
    assert ticket.detection.credential.uid == "AKIAEXAMPLEBUILDBOT9"
    assert ticket.detection.credential.owner.name == "build-bot"


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} is absent")
def test_security_hub_posture_findings_open_the_hygiene_case_under_approval(responder):
    """IAM.3 / IAM.8 (and CIS 1.3 / 1.4, PCI.IAM.7) name a user, not a key: issue 17 answers them with
    the account's credential hygiene (tests/test_config_hygiene.py), always asking a person first."""
    files = sorted((SHARED_DATA / "aws-automated-security-response").rglob("*.json"))
    assert len(files) == 7
    report = responder.intake(files)
    assert not report.rejected
    playbooks = {t.playbook.name if t.playbook else None for t in report.cases}
    assert playbooks == {"aws-credential-hygiene"}, playbooks
    for t in report.cases:
        assert t.detection.credential.kind == "aws_stale_credentials"
        assert t.playbook.approval.required and t.playbook.approval.escalate_after is None
    json.dumps([t.detection.summary() for t in report.cases])  # serialisable for the ledger and CLI
