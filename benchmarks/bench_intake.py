"""Throughput and peak memory of cordon.detections.intake.read_inputs, per input format.

Usage (from the repo root)::

    .venv/bin/python benchmarks/bench_intake.py [--events N]

Writes N synthetic CloudTrail events (default 200,000; realistic fields, unique ids) in a
temporary directory in four layouts: JSON lines, gzipped JSON lines, a pretty-printed
``{"Records": [...]}`` document (streamed item by item) and CloudTrail's own single-line gzipped
``{"Records": [...]}`` (decoded as one object). Each layout is read in a fresh child process; it
prints records/s, the file size and the child's peak RSS (``resource.ru_maxrss``), next to the
RSS of a child that only imports the package.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def event(i: int) -> dict:
    return {
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": f"AIDA{i:016d}",
            "accountId": "111122223333",
            "arn": f"arn:aws:iam::111122223333:user/u{i % 97}",
            "accessKeyId": f"AKIA{i:016d}",
            "userName": f"u{i % 97}",
        },
        "eventTime": "2024-07-30T21:53:13Z",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "DescribeInstances",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.10",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6",
        "requestParameters": {"instancesSet": {}, "filterSet": {}},
        "responseElements": None,
        "requestID": f"req-{i}",
        "eventID": f"evt-{i}",
        "readOnly": True,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": "111122223333",
    }


LAYOUTS = {
    "jsonl": "events.jsonl",
    "jsonl.gz": "events.jsonl.gz",
    "records-pretty": "records.json",
    "records-1line.gz": "records.json.gz",
}


def write_inputs(folder: Path, n: int) -> dict[str, Path]:
    events = [event(i) for i in range(n)]
    lines = "".join(json.dumps(e) + "\n" for e in events).encode()
    paths = {name: folder / file for name, file in LAYOUTS.items()}
    paths["jsonl"].write_bytes(lines)
    paths["jsonl.gz"].write_bytes(gzip.compress(lines, 6))
    paths["records-pretty"].write_text(json.dumps({"Records": events}, indent=1))
    paths["records-1line.gz"].write_bytes(gzip.compress(json.dumps({"Records": events}).encode(), 6))
    return paths


CHILD = """
import resource, sys, time
from cordon.detections.intake import RawRecord, read_inputs
t = time.perf_counter()
n = sum(1 for r in read_inputs([sys.argv[1]]) if isinstance(r, RawRecord))
dt = time.perf_counter() - t
print(n, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

BASELINE = "import resource; import cordon.detections.intake; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--write-to", help=argparse.SUPPRESS)  # child mode: write the inputs and exit
    args = ap.parse_args()
    if args.write_to:
        write_inputs(Path(args.write_to), args.events)
        return
    base = int(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True, check=True).stdout)
    print(f"baseline RSS (import only): {base / 1024:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        # Written by a child: Linux keeps ru_maxrss across fork+exec, so the parent stays small.
        subprocess.run([sys.executable, __file__, "--events", str(args.events), "--write-to", tmp], check=True)
        paths = {name: Path(tmp) / file for name, file in LAYOUTS.items()}
        print(f"wrote {args.events} events x {len(paths)} layouts in {time.perf_counter() - t:.1f}s")
        for name, path in paths.items():
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
            ).stdout.split()
            n, dt, rss = int(out[0]), float(out[1]), int(out[2])
            size = path.stat().st_size / 2**20
            print(f"{name:18s} {size:8.1f} MiB  {n:8d} records  {n / dt:10.0f} rec/s  peak RSS {rss / 1024:7.0f} MiB")


if __name__ == "__main__":
    main()
