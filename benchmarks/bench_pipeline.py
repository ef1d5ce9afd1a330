"""The whole intake path on a large CloudTrail file: read, classify, Sigma, normalise.

Builds a JSON-lines file of N events (ordinary read-only and write events, with the Stratus Red
Team corpus events from ``../shared/data/real`` sprinkled in at about 1 %, the way credential
events are rare in real trails), then in a fresh child process per measurement, pinned to one CPU:

* ``json.loads`` of every line (the floor),
* ``cordon.detections.pipeline.detect(read_inputs([file]), RuleSet.load(shipped_rule_dirs()))``: every
  record read and classified, every CloudTrail event evaluated against the shipped rules, every
  match normalised into a ``Detection``.

Prints events/s, the ratio to ``json.loads``, detections, and the child's peak RSS at two sizes
to show memory stays flat as the file grows. Not a test: no assertion on time.

    .venv/bin/python benchmarks/bench_pipeline.py [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "real" / "stratus-red-team" / "docs" / "detonation-logs"

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
sys.path.insert(0, sys.argv[3])
mode, path = sys.argv[1], sys.argv[2]
if mode == "loads":
    t = time.perf_counter(); n = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                json.loads(line); n += 1
    dt = time.perf_counter() - t; found = 0
else:
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import DetectStats, detect
    from cordon.sigma import RuleSet
    rules = RuleSet.load(sorted(Path(sys.argv[3], "cordon", "providers").glob("*/rules")))
    stats = DetectStats()
    t = time.perf_counter(); found = 0
    for item in detect(read_inputs([path]), rules, stats):
        found += 1
    dt = time.perf_counter() - t; n = stats.records_read
print(json.dumps({"n": n, "seconds": dt, "found": found,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ordinary(i: int, rng: random.Random) -> dict:
    name, source = rng.choice([("DescribeInstances", "ec2"), ("GetObject", "s3"), ("AssumeRole", "sts"),
                               ("ListBuckets", "s3"), ("PutObject", "s3"), ("GetCallerIdentity", "sts"),
                               ("DescribeSecurityGroups", "ec2"), ("ListUsers", "iam")])
    user = f"user{i % 500}"
    return {
        "eventVersion": "1.09",
        "userIdentity": {"type": "IAMUser", "principalId": f"AIDA{i:016d}",
                         "arn": f"arn:aws:iam::111122223333:user/{user}", "accountId": "111122223333",
                         "accessKeyId": f"AKIA{i % 500:016d}", "userName": user},
        "eventTime": f"2026-11-20T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z",
        "eventSource": f"{source}.amazonaws.com", "eventName": name, "awsRegion": "eu-west-1",
        "sourceIPAddress": f"198.51.100.{i % 250}", "userAgent": "aws-cli/2.17.3 md/awscrt#0.20.11 ua/2.0 os/linux",
        "requestParameters": {"bucketName": f"bucket-{i % 40}", "key": f"data/{i}.parquet"} if source == "s3" else {},
        "responseElements": None, "requestID": f"{i:08x}-0000-4000-8000-000000000000",
        "eventID": f"{i:08x}-1111-4111-8111-111111111111", "readOnly": name.startswith(("Describe", "Get", "List")),
        "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": "111122223333",
        "eventCategory": "Management",
    }


def build(path: Path, n: int) -> None:
    rng = random.Random(7)
    corpus = [e for f in sorted(CORPUS.glob("*.json")) for e in json.loads(f.read_text())] if CORPUS.exists() else []
    with open(path, "w") as fh:
        for i in range(n):
            ev = rng.choice(corpus) if corpus and rng.random() < 0.01 else ordinary(i, rng)
            fh.write(json.dumps(ev) + "\n")


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(REPO)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    if not CORPUS.exists():
        print(f"note: {CORPUS} absent; measuring ordinary events only")
    print(f"{'events':>9} {'MB':>7} {'loads ev/s':>11} {'pipeline ev/s':>14} {'ratio':>6} {'detections':>11} "
          f"{'RSS MB':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.events // 4, args.events):
            path = Path(tmp) / f"trail-{n}.jsonl"
            build(path, n)
            base = measure("loads", path)
            full = measure("pipeline", path)
            loads_rate = base["n"] / base["seconds"]
            rate = full["n"] / full["seconds"]
            print(f"{full['n']:>9,} {os.path.getsize(path) / 1e6:>7.1f} {loads_rate:>11,.0f} {rate:>14,.0f} "
                  f"{rate / loads_rate:>6.2f} {full['found']:>11,} {full['rss_mb']:>7.1f}")


if __name__ == "__main__":
    main()
