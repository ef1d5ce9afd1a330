"""Throughput and memory of cordon.sigma over CloudTrail JSON lines, on one core.

Usage (from the repo root)::

    .venv/bin/python benchmarks/bench_sigma.py [--events N]

Builds two JSON-lines files in a temporary directory (N/4 and N events, default N = 400,000):
mostly ordinary read-only CloudTrail events (DescribeInstances, GetObject, AssumeRole,
ListBuckets, GetCallerIdentity ... with realistic fields and unique ids) with the real Stratus
Red Team captures (../shared/data/real/stratus-red-team/docs/detonation-logs/*.json) sprinkled
in at about 1 %. The rules are the shipped cordon/providers/aws/rules/*.yml plus the SigmaHQ AWS
CloudTrail rules when ../shared/data/real is present.

Each measurement runs in a fresh child process pinned to one CPU, streaming the file line by
line: (1) ``json.loads`` alone, (2) ``json.loads`` + ``RuleSet.match``. It prints events/s,
their ratio, the number of matches and the child's peak RSS (``resource.ru_maxrss``) for both
file sizes: a flat peak across sizes shows that memory does not grow with the input.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
STRATUS = REAL / "stratus-red-team" / "docs" / "detonation-logs"
SIGMAHQ_AWS = REAL / "sigma" / "rules" / "cloud" / "aws"
RULES = REPO / "cordon" / "providers" / "aws" / "rules"

REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2"]
AGENTS = [
    "aws-cli/2.15.30 Python/3.11.8 Linux/6.1.79 exe/x86_64.amzn.2023 command/ec2.describe-instances",
    "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#5.10 md/arch#x86_64 lang/python#3.12.2",
    "aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64 api/sts#1.28.5",
    "[S3Console/0.4, aws-internal/3 aws-sdk-java/1.12.488 Linux/5.10.219 OpenJDK_64-Bit_Server_VM/25.372]",
    "console.amazonaws.com",
]


def _identity(rng: random.Random, account: str) -> dict:
    if rng.random() < 0.6:
        session = rng.choice(["alice", "bob", "ci-runner", "i-0a1b2c3d4e5f"])
        role = rng.choice(["Admin", "ReadOnly", "eks-node", "github-actions"])
        return {
            "type": "AssumedRole",
            "principalId": f"AROAEXAMPLE{rng.randrange(10**6):06d}:{session}",
            "arn": f"arn:aws:sts::{account}:assumed-role/{role}/{session}",
            "accountId": account,
            "accessKeyId": f"ASIA{rng.randrange(16**12):012X}",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": f"AROAEXAMPLE{rng.randrange(10**6):06d}",
                    "arn": f"arn:aws:iam::{account}:role/{role}",
                    "accountId": account,
                    "userName": role,
                },
                "attributes": {"creationDate": "2024-08-01T12:00:00Z", "mfaAuthenticated": "false"},
            },
        }
    user = rng.choice(["deploy", "backup", "christophe", "svc-reporting"])
    return {
        "type": "IAMUser",
        "principalId": f"AIDAEXAMPLE{rng.randrange(10**6):06d}",
        "arn": f"arn:aws:iam::{account}:user/{user}",
        "accountId": account,
        "accessKeyId": f"AKIA{rng.randrange(16**12):012X}",
        "userName": user,
    }


def _ordinary_event(rng: random.Random, i: int) -> dict:
    account = rng.choice(["229654561268", "763751499319", "123456789012"])
    region = rng.choice(REGIONS)
    kind = rng.random()
    base = {
        "eventVersion": "1.09",
        "userIdentity": _identity(rng, account),
        "eventTime": f"2024-08-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}Z",
        "awsRegion": region,
        "sourceIPAddress": ".".join(str(rng.randrange(1, 224 if k == 0 else 256)) for k in range(4)),
        "userAgent": rng.choice(AGENTS),
        "requestID": str(uuid.UUID(int=rng.getrandbits(128))),
        "eventID": str(uuid.UUID(int=rng.getrandbits(128))),
        "readOnly": True,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account,
        "eventCategory": "Management",
        "tlsDetails": {
            "tlsVersion": "TLSv1.3",
            "cipherSuite": "TLS_AES_128_GCM_SHA256",
            "clientProvidedHostHeader": f"ec2.{region}.amazonaws.com",
        },
    }
    if kind < 0.3:
        base.update(
            eventSource="ec2.amazonaws.com",
            eventName="DescribeInstances",
            requestParameters={
                "instancesSet": {},
                "filterSet": {
                    "items": [{"name": "instance-state-name", "valueSet": {"items": [{"value": "running"}]}}]
                },
            },
            responseElements=None,
        )
    elif kind < 0.55:
        bucket = rng.choice(["prod-artifacts", "cloudtrail-logs-229654561268", "data-lake-raw"])
        base.update(
            eventSource="s3.amazonaws.com",
            eventName="GetObject",
            eventCategory="Data",
            managementEvent=False,
            requestParameters={
                "bucketName": bucket,
                "Host": f"{bucket}.s3.{region}.amazonaws.com",
                "key": f"path/to/object-{i}.parquet",
            },
            responseElements=None,
            additionalEventData={
                "bytesTransferredIn": 0,
                "bytesTransferredOut": rng.randrange(10**7),
                "x-amz-id-2": "Zm9vYmFy",
            },
            resources=[
                {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/path/to/object-{i}.parquet"},
                {"accountId": account, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"},
            ],
        )
    elif kind < 0.8:
        role = rng.choice(["Admin", "ReadOnly", "eks-node"])
        base.update(
            eventSource="sts.amazonaws.com",
            eventName="AssumeRole",
            readOnly=False,
            requestParameters={
                "roleArn": f"arn:aws:iam::{account}:role/{role}",
                "roleSessionName": f"session-{i}",
                "durationSeconds": 3600,
            },
            responseElements={
                "credentials": {
                    "accessKeyId": f"ASIA{rng.randrange(16**12):012X}",
                    "sessionToken": "IQoJb3JpZ2luX2VjEOH" + "x" * 200,
                    "expiration": "Aug 1, 2024, 1:00:00 PM",
                },
                "assumedRoleUser": {
                    "assumedRoleId": f"AROAEXAMPLE:session-{i}",
                    "arn": f"arn:aws:sts::{account}:assumed-role/{role}/session-{i}",
                },
            },
            resources=[{"accountId": account, "type": "AWS::IAM::Role", "ARN": f"arn:aws:iam::{account}:role/{role}"}],
        )
    elif kind < 0.93:
        base.update(
            eventSource="s3.amazonaws.com",
            eventName="ListBuckets",
            requestParameters={"Host": "s3.amazonaws.com"},
            responseElements=None,
        )
    else:
        base.update(
            eventSource=rng.choice(["sts.amazonaws.com", "iam.amazonaws.com", "kms.amazonaws.com"]),
            eventName=rng.choice(["GetCallerIdentity", "ListUsers", "GetRole", "Decrypt", "ListAccessKeys"]),
            requestParameters=None,
            responseElements=None,
        )
    return base


def build_file(path: Path, n: int, corpus: list[dict], seed: int = 7) -> None:
    """Write ``n`` JSON lines to ``path`` (streamed), ~1 % of them real corpus events."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            if corpus and i % 97 == 13:
                ev = dict(corpus[(i // 97) % len(corpus)])
                ev["eventID"] = str(uuid.UUID(int=rng.getrandbits(128)))
            else:
                ev = _ordinary_event(rng, i)
            fh.write(json.dumps(ev, separators=(",", ":")))
            fh.write("\n")


def load_corpus() -> list[dict]:
    if not STRATUS.is_dir():
        return []
    events: list[dict] = []
    for f in sorted(STRATUS.glob("*.json")):
        events.extend(json.loads(f.read_text(encoding="utf-8")))
    return events


def rule_paths() -> list[Path]:
    paths = [RULES]
    if SIGMAHQ_AWS.is_dir():
        paths.append(SIGMAHQ_AWS)
    return paths


def child(path: Path, mode: str) -> None:
    """Stream ``path`` once; print one JSON line with the measurements."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sys.path.insert(0, str(REPO))
    from cordon.sigma import RuleSet

    rules = []
    for p in rule_paths():
        rules.extend(RuleSet.load(p).rules)
    rs = RuleSet(rules)
    loads = json.loads
    match = rs.match
    n = matches = 0
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with path.open("r", encoding="utf-8") as fh:
        if mode == "loads":
            for line in fh:
                loads(line)
                n += 1
        else:
            for line in fh:
                found = match(loads(line), product="aws", service="cloudtrail")
                if found:
                    matches += len(found)
                n += 1
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "events": n,
                "seconds": seconds,
                "matches": matches,
                "rules": len(rs.rules),
                "baseline_kb": baseline_kb,
                "peak_kb": peak_kb,
            }
        )
    )


def run_child(path: Path, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--mode", mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=400_000, help="events in the larger file (default 400000)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["loads", "match"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.mode)
        return

    corpus = load_corpus()
    if not corpus:
        print(f"note: {STRATUS} absent; benchmarking synthetic events only (no corpus events sprinkled in)")
    else:
        print(f"corpus: {len(corpus)} Stratus Red Team events sprinkled in at ~1 %")
    if not SIGMAHQ_AWS.is_dir():
        print(f"note: {SIGMAHQ_AWS} absent; shipped rules only")
    sizes = [max(1, args.events // 4), args.events]
    print(f"python {sys.version.split()[0]}, one CPU per measurement (fresh child process, sched_setaffinity)")
    with tempfile.TemporaryDirectory(prefix="bench_sigma_") as tmp:
        rows = []
        for n in sizes:
            path = Path(tmp) / f"events_{n}.jsonl"
            t0 = time.perf_counter()
            build_file(path, n, corpus)
            build_s = time.perf_counter() - t0
            size_mb = path.stat().st_size / 1e6
            loads = run_child(path, "loads")
            matched = run_child(path, "match")
            rows.append((n, size_mb, build_s, loads, matched))
            path.unlink()
    shown = ", ".join(os.path.relpath(p, REPO) for p in rule_paths())
    print(f"rules: {rows[0][4]['rules']} ({shown})")
    print()
    cols = [
        ("events", 9), ("file MB", 8), ("loads ev/s", 12), ("loads+match ev/s", 17),
        ("ratio", 6), ("matches", 8), ("RSS base MB", 12), ("RSS peak MB", 12),
    ]  # fmt: skip
    hdr = " ".join(f"{name:>{width}}" for name, width in cols)
    print(hdr)
    print("-" * len(hdr))
    for n, size_mb, _build_s, loads, matched in rows:
        l_rate = loads["events"] / loads["seconds"]
        m_rate = matched["events"] / matched["seconds"]
        cells = [
            f"{n:,}", f"{size_mb:.1f}", f"{l_rate:,.0f}", f"{m_rate:,.0f}", f"{m_rate / l_rate:.2f}",
            f"{matched['matches']:,}", f"{matched['baseline_kb'] / 1024:.1f}", f"{matched['peak_kb'] / 1024:.1f}",
        ]  # fmt: skip
        print(" ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols, strict=True)))
    worst = min(r[4]["events"] / r[4]["seconds"] for r in rows)
    verdict = "OK" if worst >= 20_000 else "BELOW TARGET"
    print()
    print(f"slowest json.loads + match: {worst:,.0f} events/s on one core (target >= 20,000): {verdict}")
    growth = (rows[1][4]["peak_kb"] - rows[0][4]["peak_kb"]) / 1024
    print(f"peak RSS growth from {sizes[0]:,} to {sizes[1]:,} events: {growth:+.1f} MB (streamed line by line)")


if __name__ == "__main__":
    main()
