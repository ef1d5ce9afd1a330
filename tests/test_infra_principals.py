"""Issue 14, item 3 (infrastructure as code): principals listed in ``infrastructure_principals``
(``cordon.yaml``: Terraform, CloudFormation, pipeline roles, by pattern) get triage, not
quarantine, for CreateUser and CreateLoginProfile; everything else they do is contained as from
anyone.

The records are Stratus Red Team's real CloudTrail captures (read from the shared corpus,
``../shared/data/real``, see its SOURCES.md), whose actor is an IAM user; for the Terraform cases
their ``userIdentity`` is replaced by an assumed-role session built in AWS's documented shape
(CloudTrail userIdentity element, ``type: AssumedRole`` with ``sessionContext.sessionIssuer``).
The e2e cases run the real path: ``Responder`` intake, the respond flow on Prefect's test server,
the AWS sandbox (moto over HTTP).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cordon.audit.ledger import Ledger
from cordon.audit.query import describe
from cordon.config import DEFAULTS, ConfigError, check_config_text, load_config
from cordon.engine import Responder
from cordon.playbooks.schema import load_playbooks, route, routed_because
from tests.conftest import SHARED_DATA, detection_from_event, stratus_event
from tests.helpers import one_credential

needs_corpus = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason=f"{SHARED_DATA} is absent (../shared not beside the repo)")

TERRAFORM = "arn:aws:iam::*:role/terraform-*"
PATTERNS = [TERRAFORM, "arn:aws:iam::111122223333:role/cloudformation-deploy"]


def assumed_role(event: dict[str, Any], role: str, session: str) -> dict[str, Any]:
    """``event`` (a copy) made by an assumed-role session of ``role`` in the event's account, in the
    shape AWS documents for CloudTrail's ``userIdentity`` (type ``AssumedRole``)."""
    event = copy.deepcopy(event)
    account = event["recipientAccountId"]
    event["userIdentity"] = {
        "type": "AssumedRole",
        "principalId": f"AROAEXAMPLEROLEID0001:{session}",
        "arn": f"arn:aws:sts::{account}:assumed-role/{role}/{session}",
        "accountId": account,
        "accessKeyId": "ASIAEXAMPLESESSION01",
        "sessionContext": {
            "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLEROLEID0001",
                              "arn": f"arn:aws:iam::{account}:role/{role}", "accountId": account,
                              "userName": role},
            "webIdFederationData": {},
            "attributes": {"creationDate": event["eventTime"], "mfaAuthenticated": "false"},
        },
    }
    event["userAgent"] = "APN/1.0 HashiCorp/1.0 Terraform/1.9.5 (+https://www.terraform.io)"
    return event


def create_user() -> dict[str, Any]:
    """Stratus' real CreateUser (by the IAM user ``christophe``)."""
    return stratus_event("aws.persistence.iam-create-admin-user", "CreateUser")


def create_login_profile() -> dict[str, Any]:
    """Stratus' real CreateLoginProfile (by the IAM user ``christophe``)."""
    return stratus_event("aws.persistence.iam-create-user-login-profile", "CreateLoginProfile")


def create_access_key() -> dict[str, Any]:
    """Stratus' real CreateAccessKey (by the IAM user ``christophe``)."""
    return stratus_event("aws.persistence.iam-backdoor-user", "CreateAccessKey")


def by_terraform(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` made by a Terraform run's session of the role ``terraform-deployer``."""
    return assumed_role(event, "terraform-deployer", "terraform-run-42")


def config_folder(dest: Path, patterns: list[str]) -> Path:
    """The shipped ``cordon.yaml`` with ``infrastructure_principals: patterns``, in ``dest``."""
    dest.mkdir(parents=True)
    # one case per record (tests.helpers.one_credential): this module is about how the record's own
    # credential is routed (triage or containment), not about the actor's access
    data = one_credential(yaml.safe_load((DEFAULTS / "cordon.yaml").read_text()))
    data["playbooks"] = str(DEFAULTS / "playbooks")
    data["infrastructure_principals"] = patterns
    (dest / "cordon.yaml").write_text(yaml.safe_dump(data))
    return dest


# -- the configuration ------------------------------------------------------------------------------


def test_shipped_empty_and_read_when_set(tmp_path):
    assert load_config().infrastructure_principals == []
    assert load_config(config_folder(tmp_path / "c", PATTERNS)).infrastructure_principals == PATTERNS


def test_a_misspelt_key_is_refused_naming_the_right_one():
    with pytest.raises(ConfigError, match=r"field 'infrastructure_principal': unknown key "
                                          r"\(did you mean 'infrastructure_principals'\?\)"):
        check_config_text("infrastructure_principal: ['arn:aws:iam::*:role/terraform-*']\n", "cordon.yaml")


# -- routing -----------------------------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("event,triage,containment", [
    (create_user, "aws-backdoor-user-infrastructure", "aws-backdoor-user"),
    (create_login_profile, "aws-login-profile-infrastructure", "aws-login-profile"),
])
def test_routing_by_actor(event, triage, containment):
    books = load_playbooks(DEFAULTS / "playbooks")
    infra = detection_from_event(by_terraform(event()))
    assert infra.actor.session_issuer == f"arn:aws:iam::{infra.account_uid}:role/terraform-deployer"
    assert route(books, infra, PATTERNS).name == triage
    assert route(books, infra, PATTERNS).contain == []
    assert "pattern 'arn:aws:iam::*:role/terraform-*'" in routed_because(route(books, infra, PATTERNS), infra,
                                                                         PATTERNS)
    # not configured: the same record is contained
    assert route(books, infra).name == containment and route(books, infra).contain
    # another actor: contained
    other = detection_from_event(event())
    assert route(books, other, PATTERNS).name == containment
    assert routed_because(route(books, other, PATTERNS), other, PATTERNS) is None
    # a session *named* like Terraform on another role is not the role: the session name is the caller's
    spoof = detection_from_event(assumed_role(event(), "dev-admin", "terraform-apply"))
    assert route(books, spoof, PATTERNS).name == containment


@needs_corpus
def test_update_login_profile_by_the_role_is_still_contained():
    books = load_playbooks(DEFAULTS / "playbooks")
    event = stratus_event("aws.privilege-escalation.iam-update-user-login-profile", "UpdateLoginProfile")
    assert route(books, detection_from_event(by_terraform(event)), PATTERNS).name == "aws-login-profile"


# -- the whole path --------------------------------------------------------------------------------


@pytest.fixture
def responder(tmp_path, monkeypatch, prefect_server):
    """A Responder whose configuration names the Terraform roles (``CORDON_CONFIG``, so the flow's
    tasks read the same one) and whose ledger is a fresh SQLite file."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    folder = config_folder(tmp_path / "config", PATTERNS)
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    monkeypatch.setenv("CORDON_CONFIG", str(folder))
    return Responder(config=load_config(folder), ledger=Ledger(url))


def respond(responder: Responder, aws: Any, tmp_path: Path, event: dict[str, Any]) -> dict[str, Any]:
    """Intake ``event`` from a file and run its one case with auto approval in the sandbox."""
    path = tmp_path / f"{event['eventName']}-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(event))
    report = responder.intake([path])
    assert not report.rejected and len(report.cases) == 1, report
    (summary,) = responder.run_all(report, approval="auto", stand_ins=aws)
    return summary


def opened_record(responder: Responder, case_id: str) -> Any:
    """The case's one ``case.opened`` ledger record."""
    (opened,) = [r for r in responder.ledger.records(case_id=case_id) if r.kind == "case.opened"]
    return opened


def triaged(responder: Responder, aws: Any, tmp_path: Path, event: dict[str, Any], playbook: str) -> Any:
    """Run ``event`` and check it was answered by the triage ``playbook``: enriched, recorded, no
    approval asked, nothing planned or contained, and the ledger saying which pattern matched.
    Returns the sandbox's IAM client in the event's account."""
    s = respond(responder, aws, tmp_path, event)
    assert s["playbook"] == playbook, s
    assert s["status"] == "no_containment" and s["actions"] == [] and s["plan"]["steps"] == [], s
    assert {"aws.iam-user", "aws.actor", "aws.cloudtrail-session"} <= set(s["enrichment"])
    kinds = [r.kind for r in responder.ledger.records(case_id=s["case_id"])]
    assert "case.closed" in kinds and "action.contained" not in kinds and "approval.asked" not in kinds
    opened = opened_record(responder, s["case_id"])
    assert TERRAFORM in opened.payload["because"] and "role/terraform-deployer" in opened.payload["because"]
    assert "infrastructure_principals" in describe(opened)
    assert responder.ledger.verify().ok
    return aws.clients("iam", account_id=event["recipientAccountId"])


@needs_corpus
def test_create_user_by_terraform_is_triaged_and_the_user_left_alone(responder, aws, tmp_path):
    event = by_terraform(create_user())
    iam = triaged(responder, aws, tmp_path, event, "aws-backdoor-user-infrastructure")
    user = event["requestParameters"]["userName"]
    assert iam.list_user_policies(UserName=user)["PolicyNames"] == []  # not quarantined


@needs_corpus
def test_create_login_profile_by_terraform_is_triaged_and_the_password_kept(responder, aws, tmp_path):
    event = by_terraform(create_login_profile())
    iam = triaged(responder, aws, tmp_path, event, "aws-login-profile-infrastructure")
    user = event["requestParameters"]["userName"]
    assert iam.get_login_profile(UserName=user)["LoginProfile"]["UserName"] == user  # still there


@needs_corpus
@pytest.mark.parametrize("event,playbook", [(create_user, "aws-backdoor-user"),
                                            (create_login_profile, "aws-login-profile")])
def test_the_same_records_by_another_actor_are_contained(responder, aws, tmp_path, event, playbook):
    s = respond(responder, aws, tmp_path, event())
    assert s["playbook"] == playbook and s["status"] == "contained" and s["verified"] is True, s
    assert "because" not in opened_record(responder, s["case_id"]).payload


@needs_corpus
def test_an_access_key_created_by_terraform_is_still_contained(responder, aws, tmp_path):
    event = by_terraform(create_access_key())
    s = respond(responder, aws, tmp_path, event)
    assert s["playbook"] == "aws-access-key-created" and s["status"] == "contained", s
    (action,) = s["actions"]
    assert action["name"] == "aws.deactivate-access-key" and action["after"]["status"] == "Inactive"
