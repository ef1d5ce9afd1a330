"""Throughput and peak memory of ``cordon audit export`` (cordon.audit.export.export) per format.

Usage (from the repo root)::

    .venv/bin/python benchmarks/bench_export.py [--records N] [--url SQLALCHEMY_URL] [--page-size P]

Fills a fresh ledger (default: a SQLite file in a temporary directory; ``--url`` for PostgreSQL,
e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, whose ``ledger`` table must be empty)
with N records (default 100,000) that form a valid hash chain: cases of 10 records each in the
shapes the respond flow writes (detection received, case opened, enrichment, guard, plan,
approval asked / given, action contained with one API call, verification, case closed), inserted
in bulk with the ledger's own hash function. Then each format is exported to a file in a fresh
child process, which prints records/s, lines written, bytes, and its peak RSS
(``resource.ru_maxrss``) next to the RSS of a child that only opens the ledger: a flat RSS across
``--records`` sizes is the constant-memory claim.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, resource, sys, time
from cordon.audit.ledger import Ledger
from cordon.audit.export import export
url, fmt, out, page = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ledger = Ledger(url)
lines = size = 0
t0 = time.perf_counter()
if fmt != "none":
    with open(out, "w", encoding="utf-8", newline="") as fh:
        for chunk in export(ledger, fmt, page_size=page):
            fh.write(chunk)
            lines += 1
            size += len(chunk)
secs = time.perf_counter() - t0
print(json.dumps({"secs": secs, "lines": lines, "bytes": size,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _payloads(case: str, account: str, i: int) -> list[tuple[str, str, dict]]:
    key = f"AKIA{i:016d}"
    target = f"arn:aws:iam::{account}:user/u{i}"
    det = {"uid": hashlib.sha256(key.encode()).hexdigest()[:32], "provider": "aws", "source": "cloudtrail",
           "event_name": "CreateAccessKey", "technique_ids": ["T1098.001"], "severity": "high",
           "rule": {"type": "sigma", "uid": "r1", "name": "Access key created for another user"},
           "account_uid": account, "region": "us-east-1",
           "actor": {"user": {"uid": f"arn:aws:iam::{account}:user/mallory"}, "src_ip": "203.0.113.7",
                     "user_agent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.debian.12"},
           "target": {"uid": target, "name": f"u{i}"}, "credential": {"kind": "aws_access_key", "uid": key}}
    call = {"service": "iam", "operation": "UpdateAccessKey", "region": None,
            "params": {"AccessKeyId": key, "Status": "Inactive", "UserName": f"u{i}"}}
    plan = hashlib.sha256(case.encode()).hexdigest()
    return [
        ("detection.received", det["actor"]["user"]["uid"],
         {"detection": det, "raw_ref": {"origin": "bench", "position": i, "sha256": plan}}),
        ("case.opened", None, {"case_key": f"aws|{account}|aws_access_key|{key}", "detection_uid": det["uid"],
                               "playbook": "aws-access-key-created"}),
        ("enrichment.completed", "cordon", {"action": "aws.describe-user", "result": {"user": target, "keys": 2}}),
        ("guard.passed", "cordon", {"ok": True, "reason": None, "cordon_identity": f"arn:aws:iam::{account}:role/c"}),
        ("plan.created", "cordon", {"case_id": case, "hash": plan, "playbook": "aws-access-key-created", "steps": [
            {"action": "aws.deactivate-access-key", "target": f"{target} access-key {key}",
             "describe": [f"iam:UpdateAccessKey(AccessKeyId={key}, Status=Inactive, UserName=u{i})"]}]}),
        ("approval.asked", "cordon", {"mode": "slack", "channel": "C0SEC", "plan_hash": plan}),
        ("approval.given", "slack:U1", {"decision": "approve", "approver": "slack:U1", "team_id": "T1",
                                        "plan_hash": plan}),
        ("action.contained", "cordon", {"name": "aws.deactivate-access-key", "target": f"{target} access-key {key}",
                                        "status": "contained", "before": {"status": "Active"},
                                        "after": {"status": "Inactive"}, "calls": [call]}),
        ("verify.held", "cordon", {"action": "aws.deactivate-access-key", "held": True}),
        ("case.closed", "cordon", {"status": "contained", "verified": True,
                                   "approval": {"decision": "approve", "approver": "slack:U1"}}),
    ]


def fill(url: str, n: int) -> None:
    """Write ``n`` chained records (and one ``cases`` row per 10) into the ledger at ``url``."""
    import sqlalchemy as sa

    from cordon.audit.ledger import GENESIS, Ledger, _body, _hash, cases_table, head_table, ledger_table
    from cordon.detections.model import canonical_json

    ledger = Ledger(url)
    with ledger.engine.connect() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(ledger_table)).scalar():
            raise SystemExit(f"{url}: the ledger table is not empty; give an empty database")
    prev, seq, rows, cases = GENESIS, 0, [], []
    t0 = datetime(2025, 1, 1)
    i = 0
    while seq < n:
        case = f"case-{i:012x}"
        cases.append({"case_id": case, "case_key": f"bench|{i}", "opened_at": (t0 + timedelta(seconds=seq)).isoformat()
                      + "+00:00", "playbook": "aws-access-key-created", "status": "contained", "detection": "{}"})
        for kind, actor, payload in _payloads(case, "111122223333", i):
            if seq >= n:
                break
            seq += 1
            ts = (t0 + timedelta(seconds=seq)).isoformat() + "+00:00"
            text = canonical_json(payload)
            digest = _hash(prev, _body(seq, ts, case, None, kind, actor, text))
            rows.append({"seq": seq, "ts": ts, "case_id": case, "run_id": None, "kind": kind, "actor": actor,
                         "payload": text, "prev_hash": prev, "hash": digest})
            prev = digest
        i += 1
        if len(rows) >= 5000:
            with ledger.writer.begin() as conn:
                conn.execute(ledger_table.insert(), rows)
                conn.execute(cases_table.insert(), cases)
            rows, cases = [], []
    with ledger.writer.begin() as conn:
        if rows:
            conn.execute(ledger_table.insert(), rows)
        if cases:
            conn.execute(cases_table.insert(), cases)
        conn.execute(head_table.update().where(head_table.c.id == 1).values(seq=seq, hash=prev))
    ledger.engine.dispose()


def child(url: str, fmt: str, out: Path, page: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, url, fmt, str(out), str(page)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--url", default=None)
    ap.add_argument("--page-size", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/ledger.db"
        t = time.perf_counter()
        fill(url, args.records)
        print(f"ledger: {args.records:,} records at {url.split('?')[0]} (filled in {time.perf_counter() - t:.1f} s)")
        base = child(url, "none", Path(tmp) / "none", args.page_size)
        print(f"baseline child (opens the ledger only): peak RSS {base['rss_mb']:.0f} MB")
        for fmt in ("jsonl", "csv", "ocsf"):
            r = child(url, fmt, Path(tmp) / f"out.{fmt}", args.page_size)
            print(f"{fmt:>5}: {args.records / r['secs']:>9,.0f} records/s  {r['lines']:>9,} lines  "
                  f"{r['bytes'] / 2**20:7.1f} MiB  {r['secs']:6.2f} s  peak RSS {r['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
