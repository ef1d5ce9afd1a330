"""Ledger appends per second on SQLite and PostgreSQL, one writer and several processes.

Usage (from the repo root)::

    .venv/bin/python benchmarks/bench_ledger.py [--appends N] [--procs P] [--every K]

Each run uses a fresh database: a SQLite file (WAL) in a temporary directory, and a fresh schema
on the PostgreSQL at ``CORDON_TEST_POSTGRES_URL`` (default ``postgres@127.0.0.1:5432/test``;
skipped with the reason when it does not answer). Every append is a real ``Ledger.append``
(redaction, hashing, head row locked, its own transaction and commit) with a ~600-byte payload
like an enrichment record; a signed checkpoint is made every K appends (default 100, as in
production). "single" is one process doing N appends; "P procs" is P processes doing N/P each,
started together (spawn), timed from the start signal to the last commit. ``verify`` is then
timed over the whole chain. The figures depend on the disk's fsync latency and on the 2 shared
cores: compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEY = "benchmark-ledger-key-0123456789abcdef"


def payload(i: int, who: int) -> dict:
    return {
        "writer": who, "i": i, "step": "enrichment.aws.iam",
        "principal": f"arn:aws:iam::111122223333:user/u{i % 97}", "access_key_id": f"AKIA{i:016d}",
        "response": {"AccessKeyMetadata": [{"UserName": f"u{i % 97}", "AccessKeyId": f"AKIA{i:016d}",
                                            "Status": "Active", "CreateDate": "2024-07-30T21:53:13Z"}],
                     "LastUsed": {"Region": "us-east-1", "ServiceName": "iam", "LastUsedDate": "2024-07-30"},
                     "Tags": [{"Key": "team", "Value": "platform"}, {"Key": "owner", "Value": "alice"}],
                     "SessionToken": "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ"},
        "note": "detection received from CloudTrail delivery s3://trail/AWSLogs/111122223333/2024/07/30",
    }


def _worker(url: str, n: int, who: int, every: int, start, done) -> None:
    from cordon.audit.ledger import Ledger

    ledger = Ledger(url, key=KEY, checkpoint_every=every)
    ledger.append("bench.warmup", {"writer": who})
    start.wait()
    for i in range(n):
        ledger.append("bench.append", payload(i, who), case_id=f"case-{who}")
    done.put(time.perf_counter())


def run(url: str, n: int, procs: int, every: int) -> float:
    """Appends/s for ``procs`` processes doing ``n // procs`` appends each (warm-up excluded)."""
    from cordon.audit.ledger import Ledger

    Ledger(url)  # migrate once before the writers start
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    per = n // procs
    workers = [ctx.Process(target=_worker, args=(url, per, w, every, start, done)) for w in range(procs)]
    for w in workers:
        w.start()
    time.sleep(2.0)  # let every child import and warm up before the start signal
    t0 = time.perf_counter()
    start.set()
    ends = [done.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"writer exited with {w.exitcode}")
    return per * procs / (max(ends) - t0)


def timed_verify(url: str) -> tuple[int, float, bool]:
    from cordon.audit.ledger import Ledger

    t0 = time.perf_counter()
    res = Ledger(url, key=KEY).verify()
    return res.checked, time.perf_counter() - t0, res.ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--every", type=int, default=100, help="checkpoint every K appends (0: none)")
    args = ap.parse_args()
    from tests.dbs import fresh_postgres_schema, postgres_unavailable

    print(f"ledger appends, {args.appends} per run, checkpoint every {args.every}")
    with tempfile.TemporaryDirectory() as tmp:
        dbs = [("sqlite", lambda name: (f"sqlite:///{tmp}/{name}.db", lambda: None))]
        reason = postgres_unavailable()
        if reason:
            print(f"postgresql: skipped: {reason}")
        else:
            dbs.append(("postgresql", lambda name: fresh_postgres_schema()))
        for label, make in dbs:
            for procs in (1, args.procs):
                url, cleanup = make(f"{label}-{procs}")
                try:
                    rate = run(url, args.appends, procs, args.every)
                    checked, secs, ok = timed_verify(url)
                finally:
                    cleanup()
                who = "single writer" if procs == 1 else f"{procs} processes"
                print(f"{label:<11} {who:<14} {rate:>9,.0f} appends/s   verify {checked:,} records in "
                      f"{secs:.2f}s ({checked / secs:,.0f}/s) {'ok' if ok else 'BROKEN'}")


if __name__ == "__main__":
    main()
