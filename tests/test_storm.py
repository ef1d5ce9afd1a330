"""Storms: :mod:`cordon.approvals.outbox` against the Slack stand-in over real HTTP, state in a real
database (SQLite; PostgreSQL too when one answers), a settable clock instead of sleeps.

Separate :class:`Outbox` instances (each its own engine) in threads stand for the separate flow-run
processes that share the database."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from cordon.approvals.outbox import TABLES, Outbox, max_messages, request_approval, update_case
from cordon.sandbox.slack_standin import SlackStandIn, block_actions_payload
from cordon.slack.blocks import approval_blocks, status_blocks
from cordon.slack.client import make_client
from cordon.slack.verify import parse_interaction
from tests.dbs import fresh_postgres_schema, postgres_unavailable

CHANNEL = "C0APPROVALS"


class Clock:
    """A settable clock: ``sleep`` advances it (and records how long) instead of waiting."""

    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds
            self.slept.append(seconds)


@pytest.fixture
def slack():
    with SlackStandIn() as s:
        yield s


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/ledger.db"


def make_outbox(url: str, clock: Clock, **kw) -> Outbox:
    kw.setdefault("window", 10**6)
    kw.setdefault("claim_seconds", 10**9)
    return Outbox(url, clock=clock, sleep=clock.sleep, **kw)


def case_blocks(case_id: str, actor: str) -> tuple[list[dict], str]:
    detection = {"event_name": "CreateAccessKey", "severity": "high", "provider": "aws", "account_uid": "111122223333",
                 "actor": {"user": {"uid": actor}},
                 "credential": {"kind": "aws_access_key", "uid": "AKIA" + case_id[-16:].upper().rjust(16, "0")}}
    plan = [{"action": "aws.deactivate-access-key", "target": "build-bot",
             "calls": ["iam:UpdateAccessKey UserName=build-bot Status=Inactive"]}]
    blocks = approval_blocks(case_id=case_id, playbook="aws-access-key-created", detection=detection, enrichment={},
                             plan=plan, plan_hash="h" * 64, run_id=f"run-{case_id}", expires_at=None)
    return blocks, f"Cordon: approval needed for aws-access-key-created: CreateAccessKey by {actor} ({case_id})"


def posted(slack: SlackStandIn) -> list:
    return [r for r in slack.requests_for("chat.postMessage") if r.status == 200]


def buttons_by_case(slack: SlackStandIn) -> dict[str, list[tuple[str, dict]]]:
    """case ID -> [(message ts, approve button)] over the channel's current messages."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for msg in slack.messages(CHANNEL):
        for block in msg["blocks"]:
            if block.get("type") != "actions":
                continue
            for el in block["elements"]:
                if el.get("action_id") == "cordon_approve":
                    out.setdefault(json.loads(el["value"])["case_id"], []).append((msg["ts"], el))
    return out


def storm(url: str, slack: SlackStandIn, *, actors: int, per_actor: int, workers: int = 8) -> dict[str, dict]:
    clock = Clock()
    client = make_client("xoxb-test", base_url=slack.base_url)
    cases = [(f"case-{a:02d}{i:04d}", f"arn:aws:iam::111122223333:user/attacker-{a}")
             for i in range(per_actor) for a in range(actors)]  # actors interleaved, as a burst arrives
    local = threading.local()

    def ask(item: tuple[str, str]) -> tuple[str, dict]:
        if not hasattr(local, "outbox"):  # one Outbox (own engine) per worker: like one per process
            local.outbox = make_outbox(url, clock)
        case_id, actor = item
        blocks, text = case_blocks(case_id, actor)
        return case_id, request_approval(client, channel=CHANNEL, case_id=case_id, actor_key=actor, blocks=blocks,
                                         text=text, outbox=local.outbox)

    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(ask, cases))


def check_storm(url: str, slack: SlackStandIn, *, actors: int, per_actor: int) -> dict[str, dict]:
    wheres = storm(url, slack, actors=actors, per_actor=per_actor)
    total = actors * per_actor
    assert len(wheres) == total
    # bounded: one own message per actor, then one summary per 20 further cases of that actor
    assert len(posted(slack)) == max_messages(per_actor, actors, 20) < total
    # nothing lost: every case has exactly one approve button, in the message its `where` names
    found = buttons_by_case(slack)
    assert set(found) == set(wheres)
    for case_id, where in wheres.items():
        ((ts, button),) = found[case_id]
        assert ts == where["ts"] and where["channel"] == CHANNEL
        assert json.loads(button["value"]) == {"case_id": case_id, "decision": "approve", "plan_hash": "h" * 64,
                                               "run_id": f"run-{case_id}"}
    assert Counter(w["shared"] for w in wheres.values()) == {True: total - actors, False: actors}
    for msg in slack.messages(CHANNEL):
        assert len(msg["blocks"]) <= 50
    return wheres


def test_storm_of_500_is_bounded_and_loses_no_request(url, slack):
    wheres = check_storm(url, slack, actors=5, per_actor=100)
    # a click on a summary's button decides that row's case, not the summary's first
    summary = next(m for m in slack.messages(CHANNEL) if m["ts"] == wheres["case-020050"]["ts"])
    payload = block_actions_payload(summary, CHANNEL, "cordon_approve", user_id="U0ALICE01", user_name="alice")
    rows = [b for b in summary["blocks"] if b.get("type") == "actions"]
    assert len(rows) == 20 and rows[0]["elements"][0]["value"] != rows[7]["elements"][0]["value"]
    payload["actions"][0].update(value=rows[7]["elements"][0]["value"], block_id=rows[7]["block_id"])
    interaction = parse_interaction(urllib.parse.urlencode({"payload": json.dumps(payload)}).encode())
    first = json.loads(rows[0]["elements"][0]["value"])["case_id"]
    assert interaction.case_id == rows[7]["block_id"].split(":", 1)[1] != first
    assert interaction.message_ts == summary["ts"] and interaction.decision == "approve"
    stats = Outbox(url).stats()
    assert stats == {"cases": 500, "groups": 25, "shared_cases": 495}
    assert set(TABLES) == {"slack_outbox_rate", "slack_outbox_groups", "slack_outbox_cases"}


@pytest.mark.skipif(postgres_unavailable() is not None, reason=str(postgres_unavailable()))
def test_storm_on_postgresql(slack):
    pg_url, cleanup = fresh_postgres_schema()
    try:
        check_storm(pg_url, slack, actors=3, per_actor=30)
    finally:
        cleanup()


def test_shared_case_updates_its_row_and_threads_replies(url, slack):
    clock = Clock()
    outbox = make_outbox(url, clock)
    client = make_client("xoxb-test", base_url=slack.base_url)
    actor = "arn:aws:iam::111122223333:user/mallory"
    wheres = {}
    for i in range(4):
        blocks, text = case_blocks(f"case-{i:012d}", actor)
        wheres[i] = outbox.request_approval(client, channel=CHANNEL, case_id=f"case-{i:012d}", actor_key=actor,
                                            blocks=blocks, text=text)
    assert [w["shared"] for w in wheres.values()] == [False, True, True, True]
    assert wheres[1]["ts"] == wheres[3]["ts"] != wheres[0]["ts"]
    assert outbox.request_approval(client, channel=CHANNEL, case_id="case-000000000002", actor_key=actor,
                                   blocks=[], text="again") == wheres[2]  # idempotent per case
    before = len(posted(slack))

    done = status_blocks("case-000000000002", "aws-access-key-created", {}, "h" * 64, "run-2", state="denied",
                         decided_by="slack:U0ALICE01")
    update_case(client, wheres[2], case_id="case-000000000002", blocks=done, text="denied by alice",
                thread_text="denied by alice", outbox=outbox)
    summary = slack.message(CHANNEL, wheres[2]["ts"])
    found = buttons_by_case(slack)
    assert "case-000000000002" not in found  # decided: its buttons are gone
    assert {"case-000000000001", "case-000000000003", "case-000000000000"} <= set(found)  # the others keep theirs
    assert "denied by alice" in json.dumps(summary["blocks"]) and len(summary["history"]) >= 1
    replies = [r.body for r in posted(slack)[before:]]
    assert replies == [{**replies[0], "thread_ts": wheres[2]["ts"], "text": "case-000000000002: denied by alice"}]

    # an own message is replaced in place, as before
    update_case(client, wheres[0], case_id="case-000000000000", blocks=done, text="denied", outbox=outbox)
    assert slack.message(CHANNEL, wheres[0]["ts"])["blocks"] == done


def test_rate_limit_is_shared_and_retry_after_is_honoured(url, slack):
    clock = Clock()
    a, b = make_outbox(url, clock), make_outbox(url, clock)  # two "processes"
    client = make_client("xoxb-test", base_url=slack.base_url)
    t0 = clock()
    slack.fail_next("chat.postMessage", 429, headers={"Retry-After": "30"})
    blocks, text = case_blocks("case-0000000000a1", "arn:aws:iam::1:user/x")
    where = a.request_approval(client, channel=CHANNEL, case_id="case-0000000000a1", actor_key=None, blocks=blocks,
                               text=text)
    calls = slack.requests_for("chat.postMessage")
    assert [r.status for r in calls] == [429, 200] and where["ts"]
    assert clock() - t0 >= 30  # waited Retry-After before the retry (the settable clock's time)
    # the other process's next post waits for the slot the retry left behind: Retry-After + 1 s
    assert b.slot_of(f"post:{CHANNEL}") >= t0 + 31
    t1 = clock()
    blocks, text = case_blocks("case-0000000000b2", "arn:aws:iam::1:user/y")
    b.request_approval(client, channel=CHANNEL, case_id="case-0000000000b2", actor_key=None, blocks=blocks, text=text)
    assert clock() >= t1 and clock() >= t0 + 31
    assert len(slack.messages(CHANNEL)) == 2  # each posted once, nothing lost

    # 429s beyond max_attempts are raised, and the request stays for a later attempt
    c = make_outbox(url, clock, max_attempts=2)
    slack.fail_next("chat.postMessage", 429, headers={"Retry-After": "5"}, times=2)
    blocks, text = case_blocks("case-0000000000c3", "arn:aws:iam::1:user/z")
    from slack_sdk.errors import SlackApiError

    with pytest.raises(SlackApiError):
        c.request_approval(client, channel=CHANNEL, case_id="case-0000000000c3", actor_key=None, blocks=blocks,
                           text=text)
    again = c.request_approval(client, channel=CHANNEL, case_id="case-0000000000c3", actor_key=None, blocks=blocks,
                               text=text)
    assert again["ts"] and len(slack.messages(CHANNEL)) == 3


def test_consecutive_posts_are_spaced_by_the_interval(url, slack):
    clock = Clock()
    outbox = make_outbox(url, clock, post_interval=1.0)
    client = make_client("xoxb-test", base_url=slack.base_url)
    t0 = clock()
    for i in range(5):
        blocks, text = case_blocks(f"case-00000000d{i:03d}", f"arn:aws:iam::1:user/u{i}")
        outbox.request_approval(client, channel=CHANNEL, case_id=f"case-00000000d{i:03d}", actor_key=f"u{i}",
                                blocks=blocks, text=text)
    # five different actors: five messages, the clock moved one interval per post after the first
    assert len(slack.messages(CHANNEL)) == 5 and clock() - t0 == pytest.approx(4.0)


# -- never holding a run: wait=False leaves the work to the sender -----------------------------
def _asked(case_id: str) -> dict:
    return {"case_id": case_id, "run_id": f"run-{case_id}",
            "record": {"mode": "slack", "plan_hash": "h" * 64, "asked_at": "2026-12-04T00:00:00+00:00"}}


def test_a_storm_that_does_not_wait_is_posted_by_the_sender_and_asked_once_each(url, slack):
    from cordon.audit.ledger import Ledger

    clock = Clock()
    runs = make_outbox(url, clock)  # the runs' process: never sleeps
    client = make_client("xoxb-test", base_url=slack.base_url)
    cases = [(f"case-{a:02d}{i:04d}", f"arn:aws:iam::111122223333:user/attacker-{a}")
             for i in range(12) for a in range(4)]
    returned = {}
    for case_id, actor in cases:
        blocks, text = case_blocks(case_id, actor)
        returned[case_id] = runs.request_approval(client, channel=CHANNEL, case_id=case_id, actor_key=actor,
                                                  blocks=blocks, text=text, asked=_asked(case_id), wait=False)
    assert clock.slept == []  # no run waited for a rate slot
    queued = [c for c, w in returned.items() if w is None]
    assert queued and len(queued) < len(cases)  # the first went at once, the rest wait in the outbox
    ledger = Ledger(url)
    assert len(list(ledger.records(kind_prefix="approval.asked"))) == len(cases) - len(queued)

    sender = make_outbox(url, clock)  # another process's sender finishes what the runs left
    sender.flush_pending(client)
    sender.flush_pending(client)  # a second pass has nothing left to do, and posts nothing twice
    found = buttons_by_case(slack)
    assert set(found) == {c for c, _ in cases} and all(len(v) == 1 for v in found.values())
    asked = list(ledger.records(kind_prefix="approval.asked"))
    assert sorted(r.case_id for r in asked) == sorted(c for c, _ in cases)  # each case asked exactly once
    for r in asked:
        ((ts, _),) = found[r.case_id]
        assert r.payload["ts"] == r.payload["where"]["ts"] == ts and r.run_id == f"run-{r.case_id}"
    assert len(posted(slack)) <= max_messages(12, 4, 20)
    with sender.engine.connect() as conn:
        from cordon.approvals.outbox import cases_table

        assert conn.execute(cases_table.select().where(cases_table.c.pending == 1)).all() == []


def test_updates_that_do_not_wait_are_sent_later_in_order(url, slack):
    clock = Clock()
    box = make_outbox(url, clock, update_interval=1.0, post_interval=1.0)
    client = make_client("xoxb-test", base_url=slack.base_url)
    blocks, text = case_blocks("case-0000000000e1", "arn:aws:iam::1:user/e")
    where = box.request_approval(client, channel=CHANNEL, case_id="case-0000000000e1", actor_key=None,
                                 blocks=blocks, text=text, wait=False)
    assert where and where["ts"]
    first = status_blocks("case-0000000000e1", "aws-access-key-created", {}, "h" * 64, "run", state="approved",
                          decided_by="slack:U0ALICE01")
    last = status_blocks("case-0000000000e1", "aws-access-key-created", {}, "h" * 64, "run", state="denied",
                         decided_by="slack:U0ALICE01")
    box.update_case(client, where, case_id="case-0000000000e1", blocks=first, text="approved", thread_text="one",
                    wait=False)  # the update slot is free: it goes now
    # the slots are taken now: these wait in the outbox, and the newest update wins
    box.update_case(client, {"case_id": "case-0000000000e1", "queued": True}, case_id="case-0000000000e1",
                    blocks=first, text="again", thread_text="two", wait=False)
    box.update_case(client, where, case_id="case-0000000000e1", blocks=last, text="denied", thread_text="three",
                    wait=False)
    assert clock.slept == [] and slack.message(CHANNEL, where["ts"])["text"] == "approved"
    box.flush_pending(client)
    assert slack.message(CHANNEL, where["ts"])["blocks"] == last
    assert [r["text"] for r in slack.replies(CHANNEL, where["ts"])] == ["one", "two", "three"]


def test_the_sender_thread_posts_what_a_run_left(url, slack):
    import time as _time

    box = Outbox(url, post_interval=2.0)  # real time: the second request finds the slot taken
    client = make_client("xoxb-test", base_url=slack.base_url)
    wheres = []
    for i in range(2):
        blocks, text = case_blocks(f"case-0000000000f{i}", f"arn:aws:iam::1:user/f{i}")
        wheres.append(box.request_approval(client, channel=CHANNEL, case_id=f"case-0000000000f{i}",
                                           actor_key=f"f{i}", blocks=blocks, text=text, wait=False))
    assert wheres[0] and wheres[1] is None
    box.start_sender(lambda: client, interval=0.2)
    try:
        deadline = _time.monotonic() + 30
        while len(slack.messages(CHANNEL)) < 2 and _time.monotonic() < deadline:
            _time.sleep(0.05)
    finally:
        box.stop_sender()
    assert set(buttons_by_case(slack)) == {"case-0000000000f0", "case-0000000000f1"}


def test_a_refused_request_fails_its_run_and_leaves_nothing_queued(url, slack):
    from slack_sdk.errors import SlackApiError

    box = make_outbox(url, Clock())
    client = make_client("xoxb-test", base_url=slack.base_url)
    slack.fail_next("chat.postMessage", 500, times=5)
    blocks, text = case_blocks("case-0000000000g1", "arn:aws:iam::1:user/g")
    with pytest.raises(SlackApiError):
        box.request_approval(client, channel=CHANNEL, case_id="case-0000000000g1", actor_key=None, blocks=blocks,
                             text=text, asked=_asked("case-0000000000g1"), wait=False)
    assert box.stats()["cases"] == 0
    assert box.flush_pending(client) == 0 and slack.messages(CHANNEL) == []


def test_a_summarys_queued_stories_go_as_one_reply(url, slack):
    clock = Clock()
    box = make_outbox(url, clock)
    client = make_client("xoxb-test", base_url=slack.base_url)
    actor = "arn:aws:iam::111122223333:user/mallory"
    wheres = {}
    for i in range(5):
        blocks, text = case_blocks(f"case-00000000h{i:03d}", actor)
        wheres[i] = box.request_approval(client, channel=CHANNEL, case_id=f"case-00000000h{i:03d}", actor_key=actor,
                                         blocks=blocks, text=text)
    summary_ts = wheres[1]["ts"]
    slept = len(clock.slept)
    for i in range(1, 5):  # the runs report without waiting: the first story goes now, the rest queue
        done = status_blocks(f"case-00000000h{i:03d}", "aws-access-key-created", {}, "h" * 64, f"run-{i}",
                             state="approved", decided_by="slack:U0ALICE01")
        box.update_case(client, wheres[i], case_id=f"case-00000000h{i:03d}", blocks=done, text="contained",
                        thread_text=f"story {i}", wait=False)
    assert len(clock.slept) == slept  # nobody waited
    box.flush_pending(client)
    replies = [r["text"] for r in slack.replies(CHANNEL, summary_ts)]
    told = "\n".join(replies)
    assert all(f"case-00000000h{i:03d}: story {i}" in told for i in range(1, 5))
    assert len(replies) <= 2  # the queued ones gathered into one reply
    assert box.flush_pending(client) == 0  # nothing left


def test_threads_of_one_outbox_do_not_share_a_claim(url, slack):
    """A worker's run threads and its sender use one outbox: a claim taken in one thread must hold
    against the others (re-entrant only within its thread), or both post one request."""
    box = make_outbox(url, Clock())
    client = make_client("xoxb-test", base_url=slack.base_url)
    blocks, text = case_blocks("case-0000000000i1", "arn:aws:iam::1:user/i")
    box.request_approval(client, channel=CHANNEL, case_id="case-0000000000i1", actor_key=None, blocks=blocks,
                         text=text)
    assert box._claim_row("case-0000000000i1") and box._claim_row("case-0000000000i1")  # re-entrant here
    other: list[bool] = []
    t = threading.Thread(target=lambda: other.append(box._claim_row("case-0000000000i1")))
    t.start()
    t.join()
    assert other == [False]
    box._release_row("case-0000000000i1")
    t = threading.Thread(target=lambda: other.append(box._claim_row("case-0000000000i1")))
    t.start()
    t.join()
    assert other == [False, True]


SENDER_PROCESS = """
import sys, time
from cordon.approvals.outbox import Outbox
from cordon.slack.client import make_client
from tests.test_storm import _asked, case_blocks

url, base_url = sys.argv[1], sys.argv[2]
box = Outbox(url, post_interval=4.0, claim_seconds=3.0)
client = make_client("xoxb-test", base_url=base_url)
for i in range(3):
    case_id = f"case-00000000k{i:03d}"
    blocks, text = case_blocks(case_id, f"arn:aws:iam::1:user/k{i}")
    box.request_approval(client, channel="C0APPROVALS", case_id=case_id, actor_key=f"k{i}", blocks=blocks, text=text,
                         asked=_asked(case_id), wait=False)
box.start_sender(lambda: client, interval=0.1)  # takes the queued rows and waits for the channel's slot
print("queued", flush=True)
time.sleep(600)
"""


def test_work_left_by_a_killed_process_is_sent_by_another_once(url, slack):
    """The outbox is in the database, not in a process: a process that queued two requests (the
    channel's rate slot was taken) and whose sender was waiting for the slot is killed (SIGKILL);
    another process's sender posts them, each case asked exactly once, nothing left queued."""
    import signal
    import subprocess
    import sys
    import time as _time
    from pathlib import Path

    from cordon.approvals.outbox import cases_table
    from cordon.audit.ledger import Ledger

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", SENDER_PROCESS, url, slack.base_url], cwd=repo,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "queued"
        _time.sleep(0.5)  # its sender is at work, waiting for the channel's slot
        with Outbox(url).engine.connect() as conn:
            held = conn.execute(cases_table.select().where(cases_table.c.pending == 1)).all()
        assert len(held) == 2, held
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert len(slack.messages(CHANNEL)) == 1  # only the request that found the slot free went

    client = make_client("xoxb-test", base_url=slack.base_url)
    survivor = Outbox(url, post_interval=0.2)
    deadline = _time.monotonic() + 60
    while len(buttons_by_case(slack)) < 3 and _time.monotonic() < deadline:
        survivor.flush_pending(client)
        _time.sleep(0.2)
    found = buttons_by_case(slack)
    assert set(found) == {f"case-00000000k{i:03d}" for i in range(3)} and all(len(v) == 1 for v in found.values())
    asked = Counter(r.case_id for r in Ledger(url).records(kind_prefix="approval.asked"))
    assert asked == {f"case-00000000k{i:03d}": 1 for i in range(3)}
    with survivor.engine.connect() as conn:
        assert conn.execute(cases_table.select().where(cases_table.c.pending == 1)).all() == []


def test_cordon_serve_sends_what_was_left_queued(tmp_path, slack):
    """``cordon serve`` runs the outbox's sender too: a request left queued for the channel's rate
    slot (here by another process, with no worker anywhere) is posted by the server process and
    asked once. Without it, what a click left queued waited for a worker's next poll."""
    import os

    from cordon.audit.ledger import Ledger
    from tests.helpers import config_with_approvers, wait_for
    from tests.test_production import Replica

    url = f"sqlite:///{tmp_path}/ledger.db"
    box = Outbox(url, post_interval=1.0)
    client = make_client("xoxb-test", base_url=slack.base_url)
    for i in range(2):
        case_id = f"case-00000000s{i:03d}"
        blocks, text = case_blocks(case_id, f"arn:aws:iam::1:user/s{i}")
        box.request_approval(client, channel=CHANNEL, case_id=case_id, actor_key=f"s{i}", blocks=blocks, text=text,
                             asked=_asked(case_id), wait=False)
    assert len(slack.messages(CHANNEL)) == 1  # the second waits in the outbox
    env = {**os.environ, "CORDON_DATABASE_URL": url, "CORDON_SLACK_BOT_TOKEN": "xoxb-test",
           "CORDON_SLACK_API_URL": slack.base_url, "CORDON_SLACK_SIGNING_SECRET": "s3cr3t-signing",
           "CORDON_WEBHOOK_TOKEN": "wh-serve", "CORDON_SLACK_CHANNEL": CHANNEL,
           "CORDON_CONFIG": str(config_with_approvers(tmp_path))}
    replica = Replica(env, tmp_path / "serve.log")
    try:
        wait_for(replica.healthy, 60, "cordon serve")
        wait_for(lambda: len(buttons_by_case(slack)) == 2, 30, "cordon serve's sender to post the queued request")
        wait_for(lambda: len(list(Ledger(url).records(kind_prefix="approval.asked"))) >= 2, 30,
                 "the queued request's approval.asked")
    finally:
        replica.stop()
    asked = Counter(r.case_id for r in Ledger(url).records(kind_prefix="approval.asked"))
    assert asked == {"case-00000000s000": 1, "case-00000000s001": 1}
