"""Incidents (issue 14, item 1): the cases of one actor's burst correlated into one incident, and
answered by one run, one approval request listing every credential and one plan.

The burst is Stratus Red Team's ``aws.persistence.iam-create-admin-user`` detonation log (one IAM
user's access key creates a user, attaches AdministratorAccess to it and creates an access key for
it: CloudTrail captured while the attack ran, read in place from ``../shared/data/real``); the other
actor's record is CloudTrail's documented ``userIdentity`` shape for an EC2 instance role session
(``tests/test_actor_access.py``), since the corpus has none."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cordon.audit.ledger import Ledger
from cordon.providers import get_provider
from cordon.recovery import RunState, check_case
from cordon.slack.blocks import approval_blocks
from tests.conftest import SHARED_DATA, detection_from_event, stratus_event, stratus_events
from tests.test_actor_access import ADMIN_USER_LOG, instance_role_event, responder_with

needs_corpus = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason=f"{SHARED_DATA} is absent (../shared not beside the repo)")


# -- the actor key and the ledger's incidents ---------------------------------------------------------
@needs_corpus
def test_one_key_is_one_actor_and_an_instance_role_session_another():
    aws = get_provider("aws")
    keys = {aws.actor_key(detection_from_event(e)) for e in stratus_events(ADMIN_USER_LOG)}
    (key,) = keys
    identity = stratus_event(ADMIN_USER_LOG, "CreateUser")["userIdentity"]
    assert key == f"aws|{identity['accountId']}|{identity['arn']}|{identity['accessKeyId']}"
    other = aws.actor_key(detection_from_event(instance_role_event()))
    assert other != key and other.endswith("|ASIAEXAMPLEWEBROLE01")
    manual = detection_from_event(stratus_event(ADMIN_USER_LOG, "CreateUser"))
    manual.rule.type = "manual"
    assert aws.actor_key(manual) is None


def test_cases_of_one_actor_share_an_incident_within_the_window(ledger_url):
    ledger = Ledger(ledger_url)
    first = ledger.assign_incident("case-a", "aws|1|arn:aws:iam::1:user/x|AKIA1", window_seconds=900,
                                   actor={"user": {"uid": "arn:aws:iam::1:user/x"}}, provider="aws")
    second = ledger.assign_incident("case-b", "aws|1|arn:aws:iam::1:user/x|AKIA1", window_seconds=900)
    other = ledger.assign_incident("case-c", "aws|1|arn:aws:iam::1:user/y|AKIA2", window_seconds=900)
    assert first.opened and not second.opened and other.opened
    assert second.incident_id == first.incident_id != other.incident_id
    # idempotent: a case is in one incident, and asking again writes nothing
    n = len(list(ledger.records()))
    assert ledger.assign_incident("case-b", "aws|1|arn:aws:iam::1:user/x|AKIA1", window_seconds=900) == \
        type(second)(first.incident_id, False)
    assert len(list(ledger.records())) == n
    # outside the window (nothing joined for longer than it): a new incident
    later = ledger.assign_incident("case-d", "aws|1|arn:aws:iam::1:user/x|AKIA1", window_seconds=0)
    assert later.opened and later.incident_id != first.incident_id
    inc = ledger.incident(first.incident_id)
    assert inc["cases"] == ["case-a", "case-b"] and inc["lead_case_id"] == "case-a"
    assert inc["actor"] == {"user": {"uid": "arn:aws:iam::1:user/x"}} and inc["provider"] == "aws"
    assert ledger.incident_of("case-b") == first.incident_id and ledger.incident_of("case-z") is None
    assert [i["incident_id"] for i in ledger.incidents()][-1] == first.incident_id
    kinds = [(r.case_id, r.kind) for r in ledger.records(kind_prefix="incident.")]
    assert kinds == [("case-a", "incident.opened"), ("case-a", "incident.case_added"),
                     ("case-b", "incident.case_added"), ("case-c", "incident.opened"),
                     ("case-c", "incident.case_added"), ("case-d", "incident.opened"),
                     ("case-d", "incident.case_added")]
    assert ledger.verify().ok


# -- one run for the burst --------------------------------------------------------------------------------
@needs_corpus
def test_one_run_one_plan_one_decision_for_an_actors_burst(tmp_path, monkeypatch, prefect_server, aws):
    """The three cases of the key's burst and (``actor_access``, on by default) the case of the key
    itself: one incident, one run (the lead's ``run.requested``; the others ``run.delegated``), one
    plan holding every case's steps under the lead (hashed with their case IDs), one decision; each
    case contained on its own, with its own records and close, and its timeline saying which
    decision covered it."""
    responder = responder_with(tmp_path, monkeypatch)
    log = tmp_path / "admin-user.json"
    log.write_text(json.dumps(stratus_events(ADMIN_USER_LOG)))
    report = responder.intake([log])
    assert len(report.cases) == 4
    actor_key = stratus_event(ADMIN_USER_LOG, "CreateUser")["userIdentity"]["accessKeyId"]
    (actor_case,) = [t.case_id for t in report.cases if t.detection.credential.uid == actor_key]
    (incident_id,) = {t.incident_id for t in report.cases}
    assert incident_id and responder.ledger.incident(incident_id)["cases"] == [t.case_id for t in report.cases]

    summaries = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert sorted(s["case_id"] for s in summaries) == sorted(t.case_id for t in report.cases)
    assert {s["status"] for s in summaries} == {"contained"}, summaries
    assert all(s["incident_id"] == incident_id for s in summaries)
    ledger = responder.ledger
    requested = list(ledger.records(kind_prefix="run.requested"))
    delegated = list(ledger.records(kind_prefix="run.delegated"))
    assert len(requested) == 1 and len(delegated) == 3
    lead = requested[0].case_id
    assert {r.payload["lead_case_id"] for r in delegated} == {lead}
    assert sorted(m["case_id"] for m in requested[0].payload["members"]) == sorted(r.case_id for r in delegated)
    assert actor_case in {r.case_id for r in delegated}  # the actor's key is answered with what it made
    # one flow run answered all four
    assert len({r.run_id for r in ledger.records(kind_prefix="run.started")}) == 1
    plans = [r.payload for r in ledger.records(case_id=lead, kind_prefix="plan.created")]
    incident_plan = plans[-1]
    assert incident_plan["incident"]["incident_id"] == incident_id
    assert {s["case_id"] for s in incident_plan["steps"]} == {t.case_id for t in report.cases}
    assert (ledger.case(lead) or {})["plan_hash"] == incident_plan["hash"]
    (given,) = list(ledger.records(kind_prefix="approval.given"))
    assert given.case_id == lead and given.payload["plan_hash"] == incident_plan["hash"]
    for member in delegated:
        kinds = [r.kind for r in ledger.records(case_id=member.case_id)]
        assert kinds.count("case.closed") == 1 and kinds[-1] == "case.closed"
        (covered,) = list(ledger.records(case_id=member.case_id, kind_prefix="approval.incident"))
        assert covered.payload["lead_case_id"] == lead and covered.payload["plan_hash"] == incident_plan["hash"]
        assert kinds.index("approval.incident") < kinds.index("step.started")
        own = [r.payload for r in ledger.records(case_id=member.case_id, kind_prefix="plan.created")]
        assert len(own) == 1 and own[0]["case_id"] == member.case_id  # its own plan, as a lone case has
    # what was contained: the admin grant detached, the new user's key deactivated, the user quarantined
    iam = aws.clients("iam")
    made = stratus_event(ADMIN_USER_LOG, "CreateAccessKey")["responseElements"]["accessKey"]
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=made["userName"])["AccessKeyMetadata"]}
    assert keys[made["accessKeyId"]] == "Inactive"
    assert iam.list_attached_user_policies(UserName=made["userName"])["AttachedPolicies"] == []
    # and the key that made them deactivated
    actor_user = stratus_event(ADMIN_USER_LOG, "CreateUser")["userIdentity"]["userName"]
    actor_keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=actor_user)["AccessKeyMetadata"]}
    assert actor_keys[actor_key] == "Inactive"
    assert ledger.verify().ok


@needs_corpus
def test_one_run_off_answers_each_case_alone(tmp_path, monkeypatch, prefect_server, aws):
    responder = responder_with(tmp_path, monkeypatch, incidents={"window": "15m", "one_run": False})
    log = tmp_path / "admin-user.json"
    log.write_text(json.dumps(stratus_events(ADMIN_USER_LOG)))
    report = responder.intake([log])
    assert len({t.incident_id for t in report.cases}) == 1  # still one incident in the ledger
    summaries = list(responder.run_all(report, approval="auto", stand_ins=aws))
    assert {s["status"] for s in summaries} == {"contained"}
    assert len(list(responder.ledger.records(kind_prefix="run.requested"))) == 4  # 3 credentials, the actor's key
    assert not list(responder.ledger.records(kind_prefix="run.delegated"))


@needs_corpus
def test_a_refused_member_closes_at_once_and_the_rest_is_contained(tmp_path, monkeypatch, prefect_server, aws):
    """The new user is protected: its cases are refused (closed before the decision, nothing
    touched), and the plan holds only what may be contained: the key that made them (the actor's
    own access, on by default; not protected)."""
    made = stratus_event(ADMIN_USER_LOG, "CreateUser")["requestParameters"]["userName"]
    responder = responder_with(tmp_path, monkeypatch, protected_principals=[f"arn:aws:iam::*:user/{made}"])
    log = tmp_path / "admin-user.json"
    log.write_text(json.dumps(stratus_events(ADMIN_USER_LOG)))
    report = responder.intake([log])
    summaries = list(responder.run_all(report, approval="auto", stand_ins=aws))
    actor_key = stratus_event(ADMIN_USER_LOG, "CreateUser")["userIdentity"]["accessKeyId"]
    (actor_case,) = [t.case_id for t in report.cases if t.detection.credential.uid == actor_key]
    assert {s["case_id"]: s["status"] for s in summaries} == {
        t.case_id: "contained" if t.case_id == actor_case else "refused" for t in report.cases}, summaries
    for t in report.cases:
        if t.case_id == actor_case:
            continue
        kinds = [r.kind for r in responder.ledger.records(case_id=t.case_id)]
        assert kinds.count("case.closed") == 1 and "action.contained" not in kinds and "step.started" not in kinds


# -- recovery judges a member by its lead -----------------------------------------------------------------
def test_a_member_is_live_while_its_lead_is_and_stranded_once_the_lead_closed_without_it(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    det = {"uid": "d"}
    lead = ledger.open_case("k-lead", "d1", det, "aws-access-key-created").case_id
    member = ledger.open_case("k-member", "d2", det, "aws-backdoor-user").case_id
    ledger.append("run.requested", {"attempt": 1, "mode": "slack", "where": "deployment", "cloud": {},
                                    "members": [{"case_id": member, "playbook": "aws-backdoor-user",
                                                 "cloud": {"account_id": "1"}}]}, case_id=lead)
    ledger.append("run.submitted", {"attempt": 1, "flow_run_id": "fr-1"}, case_id=lead)
    ledger.append("run.delegated", {"attempt": 1, "incident_id": "incident-x", "lead_case_id": lead},
                  case_id=member)
    now = datetime.now(UTC)

    def state(kind: str):
        return lambda run_id: RunState(kind, kind.title(), now - timedelta(seconds=1))

    paused = check_case(ledger, ledger.case(member), state_of=state("PAUSED"), now=now)
    assert paused.live is True and paused.lead_case_id == lead and "answered by the run" in paused.reason
    assert paused.mode == "slack" and paused.cloud == {"account_id": "1"}
    # the lead's run died: the lead is stranded (recovery runs it again, with its members); the member waits
    crashed = check_case(ledger, ledger.case(member), state_of=state("CRASHED"), now=now)
    assert crashed.live is True
    lead_check = check_case(ledger, ledger.case(lead), state_of=state("CRASHED"), now=now)
    assert lead_check.live is False and lead_check.members[0]["case_id"] == member
    # the lead closed without closing the member: the member is stranded, run on its own next
    ledger.close_case(lead, "contained", {"status": "contained"})
    alone = check_case(ledger, ledger.case(member), state_of=state("COMPLETED"), now=now)
    assert alone.live is False and "closed without closing it" in alone.reason and alone.attempt == 1


# -- the approval message --------------------------------------------------------------------------------
def test_the_approval_message_lists_every_case_of_the_incident():
    incident = {"incident_id": "incident-0123456789ab", "cases": [
        {"case_id": "case-1", "event_name": "CreateAccessKey", "steps": 1,
         "credential": {"kind": "aws_access_key", "uid": "AKIAEXAMPLE000000001", "owner": "backdoor"}},
        {"case_id": "case-2", "event_name": "CreateUser", "steps": 2,
         "credential": {"kind": "aws_iam_user", "uid": "arn:aws:iam::1:user/backdoor", "owner": "backdoor"}},
        {"case_id": "case-3", "event_name": "AttachUserPolicy", "steps": 0, "refused": "protected principal",
         "credential": None, "target": "admin"}]}
    blocks = approval_blocks("case-1", "aws-access-key-created", {"severity": "high"}, {}, [], "h" * 64, "run-1",
                             None, incident=incident)
    text = json.dumps(blocks)
    assert "incident-0123456789ab" in text and "3 case(s)" in text
    for needle in ("AKIAEXAMPLE000000001", "CreateUser", "case-3", "refused: protected principal"):
        assert needle in text
    assert "Incident" not in json.dumps(approval_blocks("case-1", "p", {"severity": "high"}, {}, [], "h" * 64,
                                                        "run-1", None))
