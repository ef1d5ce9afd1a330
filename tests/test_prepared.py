"""A run resumed by a decision goes on from the ledger (``cordon.respond.Prepared.from_ledger``):
what its pre-approval half recorded is read back only for the same run, only once its Slack request
is out, and only when the plan read back still hashes to the hash that was asked."""

from __future__ import annotations

from cordon.audit.ledger import Ledger
from cordon.respond import Plan, PlanStep, Prepared, plan_hash

CASE, RUN, OTHER_RUN = "case-00000000feed", "run-1", "run-0"


def _plan() -> Plan:
    steps = [PlanStep(action="aws.deactivate-access-key", target="arn:aws:iam::111122223333:user/build-bot AKIA1",
                      params={"user_name": "build-bot", "access_key_id": "AKIA1"},
                      calls=[{"op": "iam:UpdateAccessKey", "args": {"AccessKeyId": "AKIA1", "Status": "Inactive"}}],
                      describe=["iam:UpdateAccessKey(AccessKeyId=AKIA1, Status=Inactive)"])]
    return Plan(case_id=CASE, playbook="aws-access-key-created", steps=steps,
                hash=plan_hash(CASE, "aws-access-key-created", steps))


def _prepared_run(ledger: Ledger, run_id: str, plan: Plan, *, asked: bool = True) -> None:
    """The records a run's prepare task and the outbox write, in their payload shapes."""
    ledger.append("enrichment.completed", {"action": "aws.get-user", "result": {"user": "build-bot"}},
                  case_id=CASE, run_id=run_id)
    ledger.append("enrichment.failed", {"action": "aws.list-keys", "result": {"error": "AccessDenied"}},
                  case_id=CASE, run_id=run_id)
    ledger.append("guard.passed", {"ok": True, "reason": None, "cordon_identity": "arn:aws:iam::1:role/cordon"},
                  case_id=CASE, run_id=run_id)
    ledger.append("plan.created", plan.model_dump(), case_id=CASE, run_id=run_id)
    if asked:
        ledger.append("approval.asked", {"mode": "slack", "plan_hash": plan.hash,
                                         "where": {"channel": "C1", "ts": "1.2"}}, case_id=CASE, run_id=run_id)


def test_a_run_whose_request_is_out_is_rebuilt_from_its_own_records(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    plan = _plan()
    other = plan.model_copy(update={"hash": "0" * 64})
    _prepared_run(ledger, OTHER_RUN, other)  # an earlier attempt's records never count
    _prepared_run(ledger, RUN, plan)
    got = Prepared.from_ledger(ledger.records(case_id=CASE), RUN)
    assert got is not None
    assert got.plan == plan and got.plan.hash == plan.hash
    assert got.enrichment == {"aws.get-user": {"user": "build-bot"}, "aws.list-keys": {"error": "AccessDenied"}}
    assert got.guard["ok"] is True and got.where == {"channel": "C1", "ts": "1.2"} and got.run_id == RUN


def test_nothing_is_rebuilt_before_the_request_is_out_or_for_another_run(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    plan = _plan()
    _prepared_run(ledger, RUN, plan, asked=False)
    assert Prepared.from_ledger(ledger.records(case_id=CASE), RUN) is None  # still queued: ask as usual
    assert Prepared.from_ledger(ledger.records(case_id=CASE), OTHER_RUN) is None
    # asked for another plan of the same run (an earlier plan's request): not this one
    ledger.append("approval.asked", {"mode": "slack", "plan_hash": "f" * 64}, case_id=CASE, run_id=RUN)
    assert Prepared.from_ledger(ledger.records(case_id=CASE), RUN) is None
    # asked at the console (in-process modes never resume): not a Slack request
    ledger.append("approval.asked", {"mode": "console", "plan_hash": plan.hash}, case_id=CASE, run_id=RUN)
    assert Prepared.from_ledger(ledger.records(case_id=CASE), RUN) is None


def test_a_plan_that_does_not_hash_to_what_was_asked_is_not_used(tmp_path):
    """A parameter the ledger's redaction would change (a value that looks like a secret) makes the
    plan read back differ from the one asked: the run replays its own result instead."""
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    plan = _plan()
    changed = plan.model_copy(deep=True)
    changed.steps[0].params["access_key_id"] = "AKIA2"  # as if the stored params differed from the asked ones
    ledger.append("enrichment.completed", {"action": "aws.get-user", "result": {}}, case_id=CASE, run_id=RUN)
    ledger.append("guard.passed", {"ok": True}, case_id=CASE, run_id=RUN)
    ledger.append("plan.created", changed.model_dump(), case_id=CASE, run_id=RUN)
    ledger.append("approval.asked", {"mode": "slack", "plan_hash": plan.hash}, case_id=CASE, run_id=RUN)
    assert Prepared.from_ledger(ledger.records(case_id=CASE), RUN) is None
