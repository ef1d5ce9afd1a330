"""No decision lost (issue 10, part 1): opposite clicks at the same moment, with real Prefect.

The production shape on one machine (the ``stack`` of ``tests/test_durability.py``: a Prefect
server and a worker serving the ``respond`` deployment as child processes, the Slack stand-in, the
AWS sandbox, Cordon's server under uvicorn) plus a **second Cordon server** (another replica: its
own decider and in-process lock, the same ledger). Cases are submitted for Slack approval and
suspend; then, for each, an Approve (alice) and a Deny (bob), built from the posted message and
signed the way Slack signs them (the Deny as the submission of the reason dialog its click
opened), are POSTed at the same moment (a ``threading.Barrier``), one to
each replica. Per case: exactly one decision resumed the run (``approval.decision_received``), the
other clicker was told in an ephemeral message at the click's ``response_url``, and nothing was
contained (a Deny recorded before ``containment.started`` wins: the key stays Active). Also five
approves and five denies at once on one case, and a resume Prefect answers ABORT.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import uvicorn

from cordon.approvals.decide import ResumeRefused, prefect_resume
from cordon.audit.ledger import Ledger
from cordon.engine import Responder
from cordon.sandbox.prefect_server import Worker, free_port
from cordon.sandbox.slack_standin import block_actions_payload, view_submission_payload
from cordon.server.wiring import build_app
from tests.helpers import config_with_approvers, wait_for
from tests.test_durability import (  # noqa: F401 - stack is a fixture
    CHANNEL,
    EXAMPLE,
    REPO,
    SECRET,
    deployment_ready,
    flow_state,
    slack_signed,
    stack,
)

TRIALS = 10
#: alice, bob, carol (the stand-in's defaults) and seven more, all allowed to approve
RACERS = ("U0ALICE01", "U0BOB0002", "U0CAROL03", *(f"U0RACER{i:02d}" for i in range(4, 11)))


@pytest.fixture
def race_config(tmp_path, monkeypatch):
    """Approvers for the ten racers (made before ``stack``, which then keeps it)."""
    cfg = config_with_approvers(tmp_path, users=RACERS)
    monkeypatch.setenv("CORDON_CONFIG", str(cfg))
    return cfg


def write_events(path: Path, n: int) -> list[tuple[str, str]]:
    """``n`` CreateAccessKey events, each by its own actor (so each case gets a message of its own
    rather than a row of a burst summary) for its own user and key; returns ``[(key, user)]``."""
    base = json.loads(EXAMPLE.read_text())
    tag = uuid.uuid4().hex[:6].upper()
    out = []
    with path.open("w") as fh:
        for i in range(n):
            ev = json.loads(json.dumps(base))
            ev["eventID"] = str(uuid.uuid4())
            actor = f"dev-{tag.lower()}-{i}"
            ev["userIdentity"].update(userName=actor, arn=f"arn:aws:iam::111122223333:user/{actor}",
                                      principalId=f"AIDA{tag}{i:010d}", accessKeyId=f"AKIA{tag}A{i:09d}")
            key, user = f"AKIA{tag}{i:010d}", f"bot-{tag.lower()}-{i}"
            ev["responseElements"]["accessKey"].update(accessKeyId=key, userName=user)
            ev["requestParameters"]["userName"] = user
            fh.write(json.dumps(ev) + "\n")
            out.append((key, user))
    return out


class Replica:
    """Another ``cordon serve`` on the same ledger (its own app, decider and lock), under uvicorn."""

    def __init__(self, stack_: dict):
        app = build_app(signing_secret=SECRET, ledger=Ledger(stack_["ledger"].url), cloud=stack_["aws"].cloud_params())
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self.server.run,), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the second Cordon server")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def message_of(stack_: dict, case_id: str) -> dict:
    """The case's own approval message in the stand-in (found by its buttons' values)."""
    for msg in stack_["slack"].messages(CHANNEL):
        for b in msg.get("blocks", []):
            for el in b.get("elements", []) if b.get("type") == "actions" else []:
                if json.loads(el.get("value") or "{}").get("case_id") == case_id:
                    return msg
    raise AssertionError(f"no approval message for {case_id}")


def click_body(stack_: dict, message: dict, action_id: str, user_id: str) -> tuple[bytes, str]:
    url = stack_["slack"].response_url(CHANNEL, message["ts"])
    payload = block_actions_payload(message, CHANNEL, action_id, user_id=user_id, user_name=user_id.lower(),
                                    response_url=url)
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode(), url


def deny_body(stack_: dict, message: dict, user_id: str, server: str) -> tuple[bytes, str]:
    """Bob's Deny the way Slack delivers it now: the click (POSTed to ``server``, which opens the
    reason dialog through the stand-in's ``views.open``), then the dialog's signed
    ``view_submission`` with a reason, returned to be POSTed in the race: the submission is what
    records the Deny."""
    click, url = click_body(stack_, message, "cordon_deny", user_id)
    trigger = json.loads(urllib.parse.parse_qs(click.decode())["payload"][0])["trigger_id"]
    assert httpx.post(f"{server}/slack/interactions", content=click, headers=slack_signed(click),
                      timeout=30).status_code == 200
    wait_for(lambda: any(v["trigger_id"] == trigger for v in stack_["slack"].views()), 30, "the Deny dialog")
    (view,) = [v["view"] for v in stack_["slack"].views() if v["trigger_id"] == trigger]
    payload = view_submission_payload(view, {"reason": f"race test: {user_id} denies"}, user_id=user_id,
                                      user_name=user_id.lower())
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode(), url


def at_once(posts: list[tuple[str, bytes]]) -> None:
    """POST every ``(server url, body)`` from its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(posts))
    answers: list[int] = []

    def post(url: str, body: bytes) -> None:
        barrier.wait()
        answers.append(httpx.post(f"{url}/slack/interactions", content=body, headers=slack_signed(body),
                                  timeout=30).status_code)

    threads = [threading.Thread(target=post, args=p) for p in posts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * len(posts)


def key_status(stack_: dict, user: str) -> str:
    iam = stack_["aws"].clients("iam", account_id="111122223333")
    (key,) = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    return key["Status"]


def kinds_of(ledger: Ledger, case_id: str) -> list[str]:
    return [r.kind for r in ledger.records(case_id=case_id)]


def test_opposite_clicks_at_the_same_moment_never_lose_a_deny(race_config, stack, capsys):  # noqa: F811
    ledger = stack["ledger"]
    for uid in RACERS[3:]:
        stack["slack"].add_user({"id": uid, "name": uid.lower(), "profile": {"email": f"{uid.lower()}@example.com"}})
    stack["workers"].append(Worker(stack["env"], stack["tmp"] / "worker.log", cwd=REPO).start())
    wait_for(deployment_ready, 90, "the respond deployment to be served")
    events = stack["tmp"] / "events.jsonl"
    keys = write_events(events, TRIALS + 2)  # 10 trials, one 5 + 5 storm, one run cancelled in Prefect
    responder = Responder(ledger=ledger)
    report = responder.intake([events])
    slack_settings = {"channel": CHANNEL, "base_url": stack["slack_url"]}
    submitted = list(responder.run_all(report, approval="slack", stand_ins=stack["aws"], slack=slack_settings))
    assert [s["status"] for s in submitted] == ["awaiting_approval"] * (TRIALS + 2)
    by_key = {ledger.case(s["case_id"])["case_key"].rsplit("|", 1)[-1]: s for s in submitted}
    cases = [(by_key[key], user) for key, user in keys]
    for s, _ in cases:
        wait_for(lambda s=s: flow_state(s["flow_run_id"]) == "PAUSED", 300, f"run of {s['case_id']} to suspend")
    for s, _ in cases:  # a run suspends at once; its request may wait for the channel's slot in the outbox
        wait_for(lambda s=s: list(ledger.records(case_id=s["case_id"], kind_prefix="approval.asked")), 120,
                 f"the request of {s['case_id']} to be in Slack")
    trials, (storm, storm_user), (cancelled, cancelled_user) = cases[:TRIALS], cases[TRIALS], cases[TRIALS + 1]

    with Replica(stack) as second:
        # -- 10 trials: Approve (alice) and Deny (bob) at the same moment, on different replicas
        urls, message_ts = {}, {}
        for i, (s, _) in enumerate(trials):
            msg = message_of(stack, s["case_id"])
            approve, approve_url = click_body(stack, msg, "cordon_approve", "U0ALICE01")
            servers = (stack["cordon_url"], second) if i % 2 == 0 else (second, stack["cordon_url"])
            deny, deny_url = deny_body(stack, msg, "U0BOB0002", servers[1])
            at_once([(servers[0], approve), (servers[1], deny)])
            urls[s["case_id"]] = (approve_url, deny_url)
            message_ts[s["case_id"]] = msg["ts"]

        # -- five approves and five denies at once on one case, spread over both replicas
        msg = message_of(stack, storm["case_id"])
        storm_posts, storm_urls = [], []
        for j, uid in enumerate(RACERS):
            server = (stack["cordon_url"], second)[(j // 2) % 2]  # both kinds on both
            body, url = click_body(stack, msg, "cordon_approve", uid) if j % 2 == 0 else \
                deny_body(stack, msg, uid, server)
            storm_posts.append((server, body))
            storm_urls.append((uid, url))
        at_once(storm_posts)

        for s, _ in [*trials, (storm, storm_user)]:
            wait_for(lambda s=s: flow_state(s["flow_run_id"]) == "COMPLETED", 300, f"run of {s['case_id']} to end")
        for case_id, (approve_url, deny_url) in urls.items():
            wait_for(lambda a=approve_url, d=deny_url: stack["slack"].responses(a) or stack["slack"].responses(d),
                     30, f"the losing clicker of {case_id} to be told")
        wait_for(lambda: sum(bool(stack["slack"].responses(u)) for _, u in storm_urls) >= len(RACERS) - 1, 30,
                 "every losing clicker of the storm to be told")

        # -- a resume Prefect answers ABORT (the run was cancelled while it waited) is a refusal
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(cancelled["flow_run_id"], Cancelled(), force=True)
        assert flow_state(cancelled["flow_run_id"]) == "CANCELLED"
        body, abort_url = click_body(stack, message_of(stack, cancelled["case_id"]), "cordon_approve", "U0ALICE01")
        at_once([(second, body)])
        wait_for(lambda: stack["slack"].responses(abort_url), 30, "the clicker of the cancelled run to be told")

    # -- per trial: one settling decision resumed the run, the loser was told, nothing contained
    figures = Counter()
    for s, user in trials:
        case_id, records = s["case_id"], list(ledger.records(case_id=s["case_id"]))
        kinds = [r.kind for r in records]
        assert kinds.count("approval.decision_received") == 1, (case_id, kinds)
        (received,) = [r for r in records if r.kind == "approval.decision_received"]
        first = next(r for r in records if r.kind == "approval.decision")
        assert received.payload["decision_seq"] == first.seq and received.payload["status"] == "ACCEPT"
        approve_answers, deny_answers = (stack["slack"].responses(u) for u in urls[case_id])
        for claim in (r for r in records if r.kind == "approval.decision" and r.payload["decision"] == "deny"):
            assert claim.payload["reason"] == "race test: U0BOB0002 denies", claim.payload
        if first.payload["decision"] == "deny":
            figures["deny first"] += 1
            assert [a["text"] for a in approve_answers] == ["already decided: deny by <@U0BOB0002>"], case_id
            assert deny_answers == []
            assert "containment.started" not in kinds
        else:
            figures["approve first"] += 1
            assert [a["text"] for a in deny_answers] == [
                "your Deny stops the approved containment (already decided: approve by <@U0ALICE01>, "
                "not yet contained)"], case_id
            assert approve_answers == []
            (cancel,) = [r for r in records if r.kind == "containment.cancelled"]
            assert cancel.payload["denied_by"] == "slack:U0BOB0002"
        figures["both claimed (decided by ledger order)"] += kinds.count("approval.decision") == 2
        assert not any(k.startswith(("action.", "step.")) for k in kinds), (case_id, kinds)
        assert key_status(stack, user) == "Active", case_id
        (closed,) = [r for r in records if r.kind == "case.closed"]
        assert closed.payload["status"] == "denied" and ledger.case(case_id)["status"] == "denied"
        # updated in place: denied, no buttons (the run's last update may wait in the outbox for the
        # channel's slot; the worker's sender sends it)
        def told(c: str = case_id) -> bool:
            replies = stack["slack"].replies(CHANNEL, message_ts[c])
            return ("cordon_approve" not in json.dumps(stack["slack"].message(CHANNEL, message_ts[c])["blocks"])
                    and bool(replies) and replies[-1]["text"].startswith("Denied by"))

        wait_for(told, 30, f"the message of {case_id} and its story to be final")
        final = stack["slack"].message(CHANNEL, message_ts[case_id])
        assert "cordon_approve" not in json.dumps(final["blocks"]) and "cordon_deny" not in json.dumps(final["blocks"])
        replies = [r["text"] for r in stack["slack"].replies(CHANNEL, message_ts[case_id])]
        # the reason typed in the Deny dialog is in the final message and its thread reply (issue 11)
        reason = "Reason: race test: U0BOB0002 denies"
        assert replies[-1] in (f"Denied by <@U0BOB0002>. {reason}",
                               f"Denied by <@U0BOB0002> before containment started; nothing was changed. {reason}"), \
            replies
        assert reason in json.dumps(final["blocks"]), final["blocks"]

    # -- the storm: one settling decision; the nine others told; nothing contained
    records = list(ledger.records(case_id=storm["case_id"]))
    kinds = [r.kind for r in records]
    assert kinds.count("approval.decision_received") == 1, kinds
    told = [uid for uid, url in storm_urls if stack["slack"].responses(url)]
    assert len(told) == len(RACERS) - 1, told
    (winner,) = [uid for uid, _ in storm_urls if uid not in told]
    (received,) = [r for r in records if r.kind == "approval.decision_received"]
    assert received.payload["approver"] == f"slack:{winner}"
    assert not any(k.startswith(("action.", "step.")) for k in kinds)
    assert key_status(stack, storm_user) == "Active"
    assert ledger.case(storm["case_id"])["status"] == "denied"

    # -- ABORT: recorded as a failed resume, never as "resumed the run"; the clicker told why
    records = list(ledger.records(case_id=cancelled["case_id"]))
    assert "approval.decision_received" not in [r.kind for r in records]
    (failed,) = [r for r in records if r.kind == "approval.resume_failed"]
    assert failed.payload["status"] == "ABORT" and failed.payload["resumed"] is False
    (answer,) = stack["slack"].responses(abort_url)
    assert answer["text"] == ("the run is not waiting for a decision (ABORT: Cannot resume a flow run that is not "
                              "paused.); your approval did not resume it; nothing was contained on it")
    assert key_status(stack, cancelled_user) == "Active"
    # and Prefect's answer for a finished run, through the client directly
    with pytest.raises(ResumeRefused) as refused:
        prefect_resume(trials[0][0]["flow_run_id"], {"decision": "approve"})
    assert refused.value.status == "ABORT"

    assert ledger.verify().ok
    with capsys.disabled():
        print(f"\ndecision race, {TRIALS} trials with real Prefect and two replicas: {dict(figures)}; "
              f"0 Denies lost, 0 keys contained; storm of 5 approves + 5 denies: 1 settling decision "
              f"({received.payload['decision']} by {winner}), {len(told)} told")


# -- the ordering rule, on a real ledger (no Prefect) -------------------------------------------
def _claim(ledger: Ledger, decision: str, who: str, at: str, run: str = "run-1", plan: str = "p" * 64):
    from cordon.approvals.gate import CLAIM_KIND

    return ledger.append(CLAIM_KIND, {"decision": decision, "approver": f"slack:{who}", "plan_hash": plan,
                                      "decided_at": at, "approvers": [f"slack:{who}"], "quorum": 1},
                         case_id="case-1", run_id=run, actor=f"slack:{who}")


def test_gate_ordering_rule(tmp_path):
    from cordon.approvals.gate import (
        LOST_KIND,
        RESUME_FAILED_KIND,
        RESUMED_KIND,
        claim_containment,
        deny_effect,
        settling_claim,
    )

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    plan = "p" * 64

    def records():
        return list(ledger.records(case_id="case-1"))

    assert settling_claim(records(), "run-1", plan) is None
    a = _claim(ledger, "approve", "U0ALICE01", "t1")
    d = _claim(ledger, "deny", "U0BOB0002", "t2")
    _claim(ledger, "deny", "U0CAROL03", "t3", run="run-2")  # another run: never counts here
    assert settling_claim(records(), "run-1", plan).seq == a.seq  # first in the chain
    assert deny_effect(records(), "run-1", plan, d.seq).effect == "stops_containment"
    # the approval's resume failed: it settles nothing any more; the Deny (pending) now settles it
    ledger.append(RESUME_FAILED_KIND, {"decision_seq": a.seq, "plan_hash": plan}, case_id="case-1", run_id="run-1")
    assert settling_claim(records(), "run-1", plan).seq == d.seq
    # ... unless someone else delivered it after all (the sweeper): then it settles again
    ledger.append(RESUMED_KIND, {"decision_seq": a.seq, "plan_hash": plan}, case_id="case-1", run_id="run-1")
    assert settling_claim(records(), "run-1", plan).seq == a.seq
    ledger.append(LOST_KIND, {"decision_seq": d.seq, "plan_hash": plan}, case_id="case-1", run_id="run-1")
    assert settling_claim(records(), "run-1", plan).seq == a.seq
    # the lost Deny still precedes containment: the gate cancels, once, and says the same every time
    claim = claim_containment(ledger, "case-1", "run-1", plan)
    assert (claim.outcome, claim.denied_by, claim.deny_seq) == ("denied", "slack:U0BOB0002", d.seq)
    assert claim_containment(ledger, "case-1", "run-1", plan) == claim
    assert [r.kind for r in records()].count("containment.cancelled") == 1
    late = _claim(ledger, "deny", "U0CAROL03", "t4")
    effect = deny_effect(records(), "run-1", plan, late.seq)
    assert effect.effect == "already_denied" and effect.earlier.seq == d.seq
    # run-2: containment started before its Deny? No Deny before: allowed; a Deny after is too late
    assert claim_containment(ledger, "case-1", "run-2", plan).denied  # run-2's Deny came first
    r3 = claim_containment(ledger, "case-1", "run-3", plan)
    assert r3.outcome == "allowed"
    after = _claim(ledger, "deny", "U0BOB0002", "t5", run="run-3")
    assert deny_effect(records(), "run-3", plan, after.seq).effect == "too_late"
    assert claim_containment(ledger, "case-1", "run-3", plan).outcome == "allowed"  # decided by the first record
    assert ledger.verify().ok


def test_the_flow_records_the_ledgers_decision_over_the_run_input(tmp_path):
    from cordon.approvals.gate import RESUME_FAILED_KIND, ledger_decision

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    plan = "p" * 64
    d = _claim(ledger, "deny", "U0BOB0002", "t1")
    a = _claim(ledger, "approve", "U0ALICE01", "t2")
    approve_input = {"decision": "approve", "approver": "slack:U0ALICE01", "plan_hash": plan, "decided_at": "t2",
                     "approvers": ["slack:U0ALICE01"], "quorum": 1}
    records = list(ledger.records(case_id="case-1"))
    # the run was resumed with the approval, but the Deny is first in the chain: the Deny is recorded
    got = ledger_decision(records, "run-1", plan, approve_input)
    assert got["decision"] == "deny" and got["approver"] == "slack:U0BOB0002" and got["ledger_seq"] == d.seq
    assert got["overrides"] == {"decision": "approve", "approver": "slack:U0ALICE01", "decided_at": "t2"}
    # the input that matches the settling claim is recorded as given
    deny_input = {**approve_input, "decision": "deny", "approver": "slack:U0BOB0002", "decided_at": "t1"}
    assert ledger_decision(records, "run-1", plan, deny_input) == {**deny_input, "ledger_seq": d.seq}
    # a resume from outside Cordon (no claim in the ledger) is not a decision: a refusal
    other = ledger_decision(records, "run-9", plan, approve_input)
    assert other["decision"] == "deny" and "outside Cordon" in other["reason"]
    # a claim whose owner recorded a failed resume Prefect did in fact accept: its own input stands
    ledger.append(RESUME_FAILED_KIND, {"decision_seq": d.seq, "plan_hash": plan}, case_id="case-1", run_id="run-1")
    ledger.append(RESUME_FAILED_KIND, {"decision_seq": a.seq, "plan_hash": plan}, case_id="case-1", run_id="run-1")
    records = list(ledger.records(case_id="case-1"))
    assert ledger_decision(records, "run-1", plan, approve_input)["ledger_seq"] == a.seq


def test_a_deny_recorded_in_the_window_after_the_approval_stops_containment(tmp_path):
    """``approval.deny_window``: containment starts no sooner than the approving claim plus the
    window, so a Deny recorded meanwhile (clicked at the same moment, delivered a little later)
    sorts before ``containment.started`` and wins; with no window the same Deny is too late."""
    from cordon.approvals.gate import claim_containment, hold_until, ledger_decision

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    plan = "p" * 64
    a = _claim(ledger, "approve", "U0ALICE01", "t1")
    given = {"decision": "approve", "approver": "slack:U0ALICE01", "plan_hash": plan, "decided_at": "t1"}
    decision = ledger_decision(list(ledger.records(case_id="case-1")), "run-1", plan, given)
    assert decision["ledger_seq"] == a.seq
    not_before = hold_until(list(ledger.records(case_id="case-1")), decision, 1.5)
    assert not_before is not None and not_before <= time.time() + 1.5
    late = threading.Timer(0.3, lambda: _claim(ledger, "deny", "U0BOB0002", "t2"))
    late.start()
    claim = claim_containment(ledger, "case-1", "run-1", plan, not_before=not_before)
    late.join()
    assert claim.outcome == "denied" and claim.denied_by == "slack:U0BOB0002"
    # the same Deny with no window: containment had started, the Deny is too late
    b = _claim(ledger, "approve", "U0ALICE01", "t3", run="run-2")
    decision = ledger_decision(list(ledger.records(case_id="case-1")), "run-2", plan, {**given, "decided_at": "t3"})
    assert decision["ledger_seq"] == b.seq and hold_until(list(ledger.records(case_id="case-1")), decision, 0) is None
    late = threading.Timer(0.3, lambda: _claim(ledger, "deny", "U0BOB0002", "t4", run="run-2"))
    late.start()
    assert claim_containment(ledger, "case-1", "run-2", plan).outcome == "allowed"
    late.join()
