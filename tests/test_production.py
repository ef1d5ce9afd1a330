"""The production shape (issue 6): Prefect's server on PostgreSQL, the deployments of
``prefect.yaml`` on a ``process`` work pool run by ``prefect worker``, and two replicas of
``cordon serve`` sharing one ledger.

Every part is real: ``prefect server start`` with ``PREFECT_API_DATABASE_CONNECTION_URL`` on a
fresh PostgreSQL database, ``prefect --no-prompt deploy --all`` reading this repository's
``prefect.yaml``, ``prefect worker start --pool cordon`` as a child process, ``cordon serve`` as two
child processes. Skipped, with the reason, when no PostgreSQL server answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from cordon.audit.ledger import Ledger
from cordon.config import load_config
from cordon.engine import Responder
from cordon.sandbox.aws import AwsSandbox
from cordon.sandbox.prefect_server import PrefectServer, free_port
from tests.dbs import POSTGRES_URL, fresh_postgres_schema, postgres_unavailable
from tests.helpers import config_with_approvers, one_credential_config, wait_for

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cloudtrail-create-access-key.json"
BIN = Path(sys.executable).parent
WEBHOOK_TOKEN = "wh-prod-7d1e"

pytestmark = pytest.mark.skipif(postgres_unavailable() is not None, reason=str(postgres_unavailable()))


def _admin_engine() -> sa.Engine:
    url = sa.engine.make_url(POSTGRES_URL).set(database="postgres")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def prefect_on_postgres(tmp_path_factory):
    """A Prefect server whose database is a fresh PostgreSQL database, with ``prefect.yaml``
    deployed to a ``process`` work pool named ``cordon``."""
    name = "cordon_prefect_" + uuid.uuid4().hex[:8]
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    pg = sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg", database=name)
    server = PrefectServer(tmp_path_factory.mktemp("prefect"),
                           database_url=pg.render_as_string(hide_password=False)).start(timeout=180)
    env = {**os.environ, **server.env}
    try:
        pool = subprocess.run([str(BIN / "prefect"), "work-pool", "create", "cordon", "--type", "process"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=180)
        for name in ("respond/respond", "approval-sweeper/sweeper"):
            assert f"Deployment '{name}' successfully created" in deploy.stdout, deploy.stdout + deploy.stderr
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        # workers need no checkout: module entrypoints, no pull step naming this directory
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            for dep in client.read_deployments():
                assert not dep.pull_steps and ".py" not in dep.entrypoint, (dep.pull_steps, dep.entrypoint)
                assert str(REPO) not in dep.model_dump_json(), dep.model_dump_json()
        yield server
    finally:
        server.stop()
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def _prefect_settings(server: PrefectServer):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: server.api_url})


def flow_runs_of(server: PrefectServer, deployment: str = "respond/respond") -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _prefect_settings(server), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def flow_state(server: PrefectServer, run_id: str) -> str | None:
    from prefect.client.orchestration import get_client

    with _prefect_settings(server), get_client(sync_client=True) as client:
        fr = client.read_flow_run(run_id)
    return fr.state.type.value if fr.state else None


def _detection_bodies(n: int, actors: bool = False) -> list[bytes]:
    """``n`` CreateAccessKey events that differ in the key created (so ``n`` distinct cases); with
    ``actors``, each signed by an actor of its own (another key of another user: ``n`` incidents),
    else all by the example's actor (one incident)."""
    base = json.loads(EXAMPLE.read_text())
    event = base["Records"][0] if isinstance(base, dict) and "Records" in base else base
    bodies = []
    run = uuid.uuid4().hex[:12].upper()
    for i in range(n):
        ev = json.loads(json.dumps(event))
        ev["eventID"] = str(uuid.uuid4())
        ev["responseElements"]["accessKey"]["accessKeyId"] = f"AKIA{run}{i:04d}"
        if actors:
            ident = ev["userIdentity"]
            ident["accessKeyId"] = f"AKIAACTOR{run[:7]}{i:04d}"
            ident["userName"] = f"actor-{i}"
            ident["arn"] = ident["arn"].rsplit("/", 1)[0] + f"/actor-{i}"
        bodies.append(json.dumps(ev).encode())
    return bodies


class Replica:
    """``cordon serve`` in a child process."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "cordon"), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                     env=env, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_two_replicas_never_double_open_a_case(prefect_on_postgres, tmp_path, db):
    server = prefect_on_postgres
    cleanup = None
    if db == "sqlite":
        db_url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        db_url, cleanup = fresh_postgres_schema()
    Ledger(db_url)  # schema in place before two processes race to create it
    env = {**os.environ, **server.env, "CORDON_DATABASE_URL": db_url, "CORDON_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
           "CORDON_SLACK_SIGNING_SECRET": "s3cr3t-signing", "CORDON_SLACK_CHANNEL": "C0PROD",
           "CORDON_CONFIG": str(config_with_approvers(tmp_path))}  # cordon serve refuses to start without
    replicas = [Replica(env, tmp_path / f"replica{i}.log") for i in range(2)]
    before = len(flow_runs_of(server))
    try:
        for r in replicas:
            wait_for(r.healthy, 60, f"cordon serve on {r.url}")
        bodies = _detection_bodies(6)
        answers: dict[tuple[int, int], dict] = {}

        def post(i: int, r: int, body: bytes, barrier: threading.Barrier) -> None:
            barrier.wait()
            resp = httpx.post(f"{replicas[r].url}/webhook/detections", content=body, timeout=120,
                              headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
            assert resp.status_code == 202, resp.text
            answers[(i, r)] = resp.json()

        for i, body in enumerate(bodies):  # the same detection reaches both replicas at the same moment
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=post, args=(i, r, body, barrier)) for r in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
        assert len(answers) == 2 * len(bodies)

        ledger = Ledger(db_url)
        cases = ledger.cases()
        assert len(cases) == len(bodies)  # one case per detection, never two
        for i in range(len(bodies)):
            # (one event can match more than one rule: every match after the first joins the case)
            opened = [c["case_id"] for r in range(2) for c in answers[(i, r)]["cases"]]
            joined = [j for r in range(2) for j in answers[(i, r)]["joined"]]
            assert len(opened) == 1, (answers[(i, 0)], answers[(i, 1)])
            assert joined and set(joined) == set(opened), (answers[(i, 0)], answers[(i, 1)])
        # and each case answered by exactly one flow run on the deployment: its own, or (one actor's
        # cases, posted while the first waits in the queue) the queued run of its incident it joined
        case_ids = sorted(c["case_id"] for c in cases)
        runs = [fr for fr in flow_runs_of(server) if fr.parameters.get("case_id") in case_ids]
        leads = [fr.parameters["case_id"] for fr in runs]
        joined = {r.case_id: r.payload["lead_case_id"] for r in ledger.records(kind_prefix="run.delegated")}
        assert len(leads) == len(set(leads)) and not set(leads) & set(joined)
        assert sorted([*leads, *joined]) == case_ids and set(joined.values()) <= set(leads)
        assert len(flow_runs_of(server)) - before == len(leads)
        assert ledger.verify().ok
    finally:
        for r in replicas:
            r.stop()
        if cleanup:
            cleanup()


def test_a_batch_of_detections_is_submitted_at_once_each_case_once_in_order(prefect_on_postgres, tmp_path):
    """One webhook body of 12 detections by 12 actors (JSON lines): each case is submitted once, side
    by side (``CORDON_SUBMIT_THREADS``), and the answer lists the cases in the body's order. Then a
    body of 3 detections by one actor: one incident, one run (its lead's) answering the three,
    the answer still in the body's order."""
    server = prefect_on_postgres
    db_url = f"sqlite:///{tmp_path}/ledger.db"
    Ledger(db_url)
    env = {**os.environ, **server.env, "CORDON_DATABASE_URL": db_url, "CORDON_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
           "CORDON_SLACK_SIGNING_SECRET": "s3cr3t-signing", "CORDON_SLACK_CHANNEL": "C0PROD",
           "CORDON_CONFIG": str(config_with_approvers(tmp_path)), "CORDON_SUBMIT_THREADS": "6"}
    replica = Replica(env, tmp_path / "replica.log")
    bodies = _detection_bodies(12, actors=True)
    burst = _detection_bodies(3)
    try:
        wait_for(replica.healthy, 60, f"cordon serve on {replica.url}")
        resp = httpx.post(f"{replica.url}/webhook/detections", content=b"\n".join(bodies), timeout=300,
                          headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
        assert resp.status_code == 202, resp.text
        cases = resp.json()["cases"]
        resp = httpx.post(f"{replica.url}/webhook/detections", content=b"\n".join(burst), timeout=300,
                          headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
        assert resp.status_code == 202, resp.text
        burst_cases = resp.json()["cases"]
    finally:
        replica.stop()
    ledger = Ledger(db_url)
    keys = [json.loads(b)["responseElements"]["accessKey"]["accessKeyId"] for b in bodies]
    by_case = {c["case_id"]: json.loads(c["detection"])["credential"]["uid"] for c in ledger.cases()}
    assert [by_case[c["case_id"]] for c in cases] == keys  # the body's order
    assert all(c["flow_run_id"] and c["status"] == "awaiting_approval" for c in cases), cases
    mine = {c["case_id"] for c in cases}
    runs = [fr for fr in flow_runs_of(server) if fr.parameters.get("case_id") in mine]
    assert sorted(fr.parameters["case_id"] for fr in runs) == sorted(mine)  # one run each
    assert {str(fr.id) for fr in runs} == {c["flow_run_id"] for c in cases}
    # one actor's three: one run, named by every case, the answer in the body's order
    burst_keys = [json.loads(b)["responseElements"]["accessKey"]["accessKeyId"] for b in burst]
    assert [by_case[c["case_id"]] for c in burst_cases] == burst_keys
    (run_id,) = {c["flow_run_id"] for c in burst_cases}
    (run,) = [fr for fr in flow_runs_of(server) if str(fr.id) == run_id]
    assert sorted([run.parameters["case_id"], *(m["case_id"] for m in run.parameters["members"])]) == \
        sorted(c["case_id"] for c in burst_cases)
    assert ledger.verify().ok


def test_process_worker_runs_the_prefect_yaml_deployment_to_containment(prefect_on_postgres, tmp_path):
    """``prefect worker start --pool cordon`` picks up a respond run of the deployment created from
    ``prefect.yaml`` and contains the key in the sandbox; the ledger verifies. The worker runs in
    an empty directory: it imports the flows from the installed package, not from a checkout."""
    server = prefect_on_postgres
    aws = AwsSandbox().start()
    aws.reset()  # moto's backends live in this process: forget what earlier tests contained
    db_url = f"sqlite:///{tmp_path}/ledger.db"
    # the example's key alone (tests.helpers.one_credential): this test is about the deployment path
    one_case = one_credential_config(tmp_path / "config")
    env = {**os.environ, **server.env, "CORDON_DATABASE_URL": db_url, "CORDON_CONFIG": str(one_case),
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cordon", "--type", "process"],
                              env=env, cwd=tmp_path, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                              start_new_session=True)
    try:
        ledger = Ledger(db_url)
        responder = Responder(config=load_config(one_case), ledger=ledger)
        report = responder.intake([EXAMPLE])
        (ticket,) = report.cases
        aws.seed_from_detection(ticket.detection)
        from prefect.deployments import run_deployment

        with _prefect_settings(server):
            fr = run_deployment("respond/respond", parameters={
                "case_id": ticket.case_id, "playbook": ticket.playbook.name, "approval": "auto",
                "cloud": responder.cloud_for(ticket, aws.cloud_params())}, idempotency_key=ticket.case_id, timeout=0)
        state = wait_for(lambda: (s := flow_state(server, str(fr.id))) in ("COMPLETED", "FAILED", "CRASHED") and s,
                         240, "the worker to run the deployment")
        assert state == "COMPLETED", log.read_text(errors="replace")[-3000:]
        iam = aws.clients("iam", account_id=ticket.detection.account_uid)
        user = ticket.detection.credential.owner.name
        keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]}
        assert keys[ticket.detection.credential.uid] == "Inactive"
        kinds = [r.kind for r in ledger.records(case_id=ticket.case_id)]
        # the worker also serves the scheduled watch-contained flow, which may record watch.* after the close
        run_kinds = [k for k in kinds if not k.startswith("watch.")]
        assert kinds.count("action.contained") == 1 and "verify.held" in kinds and run_kinds[-1] == "case.closed"
        assert ledger.case(ticket.case_id)["flow_run_id"] == str(fr.id)
        assert ledger.verify().ok
        # the sweeper deployment runs on the same pool (nothing is waiting: it sweeps nothing)
        with _prefect_settings(server):
            sweep = run_deployment("approval-sweeper/sweeper", timeout=0)
        state = wait_for(lambda: (s := flow_state(server, str(sweep.id))) in ("COMPLETED", "FAILED", "CRASHED") and s,
                         240, "the worker to run the sweeper")
        assert state == "COMPLETED", log.read_text(errors="replace")[-3000:]
    finally:
        os.killpg(worker.pid, 15)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
        aws.stop()
