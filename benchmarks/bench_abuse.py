"""Cheap abuse against Cordon's server: password guessing at the audit pages and floods of
unsigned Slack posts / wrong webhook tokens, measured from outside the server process.

Cordon's server (``create_app`` + the audit pages, uvicorn with ``--proxy-headers`` so the
``X-Forwarded-For`` sent here is the client address) runs in a child process on a SQLite ledger,
one fresh process per scenario. Scenarios:

* ``burst16-distinct`` / ``burst16-one``: 16 concurrent wrong passwords for a configured user from
  16 client addresses / from one; the server's RSS after one correct sign-in (warm), its peak
  (``VmHWM``) and RSS after the burst, and how the requests were answered.
* ``guessing``: one address guessing sequentially for ``--guess-seconds``: passwords actually
  checked (401) per second, and refusals (429).
* ``flood``: ``--flood`` forged Slack posts and a quarter as many wrong-token webhook calls: time,
  and how many ledger records they added (before any window is closed, and after).

``--tree`` runs the server from another source tree (e.g. an export of an older commit:
``git archive <commit> | tar -x -C /tmp/before``) to compare. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/bench_abuse.py [--tree PATH] [--guess-seconds 20] [--flood 200]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import hmac
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-signing-secret"
TOKEN = "bench-webhook-token-0123456789"
PASSWORD = "correct horse battery staple"


def serve(tree: str, port: int, db: str) -> None:  # the child process
    sys.path.insert(0, tree)
    import uvicorn

    from cordon.audit.ledger import Ledger
    from cordon.server import create_app
    from cordon.server.pages import audit_pages
    from cordon.slack.verify import DecisionOutcome

    ledger = Ledger(f"sqlite:///{db}")
    app = create_app(signing_secret=SECRET, ledger=ledger, decide=lambda i: DecisionOutcome(True, "ok"),
                     webhook_token=TOKEN, on_detections=lambda body, origin: {})
    app.include_router(audit_pages(ledger))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=True,
                forwarded_allow_ips="127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tree: str, users: str):
        self.tmp = tempfile.mkdtemp(prefix="bench-abuse-")
        self.db = f"{self.tmp}/ledger.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CORDON_AUDIT_USERS": users, "PYTHONPATH": tree,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.proc = subprocess.Popen([sys.executable, __file__, "_serve", tree, str(self.port), self.db], env=env)
        import httpx

        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)

    def mem(self) -> dict[str, float]:
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        return out

    def records(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return conn.execute("select count(*) from ledger").fetchone()[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def get(url: str, who: str, password: str):
    import httpx

    return httpx.get(f"{url}/audit/cases", auth=("alice", password), headers={"X-Forwarded-For": who}, timeout=120)


def codes(responses) -> str:
    seen: dict[int, int] = {}
    for r in responses:
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
    return ", ".join(f"{n} x {c}" for c, n in sorted(seen.items()))


def burst(tree: str, users: str, distinct: bool) -> None:
    server = Server(tree, users)
    try:
        assert get(server.url, "192.0.2.1", PASSWORD).status_code == 200
        warm = server.mem()
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(16) as pool:
            res = list(pool.map(lambda i: get(server.url, f"198.51.100.{i + 1 if distinct else 1}", "wrong"),
                                range(16)))
        took = time.perf_counter() - started
        after = server.mem()
        name = "burst16-distinct" if distinct else "burst16-one"
        print(f"{name:<17} RSS warm {warm['VmRSS']:.0f} MB, peak {after['VmHWM']:.0f} MB "
              f"(+{after['VmHWM'] - warm['VmRSS']:.0f}), after {after['VmRSS']:.0f} MB; {took:.2f} s; answers: "
              f"{codes(res)}")
    finally:
        server.stop()


def guessing(tree: str, users: str, seconds: float) -> None:
    server = Server(tree, users)
    try:
        res = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            res.append(get(server.url, "198.51.100.77", "wrong"))
            if res[-1].status_code == 429:  # a patient guesser waits what it is told
                time.sleep(min(float(res[-1].headers.get("Retry-After", "1")),
                               max(0.0, seconds - (time.perf_counter() - started))))
        took = time.perf_counter() - started
        checked = sum(r.status_code == 401 for r in res)
        print(f"guessing          {len(res)} requests in {took:.1f} s: {checked} passwords checked "
              f"({checked / took:.2f}/s), answers: {codes(res)}")
    finally:
        server.stop()


def sign(body: bytes, secret: str) -> dict[str, str]:
    ts = str(int(time.time()))
    mac = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={mac}",
            "Content-Type": "application/x-www-form-urlencoded"}


def flood(tree: str, users: str, n: int) -> None:
    import httpx

    server = Server(tree, users)
    try:
        body = urllib.parse.urlencode({"payload": json.dumps({"type": "block_actions"})}).encode()
        before = server.records()
        started = time.perf_counter()
        with httpx.Client(base_url=server.url) as http:
            for _ in range(n):
                assert http.post("/slack/interactions", content=body, headers=sign(body, "forged")).status_code == 401
            for _ in range(n // 4):
                assert http.post("/webhook/detections", content=b"{}",
                                 headers={"Authorization": "Bearer guess"}).status_code == 401
        took = time.perf_counter() - started
        added = server.records() - before
        print(f"flood             {n} forged Slack posts + {n // 4} wrong webhook tokens in {took:.2f} s "
              f"({(n + n // 4) / took:.0f}/s): {added} ledger record(s) added")
    finally:
        server.stop()
    try:
        sys.path.insert(0, tree)
        from cordon.audit.ledger import Ledger
        from cordon.audit.refusals import RefusalCounter
    except ImportError:
        return  # a tree from before counted refusals
    ledger = Ledger(f"sqlite:///{server.db}")
    closed = RefusalCounter(ledger).close_due(now=time.time() + 3600)
    print(f"                  closing the windows chained {len(closed)} record(s): "
          + "; ".join(f"{r.kind} count {r.payload['count']}" for r in closed))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=str(REPO), help="source tree the server runs from (default: this one)")
    ap.add_argument("--guess-seconds", type=float, default=20.0)
    ap.add_argument("--flood", type=int, default=200)
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    from argon2 import PasswordHasher

    users = f"alice:{PasswordHasher().hash(PASSWORD)}"
    print(f"server from {args.tree}; {os.cpu_count()} CPU(s)")
    burst(args.tree, users, distinct=True)
    burst(args.tree, users, distinct=False)
    guessing(args.tree, users, args.guess_seconds)
    flood(args.tree, users, args.flood)


if __name__ == "__main__":
    main()
