"""Teams clickers resolved in Entra ID: :class:`cordon.teams.directory.EntraDirectory` over real HTTP.

Real parts: msgraph-sdk's ``GraphServiceClient`` with azure-identity's ``ClientSecretCredential``
(the bot's app, its secret in the environment) against the Azure sandbox's Graph stand-in
(``GET /v1.0/users/{id}?$select=``, ``POST /v1.0/users/{id}/checkMemberGroups``, nested groups) and
its token endpoint; the approval policy (:func:`cordon.approvals.policy.check_clicker`); and, at the
end, Cordon's ``/teams/messages`` endpoint with the shared decider (``tests.test_teams_approval``).
Time is a settable clock, never a sleep.
"""

from __future__ import annotations

import os
import secrets

import pytest

from cordon.approvals.policy import ApprovalSettings, Policy, check_clicker
from cordon.sandbox.azure import AzureSandbox
from cordon.teams.directory import EntraDirectory, directory_for, entra_directory
from cordon.teams.verify import TeamsSettings
from tests.test_teams_approval import TeamsWorld, teams, verifier  # noqa: F401 - fixtures

BOT_APP_ID = "00000000-0000-0000-0000-0000000b0701"
SECRET_ENV = "CORDON_TEST_ENTRA_BOT_SECRET"
SECOPS = "5ec0b500-0000-0000-0000-000000000001"  # approvers, entra:<this>
NESTED = "5ec0b500-0000-0000-0000-000000000002"  # a member group of SECOPS
ONCALL = "5ec0b500-0000-0000-0000-000000000003"  # escalation target
CAROL, NINA, EVE, MALLORY, ERIN = (f"0000c1c0-0000-0000-0000-00000000000{i}" for i in range(1, 6))
#: the example detection's actor (tests.test_approval_policy: arn:aws:iam::111122223333:user/mallory)
DETECTION = {"actor": {"user": {"uid": "arn:aws:iam::111122223333:user/mallory", "name": "mallory"}}}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def azure():
    sandbox = AzureSandbox().start()
    secret = secrets.token_urlsafe(16)
    os.environ[SECRET_ENV] = secret
    s = sandbox.standin
    s.add_client(BOT_APP_ID, secret, sandbox.tenant_id)
    s.ensure_user(CAROL, "carol@contoso.example", mail="carol.s@contoso.example")  # direct member
    s.ensure_user(NINA, "nina@contoso.example")  # no mailbox: her UPN stands for her; nested member
    s.ensure_user(EVE, "eve@contoso.example", mail="eve@contoso.example")  # nobody
    s.ensure_user(MALLORY, "m.sec@contoso.example", mail="Mallory@contoso.example")  # the suspect
    s.ensure_user(ERIN, "erin@contoso.example", mail="erin@contoso.example")  # on call
    s.add_group_member(SECOPS, CAROL)
    s.add_group_member(SECOPS, MALLORY)
    s.add_group_member(SECOPS, NESTED)
    s.add_group_member(NESTED, NINA)
    s.add_group_member(ONCALL, ERIN)
    yield sandbox
    os.environ.pop(SECRET_ENV, None)
    sandbox.stop()


def settings(azure: AzureSandbox) -> TeamsSettings:
    return TeamsSettings(app_id=BOT_APP_ID, tenant_id=azure.tenant_id, app_password_env=SECRET_ENV,
                         graph_url=azure.graph_url)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def entra(azure, clock):
    """A fresh directory (empty cache) with the bot's own credential, 60 s TTL."""
    d = entra_directory(settings(azure), login=azure.arm_url, verify=azure.standin.ca_path, ttl=60, clock=clock)
    yield d
    d.close()


def graph_calls(azure: AzureSandbox, oid: str) -> list[dict]:
    return [r for r in azure.standin.api_requests("graph") if r["path"].startswith(f"/v1.0/users/{oid}")]


POLICY = Policy(users=frozenset({"U0ALICE01"}), groups=frozenset({"S0SECOPS01", f"entra:{SECOPS}"}), quorum=1)


def check(user: str, directory, policy: Policy = POLICY, **kw) -> str | None:
    return check_clicker(f"teams:{user}", user, policy=policy, settings=ApprovalSettings(), detection=DETECTION,
                         directory=directory, **kw)


def test_members_direct_and_nested_are_allowed_with_their_graph_identity(azure, entra):
    assert entra.is_member(f"teams:{CAROL}", POLICY.groups) == f"entra:{SECOPS}"
    assert entra.is_member(f"teams:{NINA}", POLICY.groups) == f"entra:{SECOPS}"  # through NESTED
    assert entra.email(f"teams:{CAROL}") == "carol.s@contoso.example"
    assert entra.email(f"teams:{NINA}") == "nina@contoso.example"  # no mail: the UPN
    assert check(CAROL, entra) is None and check(NINA, entra) is None
    # the user look-up asked Graph for the two properties only, with the bot's Graph token
    (get,) = [r for r in graph_calls(azure, CAROL) if r["method"] == "GET"]
    assert get["query"]["$select"] == "mail,userPrincipalName" and get["client_id"] == BOT_APP_ID
    (post,) = [r for r in graph_calls(azure, CAROL) if r["method"] == "POST"]
    assert post["path"].endswith("/checkMemberGroups") and post["body"] == {"groupIds": [SECOPS]}


def test_non_member_is_refused_and_slack_groups_are_not_asked_of_graph(azure, entra):
    assert check(EVE, entra) == f"<@teams:{EVE}> is not an approver for this playbook"
    assert entra.is_member(f"teams:{EVE}", {"S0SECOPS01"}) is None
    assert all(r["body"] == {"groupIds": [SECOPS]} for r in graph_calls(azure, EVE) if r["method"] == "POST")


def test_without_a_directory_an_entra_group_allows_nobody():
    reason = check(CAROL, None)
    assert reason == f"<@teams:{CAROL}> is not an approver for this playbook"


def test_the_suspect_in_the_group_may_not_approve_their_own_case(entra):
    assert entra.is_member(f"teams:{MALLORY}", POLICY.groups) == f"entra:{SECOPS}"
    reason = check(MALLORY, entra)
    assert reason == "no self-approval: you (mallory) are a principal under investigation in this detection"
    # the requester of a manual run, by the e-mail Graph gives
    asked = {**DETECTION, "actor": {}, "raw": {"requested_by": {"email": "CAROL.S@contoso.example"}}}
    assert check_clicker(f"teams:{CAROL}", "Carol", policy=POLICY, settings=ApprovalSettings(), detection=asked,
                         directory=entra) == "no self-approval: you requested this run (same e-mail)"


def test_escalation_to_an_entra_group(entra):
    policy = Policy(users=frozenset(), groups=frozenset({f"entra:{SECOPS}"}), quorum=1,
                    escalate_to=f"entra:{ONCALL}")
    assert check(ERIN, entra, policy) == f"<@teams:{ERIN}> is not an approver for this playbook"
    assert check(ERIN, entra, policy, escalated=True) is None


@pytest.mark.parametrize("status", [500, 403])
def test_graph_failures_are_refusals_naming_graph(azure, entra, status):
    azure.fail_next(f"POST /v1.0/users/{CAROL}/checkMemberGroups", status)
    reason = check(CAROL, entra)
    assert reason.startswith("cannot resolve the approver groups with Entra ID (Microsoft Graph) (ODataError")
    # membership read, then the user read fails: still a refusal, never an approval
    azure.fail_next(f"GET /v1.0/users/{CAROL}", status)
    reason = check(CAROL, entra)
    assert reason == "cannot look up your user in Entra ID (Microsoft Graph) to rule out self-approval (ODataError)"
    assert check(CAROL, entra) is None  # failures are not cached; Graph answers again


def test_a_refused_token_is_a_refusal(azure, clock, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    d = entra_directory(settings(azure), login=azure.arm_url, verify=azure.standin.ca_path, clock=clock)
    try:
        reason = check(CAROL, d)
        assert reason.startswith("cannot resolve the approver groups with Entra ID (Microsoft Graph) (")
        assert "invalid_client" in reason or "AADSTS7000215" in reason
    finally:
        d.close()


def test_answers_are_kept_for_the_ttl(azure, entra, clock):
    user = f"teams:{NINA}"
    before = len(graph_calls(azure, NINA))
    for _ in range(3):
        assert entra.is_member(user, POLICY.groups) and entra.email(user)
    assert len(graph_calls(azure, NINA)) - before == 2  # one membership check, one user read
    azure.standin.groups[NESTED]["members"].remove(NINA)
    try:
        clock.t += 59
        assert entra.is_member(user, POLICY.groups) == f"entra:{SECOPS}"  # still cached
        clock.t += 1
        assert entra.is_member(user, POLICY.groups) is None  # the TTL is over: Graph asked again
        assert entra.email(user) == "nina@contoso.example"
        assert len(graph_calls(azure, NINA)) - before == 4
    finally:
        azure.standin.add_group_member(NESTED, NINA)


def test_directory_for_config(tmp_path, azure, monkeypatch):
    from cordon.config import load_config
    from tests.test_approval_policy import write_config

    cfg = load_config(write_config(tmp_path / "c", {"required": True}, {"group_cache": 42}))
    assert directory_for(cfg) is None  # no teams section
    cfg.raw["teams"] = {"app_id": BOT_APP_ID, "tenant_id": azure.tenant_id, "app_password_env": SECRET_ENV,
                        "graph_url": azure.graph_url}
    d = directory_for(cfg)
    assert isinstance(d, EntraDirectory) and d.ttl == 42
    d.close()
    monkeypatch.delenv(SECRET_ENV)
    assert directory_for(cfg) is None  # a stand-in's fixed connector token, no secret: no directory


def test_a_teams_click_by_an_entra_group_member_is_counted(tmp_path, aws, azure, teams, verifier, clock):  # noqa: F811
    """Through ``/teams/messages``: Carol is neither in ``approvers.users`` nor in
    ``approval.identities``; ``approvers.groups: [entra:<SECOPS>]`` and Graph let her approve. The
    suspect Mallory, in the same group, is refused by the e-mail Graph gives."""
    d = entra_directory(settings(azure), login=azure.arm_url, verify=azure.standin.ca_path, clock=clock)
    approval = {"required": True, "expire_after": "4h", "approvers": {"groups": [f"entra:{SECOPS}"]}}
    tw = TeamsWorld(tmp_path, aws, teams, verifier, entra_directory=d, approval=approval)
    try:
        r = tw.click(MALLORY)
        assert r.status_code == 200 and "no self-approval: you (mallory)" in r.json()["value"]
        r = tw.click(EVE)
        assert r.status_code == 200 and "is not an approver" in r.json()["value"]
        r = tw.click(CAROL)
        assert r.status_code == 200, r.text
        ((_, run_input),) = tw.w.run.inputs
        assert run_input["decision"] == "approve" and run_input["approvers"] == [f"teams:{CAROL}"]
    finally:
        tw.close()
        d.close()


def test_a_playbooks_own_approvers_may_name_teams_clickers_and_entra_groups():
    """A playbook's ``approval.approvers`` takes ``teams:<object id>`` users and ``entra:<object id>``
    groups beside Slack's; anything else is refused by name; an ``entra:`` escalation shows as text
    in Slack's escalation reply, not as a broken mention."""
    from pydantic import ValidationError

    from cordon.approvals.decide import mention
    from cordon.playbooks.schema import Approvers

    ok = Approvers(users=["U0ALICE01", "teams:oid-alice-0001"], groups=[f"entra:{SECOPS}", "S0IR00001"])
    assert ok.users[1] == "teams:oid-alice-0001" and ok.groups[0] == f"entra:{SECOPS}"
    with pytest.raises(ValidationError, match="'alice' is not a Slack user ID"):
        Approvers(users=["alice"])
    with pytest.raises(ValidationError, match="nor a directory group"):
        Approvers(groups=["entra:not-a-guid"])
    assert mention(f"entra:{SECOPS}") == f"entra:{SECOPS}" and mention("S0IR00001") == "<!subteam^S0IR00001>"
