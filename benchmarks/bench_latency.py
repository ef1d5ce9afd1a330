"""Latency and CPU of the production path: webhook -> Prefect run -> Slack ask -> signed click -> verified.

Measures, over N cases (default 20), each a distinct CloudTrail ``CreateAccessKey`` by a distinct
actor (so no two cases share a summary message):

* **received -> asked**: from the detection POSTed to ``/webhook/detections`` of Cordon's server
  to the approval request being in the Slack stand-in;
* **approved -> verified**: from the signed click reaching ``/slack/interactions`` to the
  ledger's ``verify.held`` record. Each click comes at a random delay of 0-3 s after the request
  (seeded: ``--seed``), not the instant the run pauses;
* **CPU-seconds per case**: user + system time of Cordon's processes (the server, the workers and
  their children) and of the Prefect server, from ``/proc``, over the measured cases. The stand-ins
  (moto, Slack) run in this process and are not counted.

Processes: ``prefect server start``; ``--workers`` ``cordon worker`` processes (``--runner warm``:
runs execute in the worker's threads, :mod:`cordon.runner`; ``--runner process``: Prefect's
runner, a new process per run and per resumed run); ``cordon serve`` (uvicorn). Not a test: no
assertion on time.

    .venv/bin/python benchmarks/bench_latency.py [--cases 20] [--runner warm|process] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SECRET = "bench-signing-secret"
TOKEN = "bench-webhook-token"
CHANNEL = "C0CORDON01"  # approval.channel of the shipped cordon.yaml
BIN = Path(sys.executable).parent
SERVE = """
import json, sys, uvicorn
from cordon.server.wiring import build_app
uvicorn.run(build_app(cloud=json.loads(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    sig = hmac.new(SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={sig}",
            "Content-Type": "application/x-www-form-urlencoded"}


def tree_cpu(root: int) -> float:
    """User + system CPU seconds of ``root`` and its live descendants, plus what its reaped
    children used (``cutime``/``cstime``), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        parents[int(d)] = int(fields[1])
        stats[int(d)] = fields
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            f = stats[pid]
            total += sum(int(x) for x in f[11:15]) / tick  # utime stime cutime cstime
        todo.extend(p for p, pp in parents.items() if pp == pid)
    return total


def new_postgres_database(driver: str) -> str:
    """A new, empty database on the local PostgreSQL (trust auth); its SQLAlchemy URL."""
    import uuid

    import sqlalchemy as sa

    name = "cordon_bench_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    admin.dispose()
    return f"postgresql+{driver}://postgres@127.0.0.1:5432/{name}"


def drop_postgres_database(url: str) -> None:
    """Drop a database :func:`new_postgres_database` made (benchmarks leave nothing behind)."""
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    admin.dispose()


class Stack:
    """The processes of both benchmarks: Prefect server (child), ``workers`` ``cordon worker``
    processes, ``cordon serve`` (child, uvicorn), and in this process the AWS sandbox and the Slack
    stand-in. ``start()`` returns once the server answers ``/healthz`` and ``respond/respond`` is
    registered; ``stop()`` ends everything (use in ``finally``)."""

    def __init__(self, prefix: str, *, postgres: bool, runner: str, workers: int):
        from cordon.sandbox.aws import AwsSandbox
        from cordon.sandbox.prefect_server import PrefectServer
        from cordon.sandbox.slack_standin import SlackStandIn
        from tests.helpers import config_with_approvers  # the Slack path needs approvers configured

        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        prefect_db, self.db_url = None, f"sqlite:///{self.tmp}/ledger.db"
        self.databases: list[str] = []
        if postgres:
            prefect_db, self.db_url = new_postgres_database("asyncpg"), new_postgres_database("psycopg")
            self.databases = [prefect_db, self.db_url]
        print(f"ledger {self.db_url}; files in {self.tmp}", flush=True)
        self.server = PrefectServer(self.tmp / "prefect", database_url=prefect_db).start(timeout=180)
        self.slack = SlackStandIn(channels={"cordon-approvals": CHANNEL})
        slack_url = self.slack.start()
        self.aws = AwsSandbox().start()
        self.env = {**self.server.env, "CORDON_DATABASE_URL": self.db_url, "CORDON_SLACK_BOT_TOKEN": "xoxb-test",
                    "CORDON_SLACK_API_URL": slack_url, "PREFECT_LOGGING_LEVEL": "WARNING", "CORDON_RUNNER": runner,
                    # actor_access off (on by default): one case per POSTed record, as the figures in
                    # docs/architecture.md were measured; each record's actor key would otherwise be a
                    # second case of its incident, in the same request (bench_storm.py shares this)
                    "CORDON_CONFIG": str(config_with_approvers(self.tmp, actor_access=False)),
                    "CORDON_SLACK_SIGNING_SECRET": SECRET,
                    "CORDON_WEBHOOK_TOKEN": TOKEN}
        os.environ.update(self.env)
        self.n_workers = workers
        self.workers: list = []
        self.serve: subprocess.Popen | None = None
        self.base = ""

    def start(self, http) -> Stack:
        from prefect.client.orchestration import get_client

        from cordon.sandbox.prefect_server import Worker, free_port

        self.workers = [Worker(self.env, self.tmp / f"worker{n}.log", cwd=REPO).start()
                        for n in range(self.n_workers)]
        port = free_port()
        self.serve = subprocess.Popen(
            [sys.executable, "-c", SERVE, json.dumps(self.aws.cloud_params()), str(port)],
            env={**os.environ, **self.env}, cwd=REPO, stdout=open(self.tmp / "serve.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if http.get(f"{self.base}/healthz").status_code == 200:
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.2)
        with get_client(sync_client=True) as client:
            while True:
                try:
                    client.read_deployment_by_name("respond/respond")
                    break
                except Exception:  # noqa: BLE001 - the worker has not registered it yet
                    time.sleep(0.2)
        return self

    def cordon_pids(self) -> list[int]:
        """``cordon serve`` and the workers."""
        return [p for p in [self.serve.pid if self.serve else None, *(w.proc.pid for w in self.workers)] if p]

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        if self.serve is not None and self.serve.poll() is None:
            os.killpg(self.serve.pid, signal.SIGTERM)
            self.serve.wait(15)
        self.aws.stop()
        self.slack.stop()
        self.server.stop()
        for url in self.databases:
            try:
                drop_postgres_database(url)
            except Exception as exc:  # noqa: BLE001 - say so, the figures stand
                print(f"could not drop {url}: {exc}", flush=True)


def make_event(template: dict, i: int, key: str) -> dict:
    event = json.loads(json.dumps(template))
    actor = f"intruder-{i}"
    event["userIdentity"].update({"arn": f"arn:aws:iam::111122223333:user/{actor}", "userName": actor,
                                  "principalId": f"AIDABENCH{i:011d}", "accessKeyId": f"AKIAACTOR{i:011d}"})
    event["requestParameters"]["userName"] = f"build-bot-{i}"
    event["responseElements"]["accessKey"].update({"accessKeyId": key, "userName": f"build-bot-{i}"})
    event["eventID"] = f"bench-{i}-{time.time_ns()}"
    return event


def count_task_runs(http, api_url: str, settle_s: float = 10.0) -> int:
    """Task runs the Prefect server has recorded (``POST /task_runs/count``), once the count stops
    growing (task runs reach the server as events, recorded a moment later) or ``settle_s`` passed."""
    last, deadline = -1, time.monotonic() + settle_s
    while time.monotonic() < deadline:
        count = int(http.post(f"{api_url}/task_runs/count", json={}).json())
        if count == last:
            return count
        last = count
        time.sleep(1.0)
    return last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--runner", choices=("warm", "process"), default="warm")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--postgres", action="store_true",
                    help="Prefect's database and the ledger on PostgreSQL at 127.0.0.1:5432 (as deployed), "
                         "each in a new database; default SQLite")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    import httpx

    from cordon.audit.ledger import Ledger
    from cordon.providers.aws.cloudtrail import detection_from_cloudtrail
    from cordon.sandbox.slack_standin import block_actions_payload

    stack = Stack("cordon-bench-", postgres=args.postgres, runner=args.runner, workers=args.workers)
    aws, slack = stack.aws, stack.slack
    http = httpx.Client(timeout=30)
    ledger = Ledger(stack.db_url)
    template = json.loads((REPO / "examples" / "cloudtrail-create-access-key.json").read_text())
    match = types.SimpleNamespace(id="bench", title="bench", path="bench", level="high", technique_ids=["T1098.001"])
    asked: list[float] = []
    verified: list[float] = []
    try:
        base = stack.start(http).base
        cpu0 = 0.0
        groups = {"prefect server": [stack.server.proc.pid], "cordon serve": [stack.serve.pid],
                  "workers": [w.proc.pid for w in stack.workers]}
        split0: dict[str, float] = {}
        for i in range(args.cases + 1):  # case 0 warms every process up and is not counted
            if i == 1:
                split0 = {g: sum(tree_cpu(p) for p in ps) for g, ps in groups.items()}
                cpu0 = sum(split0.values())
            key = f"AKIABENCH{i:011d}"
            event = make_event(template, i, key)
            aws.seed_from_detection(detection_from_cloudtrail(event, match, "bench", i))
            body = json.dumps(event).encode()
            t0 = time.monotonic()
            r = http.post(f"{base}/webhook/detections", content=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 202, r.text
            case_id = r.json()["cases"][0]["case_id"]
            msg = None
            while msg is None:
                msg = next((m for m in slack.messages(CHANNEL) if case_id in json.dumps(m["blocks"])), None)
                if msg is None:
                    time.sleep(0.01)
            t1 = time.monotonic()
            time.sleep(rng.uniform(0, 3))  # a person reads, then clicks
            while not list(ledger.records(case_id=case_id, kind_prefix="approval.asked")):
                time.sleep(0.01)
            payload = block_actions_payload(msg, CHANNEL, "cordon_approve", user_id="U0ALICE01",
                                            user_name="alice", response_url=slack.response_url(CHANNEL, msg["ts"]))
            click = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
            t2 = time.monotonic()
            r = http.post(f"{base}/slack/interactions", content=click, headers=signed(click))
            assert r.status_code == 200, r.text
            while not list(ledger.records(case_id=case_id, kind_prefix="verify.")):
                time.sleep(0.01)
            t3 = time.monotonic()
            if i > 0:
                asked.append(t1 - t0)
                verified.append(t3 - t2)
            print(f"case {i:3d}: received->asked {t1 - t0:5.2f} s   approved->verified {t3 - t2:5.2f} s",
                  flush=True)
        split1 = {g: sum(tree_cpu(p) for p in ps) for g, ps in groups.items()}
        cpu1 = sum(split1.values())
        task_runs = count_task_runs(http, stack.server.api_url)
    finally:
        stack.stop()
    n = len(asked)
    out = {"cases": n, "runner": args.runner, "workers": args.workers, "postgres": args.postgres,
           "asked_p50_s": round(statistics.median(asked), 3), "asked_p95_s": round(pct(asked, 95), 3),
           "verified_p50_s": round(statistics.median(verified), 3), "verified_p95_s": round(pct(verified, 95), 3),
           "cpu_s_per_case": round((cpu1 - cpu0) / n, 3), "task_runs_per_case": round(task_runs / (n + 1), 2)}
    print()
    print(f"{n} cases, {args.workers} worker(s), runner {args.runner}")
    for name, xs in (("received -> approval asked", asked), ("approved -> containment verified", verified)):
        print(f"{name:34s} p50 {statistics.median(xs):5.2f} s   p95 {pct(xs, 95):5.2f} s   max {max(xs):5.2f} s")
    print(f"CPU per case (Cordon's processes + Prefect server) {out['cpu_s_per_case']:.2f} s: "
          + ", ".join(f"{g} {(split1[g] - split0[g]) / n:.2f}" for g in split1))
    print(f"task runs per case (Prefect server's record, all {n + 1} cases) {out['task_runs_per_case']:.2f}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
