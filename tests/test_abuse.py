"""Cheap abuse, over real HTTP (uvicorn on 127.0.0.1, client addresses set with X-Forwarded-For
through uvicorn's proxy-headers support): password guessing at the audit pages (bounded Argon2
verifications, back-off per address then per user, 429 + Retry-After, lockouts that expire) and
floods of unsigned Slack posts / wrong webhook tokens (counted per window, one chained record
per window instead of one each), on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI

from cordon.audit.ledger import Ledger
from cordon.audit.refusals import RefusalCounter
from cordon.server import create_app
from cordon.server.login_limits import LoginLimits, LoginThrottle, concurrency_for
from cordon.server.pages import PageAuth, audit_pages
from tests.test_server import SECRET, WEBHOOK_TOKEN, Decider, click_body, sign

PASSWORD = "correct horse battery staple"


@contextmanager
def serve(app, *, lifespan: str = "off"):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, proxy_headers=True,
                            forwarded_allow_ips="127.0.0.1")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingHasher:
    """argon2-cffi's PasswordHasher, counting the verifications and the most at once."""

    def __init__(self, hasher: PasswordHasher):
        self.hasher = hasher
        self.calls = 0
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def verify(self, digest, password):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self.hasher.verify(digest, password)
        finally:
            with self.lock:
                self.running -= 1

    def hash(self, password):
        return self.hasher.hash(password)


def pages_site(ledger: Ledger, limits: LoginLimits, users: dict[str, str] | None = None, **kw):
    auth = PageAuth(users=users or {"alice": PasswordHasher().hash(PASSWORD)}, limits=limits, **kw)
    auth._hasher = CountingHasher(auth._hasher)
    app = FastAPI()
    app.include_router(audit_pages(ledger, auth))
    return app, auth


@pytest.fixture
def sqlite_ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path}/abuse.db")


def get(base: str, who: str, password: str, user: str = "alice") -> httpx.Response:
    return httpx.get(f"{base}/audit/cases", auth=(user, password), headers={"X-Forwarded-For": who}, timeout=60)


# -- audit-page sign-in ---------------------------------------------------------------------------

def test_guesses_back_off_per_address_then_per_user_and_the_lockout_expires(sqlite_ledger):
    limits = LoginLimits(concurrency=2, address_free=3, user_free=6, base_delay=2, max_delay=16, forget_after=100)
    app, auth = pages_site(sqlite_ledger, limits, cache_seconds=0)  # no cache: every request is checked
    clock = auth.throttle.clock = Clock()
    attacker, desk, elsewhere = "198.51.100.7", "192.0.2.10", "203.0.113.5"
    with serve(app) as base:
        assert get(base, desk, PASSWORD).status_code == 200  # alice signs in at her desk: trusted there
        codes, waits = [], []
        for _ in range(3):
            codes.append(get(base, attacker, "guess").status_code)
        assert codes == [401, 401, 401]
        hashed = auth._hasher.calls
        for expected in (2, 4, 8, 16, 16):  # exponential, capped at max_delay
            r = get(base, attacker, "guess")
            assert r.status_code == 429 and "Retry-After" in r.headers, r.text
            waits.append(int(r.headers["Retry-After"]))
            assert auth._hasher.calls == hashed  # refused before any Argon2 work
            clock.now += expected
            assert get(base, attacker, "guess").status_code == 401
            hashed += 1
            assert auth._hasher.calls == hashed
        assert waits == [2, 4, 8, 16, 16]
        # 8 wrong passwords for alice: more than user_free, so she is locked out where she is not known...
        r = get(base, elsewhere, PASSWORD)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) == 8  # 2 s * 2**(8 - 6)
        # ... but not at her desk, where she signed in before
        assert get(base, desk, PASSWORD).status_code == 200
        # the lockout expires: after max_delay the address may try once more
        clock.now += 16
        assert get(base, attacker, "guess").status_code == 401
        assert get(base, attacker, "guess").status_code == 429
        # failures are forgotten forget_after seconds after the last one
        clock.now += 101
        assert [get(base, attacker, "guess").status_code for _ in range(3)] == [401, 401, 401]
        assert get(base, elsewhere, PASSWORD).status_code == 200  # a correct password clears the user's count
        assert get(base, attacker, "guess", user="mallory").status_code == 429  # the address still waits
    counts = RefusalCounter(sqlite_ledger).counts("audit")
    assert counts == {"wrong_password": 12, "throttled": 8}, counts
    samples = [s for w in RefusalCounter(sqlite_ledger).windows("audit") for s in w.samples]
    assert {s["user"] for s in samples} <= {"alice", "(not a user)"} and all(s["remote"] for s in samples)
    assert "guess" not in str(samples) and PASSWORD not in str(samples)


def test_concurrent_guesses_are_bounded_and_answered_429(sqlite_ledger):
    slow = PasswordHasher(time_cost=12)  # a slower hash, so 16 requests are all in flight together
    limits = LoginLimits(concurrency=2, max_waiting=4, per_address_pending=2, wait_seconds=30)
    app, auth = pages_site(sqlite_ledger, limits, users={"alice": slow.hash(PASSWORD)})
    with serve(app) as base, cf.ThreadPoolExecutor(16) as pool:
        many = list(pool.map(lambda i: get(base, f"198.51.100.{i + 1}", "guess"), range(16)))
        codes = sorted(r.status_code for r in many)
        assert auth._hasher.most <= 2, auth._hasher.most  # never more Argon2 verifications at once
        assert codes.count(401) == auth._hasher.calls <= 2 + 4 and codes.count(429) >= 1, codes
        assert all(r.headers.get("Retry-After") == "1" for r in many if r.status_code == 429)
        # one address: at most per_address_pending sign-ins pending, the rest refused at once
        auth._hasher.most = 0
        one = list(pool.map(lambda _: get(base, "198.51.100.200", "guess"), range(8)))
        assert sorted(r.status_code for r in one).count(401) <= 2 and auth._hasher.most <= 2
    assert RefusalCounter(sqlite_ledger).counts("audit")["busy"] >= 6


def test_cached_credentials_and_the_proxy_are_not_throttled(sqlite_ledger):
    secret = "proxy-shared-secret-0123456789"
    app, auth = pages_site(sqlite_ledger, LoginLimits(concurrency=1, address_free=1, base_delay=60),
                           proxy_secret=secret)
    with serve(app) as base:
        assert get(base, "198.51.100.9", PASSWORD).status_code == 200  # cached from now on
        assert get(base, "198.51.100.9", "guess").status_code == 401
        assert get(base, "198.51.100.9", "guess").status_code == 429
        assert get(base, "198.51.100.9", PASSWORD).status_code == 200  # the cached sign-in still works
        r = httpx.get(f"{base}/audit/cases", headers={"X-Cordon-User": "carol", "X-Cordon-Proxy-Secret": "nope"})
        assert r.status_code == 403
        r = httpx.get(f"{base}/audit/cases", headers={"X-Cordon-User": "carol", "X-Cordon-Proxy-Secret": secret})
        assert r.status_code == 200
    assert RefusalCounter(sqlite_ledger).counts("audit") == {"wrong_password": 1, "throttled": 1,
                                                             "untrusted_proxy": 1}


def test_limits_are_sized_from_memory_and_addresses_grouped():
    default = PasswordHasher().hash("x")
    big = PasswordHasher(memory_cost=262144).hash("x")  # 256 MiB
    assert concurrency_for([default]) == 2 and concurrency_for([default, big]) == 1
    assert concurrency_for([default], memory_mib=1024) == 4  # at most 4 however much memory
    assert LoginLimits.from_env([default], {"CORDON_AUDIT_LOGIN_MEMORY_MIB": "192"}).concurrency == 3
    assert LoginLimits.from_env([default], {"CORDON_AUDIT_LOGIN_CONCURRENCY": "1"}).concurrency == 1
    with pytest.raises(ValueError, match="CORDON_AUDIT_LOGIN_MEMORY_MIB"):
        LoginLimits.from_env([], {"CORDON_AUDIT_LOGIN_MEMORY_MIB": "lots"})
    key = LoginThrottle.address_key
    assert key("2001:db8:1:2:3:4:5:6") == key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert key("::ffff:198.51.100.7") == key("198.51.100.7") == "198.51.100.7"
    assert key(None) == "-"


# -- refusal floods ---------------------------------------------------------------------------------

def test_two_hundred_forged_posts_are_one_chained_record(ledger_url):
    ledger = Ledger(ledger_url)
    app = create_app(signing_secret=SECRET, ledger=ledger, decide=Decider(), webhook_token=WEBHOOK_TOKEN,
                     on_detections=lambda body, origin: {})
    body = click_body("approve")
    before = ledger.verify().checked
    with serve(app) as base, httpx.Client(base_url=base) as http:
        for i in range(200):
            headers = sign(body, secret="forged") if i % 4 else sign(body, ts=int(time.time()) - 3600)
            assert http.post("/slack/interactions", content=body, headers=headers).status_code == 401
        for _ in range(50):
            r = http.post("/webhook/detections", content=b"{}", headers={"Authorization": "Bearer guess"})
            assert r.status_code == 401
    assert ledger.verify().checked == before  # nothing chained yet: counted
    counter = RefusalCounter(ledger)
    assert counter.counts("slack") == {"bad_signature": 150, "stale_timestamp": 50}
    assert counter.counts("webhook") == {"wrong_bearer": 50}
    assert all(len(w.samples) <= 5 for w in counter.windows())
    # two replicas close the ended windows at the same moment: each window is summarised once
    later = time.time() + 120
    replicas = [RefusalCounter(Ledger(ledger_url)) for _ in range(2)]
    with cf.ThreadPoolExecutor(2) as pool:
        closed = [r for rs in pool.map(lambda c: c.close_due(now=later), replicas) for r in rs]
    by_kind: dict[str, int] = {}
    for rec in closed:
        by_kind[rec.kind] = by_kind.get(rec.kind, 0) + rec.payload["count"]
    assert by_kind == {"slack.refusals": 200, "webhook.refusals": 50}, by_kind
    assert len(closed) <= 4  # one per source and minute (the posts may straddle a minute)
    chained = [r for r in ledger.records() if r.kind.endswith(".refusals")]
    assert sorted(r.seq for r in chained) == sorted(r.seq for r in closed)
    # the summaries say why, as counted (a reason ending in "token" was redacted by the ledger)
    webhook_reasons: dict[str, int] = {}
    for r in chained:
        if r.kind == "webhook.refusals":
            for reason, n in r.payload["by_reason"].items():
                webhook_reasons[reason] = webhook_reasons.get(reason, 0) + n
    assert webhook_reasons == {"wrong_bearer": 50}, webhook_reasons
    assert all(w.summary_seq is not None for w in counter.windows())
    assert counter.close_due(now=later) == []
    res = ledger.verify()
    assert res.ok and res.checked == before + len(closed)


def test_the_running_server_closes_ended_windows(sqlite_ledger):
    counter = RefusalCounter(sqlite_ledger, window_seconds=1, grace_seconds=0.1, close_every=0.2)
    app = create_app(signing_secret=SECRET, ledger=sqlite_ledger, decide=Decider(), refusals=counter)
    body = click_body("approve")
    with serve(app, lifespan="on") as base:
        for _ in range(3):
            assert httpx.post(f"{base}/slack/interactions", content=body,
                              headers=sign(body, secret="forged")).status_code == 401
        deadline = time.time() + 20
        while time.time() < deadline and sum(
                r.payload["count"] for r in sqlite_ledger.records(kind_prefix="slack.refusals")) < 3:
            time.sleep(0.1)
    recs = list(sqlite_ledger.records(kind_prefix="slack.refusals"))
    assert sum(r.payload["count"] for r in recs) == 3 and all(r.actor == "cordon" for r in recs)
    assert {k for r in recs for k in r.payload["by_reason"]} == {"bad_signature"}
    assert recs[0].payload["samples"][0]["remote"] == "127.0.0.1"
    assert sqlite_ledger.verify().ok


def test_cli_lists_and_closes_refusal_windows(tmp_path):
    from typer.testing import CliRunner

    from cordon.cli import app

    url = f"sqlite:///{tmp_path}/cli.db"
    counter = RefusalCounter(Ledger(url), clock=lambda: 1_700_000_000.0)
    for _ in range(3):
        counter.record("webhook", "wrong_bearer", {"remote": "203.0.113.9"})
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "refusals"], env={"CORDON_DATABASE_URL": url})
    assert res.exit_code == 0 and "wrong_bearer" in res.output and "203.0.113.9" in res.output, res.output
    assert "open" in res.output and "3 refusal(s) in 1 window row(s)" in res.output
    res = runner.invoke(app, ["audit", "refusals", "--close", "--output", "json"], env={"CORDON_DATABASE_URL": url})
    assert res.exit_code == 0 and "chained #1 webhook.refusals: 3 refusal(s)" in res.output, res.output
    row = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert row[0]["count"] == 3 and row[0]["summary_seq"] == 1
    assert runner.invoke(app, ["audit", "refusals", "--source", "ftp"], env={"CORDON_DATABASE_URL": url}).exit_code == 2
