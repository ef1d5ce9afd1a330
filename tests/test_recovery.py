"""Stranded cases are found from the ledger and run again, exactly once each.

* Kill test (the CLI path): ``cordon respond FILE --approve auto`` answers N CreateAccessKey
  events against an AWS sandbox that lives in its own process (moto's server with its request
  recorder on, so every ``UpdateAccessKey`` that reached AWS is counted); the test SIGKILLs the
  whole process group at a random point of containment (after the k-th ``step.started``, plus 0 to
  150 ms), sometimes kills the rerun too, then reruns it. Every case must end closed, every key
  Inactive, each key deactivated by exactly one ``UpdateAccessKey`` call, no stranded case, and
  the chain must verify. Trials: ``CORDON_KILL_TRIALS`` (default 2), seed ``CORDON_KILL_SEED``.
* The worker's sweep: after the CLI is killed, a real ``cordon worker`` (Prefect server in a
  child process) sweeps: the stranded ``auto`` cases are submitted to the ``respond`` deployment;
  then the flow-run process and the worker are killed while a recovered run contains, a new
  worker's sweep finds the RUNNING run's process gone (``run.presumed_dead``) and runs it again.
* Liveness rules against real Prefect states, the claim race between processes, the webhook
  whose submit fails (503, ``run.submit_failed``, recovered at server start), and
  ``cordon audit list --stranded``.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from cordon.audit.ledger import Ledger
from cordon.config import load_config
from cordon.recovery import (
    DEPLOYMENT,
    check_case,
    claim_attempt,
    find_stranded,
    idempotency_key,
    process_alive,
    process_ref,
)
from cordon.sandbox.prefect_server import PrefectServer, free_port
from tests.helpers import config_with_approvers, one_credential_config, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "cloudtrail-create-access-key.json"
ACCOUNT = "111122223333"
FIGURES: Counter = Counter()

# The AWS sandbox as a process of its own, so it outlives the `cordon respond` the test kills:
# moto's server (request recorder on) + Cordon's stand-in, seeded from the events' detections.
SANDBOX_SCRIPT = r"""
import json, sys, urllib.request
from cordon.config import load_config
from cordon.detections.errors import Rejected
from cordon.detections.intake import read_inputs
from cordon.detections.pipeline import detect
from cordon.sandbox.aws import AwsSandbox
from cordon.sigma import RuleSet

sb = AwsSandbox().start()
for det in detect(read_inputs([sys.argv[1]]), RuleSet.load(load_config().rules_dir)):
    if not isinstance(det, Rejected) and not det.suppressed:
        sb.seed_from_detection(det)
req = urllib.request.Request(sb.endpoint_url + "/moto-api/recorder/reset-recording", data=b"", method="POST")
urllib.request.urlopen(req).read()
print(json.dumps({"env": sb.endpoint_env(), "moto": sb.endpoint_url}), flush=True)
sys.stdin.read()
sb.stop()
"""


def write_events(path: Path, n: int) -> dict[str, str]:
    """``n`` CreateAccessKey events for ``n`` users and keys; returns ``{key id: user}``."""
    base = json.loads(EXAMPLE.read_text())
    tag = uuid.uuid4().hex[:8].upper()
    keys = {}
    with path.open("w") as fh:
        for i in range(n):
            ev = json.loads(json.dumps(base))
            ev["eventID"] = str(uuid.uuid4())
            key, user = f"AKIA{tag}{i:08d}", f"bot-{tag.lower()}-{i}"
            ev["responseElements"]["accessKey"].update(accessKeyId=key, userName=user)
            ev["requestParameters"]["userName"] = user
            fh.write(json.dumps(ev) + "\n")
            keys[key] = user
    return keys


class SandboxProcess:
    """The AWS sandbox in a child process (see ``SANDBOX_SCRIPT``)."""

    def __init__(self, events: Path, workdir: Path):
        self.recording = workdir / "moto-recording.jsonl"
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.proc = subprocess.Popen([sys.executable, "-c", SANDBOX_SCRIPT, str(events)], env=env, cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(workdir / "sandbox.log", "wb"),  # noqa: SIM115
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError((workdir / "sandbox.log").read_text()[-2000:])
        info = json.loads(line)
        self.env: dict[str, str] = info["env"]
        self.moto: str = info["moto"]

    def iam(self):
        client = boto3.client("iam", endpoint_url=self.moto, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.meta.events.register("before-send.iam", lambda request, **_: request.headers.__setitem__(
            "x-moto-account-id", ACCOUNT))
        return client

    def key_status(self, keys: dict[str, str]) -> dict[str, str]:
        iam = self.iam()
        return {k: next(m["Status"] for m in iam.list_access_keys(UserName=u)["AccessKeyMetadata"]
                        if m["AccessKeyId"] == k) for k, u in keys.items()}

    def deactivations(self) -> Counter:
        """``UpdateAccessKey Status=Inactive`` requests that reached moto, per key (its recorder)."""
        calls: Counter = Counter()
        if not self.recording.exists():
            return calls
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode("utf-8", "replace")
            q = urllib.parse.parse_qs(body)
            if q.get("Action") == ["UpdateAccessKey"] and q.get("Status") == ["Inactive"]:
                calls[q["AccessKeyId"][0]] += 1
        return calls

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def cli_env(sandbox: SandboxProcess, db: Path, prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "AWS_"))}
    # each key's case alone (tests.helpers.one_credential): the kill and recovery count steps per key
    return {**env, **sandbox.env, "CORDON_DATABASE_URL": f"sqlite:///{db}", "PREFECT_HOME": str(prefect_home),
            "CORDON_CONFIG": str(one_credential_config(db.parent / "one-credential-config")),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}


def respond_cli(env: dict[str, str], events: Path, log: Path) -> subprocess.Popen:
    """``cordon respond EVENTS --approve auto --output json`` (no --sandbox: the AWS endpoints
    come from the environment, like real AWS), in its own process group."""
    return subprocess.Popen([str(BIN / "cordon"), "respond", str(events), "--approve", "auto", "--output", "json"],
                            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=open(log.with_suffix(".err"), "wb"), start_new_session=True)  # noqa: SIM115


def count(db: Path, kind: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM ledger WHERE kind = ?", (kind,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def kill_during_containment(proc: subprocess.Popen, db: Path, rng: random.Random, n: int) -> dict[str, Any]:
    """SIGKILL ``proc``'s group once the k-th ``step.started`` (k random in 1..n, counted from
    now) is in the ledger, plus a random 0-150 ms (a step takes about 110 ms here: reading the
    key, ``UpdateAccessKey``, reading it again, recording); returns where it was killed."""
    base = count(db, "step.started")
    k = rng.randint(1, n)
    delay = rng.choice([0.0, rng.uniform(0, 0.15), rng.uniform(0.05, 0.15)])
    wait_for(lambda: count(db, "step.started") >= base + k or proc.poll() is not None, 300,
             f"containment step {k} to start", interval=0.01)  # polled closely: the kill must land in the step
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    return {"k": k, "delay": round(delay, 3), "killed": alive}


def assert_recovered(ledger: Ledger, sandbox: SandboxProcess, keys: dict[str, str]) -> dict[str, int]:
    """Every case closed (contained), every key Inactive, exactly one effective deactivation per
    key, nothing stranded, the chain intact. Returns figures."""
    cases = ledger.cases()
    assert len(cases) == len(keys)
    assert {c["status"] for c in cases} == {"contained"}, [(c["case_id"], c["status"]) for c in cases]
    assert find_stranded(ledger) == []
    assert set(sandbox.key_status(keys).values()) == {"Inactive"}
    calls = sandbox.deactivations()
    assert dict(calls) == {k: 1 for k in keys}, calls  # exactly one UpdateAccessKey reached AWS per key
    interrupted = 0
    for case in cases:
        recs = list(ledger.records(case_id=case["case_id"]))
        contained = [r for r in recs if r.kind == "action.contained"]
        already = [r for r in recs if r.kind == "action.already_contained"]
        assert len(contained) <= 1, [r.payload for r in contained]
        if not contained:  # the call was made by a run killed before it could record the result:
            # the first execution to find the key already Inactive says which one was interrupted
            # (later reruns find that step closed by it and say nothing)
            assert already and already[0].payload.get("interrupted"), [(r.kind, r.payload) for r in recs][-10:]
            interrupted += 1
        assert recs[-1].kind == "case.closed" or any(r.kind == "case.closed" for r in recs)
    assert ledger.verify().ok
    flagged = [r for r in ledger.records(kind_prefix="action.") if r.payload.get("interrupted")]
    return {"cases": len(cases), "double_containments": sum(1 for v in calls.values() if v > 1),
            "steps_interrupted_then_rerun": len(flagged), "contained_by_interrupted_run": interrupted}


# -- the kill test (CLI path) -----------------------------------------------------------------
def test_kill_9_during_containment_then_rerun_contains_each_key_once(tmp_path):
    trials = int(os.environ.get("CORDON_KILL_TRIALS", "2"))
    seed = int(os.environ.get("CORDON_KILL_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    n = 6
    print(f"\nkill test: seed {seed}, {trials} trial(s) of {n} cases")
    for trial in range(trials):
        work = tmp_path / f"trial{trial}"
        work.mkdir()
        events = work / "events.jsonl"
        keys = write_events(events, n)
        sandbox = SandboxProcess(events, work)
        try:
            db = work / "ledger.db"
            env = cli_env(sandbox, db, work / "prefect")
            kills = []
            run = respond_cli(env, events, work / "run0.out")
            kills.append(kill_during_containment(run, db, rng, n))
            ledger = Ledger(f"sqlite:///{db}")
            stranded = find_stranded(ledger)
            FIGURES["stranded_after_kill"] += len(stranded)
            # every case the kill left unfinished is found stranded (a late kill may leave none), or,
            # for the cases of one actor's incident, their lead is: its next run answers them too
            unfinished = {c["case_id"] for c in ledger.cases() if c["status"] != "contained"}
            leads = {c.case_id for c in stranded}
            waiting = {cid for cid in unfinished - leads
                       if check_case(ledger, ledger.case(cid)).lead_case_id in leads}
            assert leads <= unfinished and unfinished == leads | waiting
            if trial % 2 == 1:  # kill the rerun too
                run = respond_cli(env, events, work / "run1.out")
                kills.append(kill_during_containment(run, db, rng, max(1, len(find_stranded(ledger)))))
            if trial == 0:  # the ledger says which cases are stranded, and why
                listed = subprocess.run([str(BIN / "cordon"), "audit", "list", "--stranded", "--output", "json"],
                                        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
                assert listed.returncode == 0, listed.stderr
                rows = [json.loads(line) for line in listed.stdout.splitlines()]
                assert sorted(r["case_id"] for r in rows) == sorted(c.case_id for c in find_stranded(ledger))
                # a case opened but killed before its run was asked for has no mode yet
                assert all((r["mode"] == "auto" or (r["mode"] is None and "no run was ever requested"
                                                    in r["reason"])) and "is gone" in r["reason"]
                           for r in rows), rows
            final = respond_cli(env, events, work / "final.out")
            assert final.wait(600) == 0, (work / "final.err").read_text()[-3000:]
            outcome = assert_recovered(ledger, sandbox, keys)
            rerun = [json.loads(line) for line in (work / "final.out").read_text().splitlines()]
            assert rerun[-1]["summary"]["failed"] == 0, rerun[-1]
            rerun = [doc for doc in rerun if "case_id" in doc]
            assert {s["status"] for s in rerun} <= {"contained", "joined_open_case"}
            attempts = [r.payload["attempt"] for r in ledger.records(kind_prefix="run.requested")]
            print(f"  trial {trial}: kills {kills}, stranded after first kill {len(stranded)}, "
                  f"max attempt {max(attempts)}, {outcome}")
            FIGURES["trials"] += 1
            FIGURES["kills"] += sum(1 for k in kills if k["killed"])
            for key, value in outcome.items():
                FIGURES[key] += value
            FIGURES["stranded_at_end"] += len(find_stranded(ledger))
        finally:
            sandbox.stop()
    print(f"kill test figures: {dict(FIGURES)}")


# -- the worker's sweep -------------------------------------------------------------------------
def _flow_state(run_id: str) -> str | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(run_id)
    return fr.state.type.value if fr.state else None


def _deployments_ready() -> bool:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name("respond/respond")
            client.read_deployment_by_name("approval-sweeper/sweeper")
        return True
    except Exception:  # noqa: BLE001 - not served yet
        return False


def _sweep(log: Path) -> None:
    """Run the worker's sweeper deployment once (on the worker) and wait for it."""
    from prefect.deployments import run_deployment

    fr = run_deployment("approval-sweeper/sweeper", timeout=0, as_subflow=False)
    state = wait_for(lambda: (s := _flow_state(str(fr.id))) in ("COMPLETED", "FAILED", "CRASHED") and s, 180,
                     "the sweep to finish")
    assert state == "COMPLETED", log.read_text(errors="replace")[-3000:]


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "cordon"), "worker", "--sweep-every", "3600"], env=env, cwd=REPO,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def test_worker_sweep_recovers_cli_cases_and_runs_whose_worker_died(tmp_path):
    seed = int(os.environ.get("CORDON_KILL_SEED", str(int(time.time()))))
    print(f"CORDON_KILL_SEED={seed}")
    rng = random.Random(seed)
    n = 4
    events = tmp_path / "events.jsonl"
    keys = write_events(events, n)
    sandbox = SandboxProcess(events, tmp_path)
    server = None
    workers: list[subprocess.Popen] = []
    try:
        db = tmp_path / "ledger.db"
        env = cli_env(sandbox, db, tmp_path / "prefect-cli")
        run = respond_cli(env, events, tmp_path / "run0.out")
        kill_during_containment(run, db, rng, 2)
        ledger = Ledger(f"sqlite:///{db}")
        stranded = {c.case_id for c in find_stranded(ledger)}
        assert stranded

        server = PrefectServer(tmp_path / "prefect").start()
        wenv = {**env, **server.env, "PREFECT_LOGGING_LEVEL": "INFO",
                # cordon worker serves the Slack path too: it refuses to start without approvers
                "CORDON_CONFIG": str(config_with_approvers(tmp_path / "cfg")),
                "CORDON_RECOVERY_START_GRACE_SECONDS": "20"}
        wenv.pop("PREFECT_HOME", None)
        wenv["PREFECT_HOME"] = str(server.home)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: server.api_url}):
            log = tmp_path / "worker.log"
            workers.append(_worker(wenv, log))
            wait_for(_deployments_ready, 120, "the worker to serve respond and the sweeper")
            before = {r.run_id for r in ledger.records(kind_prefix="run.submitted")}
            _sweep(log)
            submitted = [r for r in ledger.records(kind_prefix="run.submitted") if r.run_id not in before]
            assert {r.case_id for r in submitted} == stranded  # every stranded case, once
            assert all(r.payload["attempt"] >= 2 for r in submitted)
            assert all(r.payload["idempotency_key"] == idempotency_key(r.case_id, r.payload["attempt"])
                       for r in submitted)
            # the worker (and the process running a recovered run) die while it contains
            recovered_runs = {r.run_id for r in submitted}
            wait_for(lambda: any(r.run_id in recovered_runs for r in ledger.records(kind_prefix="step.started")),
                     240, "a recovered run to start containing")
            victims = {r.payload["by"]["pid"] for r in ledger.records(kind_prefix="run.process")
                       if r.run_id in recovered_runs}
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.killpg(workers[0].pid, signal.SIGKILL)
            workers[0].wait(30)
            # a warm worker is fast: a recovered run may have closed its case before the kill landed
            closed_runs = {r.run_id for r in ledger.records(kind_prefix="case.closed")}
            started_runs = {r.run_id for r in ledger.records(kind_prefix="run.process")}
            interrupted = (recovered_runs & started_runs) - closed_runs
            # a new worker's sweep runs the dead ones again (and nothing that completed)
            workers.append(_worker(wenv, log))
            wait_for(_deployments_ready, 120, "the new worker")
            # sweeps keep coming, as --sweep-every does in production: a run the dead worker claimed
            # (PENDING) but never started is stranded only once the start grace has passed
            deadline = time.monotonic() + 300
            while not all(c["status"] == "contained" for c in ledger.cases()):
                assert time.monotonic() < deadline, [(c["case_id"], c["status"]) for c in ledger.cases()]
                _sweep(log)
                time.sleep(5)
            outcome = assert_recovered(ledger, sandbox, keys)
            dead = list(ledger.records(kind_prefix="run.presumed_dead"))
            crashed = [r for r in ledger.records(kind_prefix="run.error")]
            print(f"\nsweep test: {len(stranded)} stranded after the CLI kill, {len(submitted)} submitted by the "
                  f"sweep, {len(victims)} run process(es) killed, presumed dead {len(dead)}, run.error "
                  f"{len(crashed)}, {len(interrupted)} run(s) interrupted by the kill, {outcome}")
            if interrupted:
                assert dead or crashed  # the killed run was found dead, by the ledger or by Prefect
            for r in dead:
                assert _flow_state(r.payload["flow_run_id"]) == "CRASHED"
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
                try:
                    w.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(w.pid, signal.SIGKILL)
        if server is not None:
            server.stop()
        sandbox.stop()


# -- liveness rules, claims ----------------------------------------------------------------
def test_process_alive_reads_the_process_table():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ref = process_ref(child.pid)
        assert process_alive(ref) is True
        assert process_alive({**ref, "pid_started": "1"}) is False  # same pid, another process (reused)
        assert process_alive({**ref, "host": "elsewhere.example"}) is None  # cannot tell
        child.kill()
        wait_for(lambda: process_alive(ref) is False, 10, "the zombie to count as dead")  # not reaped yet
    finally:
        child.kill()
        child.wait()
    assert process_alive(ref) is False
    assert process_alive(process_ref()) is True


def _claim(url: str, case_id: str, barrier, results) -> None:
    ledger = Ledger(url)
    barrier.wait()
    results.put(claim_attempt(ledger, case_id, 2, mode="auto", where="in_process", cloud={}, slack=None,
                              reason="test"))


def test_only_one_process_claims_an_attempt(ledger_url):
    ledger = Ledger(ledger_url)
    opened = ledger.open_case("aws|1|aws_access_key|AKIACLAIM", "d1", {"provider": "aws"}, "aws-access-key-created")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(ledger_url, opened.case_id, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    won = [results.get(timeout=5) for _ in procs]
    assert won.count(True) == 1, won
    owners = [r for r in ledger.records(case_id=opened.case_id, kind_prefix="run.requested")]
    assert len(owners) >= 1 and all(r.payload["attempt"] == 2 for r in owners)


@pytest.fixture
def harness_deployment(prefect_server):
    """The ``respond`` flow registered as ``respond/respond`` on Prefect's test server (no worker:
    its runs stay SCHEDULED)."""
    from cordon.flows.respond import respond

    respond.to_deployment(name="respond").apply()


def _case_with_run(ledger: Ledger, key: str, state) -> tuple[dict, str]:
    """A case whose attempt-1 deployment run is a real Prefect flow run in ``state``."""
    from prefect.client.orchestration import get_client

    from cordon.recovery import process_ref as me

    opened = ledger.open_case(key, key, {"provider": "aws"}, "aws-access-key-created")
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("respond/respond")
        fr = client.create_flow_run_from_deployment(dep.id, parameters={"case_id": opened.case_id,
                                                                        "playbook": "aws-access-key-created"})
        if state is not None:
            client.set_flow_run_state(fr.id, state, force=True)
    ledger.append("run.requested", {"attempt": 1, "mode": "slack", "where": DEPLOYMENT, "by": me()},
                  case_id=opened.case_id)
    ledger.append("run.submitted", {"attempt": 1, "flow_run_id": str(fr.id)}, case_id=opened.case_id,
                  run_id=str(fr.id))
    return ledger.case(opened.case_id), str(fr.id)


def test_liveness_follows_the_prefect_state_and_the_running_process(tmp_path, harness_deployment):
    from prefect.states import Cancelled, Completed, Crashed, Failed, Paused, Running

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    expect = {"scheduled": (None, True), "paused": (Paused(), True), "completed": (Completed(), False),
              "failed": (Failed(), False), "crashed": (Crashed(), False), "cancelled": (Cancelled(), False)}
    for name, (state, live) in expect.items():
        case, run_id = _case_with_run(ledger, f"aws|1|aws_access_key|AKIA{name.upper()}", state)
        check = check_case(ledger, case)
        assert check.live is live, (name, check)
        assert check.flow_run_id == run_id
    # RUNNING: live while the process in its run.process record is; a dead one is stranded
    case, run_id = _case_with_run(ledger, "aws|1|aws_access_key|AKIARUNNING", Running())
    assert check_case(ledger, case).live is True  # no process recorded yet: starting (grace)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ledger.append("run.process", {"attempt": 1, "by": process_ref(child.pid)}, case_id=case["case_id"],
                  run_id=run_id)
    assert check_case(ledger, case).live is True
    child.kill()
    child.wait()
    check = check_case(ledger, case)
    assert check.live is False and "is gone" in check.reason
    # a closed case is never stranded, whatever its run says
    ledger.set_case(case["case_id"], status="contained")
    assert check_case(ledger, ledger.case(case["case_id"])).live is True
    # Prefect unreachable: unknown (listed as such), and nothing is done
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        unknown = check_case(ledger, ledger.case(find_case(ledger, "AKIAPAUSED")))
        assert unknown.live is None and "cannot read run" in unknown.reason
        assert find_stranded(ledger) == []
        assert [c.case_id for c in find_stranded(ledger, include_unknown=True)] == [
            c["case_id"] for c in ledger.cases()[::-1] if c["status"] != "contained"]


def find_case(ledger: Ledger, key_suffix: str) -> str:
    return next(c["case_id"] for c in ledger.cases() if c["case_key"].endswith(key_suffix))


def test_webhook_submit_failure_is_recorded_answered_503_and_recovered_at_server_start(tmp_path, monkeypatch,
                                                                                      harness_deployment):
    from fastapi.testclient import TestClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from cordon.server.wiring import build_app

    db = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", db)
    monkeypatch.setenv("CORDON_CONFIG", str(config_with_approvers(tmp_path)))  # build_app needs approvers
    ledger = Ledger(db)
    body = EXAMPLE.read_bytes()
    headers = {"Authorization": "Bearer tok-1234567"}
    dead = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: dead}):
        app = build_app(signing_secret="s" * 32, ledger=ledger, webhook_token="tok-1234567", cloud={})
        client = TestClient(app)  # no lifespan: no recovery at start here
        resp = client.post("/webhook/detections", content=body, headers=headers)
        assert resp.status_code == 503 and resp.headers["retry-after"] == "30", resp.text
        (case,) = resp.json()["cases"]
        assert case["status"] == "submit_failed" and "Connect" in case["error"]
        (failed,) = ledger.records(case_id=case["case_id"], kind_prefix="run.submit_failed")
        assert failed.payload["attempt"] == 1
        (stranded,) = find_stranded(ledger)
        assert stranded.case_id == case["case_id"] and "submitting attempt 1 failed" in stranded.reason
        # the sender's retry joins the case, which still cannot be submitted: 503 again, not "joined"
        again = client.post("/webhook/detections", content=body, headers=headers)
        assert again.status_code == 503 and again.json()["cases"][0]["status"] == "submit_failed"
    # Prefect is back: a replica starting up submits the stranded case (in the background)
    app = build_app(signing_secret="s" * 32, ledger=ledger, webhook_token="tok-1234567", cloud={})
    with TestClient(app) as client:
        wait_for(lambda: list(ledger.records(case_id=case["case_id"], kind_prefix="run.submitted")), 60,
                 "recovery at server start to submit the case")
        (submitted,) = ledger.records(case_id=case["case_id"], kind_prefix="run.submitted")
        assert submitted.payload["attempt"] == 3
        assert submitted.payload["idempotency_key"] == f"{case['case_id']}:attempt-3"
        assert _flow_state(submitted.payload["flow_run_id"]) == "SCHEDULED"
        assert find_stranded(ledger) == []
        # a resend now joins a case whose run is live: nothing is submitted again
        resp = client.post("/webhook/detections", content=body, headers=headers)
        assert resp.status_code == 202 and resp.json()["cases"] == [] and resp.json()["joined"]
    assert len(list(ledger.records(case_id=case["case_id"], kind_prefix="run.submitted"))) == 1
    # the flow run's parameters are a case reference: no detection
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as pc:
        params = pc.read_flow_run(submitted.payload["flow_run_id"]).parameters
    assert set(params) == {"case_id", "playbook", "approval", "cloud", "slack", "attempt"}


def _dead_process() -> dict[str, Any]:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ref = process_ref(child.pid)
    child.wait()
    return ref


def test_recovery_gives_up_after_max_attempts_once_and_says_so(tmp_path, monkeypatch):
    from cordon.engine import Responder
    from cordon.recovery import IN_PROCESS, recovered_by

    monkeypatch.setenv("CORDON_RECOVERY_MAX_ATTEMPTS", "2")
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    # the example's key alone: one stranded case (tests.helpers.one_credential)
    responder = Responder(config=load_config(one_credential_config(tmp_path / "config")), ledger=ledger)
    (ticket,) = responder.intake([EXAMPLE]).cases
    for attempt in (1, 2):  # two runs started and died with their process
        dead = _dead_process()
        ledger.append("run.requested", {"attempt": attempt, "mode": "auto", "where": IN_PROCESS, "by": dead,
                                        "cloud": {}}, case_id=ticket.case_id)
        ledger.append("run.process", {"attempt": attempt, "by": dead}, case_id=ticket.case_id, run_id=f"r{attempt}")
    (check,) = find_stranded(ledger)
    assert check.attempt == 2 and check.started == 2 and "is gone" in check.reason
    (rec,) = responder.recover_stranded(where=IN_PROCESS, modes={"auto"})
    assert rec.action == "gave_up"
    (again,) = responder.recover_stranded(where=IN_PROCESS, modes={"auto"})
    assert again.action == "skipped" and "gave up" in again.reason
    assert len(list(ledger.records(kind_prefix="recovery.gave_up"))) == 1
    (still,) = find_stranded(ledger)  # left for a person, and listed
    assert still.gave_up and recovered_by(still).startswith("nobody")


def _suspended_case(ledger: Ledger, key: str, process: dict[str, Any]) -> tuple[str, str]:
    """A Slack case whose deployment run ran in ``process`` up to its approval request (and
    suspended); returns ``(case_id, run_id)``."""
    opened = ledger.open_case(key, key, {"provider": "aws"}, "aws-access-key-created")
    case_id, run_id = opened.case_id, f"run-{key[-8:].lower()}"
    ledger.append("run.requested", {"attempt": 1, "mode": "slack", "where": DEPLOYMENT, "by": process_ref()},
                  case_id=case_id)
    ledger.append("run.submitted", {"attempt": 1, "flow_run_id": run_id}, case_id=case_id, run_id=run_id)
    ledger.append("run.process", {"attempt": 1, "by": process}, case_id=case_id, run_id=run_id)
    ledger.append("approval.asked", {"plan_hash": "p1"}, case_id=case_id, run_id=run_id)
    return case_id, run_id


def test_a_run_just_resumed_is_starting_not_stranded(tmp_path, monkeypatch):
    """The sweep's race: a suspended deployment run is resumed (expiry, a click) and picked up
    (PENDING, then RUNNING) seconds after the process that suspended it wrote ``run.process`` and
    exited, before its new process records itself. The old process says nothing of the resumed
    run: it is starting (grace); stranded only when it never starts, or its own process dies."""
    from datetime import UTC, datetime, timedelta

    from cordon.recovery import RunState, last_resume

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    case_id, run_id = _suspended_case(ledger, "aws|1|aws_access_key|AKIARESUMED", _dead_process())
    state = RunState("PENDING", "Submitting", datetime.now(UTC))  # within seconds of the run.process

    def check(st: RunState | None = None):
        return check_case(ledger, ledger.case(case_id), state_of=lambda _: st or state)

    def resume_mark():
        return last_resume(list(ledger.records(case_id=case_id)), run_id)

    # no resume recorded: the process running it is gone, a crash (recovery runs it again)
    assert resume_mark() is None
    crashed = check()
    assert crashed.live is False and "is gone" in crashed.reason
    # a claim whose delivery failed resumed nothing
    failed = ledger.append("approval.decision", {"decision": "expired"}, case_id=case_id, run_id=run_id)
    ledger.append("approval.resume_failed", {"decision_seq": failed.seq, "resumed": False}, case_id=case_id,
                  run_id=run_id)
    assert resume_mark() is None and check().live is False
    # the sweep's claim (written before Prefect is asked to resume), then its resume
    claim = ledger.append("approval.decision", {"decision": "expired"}, case_id=case_id, run_id=run_id)
    assert resume_mark().seq == claim.seq
    being = check()
    assert being.live is True and "after its resume" in being.reason, being
    resumed = ledger.append("approval.decision_received", {"decision_seq": claim.seq, "resumed": True},
                            case_id=case_id, run_id=run_id)
    assert resume_mark().seq == resumed.seq
    now = datetime.now(UTC)
    for st in (RunState("SCHEDULED", "Resuming", now), RunState("PENDING", "Submitting", now),
               RunState("RUNNING", "Running", now), RunState("PENDING", "Submitting", None)):
        assert check(st).live is True, (st, check(st))
    assert find_stranded(ledger, state_of=lambda _: state) == []
    # for the grace only: a resumed run whose process never records itself is judged as before
    # (a runner that claimed it and died before starting it: Prefect keeps it PENDING forever), even
    # while the case is not quiet (the staleness rule is for processes on other hosts, not for none)
    monkeypatch.setenv("CORDON_RECOVERY_START_GRACE_SECONDS", "10")
    late = check(RunState("PENDING", "Submitting", now - timedelta(seconds=30)))
    assert late.live is False and "no process recorded" in late.reason
    monkeypatch.delenv("CORDON_RECOVERY_START_GRACE_SECONDS")
    # the resumed run's own process: live while it runs, stranded when it dies (a crash after a resume)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ledger.append("run.process", {"attempt": 1, "by": process_ref(child.pid)}, case_id=case_id, run_id=run_id)
    running = RunState("RUNNING", "Running", datetime.now(UTC))
    assert check(running).live is True
    child.kill()
    child.wait()
    dead = check(running)
    assert dead.live is False and "is gone" in dead.reason
    assert [c.case_id for c in find_stranded(ledger, state_of=lambda _: running)] == [case_id]

    # the process that suspended it, still exiting when the run is picked up again: live
    other, other_run = _suspended_case(ledger, "aws|1|aws_access_key|AKIAEXITING", process_ref())
    claim = ledger.append("approval.decision", {"decision": "approve"}, case_id=other, run_id=other_run)
    ledger.append("approval.decision_received", {"decision_seq": claim.seq, "resumed": True}, case_id=other,
                  run_id=other_run)
    exiting = check_case(ledger, ledger.case(other), state_of=lambda _: RunState("PENDING", "Submitting", now))
    assert exiting.live is True and "before its resume" in exiting.reason, exiting
    # ... for the start grace only: a warm worker (cordon/runner.py) outlives the runs it executed, so
    # a resumed run another (dead) runner claimed and never started is stranded once the grace is over
    monkeypatch.setenv("CORDON_RECOVERY_START_GRACE_SECONDS", "0")
    claimed = check_case(ledger, ledger.case(other), state_of=lambda _: RunState("PENDING", "Submitting", now))
    assert claimed.live is False and "no process recorded" in claimed.reason, claimed


def test_who_may_run_a_stranded_case_again():
    from cordon.recovery import IN_PROCESS, RunCheck, servable

    def check(**kw: Any) -> RunCheck:
        return RunCheck(case_id="case-1", live=False, reason="gone", status="running", **kw)

    auto, slack = check(mode="auto", where=IN_PROCESS, cloud={}), check(mode="slack", where=DEPLOYMENT)
    assert servable(auto, modes={"auto"}, where=IN_PROCESS) is None
    assert servable(auto, modes={"slack", "auto"}, where=DEPLOYMENT) is None  # the sweep may
    assert "recorded with --approve slack" in servable(slack, modes={"auto"}, where=IN_PROCESS)
    unknown = check()  # its opener died before asking for a run: a person must approve
    assert "unknown" in servable(unknown, modes={"auto"}, where=IN_PROCESS)
    assert servable(unknown, modes={"slack", "auto"}, where=DEPLOYMENT) is None
    sandbox = check(mode="auto", where=IN_PROCESS, cloud={"sandbox": True})
    assert "sandbox" in servable(sandbox, modes={"auto"}, where=IN_PROCESS)
    assert servable(sandbox, modes={"auto"}, where=IN_PROCESS, stand_ins=True) is None
    assert "console" in servable(check(mode="console", where=IN_PROCESS), modes={"console", "slack"}, where=DEPLOYMENT)
