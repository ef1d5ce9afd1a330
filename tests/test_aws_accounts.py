"""Several AWS accounts: Cordon's hub principal assumes the member role (sts:AssumeRole with the
external ID and session name ``cordon-<case>``) in the detection's account, and the guard compares
Cordon's identity there.

Everything goes over real HTTP to moto's server (real boto3, botocore's refreshable credentials):
moto puts the temporary key an AssumeRole returns in the IAM backend of the role's account, so
calls signed with it act in that account (``moto.core.responses.get_current_account``: no
``x-moto-account-id`` header, account of the signing key). moto does not evaluate trust policies,
so what Cordon *sent* (session name, external ID) is read from moto's record of the AssumeRole
calls (``moto.sts.models.sts_backends[account]["aws"].assumed_roles``).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from dateutil.tz import tzlocal

from cordon.audit.ledger import Ledger
from cordon.clouds import clients_for, cloud_for_case
from cordon.config import load_config
from cordon.permissions import generate, render
from cordon.playbooks.schema import load_playbooks
from cordon.providers.aws.accounts import (
    AwsAccountsError,
    MemberRole,
    assumed_session,
    aws_accounts_from_raw,
    forget_sessions,
    session_name,
)
from cordon.providers.aws.clients import aws_clients
from cordon.providers.aws.grants import aws_member_role
from cordon.respond import build_plan, guard, run_step, verify_step
from tests.helpers import one_credential

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudtrail-create-access-key.json"
HUB, MEMBER, OTHER = "111111111111", "222222222222", "333333333333"
ROLE = "CordonResponder"
MEMBER_ROLE_ARN = f"arn:aws:iam::{MEMBER}:role/{ROLE}"
KEY = "AKIAEXAMPLEBUILDBOT9"


def assumed_roles(account: str) -> list:
    """moto's record of the AssumeRole calls whose role is in ``account``."""
    from moto.sts.models import sts_backends

    return list(sts_backends[account]["aws"].assumed_roles)


def section(**extra) -> dict:
    return {"hub_account": HUB, "hub_principal": f"arn:aws:iam::{HUB}:user/cordon-hub", "role_name": ROLE,
            "external_id_env": "CORDON_AWS_EXTERNAL_ID", **extra}


def write_config(directory: Path, aws_section: dict | None) -> Path:
    """A config folder using the project's rules and playbooks, with ``aws_section``."""
    directory.mkdir(parents=True, exist_ok=True)
    # one case per record: the member account key's own actor is not this module's subject
    data = one_credential(yaml.safe_load((REPO / "cordon" / "defaults" / "cordon.yaml").read_text()))
    data.pop("rules", None)  # the providers' shipped rules
    data["playbooks"] = str(REPO / "cordon" / "defaults" / "playbooks")
    if aws_section is not None:
        data["aws"] = aws_section
    (directory / "cordon.yaml").write_text(yaml.safe_dump(data))
    return directory


def member_event(account: str = MEMBER) -> dict:
    """The example CreateAccessKey event, moved to ``account``."""
    text = EXAMPLE.read_text().replace("111122223333", account)
    return json.loads(text)


@pytest.fixture
def org(aws, monkeypatch, tmp_path):
    """An Organization in moto: Cordon's hub user (its key in the environment, as the default
    credential chain finds it), the member role in MEMBER created from the generated documents
    (``cordon permissions aws-member``), build-bot with the detection's key in MEMBER, and a user
    of the same name with its own key in the hub account."""
    forget_sessions()
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "MOTO_ACCOUNT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    external_id = "ext-" + secrets.token_hex(8)
    monkeypatch.setenv("CORDON_AWS_EXTERNAL_ID", external_id)
    iam_hub = aws.clients("iam", account_id=HUB)
    iam_hub.create_user(UserName="cordon-hub")
    hub_key = iam_hub.create_access_key(UserName="cordon-hub")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", hub_key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", hub_key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    iam_hub.create_user(UserName="build-bot")
    hub_bot_key = iam_hub.create_access_key(UserName="build-bot")["AccessKey"]["AccessKeyId"]

    config = load_config(write_config(tmp_path / "config", section()))
    member = aws_member_role(config, external_id=external_id)
    iam_member = aws.clients("iam", account_id=MEMBER)
    iam_member.create_role(RoleName=member["RoleName"], Path=member["Path"],
                           AssumeRolePolicyDocument=json.dumps(member["AssumeRolePolicyDocument"]))
    iam_member.put_role_policy(RoleName=member["RoleName"], PolicyName="cordon-responder",
                               PolicyDocument=json.dumps(member["PermissionsPolicy"]))
    aws.use_account(MEMBER)
    aws.ensure_user("build-bot")
    aws.ensure_access_key("build-bot", KEY)
    yield {"external_id": external_id, "config": config, "hub_bot_key": hub_bot_key, "member": member,
           "cloud": {"aws_endpoint_url": aws.endpoint_url, "cloudtrail_endpoint_url": aws.cloudtrail_url,
                     "region": "us-east-1"}}
    forget_sessions()


def key_status(aws, account: str, user: str) -> dict[str, str]:
    iam = aws.clients("iam", account_id=account)
    return {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]}


def playbook(config, name: str = "aws-access-key-created"):
    return next(p for p in load_playbooks(config.playbooks_dir) if p.name == name)


# -- configuration ------------------------------------------------------------------------------

def test_no_aws_section_means_one_account_as_before():
    assert aws_accounts_from_raw({}) is None and aws_accounts_from_raw({"aws": None}) is None


def test_role_for_picks_the_accounts_own_role_then_the_organization_role():
    accounts = aws_accounts_from_raw({"aws": section(accounts={
        "444455556666": {"role_arn": "arn:aws:iam::444455556666:role/ir/Responder",
                         "external_id_env": "EXT_444455556666"},
        MEMBER: {}})})
    assert accounts.role_for(HUB) is None and accounts.role_for(None) is None
    own = MemberRole("444455556666", "arn:aws:iam::444455556666:role/ir/Responder", "EXT_444455556666")
    assert accounts.role_for("444455556666") == own
    assert accounts.role_for(MEMBER) == MemberRole(MEMBER, MEMBER_ROLE_ARN, "CORDON_AWS_EXTERNAL_ID")
    assert accounts.role_for(OTHER).role_arn == f"arn:aws:iam::{OTHER}:role/{ROLE}"
    assert accounts.assumable_role_arns() == ["arn:aws:iam::*:role/CordonResponder",
                                              "arn:aws:iam::222222222222:role/CordonResponder",
                                              "arn:aws:iam::444455556666:role/ir/Responder"]
    only_listed = aws_accounts_from_raw({"aws": {"hub_account": HUB, "accounts": {
        MEMBER: {"role_arn": MEMBER_ROLE_ARN}}}})
    assert only_listed.role_for(OTHER) is None and only_listed.role_for(MEMBER).role_arn == MEMBER_ROLE_ARN


@pytest.mark.parametrize(("aws_section", "field"), [
    ("CordonResponder", "aws"),
    ({"role": "x"}, "aws.role"),
    ({"hub_account": "1234"}, "aws.hub_account"),
    ({"accounts": {MEMBER: {"role_arn": f"arn:aws:iam::{OTHER}:role/{ROLE}"}}}, f"aws.accounts.{MEMBER}.role_arn"),
    ({"accounts": {MEMBER: {}}}, f"aws.accounts.{MEMBER}.role_arn"),
    ({"accounts": {MEMBER: {"role_arn": "arn:aws:iam::222222222222:user/x"}}}, f"aws.accounts.{MEMBER}.role_arn"),
    ({"external_id_env": "not a variable"}, "aws.external_id_env"),
    ({"duration_seconds": 60}, "aws.duration_seconds"),
    ({"hub_principal": "cordon"}, "aws.hub_principal"),
])
def test_bad_aws_sections_name_the_field(tmp_path, monkeypatch, aws_section, field):
    with pytest.raises(AwsAccountsError, match=re.escape(f"'{field}'")):
        aws_accounts_from_raw({"aws": aws_section})
    monkeypatch.setenv("CORDON_CONFIG", str(write_config(tmp_path, aws_section)))
    with pytest.raises(AwsAccountsError, match=re.escape(f"{tmp_path / 'cordon.yaml'}: field '{field}'")):
        aws_clients({"account_id": MEMBER})  # the factory reads cordon.yaml's aws: section


def test_the_commented_example_in_cordon_yaml_parses():
    text = (REPO / "cordon" / "defaults" / "cordon.yaml").read_text().split("\n# aws:\n", 1)[1]
    body = "aws:\n" + "\n".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    accounts = aws_accounts_from_raw(yaml.safe_load(body))
    assert accounts.role_name == ROLE and accounts.hub_account == "111122223333"
    assert accounts.role_for("444455556666").role_arn == "arn:aws:iam::444455556666:role/ir/Responder"


def test_session_names_are_valid_sts_role_session_names():
    assert session_name("case-0a1b2c3d4e5f") == "cordon-case-0a1b2c3d4e5f"
    assert session_name(None) == "cordon-responder"
    odd = session_name("case with/odd:chars" + "x" * 80)
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", odd) and odd.startswith("cordon-case-with-odd-chars")


def test_cloud_for_case_carries_account_and_case():
    det = _detection()
    cloud = cloud_for_case({"region": "eu-west-1"}, det, "case-1")
    assert cloud == {"region": "eu-west-1", "account_id": MEMBER, "case_id": "case-1"}
    gcp = det.model_copy(update={"provider": "gcp", "account_uid": "my-project"})
    assert "account_id" not in cloud_for_case({}, gcp, "case-2")
    assert cloud_for_case({"sandbox": True}, gcp, "case-2")["account_id"] == "my-project"


def _detection(account: str = MEMBER):
    from tests.conftest import detection_from_event

    return detection_from_event(member_event(account))


# -- the member account, through the assumed role --------------------------------------------

def test_key_in_member_account_is_contained_through_the_assumed_role(org, aws):
    det = _detection()
    config = org["config"]
    pb = playbook(config)
    cloud = cloud_for_case({**org["cloud"], "aws": section()}, det, "case-0000feedbeef")
    clients = clients_for("aws", cloud)

    outcome = guard(pb, det, config, clients)
    assert outcome.ok, outcome
    assert outcome.cordon_identity == f"arn:aws:sts::{MEMBER}:assumed-role/{ROLE}/cordon-case-0000feedbeef"
    plan = build_plan("case-0000feedbeef", pb, det, clients)
    (step,) = plan.steps
    assert step.calls and step.calls[0]["operation"] == "UpdateAccessKey"
    result = run_step(step, det, clients)
    assert result.status == "contained" and result.after["status"] == "Inactive"
    assert verify_step(step, det, clients)["held"] is True

    assert key_status(aws, MEMBER, "build-bot") == {KEY: "Inactive"}
    assert key_status(aws, HUB, "build-bot") == {org["hub_bot_key"]: "Active"}  # same name in the hub: untouched
    (assumed,) = assumed_roles(MEMBER)  # one AssumeRole for guard, plan, run and verify
    assert assumed.role_arn == MEMBER_ROLE_ARN and assumed.session_name == "cordon-case-0000feedbeef"
    assert assumed.external_id == org["external_id"]
    assert assumed_roles(HUB) == []
    assert clients.own_access_key() == assumed.access_key_id and clients.own_access_key().startswith("ASIA")


def test_a_detection_in_the_hub_account_uses_the_hub_credentials(org, aws):
    det = _detection(HUB)  # build-bot's key in the hub is another one; the guard's view is what matters here
    clients = clients_for("aws", cloud_for_case({**org["cloud"], "aws": section(hub_account=None)}, det, "case-1"))
    assert clients("sts").get_caller_identity()["Arn"] == f"arn:aws:iam::{HUB}:user/cordon-hub"
    assert clients.role_arn is None and clients.own_identities() == []
    assert assumed_roles(HUB) == [] and assumed_roles(MEMBER) == []  # hub account learned, no role assumed


def test_guard_refuses_cordons_own_role_in_the_member_account(org):
    det = _detection()
    own_role = det.target.model_copy(update={"uid": MEMBER_ROLE_ARN, "name": ROLE})
    det = det.model_copy(update={"target": own_role})
    clients = clients_for("aws", cloud_for_case({**org["cloud"], "aws": section()}, det, "case-2"))
    outcome = guard(playbook(org["config"]), det, org["config"], clients)
    assert not outcome.ok and "Cordon's own identity" in outcome.reason
    assert f"arn:aws:sts::{MEMBER}:assumed-role/{ROLE}/cordon-case-2" in outcome.reason
    # the same role name in another member account is not Cordon's identity there
    other = det.model_copy(update={"target": own_role.model_copy(update={"uid": f"arn:aws:iam::{OTHER}:role/{ROLE}"})})
    assert "Cordon's own identity" not in (guard(playbook(org["config"]), other, org["config"], clients).reason or "")


def test_guard_knows_the_configured_role_even_when_sts_cannot_answer(org):
    det = _detection()
    det = det.model_copy(update={"target": det.target.model_copy(update={"uid": MEMBER_ROLE_ARN})})
    cloud = cloud_for_case({**org["cloud"], "sts_endpoint_url": "http://127.0.0.1:9", "aws": section()}, det, "c3")
    outcome = guard(playbook(org["config"]), det, org["config"], clients_for("aws", cloud))
    assert not outcome.ok and outcome.reason == f"target is Cordon's own identity ({MEMBER_ROLE_ARN})"


def test_guard_refuses_an_account_with_no_role_configured(org, aws):
    aws.use_account(OTHER)
    aws.ensure_user("build-bot")
    aws.ensure_access_key("build-bot", "AKIAEXAMPLEOTHER0001")
    det = _detection(OTHER)
    det = det.model_copy(update={"credential": det.credential.model_copy(update={"uid": "AKIAEXAMPLEOTHER0001"})})
    only_member = {"hub_account": HUB, "accounts": {MEMBER: {"role_arn": MEMBER_ROLE_ARN}}}
    clients = clients_for("aws", cloud_for_case({**org["cloud"], "aws": only_member}, det, "case-4"))
    outcome = guard(playbook(org["config"]), det, org["config"], clients)
    assert not outcome.ok
    assert outcome.reason.startswith(f"Cordon's clients act in account {HUB}, the detection is in account {OTHER}")
    assert key_status(aws, OTHER, "build-bot") == {"AKIAEXAMPLEOTHER0001": "Active"}


def test_external_id_comes_from_the_environment_only(org, monkeypatch):
    det = _detection()
    monkeypatch.delenv("CORDON_AWS_EXTERNAL_ID")
    clients = clients_for("aws", cloud_for_case({**org["cloud"], "aws": section()}, det, "case-5"))
    with pytest.raises(AwsAccountsError, match="CORDON_AWS_EXTERNAL_ID is not set"):
        clients("iam")
    assert assumed_roles(MEMBER) == []
    without = clients_for("aws", cloud_for_case({**org["cloud"], "aws": section(external_id_env=None)}, det, "case-5"))
    without("iam").list_access_keys(UserName="build-bot")
    (assumed,) = assumed_roles(MEMBER)
    assert assumed.external_id is None and assumed.session_name == "cordon-case-5"


def test_one_session_per_case_shared_by_threads_and_factories(org):
    det = _detection()
    factories = [clients_for("aws", cloud_for_case({**org["cloud"], "aws": section()}, det, "case-6"))
                 for _ in range(4)]
    errors: list[BaseException] = []

    def work(factory):
        try:
            for _ in range(3):
                factory("iam").list_access_keys(UserName="build-bot")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(factories[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r.session_name for r in assumed_roles(MEMBER)] == ["cordon-case-6"]
    clients_for("aws", cloud_for_case({**org["cloud"], "aws": section()}, det, "case-7"))("iam").list_access_keys(
        UserName="build-bot")
    assert [r.session_name for r in assumed_roles(MEMBER)] == ["cordon-case-6", "cordon-case-7"]


def test_credentials_are_refreshed_before_they_expire(org):
    import boto3

    offset = [timedelta(0)]

    def clock() -> datetime:
        return datetime.now(tzlocal()) + offset[0]

    role = MemberRole(MEMBER, MEMBER_ROLE_ARN, "CORDON_AWS_EXTERNAL_ID")
    session = assumed_session(boto3.Session(), role, "cordon-case-8", region="us-east-1",
                              sts_endpoint_url=org["cloud"]["aws_endpoint_url"], clock=clock)
    iam = session.client("iam", endpoint_url=org["cloud"]["aws_endpoint_url"])
    iam.list_access_keys(UserName="build-bot")
    first = session.get_credentials().get_frozen_credentials().access_key
    iam.list_access_keys(UserName="build-bot")
    assert len(assumed_roles(MEMBER)) == 1  # valid for an hour: no second AssumeRole
    offset[0] = timedelta(minutes=47)  # 13 minutes before expiry: inside botocore's 15-minute advisory window
    iam.list_access_keys(UserName="build-bot")
    offset[0] = timedelta(0)
    iam.list_access_keys(UserName="build-bot")
    second = session.get_credentials().get_frozen_credentials().access_key
    assert [r.session_name for r in assumed_roles(MEMBER)] == ["cordon-case-8", "cordon-case-8"]
    assert first != second and second == assumed_roles(MEMBER)[1].access_key_id


# -- grants -------------------------------------------------------------------------------------

def test_member_role_and_hub_grants_are_accepted_by_iam(org, aws):
    config, member = org["config"], org["member"]
    trust = member["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"AWS": f"arn:aws:iam::{HUB}:user/cordon-hub"}
    assert trust["Condition"]["StringEquals"] == {"sts:ExternalId": org["external_id"]}
    assert trust["Condition"]["StringLike"] == {"sts:RoleSessionName": "cordon-*"}
    allowed = {a for s in member["PermissionsPolicy"]["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    declared = {a for s in generate(load_config(), "aws")["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    assert allowed == declared and "sts:AssumeRole" not in allowed  # the actions' grants, no role chaining
    stored = aws.clients("iam", account_id=MEMBER).get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"]
    assert (json.loads(stored) if isinstance(stored, str) else stored) == member["AssumeRolePolicyDocument"]

    hub = generate(config, "aws", every=True)
    (assume,) = [s for s in hub["Statement"] if s["Sid"] == "CordonAssumeMemberRoles"]
    assert assume == member["HubPolicyStatement"] == {
        "Sid": "CordonAssumeMemberRoles", "Effect": "Allow", "Action": ["sts:AssumeRole"],
        "Resource": ["arn:aws:iam::*:role/CordonResponder"]}
    iam = aws.clients("iam", account_id=HUB)
    arn = iam.create_policy(PolicyName="cordon-hub", PolicyDocument=json.dumps(hub))["Policy"]["Arn"]
    version = iam.get_policy_version(PolicyArn=arn, VersionId="v1")["PolicyVersion"]["Document"]
    assert (json.loads(version) if isinstance(version, str) else version) == hub
    cli = generate(config, "aws-member", every=True)  # what `cordon permissions aws-member` prints
    assert cli["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"] == \
        org["external_id"]


def test_member_role_for_an_account_with_its_own_role(tmp_path):
    config = load_config(write_config(tmp_path, section(accounts={
        "444455556666": {"role_arn": "arn:aws:iam::444455556666:role/ir/Responder", "external_id_env": "EXT_4"}})))
    member = aws_member_role(config, account_id="444455556666")
    assert (member["RoleName"], member["Path"]) == ("Responder", "/ir/")
    cond = member["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]
    assert cond["StringEquals"] == {"sts:ExternalId": "<value of EXT_4>"}
    assert member["HubPolicyStatement"]["Resource"] == ["arn:aws:iam::*:role/CordonResponder",
                                                        "arn:aws:iam::444455556666:role/ir/Responder"]


def test_deploy_doc_shows_the_current_member_role(monkeypatch):
    """docs/deploy.md's aws-member block is :func:`render` (regenerate with
    ``python -m cordon.permissions docs/deploy.md``) and never carries an external ID value."""
    monkeypatch.setenv("CORDON_AWS_EXTERNAL_ID", "must-not-appear")
    text = (REPO / "docs" / "deploy.md").read_text()
    m = re.search(r"<!-- generated:aws-member -->\n```json\n(.*?)```\n<!-- /generated:aws-member -->", text, re.S)
    assert m, "docs/deploy.md has no generated block for aws-member"
    assert m.group(1) == render(load_config(), "aws-member")
    assert "must-not-appear" not in m.group(1) and "<value of CORDON_AWS_EXTERNAL_ID>" in m.group(1)


# -- the whole path: intake, Prefect flow, containment in the member account -------------------

def test_flow_contains_a_member_account_key_under_the_case_session(org, aws, tmp_path, monkeypatch, prefect_server):
    from cordon.engine import Responder

    config_dir = write_config(tmp_path / "flow-config", section())
    monkeypatch.setenv("CORDON_CONFIG", str(config_dir))
    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    responder = Responder(config=load_config(config_dir), ledger=Ledger(url))
    (tmp_path / "event.json").write_text(json.dumps(member_event()))
    report = responder.intake([tmp_path / "event.json"])
    (ticket,) = report.cases
    assert ticket.detection.account_uid == MEMBER
    # what Responder.cloud_for should do for every case (see the report: engine and flow own it)
    summary = responder.run(ticket, approval="auto", cloud=cloud_for_case(org["cloud"], ticket.detection,
                                                                          ticket.case_id))
    assert summary["status"] == "contained" and summary["verified"] is True, summary
    assert key_status(aws, MEMBER, "build-bot") == {KEY: "Inactive"}
    assert key_status(aws, HUB, "build-bot") == {org["hub_bot_key"]: "Active"}
    sessions = {r.session_name for r in assumed_roles(MEMBER)}
    assert sessions == {f"cordon-{ticket.case_id}"}
    assert all(r.external_id == org["external_id"] for r in assumed_roles(MEMBER))
    (passed,) = [r for r in responder.ledger.records(case_id=ticket.case_id) if r.kind == "guard.passed"]
    assert passed.payload["cordon_identity"] == f"arn:aws:sts::{MEMBER}:assumed-role/{ROLE}/cordon-{ticket.case_id}"
    assert org["external_id"] not in json.dumps([r.payload for r in responder.ledger.records()])
    assert responder.ledger.verify().ok
