"""Throughput and click latency of Cordon's Slack interactivity endpoint.

Cordon's server (``cordon.server.create_app``, uvicorn, one worker) runs in a child process with
a SQLite ledger; this process sends signed ``block_actions`` clicks (v0 HMAC-SHA256, each with a
unique ``action_ts`` / ``trigger_id`` so the replay check passes them) from ``--concurrency``
concurrent HTTP/1.1 connections (httpx). Measured:

* **requests/s** of ``POST /slack/interactions``: read the body, verify the signature and the
  timestamp (slack-sdk's ``SignatureVerifier``), parse the click, the replay check, append
  ``slack.interaction_received`` to the hash-chained ledger, answer 200, start the background task;
* **ack latency**: from sending a click to its 200;
* **click -> resumed**: from sending a click to the moment the server's ``decide`` calls its
  ``resume`` function, which here only records the time (``time.time()``, same machine) instead
  of calling Prefect's ``resume_flow_run``. So this is Cordon's own share (HTTP, signature, ledger,
  background dispatch); the approval policy checks and Prefect's resume and the worker picking the
  run up come on top (see ``bench_latency.py`` for those).

Not a test: prints figures, asserts nothing about time.

    .venv/bin/python benchmarks/bench_slack.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SECRET = "bench-signing-secret"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def serve(port: int, db: str, resumed, ready) -> None:  # child process
    import uvicorn

    from cordon.audit.ledger import Ledger
    from cordon.server import create_app
    from cordon.slack.verify import DecisionOutcome

    def resume(click_id: str) -> None:
        resumed.put((click_id, time.time()))

    def decide(interaction) -> DecisionOutcome:
        resume(interaction.action_ts)
        return DecisionOutcome(True, "recorded")

    app = create_app(signing_secret=SECRET, ledger=Ledger(f"sqlite:///{db}"), decide=decide)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            access_log=False)
    server = uvicorn.Server(config)
    ready.set()
    server.run()


def click(i: int) -> tuple[str, bytes, dict[str, str]]:
    action_ts = f"{time.time():.6f}-{i}"
    value = {"run_id": f"run-{i % 50}", "case_id": f"case-{i % 50:012d}", "plan_hash": "a" * 64, "decision": "approve"}
    payload = {
        "type": "block_actions",
        "user": {"id": "U0ALICE01", "username": "alice", "name": "alice", "team_id": "T0CORDON1"},
        "team": {"id": "T0CORDON1", "domain": "cordon"},
        "container": {"type": "message", "message_ts": "1714644930.000100", "channel_id": "C0APPROVALS"},
        "trigger_id": f"{i}.{hashlib.sha1(action_ts.encode()).hexdigest()}",
        "response_url": None,
        "actions": [{"action_id": "cordon_approve", "block_id": "cordon_decision", "type": "button",
                     "value": json.dumps(value), "action_ts": action_ts}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return action_ts, body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig,
                             "Content-Type": "application/x-www-form-urlencoded"}


async def load(url: str, n: int, concurrency: int) -> tuple[dict[str, float], list[float], list[int], float]:
    import httpx

    sent: dict[str, float] = {}
    acks: list[float] = []
    statuses: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                click_id, body, headers = click(i)
                t0 = time.time()
                sent[click_id] = t0
                resp = await client.post(url, content=body, headers=headers)
                acks.append(time.time() - t0)
                statuses.append(resp.status_code)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return sent, acks, statuses, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    ctx = multiprocessing.get_context("spawn")
    resumed = ctx.Queue()
    ready = ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        proc = ctx.Process(target=serve, args=(port, os.path.join(tmp, "ledger.db"), resumed, ready), daemon=True)
        proc.start()
        ready.wait(60)
        import httpx

        url = f"http://127.0.0.1:{port}/slack/interactions"
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise SystemExit("server did not start") from None
                time.sleep(0.1)
        try:
            asyncio.run(load(url, args.warmup, args.concurrency))
            for _ in range(args.warmup):
                resumed.get(timeout=60)
            sent, acks, statuses, elapsed = asyncio.run(load(url, args.requests, args.concurrency))
            latencies = []
            for _ in range(args.requests):
                click_id, at = resumed.get(timeout=120)
                if click_id in sent:
                    latencies.append(at - sent[click_id])
        finally:
            proc.terminate()
            proc.join(10)

    ok = sum(1 for s in statuses if s == 200)
    print(f"interactivity endpoint: {args.requests} signed clicks, {args.concurrency} connections, "
          f"{os.cpu_count()} CPU(s) shared by client and server")
    print(f"  answered 200: {ok} of {len(statuses)}")
    print(f"  throughput            {args.requests / elapsed:8.1f} requests/s (with signature check and a ledger "
          "append per click)")
    print(f"  ack latency           p50 {statistics.median(acks) * 1000:7.1f} ms   p95 {pct(acks, 95) * 1000:7.1f} ms"
          f"   max {max(acks) * 1000:7.1f} ms")
    print(f"  click -> resumed      p50 {statistics.median(latencies) * 1000:7.1f} ms   "
          f"p95 {pct(latencies, 95) * 1000:7.1f} ms   max {max(latencies) * 1000:7.1f} ms   "
          f"({len(latencies)} clicks; resume = a function recording the time, not Prefect)")


if __name__ == "__main__":
    main()
