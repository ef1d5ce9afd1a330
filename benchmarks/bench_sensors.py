"""The ``aws-s3-sqs`` sensor's throughput and lag, through moto's server (S3 + SQS over HTTP) into
Cordon's ledger (issue 15). Not a test.

1. **Throughput**: a trail of ``--records`` CloudTrail records (default 100,000; realistic fields,
   one ``CreateAccessKey`` per ``--credential-every`` records, the rest ``DescribeInstances``) in
   gzipped ``{"Records": [...]}`` files of ``--per-file`` records, uploaded and announced on the queue
   (S3 event notifications); then sensor passes until the queue is empty. Prints records/s from the
   first pass to the last (receive, S3 read, gunzip, intake with Sigma and dedup, ledger, delete).
2. **Lag**: a producer uploads one file of ``--rate`` records every second for ``--seconds`` while
   the sensor runs; each file's lag is the time from its upload to the sensor's mark that it is in
   the ledger (``sensor_seen.seen_at``). Prints p50 / p95 / max.

Cases are opened, not answered (``answer=None``: the engine's cost is ``bench_storm.py``'s).

    .venv/bin/python benchmarks/bench_sensors.py [--records 100000] [--rate 1000] [--seconds 30]
        [--postgres] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def event(i: int, credential_every: int) -> dict:
    user = f"u{i % 97}"
    base = {"eventVersion": "1.09", "userIdentity": {
        "type": "IAMUser", "principalId": f"AIDA{i % 97:016d}", "accountId": "111122223333",
        "arn": f"arn:aws:iam::111122223333:user/{user}", "accessKeyId": f"AKIA{i % 97:016d}", "userName": user},
        "eventTime": "2024-07-30T21:53:13Z", "awsRegion": "us-east-1", "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2.17.3", "eventID": f"00000000-0000-4000-8000-{i:012d}", "readOnly": True,
        "eventType": "AwsApiCall", "managementEvent": True, "recipientAccountId": "111122223333",
        "eventCategory": "Management"}
    if credential_every and i % credential_every == 0:
        return {**base, "eventSource": "iam.amazonaws.com", "eventName": "CreateAccessKey", "readOnly": False,
                "requestParameters": {"userName": f"victim{i}"},
                "responseElements": {"accessKey": {"accessKeyId": f"AKIAB{i:015d}", "status": "Active",
                                                   "userName": f"victim{i}", "createDate": "Jul 30, 2024 9:53:13 PM"}}}
    return {**base, "eventSource": "ec2.amazonaws.com", "eventName": "DescribeInstances",
            "requestParameters": {"maxResults": 1000}, "responseElements": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--per-file", type=int, default=1000)
    ap.add_argument("--credential-every", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=1000, help="records a second for the lag part")
    ap.add_argument("--seconds", type=int, default=30, help="how long the lag part produces")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from cordon.audit.ledger import Ledger
    from cordon.clouds import clients_for
    from cordon.config import load_config
    from cordon.engine import Responder
    from cordon.sandbox.aws import AwsSandbox
    from cordon.sensors import build_sensor
    from cordon.sensors.runner import run_forever, run_pass
    from cordon.sensors.store import SensorStore, seen_table

    tmp = Path(tempfile.mkdtemp(prefix="cordon-bench-sensors-"))
    if args.postgres:
        from tests.dbs import fresh_postgres_schema

        url, _cleanup = fresh_postgres_schema()
    else:
        url = f"sqlite:///{tmp}/ledger.db"
    sandbox = AwsSandbox().start()
    clients = clients_for("aws", sandbox.cloud_params())
    sqs, s3 = clients("sqs"), clients("s3")
    queue_url = sqs.create_queue(QueueName="bench-trail")["QueueUrl"]
    s3.create_bucket(Bucket="trail")
    (tmp / "cordon.yaml").write_text(yaml.safe_dump({"sensors": {"aws-s3-sqs": {
        "queue_url": queue_url, "wait_seconds": 0, "max_records": 10, "interval_seconds": 0.2,
        "max_pending_cases": 10**9}}}))
    cfg = load_config(tmp)
    responder = Responder(config=cfg, ledger=Ledger(url))
    sensor = build_sensor("aws-s3-sqs", cfg, clients_for, sandbox.cloud_params())
    store = SensorStore(responder.ledger.engine)

    def upload(name: str, first: int, n: int) -> None:
        body = gzip.compress(json.dumps({"Records": [event(i, args.credential_every)
                                                     for i in range(first, first + n)]}).encode())
        s3.put_object(Bucket="trail", Key=name, Body=body)
        note = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                             "s3": {"bucket": {"name": "trail"}, "object": {"key": name, "eTag": name}}}]}
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(note))

    # 1. throughput
    files = (args.records + args.per_file - 1) // args.per_file
    for f in range(files):
        upload(f"t/{f:06d}.json.gz", f * args.per_file, min(args.per_file, args.records - f * args.per_file))
    started = time.perf_counter()
    cpu0 = time.process_time()
    passes = 0
    while True:
        r = run_pass(sensor, store, responder, None)
        passes += 1
        if r.error:
            raise SystemExit(f"pass failed: {r.error}")
        if r.read == 0 and r.rejected == 0:
            break
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    total = store.state("aws-s3-sqs").records_total  # files (deliveries) put in the ledger
    per_s = args.records / elapsed

    # 2. lag under a steady rate
    uploaded: dict[str, float] = {}
    stop = threading.Event()
    runner = threading.Thread(target=run_forever, args=(sensor, store, responder, None), kwargs={"stop": stop},
                              daemon=True)
    runner.start()
    base = args.records
    t0 = time.perf_counter()
    for s in range(args.seconds):
        name = f"lag/{s:06d}.json.gz"
        upload(name, base + s * args.rate, args.rate)
        uploaded[f"s3:trail/{name}@{name}"] = time.time()
        time.sleep(max(0.0, t0 + s + 1 - time.perf_counter()))
    deadline = time.time() + 120
    with responder.ledger.engine.connect() as c:
        while time.time() < deadline:
            got = dict(c.execute(sa.select(seen_table.c.record_id, seen_table.c.seen_at).where(
                seen_table.c.record_id.in_(list(uploaded)))).all())
            if len(got) == len(uploaded):
                break
            time.sleep(0.5)
    stop.set()
    runner.join(10)
    lags = sorted(datetime.fromisoformat(got[k]).timestamp() - v for k, v in uploaded.items() if k in got)
    out = {"records": args.records, "files": files, "passes": passes, "records_per_s": round(per_s, 1),
           "cpu_s": round(cpu, 2), "files_in_ledger": total, "cases": len(responder.ledger.cases()),
           "lag_rate_per_s": args.rate, "lag_files": len(lags), "lag_lost": len(uploaded) - len(lags),
           "lag_p50_s": round(statistics.median(lags), 3) if lags else None,
           "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3) if lags else None,
           "lag_max_s": round(lags[-1], 3) if lags else None}
    print(f"throughput: {args.records} records in {files} files, {elapsed:.1f} s: {per_s:.0f} records/s "
          f"({cpu:.1f} CPU-s in this process, which also runs moto); {out['cases']} cases")
    print(f"lag at {args.rate} records/s for {args.seconds} s: p50 {out['lag_p50_s']} s, p95 {out['lag_p95_s']} s, "
          f"max {out['lag_max_s']} s, {out['lag_lost']} file(s) not in the ledger after 120 s")
    if args.json:
        print(json.dumps(out))
    sandbox.stop()


if __name__ == "__main__":
    main()
