"""The warm runner (:mod:`cordon.runner`) against a real Prefect server: two runner processes
serve one deployment; every run is executed exactly once, both runners take runs (scale out),
and each run executes in its runner's own process (no process per run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from cordon.sandbox.prefect_server import PrefectServer
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[1]


def _state(client, run_id) -> str:
    return client.read_flow_run(run_id).state.type.value


def _start_runner(env: dict, log) -> subprocess.Popen:
    """``tests.warm_flows`` (a warm runner serving ``warm-probe/probe``) in its own session."""
    return subprocess.Popen([sys.executable, "-m", "tests.warm_flows"], env=env, cwd=REPO,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the runner's group, SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_two_warm_runners_execute_every_run_once_in_their_own_processes(tmp_path):
    server = PrefectServer(tmp_path / "prefect").start(timeout=180)
    runs_file = tmp_path / "runs.txt"
    runs_file.touch()
    env = {**os.environ, **server.env, "CORDON_TEST_RUNS_FILE": str(runs_file), "CORDON_RUNNER_SLOTS": "4",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    runners = [_start_runner(env, tmp_path / f"runner{i}.log") for i in range(2)]
    try:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            def ready() -> bool:
                try:
                    client.read_deployment_by_name("warm-probe/probe")
                    return True
                except Exception:  # noqa: BLE001 - not registered yet
                    return False

            wait_for(ready, 120, "the runners to register warm-probe/probe")
            # both runners polling (each prints its banner after registering, just before its first
            # poll): otherwise one runner alone may take every run before the other has started
            wait_for(lambda: all(b"warm runner serving" in (tmp_path / f"runner{i}.log").read_bytes()
                                 for i in range(2)), 120, "both runners to start polling")
            ids = [run_deployment("warm-probe/probe", parameters={"sleep": 1.0}, timeout=0, as_subflow=False).id
                   for _ in range(16)]
            wait_for(lambda: all(_state(client, i) == "COMPLETED" for i in ids), 180, "every run to complete")
        lines = [line.split() for line in runs_file.read_text().splitlines()]
        per_run = Counter(run for run, _ in lines)
        assert per_run == Counter({str(i): 1 for i in ids})  # each run executed once, none twice
        pids = {int(pid) for _, pid in lines}
        assert pids == {r.pid for r in runners}  # in the runners' own processes, and both took runs
    finally:
        for r in runners:
            _stop(r)
        server.stop()


def test_a_new_run_wakes_the_runner_through_the_event_stream_not_the_poll(tmp_path):
    """Both poll intervals at 10 minutes: only the ``prefect.flow-run.Scheduled`` event can make the
    runner take the run (and the test waits 60 s at most, far less than an interval)."""
    server = PrefectServer(tmp_path / "prefect").start(timeout=180)
    runs_file = tmp_path / "runs.txt"
    runs_file.touch()
    log = tmp_path / "runner.log"
    env = {**os.environ, **server.env, "CORDON_TEST_RUNS_FILE": str(runs_file), "PREFECT_LOGGING_LEVEL": "WARNING",
           "CORDON_RUNNER_POLL_SECONDS": "600", "CORDON_RUNNER_IDLE_POLL_SECONDS": "600"}
    runner = _start_runner(env, log)
    try:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        wait_for(lambda: b"listening to 1 deployment" in log.read_bytes(), 120, "the runner to subscribe")
        with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            for _ in range(2):  # the second after the runner has gone back to its 10-minute wait
                run_id = run_deployment("warm-probe/probe", parameters={"sleep": 0.0}, timeout=0,
                                        as_subflow=False).id
                wait_for(lambda rid=run_id: _state(client, rid) == "COMPLETED", 60, "the woken runner to run it")
        assert len(runs_file.read_text().splitlines()) == 2
    finally:
        _stop(runner)
        server.stop()
