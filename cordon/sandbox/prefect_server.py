"""A local Prefect API server and ``respond`` workers as child processes.

Used by the durability test and the latency benchmark, and by anyone rehearsing the production
shape on one machine: ``prefect server start`` on a free loopback port with its own
``PREFECT_HOME`` (SQLite), and workers serving ``cordon/flows/respond.py`` as the ``respond/respond``
deployment with a 1-second poll.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """``prefect server start`` in a child process; ``env`` is what clients and workers need.

    ``home`` is the server's ``PREFECT_HOME`` (database, results, logs). ``database_url`` puts
    Prefect's own database elsewhere than SQLite in ``home`` (``postgresql+asyncpg://...``, the
    production shape; Prefect migrates it on start). ``settings`` are extra ``PREFECT_*``
    variables for the server process only (e.g. its scheduler service's
    ``PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS``, see Prefect's settings reference); they are
    not part of :attr:`env`. :meth:`start` waits for ``/api/health`` (cold start is about 10-20 s)
    and raises ``RuntimeError`` with the log's tail if the server does not come up within
    ``timeout`` seconds. The server's output goes to :attr:`log_path` (``home/server.log``).
    """

    def __init__(self, home: str | Path, port: int | None = None, database_url: str | None = None,
                 settings: dict[str, str] | None = None):
        self.home = Path(home)
        self.port = port or free_port()
        self.database_url = database_url
        self.settings = dict(settings or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def env(self) -> dict[str, str]:
        """Environment for processes that talk to this server (results persisted by default so
        a resumed run finds its completed tasks)."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }

    def start(self, timeout: float = 120) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        env.pop("PREFECT_API_URL", None)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        env.update(self.settings)
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        prefect = Path(sys.executable).with_name("prefect")
        self.proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"Prefect server did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


class Worker:
    """A process serving the ``respond`` deployment (``python -m cordon.flows.respond``).

    ``env`` adds to the current environment (the Prefect server's env, ``CORDON_DATABASE_URL``,
    ``CORDON_SLACK_BOT_TOKEN``...). :meth:`kill` sends SIGKILL to the whole process group: the
    abrupt death the durability test needs.
    """

    def __init__(self, env: dict[str, str], log_path: str | Path, cwd: str | Path | None = None):
        self.env = env
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "cordon.flows.respond"], env={**os.environ, **self.env},
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def deployment_served(name: str = "respond/respond") -> bool:
    """Whether the Prefect server at ``PREFECT_API_URL`` knows the deployment ``name`` (a worker
    has registered it); ``False`` while it does not, or the server does not answer."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
        return True
    except Exception:  # noqa: BLE001 - not registered yet
        return False
