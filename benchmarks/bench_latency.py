"""Latency of the durable Slack path with a local Prefect server.

Measures, over N cases (default 50), each a distinct CloudTrail CreateAccessKey:

* **received -> asked**: from the detection entering Cordon (intake) to the approval request
  being posted in Slack (the Slack stand-in holds the message);
* **approved -> verified**: from the signed click reaching Cordon's server to the ledger's
  ``verify.held`` record for the case.

Everything runs on this machine: ``prefect server start`` and one ``respond`` worker as child
processes, the Slack stand-in, the AWS sandbox (moto's server) and Cordon's server (uvicorn) in
this process. Prints p50 / p95 / max for both. Not a test: no assertion on time.

    .venv/bin/python benchmarks/bench_latency.py [--cases 50]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SECRET = "bench-signing-secret"
CHANNEL = "C0APPROVALS"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={sig}",
            "Content-Type": "application/x-www-form-urlencoded"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=50)
    args = ap.parse_args()

    import httpx
    import uvicorn

    from cordon.sandbox.prefect_server import PrefectServer, Worker, free_port

    tmp = Path(tempfile.mkdtemp(prefix="cordon-bench-"))
    t_start = time.monotonic()
    server = PrefectServer(tmp / "prefect").start()
    print(f"prefect server up in {time.monotonic() - t_start:.1f} s", flush=True)
    from cordon.sandbox.aws import AwsSandbox
    from cordon.sandbox.slack_standin import SlackStandIn, block_actions_payload

    slack = SlackStandIn()
    slack_url = slack.start()
    aws = AwsSandbox().start()
    db_url = f"sqlite:///{tmp}/ledger.db"
    from tests.helpers import config_with_approvers  # the Slack path needs approvers configured

    env = {**server.env, "CORDON_DATABASE_URL": db_url, "CORDON_SLACK_BOT_TOKEN": "xoxb-test",
           "CORDON_SLACK_API_URL": slack_url, "PREFECT_LOGGING_LEVEL": "WARNING",
           "CORDON_CONFIG": str(config_with_approvers(tmp))}
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cordon.audit.ledger import Ledger
    from cordon.engine import Responder
    from cordon.server.wiring import build_app

    worker = Worker(env, tmp / "worker.log", cwd=REPO).start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        ledger = Ledger(db_url)
        app = build_app(signing_secret=SECRET, ledger=ledger)
        port = free_port()
        uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=uv.run, daemon=True).start()
        while not uv.started:
            time.sleep(0.05)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while True:
                try:
                    client.read_deployment_by_name("respond/respond")
                    break
                except Exception:  # noqa: BLE001 - the worker has not registered it yet
                    time.sleep(0.2)
        responder = Responder(ledger=ledger)
        template = json.loads((REPO / "examples" / "cloudtrail-create-access-key.json").read_text())
        asked: list[float] = []
        contained: list[float] = []
        try:
            for i in range(args.cases + 1):  # case 0 warms the worker's first deployment pull
                event = json.loads(json.dumps(template))
                key = f"AKIABENCH{i:011d}"
                event["responseElements"]["accessKey"]["accessKeyId"] = key
                # one user per case: IAM allows two access keys per user
                event["requestParameters"]["userName"] = f"build-bot-{i}"
                event["responseElements"]["accessKey"]["userName"] = f"build-bot-{i}"
                event["eventID"] = f"bench-{i}"
                path = tmp / f"event-{i}.json"
                path.write_text(json.dumps(event))
                t0 = time.monotonic()
                report = responder.intake([path])
                (summary,) = list(responder.run_all(report, approval="slack", sandbox=aws,
                                                    slack={"channel": CHANNEL, "base_url": slack_url}))
                case_id = summary["case_id"]
                msg = None
                while msg is None:
                    for m in slack.messages(CHANNEL):
                        if case_id in json.dumps(m["blocks"]):
                            msg = m
                    time.sleep(0.02)
                t1 = time.monotonic()
                while ledger.case(case_id)["status"] != "awaiting_approval" or not list(
                        ledger.records(case_id=case_id, kind_prefix="approval.asked")):
                    time.sleep(0.02)
                # the run suspends right after posting; wait until Prefect says PAUSED
                with get_client(sync_client=True) as client:
                    while client.read_flow_run(summary["flow_run_id"]).state.type.value != "PAUSED":
                        time.sleep(0.02)
                payload = block_actions_payload(msg, CHANNEL, "cordon_approve", user_id="U0ALICE01",
                                                user_name="alice", response_url=slack.response_url(CHANNEL, msg["ts"]))
                body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
                t2 = time.monotonic()
                r = httpx.post(f"http://127.0.0.1:{port}/slack/interactions", content=body, headers=signed(body))
                assert r.status_code == 200, r.text
                while not list(ledger.records(case_id=case_id, kind_prefix="verify.held")):
                    time.sleep(0.02)
                t3 = time.monotonic()
                if i > 0:
                    asked.append(t1 - t0)
                    contained.append(t3 - t2)
                print(f"case {i:3d}: received->asked {t1 - t0:5.2f} s   approved->verified {t3 - t2:5.2f} s",
                      flush=True)
        finally:
            worker.stop()
            uv.should_exit = True
            aws.stop()
            slack.stop()
            server.stop()
    print()
    print(f"{len(asked)} cases, one worker, PREFECT_RUNNER_POLL_FREQUENCY={env['PREFECT_RUNNER_POLL_FREQUENCY']} s")
    for name, xs in (("received -> approval asked", asked), ("approved -> containment verified", contained)):
        print(f"{name:34s} p50 {statistics.median(xs):5.2f} s   p95 {pct(xs, 95):5.2f} s   max {max(xs):5.2f} s")


if __name__ == "__main__":
    main()
