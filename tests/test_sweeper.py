"""The approval sweeper against a real suspended run: expiry ends the run cleanly.

The production shape on one machine (the ``stack`` of ``tests/test_durability.py``: a Prefect
server and a worker as child processes, the Slack stand-in, the AWS sandbox, Cordon's server): a
case is submitted to the ``respond`` deployment, posts its approval request and suspends. Nobody
answers; the sweeper flow (``cordon/flows/sweeper.py``, run here in-process with its clock set past
``expires_at``, no sleeping) resumes the run with an ``expired`` decision; the worker finishes it:
``approval.expired`` and ``case.closed`` in the ledger, nothing contained, the message updated.
"""

from __future__ import annotations

import json
from datetime import timedelta

from cordon.approvals.decide import parse_time
from tests.helpers import wait_for
from tests.test_durability import (  # noqa: F401 - stack and edit_playbook are fixtures
    CHANNEL,
    edit_playbook,
    flow_state,
    stack,
    start_paused_case,
)


def test_sweeper_resumes_an_expired_run_which_ends_cleanly(stack):  # noqa: F811 - the fixture
    from cordon.flows.sweeper import sweep_approvals

    run_id, case_id = start_paused_case(stack)
    ledger = stack["ledger"]
    (asked,) = list(ledger.records(case_id=case_id, kind_prefix="approval.asked"))
    expires_at = parse_time(asked.payload["expires_at"])
    asked_at = parse_time(asked.payload["asked_at"])
    assert expires_at - asked_at == timedelta(hours=4)  # the playbook's expire_after
    assert ledger.case(case_id)["status"] == "awaiting_approval"
    (message,) = stack["slack"].messages(CHANNEL)
    assert "Approvals 0 of 1" in json.dumps(message["blocks"])

    # before expiry the sweeper leaves it alone
    assert sweep_approvals(now=(expires_at - timedelta(seconds=1)).isoformat()) == []
    assert flow_state(run_id) == "PAUSED"
    # at expiry it resumes the run with "expired"
    events = sweep_approvals(now=expires_at.isoformat())
    assert events == [{"case_id": case_id, "event": "expired", "on_expiry": "deny"}]
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the expired run to complete")

    kinds = [r.kind for r in ledger.records(case_id=case_id)]
    assert "approval.expired" in kinds and kinds[-1] == "case.closed", kinds
    assert not any(k.startswith("action.") for k in kinds)  # nothing was contained
    (closed,) = [r for r in ledger.records(case_id=case_id) if r.kind == "case.closed"]
    assert closed.payload["status"] == "expired"
    (expired,) = [r for r in ledger.records(case_id=case_id) if r.kind == "approval.expired"]
    assert expired.payload["approver"] == "cordon:sweeper" and expired.payload["proceed"] is False
    assert ledger.case(case_id)["status"] == "expired"
    assert ledger.verify().ok
    iam = stack["aws"].clients("iam", account_id="111122223333")
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]}
    assert keys == {"AKIAEXAMPLEBUILDBOT9": "Active"}
    final = stack["slack"].message(CHANNEL, message["ts"])
    assert "Approval expired" in json.dumps(final["blocks"])
    assert not any(b["type"] == "actions" for b in final["blocks"])
    replies = [r["text"] for r in stack["slack"].replies(CHANNEL, message["ts"])]
    assert replies == ["Expired unanswered; nothing was changed."]
    # a sweep after the end finds nothing to do
    assert sweep_approvals(now=(expires_at + timedelta(hours=1)).isoformat()) == []


def test_expiry_contains_when_the_playbook_says_on_expiry_contain(edit_playbook, stack):  # noqa: F811
    """A high-confidence playbook may say an unanswered request is contained at expiry: the sweeper
    resumes the real run with ``expired`` and the run contains exactly the key, recorded as such."""
    from cordon.flows.sweeper import sweep_approvals

    edit_playbook("aws-access-key-created.yaml", "  on_expiry: deny\n", "  on_expiry: contain\n")
    run_id, case_id = start_paused_case(stack)
    ledger = stack["ledger"]
    (asked,) = list(ledger.records(case_id=case_id, kind_prefix="approval.asked"))
    events = sweep_approvals(now=parse_time(asked.payload["expires_at"]).isoformat())
    assert events == [{"case_id": case_id, "event": "expired", "on_expiry": "contain"}]
    wait_for(lambda: flow_state(run_id) == "COMPLETED", 180, "the expired run to complete")
    records = list(ledger.records(case_id=case_id))
    kinds = [r.kind for r in records]
    (expired,) = [r for r in records if r.kind == "approval.expired"]
    assert expired.payload["proceed"] is True and expired.payload["approver"] == "cordon:sweeper"
    assert kinds.count("action.contained") == 1 and "verify.held" in kinds and kinds[-1] == "case.closed", kinds
    iam = stack["aws"].clients("iam", account_id="111122223333")
    keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName="build-bot")["AccessKeyMetadata"]}
    assert keys == {"AKIAEXAMPLEBUILDBOT9": "Inactive"}
    assert ledger.verify().ok


def test_the_sweep_leaves_the_runs_it_resumed_out_of_its_recovery_pass(tmp_path, monkeypatch):
    """The race the expiry tests above met: the sweep resumes a suspended run, and its recovery
    pass, moments later, finds the run PENDING with the process that suspended it gone. A run the
    pass resumed (or saw settled by a click) is judged by the next pass; the others are recovered."""
    import cordon.approvals.expiry
    from cordon.engine import Responder
    from cordon.flows.sweeper import settled_cases, sweep_approvals
    from cordon.recovery import Recovery

    swept = [{"case_id": "case-expired", "event": "expired", "on_expiry": "contain"},
             {"case_id": "case-delivered", "event": "delivered", "decision": "approve", "decision_seq": 7},
             {"case_id": "case-lost", "event": "expiry_lost", "decision": "deny"},
             {"case_id": "case-reminded", "event": "reminded", "n": 1},
             {"case_id": "case-failed", "event": "expiry_failed", "error": "NotPausedError"}]
    assert settled_cases(swept) == {"case-expired", "case-delivered", "case-lost"}
    stranded = ["case-expired", "case-delivered", "case-lost", "case-reminded", "case-failed", "case-crashed"]
    seen: dict = {}

    def recover_stranded(self, **kw):
        seen.update(kw)
        return [Recovery(c, "submitted", "gone", 2, {"flow_run_id": f"run-{c}"}) for c in stranded
                if c not in set(kw.get("exclude") or ())]

    monkeypatch.setenv("CORDON_DATABASE_URL", f"sqlite:///{tmp_path}/ledger.db")
    monkeypatch.delenv("CORDON_SLACK_BOT_TOKEN", raising=False)
    monkeypatch.setattr(cordon.approvals.expiry, "sweep", lambda ledger, client, now, teams=None: list(swept))
    monkeypatch.setattr(Responder, "recover_stranded", recover_stranded)
    events = sweep_approvals.fn(now="2026-01-01T00:00:00+00:00")
    assert set(seen["exclude"]) == {"case-expired", "case-delivered", "case-lost"}
    assert events[:len(swept)] == swept
    assert [e["case_id"] for e in events[len(swept):]] == ["case-reminded", "case-failed", "case-crashed"]
    assert all(e["event"] == "recovery" and e["attempt"] == 2 for e in events[len(swept):])
