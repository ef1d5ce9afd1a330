"""Schedules fire on a fresh install (issue 11): every deployment in ``prefect.yaml`` that has a
schedule gets runs from the Prefect server's *scheduler service*, not only the few made when the
deployment is created, and a ``process`` worker completes them.

Every part is real: ``prefect server start`` on a fresh PostgreSQL database (the production shape),
``prefect --no-prompt deploy --all --prefect-file`` run from a directory holding nothing but a copy
of ``prefect.yaml`` (only the schedules' intervals shortened, so the test takes about two minutes
rather than five), ``prefect worker start --pool cordon`` in yet another empty directory: the
deployments hold no path of this checkout, the worker imports the flows from the installed
package. Fails, for instance, with Prefect 3.8.8 on SQLAlchemy 2.1 (its scheduler raises
``InvalidRequestError: Can't evaluate bulk DML statement`` on every loop, so no run is scheduled
after the first pass). Skipped, with the reason, when no PostgreSQL server answers on
127.0.0.1:5432.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from cordon.sandbox.prefect_server import PrefectServer
from tests.dbs import POSTGRES_URL, postgres_unavailable
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: The test's schedule interval (s), instead of prefect.yaml's 60.
INTERVAL = 10
#: The server's scheduler settings: one loop every 5 s keeping at least 2 runs (and 10 s) ahead.
#: A single scheduling pass so creates 2 runs; more completed scheduled runs than that prove the
#: scheduler service kept scheduling after the deployment was created.
MIN_RUNS = 2
SCHEDULER = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": str(MIN_RUNS),
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": f"PT{INTERVAL}S",  # ISO 8601 duration
}
#: Completed scheduled runs to wait for per scheduled deployment (more than one pass makes).
NEEDED = MIN_RUNS + 2

pytestmark = pytest.mark.skipif(postgres_unavailable() is not None, reason=str(postgres_unavailable()))


def _admin_engine() -> sa.Engine:
    url = sa.engine.make_url(POSTGRES_URL).set(database="postgres")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def _scheduled_deployments(spec: dict) -> list[dict]:
    return [d for d in spec.get("deployments") or [] if d.get("schedules")]


@contextmanager
def _client(server: PrefectServer) -> Iterator:
    """Prefect's synchronous client talking to ``server``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        yield client


def _runs(server: PrefectServer, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client(server) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                     limit=200)


def test_every_scheduled_deployment_gets_scheduled_runs_that_complete(tmp_path):
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    scheduled = _scheduled_deployments(spec)
    assert scheduled, "prefect.yaml has no scheduled deployment (the sweeper should be one)"
    for dep in scheduled:  # the same deployments, fired more often
        for sched in dep["schedules"]:
            assert "interval" in sched, f"{dep['name']}: only interval schedules are shortened here: {sched}"
            sched["interval"] = INTERVAL
    deploy_dir = tmp_path / "deployer"  # no checkout here: only the deployment spec
    worker_dir = tmp_path / "worker"
    deploy_dir.mkdir()
    worker_dir.mkdir()
    (deploy_dir / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    name = "cordon_sched_" + uuid.uuid4().hex[:8]
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    pg = sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg", database=name)
    server = PrefectServer(tmp_path / "prefect", database_url=pg.render_as_string(hide_password=False),
                           settings=SCHEDULER)
    worker = None
    try:
        server.start(timeout=180)
        env = {**os.environ, **server.env}
        pool = subprocess.run([str(BIN / "prefect"), "work-pool", "create", "cordon", "--type", "process"],
                              env=env, cwd=deploy_dir, capture_output=True, text=True, timeout=120)
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
                                 str(deploy_dir / "prefect.yaml")],
                                cwd=deploy_dir, env=env, capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        deployed_at = datetime.now(UTC)
        t_deployed = time.monotonic()

        with _client(server) as client:
            deployments = {d.name: d for d in client.read_deployments()}
        for dep in spec["deployments"]:
            d = deployments[dep["name"]]
            # nothing of the deployer's machine in the deployment: no set_working_directory, no path
            assert not d.pull_steps, d.pull_steps
            dumped = d.model_dump_json()
            assert str(REPO) not in dumped and str(deploy_dir) not in dumped, dumped
        # whatever exists now was made when the deployment was created (not what this test is after)
        first_pass = {fr.id for dep in scheduled for fr in _runs(server, deployments[dep["name"]].id)}

        worker_env = {**env, "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db",
                      "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"), "PREFECT_WORKER_QUERY_SECONDS": "1",
                      "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
        worker_log = tmp_path / "worker.log"
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cordon", "--type", "process"],
                                  env=worker_env, cwd=worker_dir, stdout=open(worker_log, "wb"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, start_new_session=True)

        for dep in scheduled:
            d = deployments[dep["name"]]
            first_done: list[float] = []

            def completed_scheduled(d=d, first_done=first_done) -> list:
                runs = [fr for fr in _runs(server, d.id)
                        if fr.auto_scheduled and fr.id not in first_pass and fr.expected_start_time > deployed_at
                        and fr.state and fr.state.is_completed()]
                if runs and not first_done:
                    first_done.append(time.monotonic() - t_deployed)
                if worker.poll() is not None:
                    raise AssertionError(f"the worker exited: {worker_log.read_text(errors='replace')[-3000:]}")
                return runs if len(runs) >= NEEDED else None

            try:
                done = wait_for(completed_scheduled, 150, f"{NEEDED} scheduled runs of {d.name} to complete", 1)
            except AssertionError:
                runs = _runs(server, d.id)
                states = sorted((str(fr.expected_start_time), fr.auto_scheduled, fr.state_name) for fr in runs)
                raise AssertionError(f"{d.name}: scheduled runs seen: {states}\nserver log:\n"
                                     f"{server.log_path.read_text(errors='replace')[-3000:]}\nworker log:\n"
                                     f"{worker_log.read_text(errors='replace')[-3000:]}") from None
            all_runs = _runs(server, d.id)
            assert all(not fr.idempotency_key or fr.idempotency_key.startswith("scheduled ") for fr in done)
            print(f"\n{d.name}: first scheduled run (created by the scheduler service) completed "
                  f"{first_done[0]:.1f} s after `prefect deploy` returned; {len(done)} completed within "
                  f"{time.monotonic() - t_deployed:.1f} s; {len(all_runs)} runs scheduled in all, "
                  f"{len(first_pass)} of them when the deployment was created; interval {INTERVAL} s")

        log = server.log_path.read_text(errors="replace")
        errors = [line for line in log.splitlines()
                  if re.search(r"\|\s*(ERROR|CRITICAL)\s*\|", line) or "InvalidRequestError" in line
                  or "Traceback" in line]
        assert not errors, "the Prefect server logged errors:\n" + "\n".join(errors[:20])
    finally:
        if worker and worker.poll() is None:
            os.killpg(worker.pid, 15)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
        server.stop()
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()
