"""The deny window is waited out by the click, not by the run (issue 13): an approval that settles
the request is recorded at once, and its resume is delivered ``approval.deny_window`` after the
claim, outside the decider's per-case lock. So a Deny clicked inside the window on the same server
is recorded before the run resumes (and stops containment at the gate), and the resumed run finds
the window already past instead of sleeping it out in a worker slot.

The world of ``tests/test_approval_policy.py``: a real case and plan waiting in Slack (the stand-in),
Cordon's server under uvicorn, signed clicks; Prefect's side of the resume is its ``PausedRun``
(which validates the run input as Prefect does)."""

from __future__ import annotations

from datetime import datetime

from cordon.approvals.decide import RESUME_LEAD_S
from cordon.approvals.gate import claim_containment, hold_until, ledger_decision
from tests.test_approval_policy import GLOBAL, world  # noqa: F401 - world is a fixture
from tests.test_server import wait_for

WINDOW = 2.0


def _ts(rec) -> float:
    return datetime.fromisoformat(rec.ts.replace("Z", "+00:00")).timestamp()


def test_an_approval_resumes_after_the_window_and_a_deny_inside_it_is_recorded_first(world):  # noqa: F811
    w = world(global_approval={**GLOBAL, "deny_window": WINDOW})
    paused = w.run
    approve, _ = w.body("U0ALICE01")
    deny, deny_url = w.body("U0BOB0002", "cordon_deny")
    assert w.post(approve).status_code == 200
    assert wait_for(lambda: any(r.payload.get("decision") == "approve"
                                for r in w.ledger.records(case_id=w.case_id, kind_prefix="approval.decision")))
    assert w.post(deny).status_code == 200  # well inside the window
    assert wait_for(lambda: len(w.decided) == 2, timeout=WINDOW + 10)
    records = list(w.ledger.records(case_id=w.case_id))
    claims = {r.payload["decision"]: r for r in records if r.kind == "approval.decision"}
    (received,) = [r for r in records if r.kind == "approval.decision_received"]
    (lost,) = [r for r in records if r.kind == "approval.decision_lost"]
    # ledger order: the approval, the Deny that lost to it (stopping containment), then the resume
    assert claims["approve"].seq < claims["deny"].seq < received.seq
    assert lost.payload["decision_seq"] == claims["deny"].seq and lost.payload["effect"] == "stops_containment"
    # the resume (``decision_received`` is written once Prefect accepted it) came no sooner than
    # the window after the approving claim, less the lead the run's pick-up takes
    assert len(paused.inputs) == 1
    assert _ts(received) >= _ts(claims["approve"]) + WINDOW - RESUME_LEAD_S - 0.05
    assert wait_for(lambda: w.slack.responses(deny_url))
    assert "stops the approved containment" in w.slack.responses(deny_url)[0]["text"]
    # the resumed run's gate: at most the lead is left of the window, and the Deny wins
    given = paused.inputs[0][1]
    decision = ledger_decision(records, received.run_id, claims["approve"].payload["plan_hash"], given)
    not_before = hold_until(records, decision, WINDOW)
    assert not_before is not None and not_before - _ts(received) <= RESUME_LEAD_S + 0.05
    gate = claim_containment(w.ledger, w.case_id, received.run_id, decision["plan_hash"], not_before=not_before)
    assert gate.outcome == "denied" and gate.denied_by == "slack:U0BOB0002"


def test_with_no_window_an_approval_resumes_at_once(world):  # noqa: F811
    w = world(global_approval={**GLOBAL, "deny_window": 0})
    w.click("U0ALICE01")
    records = list(w.ledger.records(case_id=w.case_id))
    (claim,) = [r for r in records if r.kind == "approval.decision"]
    (received,) = [r for r in records if r.kind == "approval.decision_received"]
    assert received.seq == claim.seq + 1 and len(w.run.inputs) == 1
