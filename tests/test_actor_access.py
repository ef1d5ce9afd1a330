"""The actor's own access (issue 14, item 1): the access key or role sessions the actor signed a
credential-adding call with, derived from the record (``cordon.providers.aws.actor``), and
``aws.revoke-role-sessions`` against moto's server over real HTTP.

The IAM-user records are Stratus Red Team's detonation logs (``tests/conftest.py``); the
assumed-role record is written here in CloudTrail's documented ``userIdentity`` shape
(https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-user-identity.html)
for an EC2 instance role session, since the shared corpus has none."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cordon.action import ActionContext, GuardError, get_action
from cordon.audit.ledger import Ledger
from cordon.config import DEFAULTS, load_config
from cordon.engine import Responder
from cordon.providers import get_provider
from tests.conftest import SHARED_DATA, detection_from_event, stratus_event, stratus_events

ADMIN_USER_LOG = "aws.persistence.iam-create-admin-user"
ACCOUNT = "111122223333"
ROLE = "web-instance-role"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"


def instance_role_event() -> dict:
    """AttachUserPolicy (AdministratorAccess) by an EC2 instance role session."""
    event = copy.deepcopy(stratus_event(ADMIN_USER_LOG, "AttachUserPolicy"))
    event["recipientAccountId"] = ACCOUNT
    event["userIdentity"] = {
        "type": "AssumedRole", "principalId": "AROAEXAMPLEWEBROLE01:i-0abc1234def567890",
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/i-0abc1234def567890", "accountId": ACCOUNT,
        "accessKeyId": "ASIAEXAMPLEWEBROLE01",
        "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLEWEBROLE01", "arn": ROLE_ARN,
                                             "accountId": ACCOUNT, "userName": ROLE},
                           "attributes": {"creationDate": "2024-11-30T08:00:00Z", "mfaAuthenticated": "false"},
                           "ec2RoleDelivery": "2.0"}}
    return event


def test_the_key_that_created_a_key_is_answered_as_an_access_key_of_its_own():
    det = detection_from_event(stratus_event(ADMIN_USER_LOG, "CreateAccessKey"))
    derived = get_provider("aws").actor_access(det)
    assert derived is not None and derived.playbook == "aws-access-key-created"
    d = derived.detection
    assert d.credential.kind == "aws_access_key" and d.credential.uid == det.actor.session_uid
    assert d.credential.uid.startswith("AKIA") and d.credential.uid != det.credential.uid
    assert d.credential.owner.uid == det.actor.user.uid == d.target.uid
    assert d.credential.attributes["revealed_by"] == {"detection_uid": det.uid, "event_name": "CreateAccessKey",
                                                      "credential_uid": det.credential.uid}
    assert d.uid == f"{det.uid}#actor" and "T1078.004" in d.technique_ids and d.raw == det.raw
    # one case for the actor whatever it created: the case key is the actor's key's
    other = get_provider("aws").actor_access(detection_from_event(stratus_event(ADMIN_USER_LOG, "CreateUser")))
    assert other.detection.case_key() == d.case_key() != det.case_key()


def test_an_instance_role_session_is_answered_by_revoking_the_roles_sessions():
    det = detection_from_event(instance_role_event())
    derived = get_provider("aws").actor_access(det)
    assert derived is not None and derived.playbook == "aws-actor-role-sessions"
    cred = derived.detection.credential
    assert (cred.kind, cred.uid, cred.owner.name) == ("aws_role_sessions", ROLE_ARN, ROLE)
    assert cred.attributes["session_key"] == "ASIAEXAMPLEWEBROLE01"
    assert cred.attributes["session"].endswith(f"assumed-role/{ROLE}/i-0abc1234def567890")


@pytest.mark.parametrize("identity", [
    {"type": "Root", "arn": f"arn:aws:iam::{ACCOUNT}:root", "accountId": ACCOUNT,
     "accessKeyId": "AKIAEXAMPLEROOT00001"},
    {"type": "AWSService", "invokedBy": "cloudformation.amazonaws.com"},
])
def test_nothing_is_derived_for_the_root_user_or_a_service(identity):
    event = copy.deepcopy(stratus_event(ADMIN_USER_LOG, "CreateAccessKey"))
    event["userIdentity"] = identity
    assert get_provider("aws").actor_access(detection_from_event(event)) is None


def test_nothing_is_derived_when_the_detection_is_already_about_the_actors_key():
    event = copy.deepcopy(stratus_event(ADMIN_USER_LOG, "CreateAccessKey"))
    event["userIdentity"]["accessKeyId"] = event["responseElements"]["accessKey"]["accessKeyId"]
    assert get_provider("aws").actor_access(detection_from_event(event)) is None


def _ctx(aws, det, **params):
    return ActionContext(detection=det, params=params, clients=aws.clients)


def test_revoke_role_sessions_puts_the_deny_and_rolls_back(aws):
    derived = get_provider("aws").actor_access(detection_from_event(instance_role_event())).detection
    iam = aws.clients("iam")  # the account the action context acts in
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
    action = get_action("aws.revoke-role-sessions")()
    c = _ctx(aws, derived, role_name=ROLE, issued_before="2024-11-30T09:00:00Z")
    plan = action.plan(c)
    assert [call.operation for call in plan.calls] == ["PutRolePolicy"] and plan.before["exists"] is False
    result = action.run(c, approved=[call.model_dump(exclude_none=True) for call in plan.calls])
    assert result.status == "contained", result.error
    doc = iam.get_role_policy(RoleName=ROLE, PolicyName="CordonRevokeOlderSessions")["PolicyDocument"]
    assert doc["Statement"] == [{"Sid": "CordonRevokeOlderSessions", "Effect": "Deny", "Action": "*",
                                 "Resource": "*",
                                 "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2024-11-30T09:00:00Z"}}}]
    held, state = action.verify(c)
    assert held and state["issued_before"] == "2024-11-30T09:00:00Z" and state["role_arn"].endswith(f":role/{ROLE}")
    again = action.run(_ctx(aws, derived, role_name=ROLE, issued_before="2024-11-30T08:00:00Z"))
    assert again.status == "already_contained" and again.calls == []
    undone = action.rollback(c, result)
    assert undone.status == "rolled_back"
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == []


def test_a_service_linked_role_is_refused(aws):
    derived = get_provider("aws").actor_access(detection_from_event(instance_role_event())).detection
    iam = aws.clients("iam")  # the account the action context acts in
    iam.create_role(RoleName=ROLE, Path="/aws-service-role/ec2.amazonaws.com/", AssumeRolePolicyDocument="{}")
    with pytest.raises(GuardError, match="service-linked"):
        get_action("aws.revoke-role-sessions")().plan(_ctx(aws, derived, role_name=ROLE))
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == []


# -- the whole path: intake opens the actor's case, the sandbox contains it ---------------------------
needs_corpus = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason=f"{SHARED_DATA} is absent (../shared not beside the repo)")


def config_folder(dest: Path, **keys: Any) -> Path:
    """The shipped ``cordon.yaml`` with ``keys`` set, in ``dest``."""
    dest.mkdir(parents=True)
    data = yaml.safe_load((DEFAULTS / "cordon.yaml").read_text())
    data["playbooks"] = str(DEFAULTS / "playbooks")
    data.update(keys)
    (dest / "cordon.yaml").write_text(yaml.safe_dump(data))
    return dest


def responder_with(tmp_path: Path, monkeypatch, **keys: Any) -> Responder:
    url = f"sqlite:///{tmp_path}/ledger.db"
    folder = config_folder(tmp_path / "config", **keys)
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    monkeypatch.setenv("CORDON_CONFIG", str(folder))
    return Responder(config=load_config(folder), ledger=Ledger(url))


@needs_corpus
def test_the_key_that_made_a_backdoor_admin_is_contained_with_what_it_made(tmp_path, monkeypatch, prefect_server,
                                                                           aws):
    """Stratus Red Team's iam-create-admin-user: one IAM user's key creates a user, attaches
    AdministratorAccess and creates an access key. With ``actor_access`` on: three cases for what it
    made and one for the key that made them (joined by the second and third detection), all
    contained; the actor's key is deactivated, nothing else of the actor's touched."""
    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    log = tmp_path / "admin-user.json"
    events = stratus_events(ADMIN_USER_LOG)
    log.write_text(json.dumps(events))
    actor_key = events[0]["userIdentity"]["accessKeyId"]
    actor_user = events[0]["userIdentity"]["userName"]
    report = responder.intake([log])
    # two rules match one record (one case, joined); the actor's case is joined by the 2nd and 3rd case
    assert len(report.cases) == 4 and len(report.joined) == 3, report
    actor_cases = [t for t in report.cases if t.detection.credential.uid == actor_key]
    assert len(actor_cases) == 1 and actor_cases[0].playbook.name == "aws-access-key-created"
    assert len([t for t in report.joined if t.case_id == actor_cases[0].case_id and not t.run]) == 2
    summaries = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert [s["status"] for s in summaries] == ["contained"] * 4, summaries
    keys = {k["AccessKeyId"]: k["Status"] for k in aws.clients("iam").list_access_keys(
        UserName=actor_user)["AccessKeyMetadata"]}
    assert keys == {actor_key: "Inactive"}
    links = [r for r in responder.ledger.records(kind_prefix="case.actor_access")]
    assert len([r for r in links if r.payload.get("actor_case") == actor_cases[0].case_id]) == 3
    assert len([r for r in links if r.case_id == actor_cases[0].case_id]) == 3  # revealed by each case


def test_on_by_default_in_the_shipped_file_the_loader_and_the_dataclass(tmp_path):
    assert load_config(DEFAULTS).actor_access is True  # the shipped cordon.yaml says so
    (tmp_path / "cordon.yaml").write_text("protected_principals: []\n")
    assert load_config(tmp_path).actor_access is True  # a cordon.yaml that does not name it
    (tmp_path / "cordon.yaml").write_text("actor_access: false\n")
    assert load_config(tmp_path).actor_access is False


@needs_corpus
def test_on_by_default_a_case_for_the_actor_and_none_with_actor_access_false(tmp_path, monkeypatch):
    log = tmp_path / "admin-user.json"
    log.write_text(json.dumps(stratus_events(ADMIN_USER_LOG)))
    responder = responder_with(tmp_path / "default", monkeypatch)  # the shipped cordon.yaml as it is
    report = responder.intake([log])
    # the three credentials and the key that made them (joined by the 2nd and 3rd credential's detection)
    assert len(report.cases) == 4 and len(report.joined) == 3, report
    assert len(list(responder.ledger.records(kind_prefix="case.actor_access"))) == 6  # 3 links, both ways

    off = responder_with(tmp_path / "off", monkeypatch, actor_access=False)
    report = off.intake([log])
    assert len(report.cases) == 3 and len(report.joined) == 1  # two rules match one record: one case
    assert not list(off.ledger.records(kind_prefix="case.actor_access"))


@needs_corpus
def test_an_instance_role_session_that_granted_admin_has_its_sessions_revoked(tmp_path, monkeypatch,
                                                                             prefect_server, aws):
    """The real intrusion's EC2 instance role session attaching AdministratorAccess: the grant is
    detached and every session of the role issued before now is denied; a protected role's
    sessions are never revoked (the guard refuses the actor's case, nothing is put on the role)."""
    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    path = tmp_path / "attach.json"
    path.write_text(json.dumps(instance_role_event()))
    report = responder.intake([path])
    assert sorted(t.playbook.name for t in report.cases) == ["aws-actor-role-sessions", "aws-admin-policy-attached"]
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=aws)}
    assert by_playbook["aws-admin-policy-attached"]["status"] == "contained"
    assert by_playbook["aws-actor-role-sessions"]["status"] == "contained", by_playbook["aws-actor-role-sessions"]
    doc = aws.clients("iam").get_role_policy(RoleName=ROLE, PolicyName="CordonRevokeOlderSessions")["PolicyDocument"]
    assert doc["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"]

    protected = responder_with(tmp_path / "p", monkeypatch, actor_access=True,
                               protected_principals=[f"arn:aws:iam::*:role/{ROLE}"])
    aws.reset()
    event = instance_role_event()
    event["eventID"] = "another-event"
    path.write_text(json.dumps(event))
    report = protected.intake([path])
    by_playbook = {s["playbook"]: s for s in protected.run_all(report, approval="auto", stand_ins=aws)}
    assert by_playbook["aws-actor-role-sessions"]["status"] == "refused"
    assert aws.clients("iam").list_role_policies(RoleName=ROLE)["PolicyNames"] == []


@needs_corpus
def test_an_action_that_refuses_while_planning_ends_the_case_refused_not_failed(tmp_path, monkeypatch,
                                                                                prefect_server, aws):
    """A service-linked role's sessions: ``aws.revoke-role-sessions`` refuses while the plan is made
    (``GuardError`` in the dry run). The case ends ``refused`` with a ``guard.refused`` record naming
    why, the run does not fail, nothing is put on the role."""
    responder = responder_with(tmp_path, monkeypatch, actor_access=True)
    aws.use_account(ACCOUNT)
    aws.clients("iam").create_role(RoleName=ROLE, Path="/aws-service-role/ec2.amazonaws.com/",
                                   AssumeRolePolicyDocument="{}")
    path = tmp_path / "attach.json"
    path.write_text(json.dumps(instance_role_event()))
    report = responder.intake([path])
    by_playbook = {s["playbook"]: s for s in responder.run_all(report, approval="auto", stand_ins=aws)}
    actor = by_playbook["aws-actor-role-sessions"]
    assert actor["status"] == "refused", actor
    (refused,) = [r for r in responder.ledger.records(case_id=actor["case_id"]) if r.kind == "guard.refused"]
    assert "service-linked" in refused.payload["reason"]
    assert not list(responder.ledger.records(case_id=actor["case_id"], kind_prefix="run.error"))
    assert aws.clients("iam").list_role_policies(RoleName=ROLE)["PolicyNames"] == []


def test_a_step_refused_at_run_time_is_not_called_contained():
    from cordon.respond import outcome_status

    refused = {"name": "aws.delete-key-pair", "status": "refused"}
    contained = {"name": "aws.deactivate-access-key", "status": "contained"}
    assert outcome_status([contained, refused], [{"held": True}, {"held": True}]) == "refused"
    assert outcome_status([contained], [{"held": True}]) == "contained"
