"""A temporary Prefect server for in-process runs, started early so its boot overlaps Cordon's own.

With no ``PREFECT_API_URL``, Prefect's client starts a temporary server the first time a flow
runs (``prefect.server.api.server.SubprocessASGIServer``: ``python -m uvicorn --factory
prefect.server.api.server:create_app`` on 127.0.0.1, its database in ``PREFECT_HOME``), and waits
for it: about 3 s on a 2-core machine, plus 1.2 s to import ``prefect.server.api.server`` in the
calling process. ``cordon respond`` knows at its first line that it will run flows, so
:func:`start_early` launches the same server (same command, same environment as Prefect's) before
Cordon imports Prefect, reads the rules and playbooks and starts the sandbox, and points
``PREFECT_API_URL`` at it; :meth:`TemporaryServer.wait_ready` is called before the first flow runs.
Nothing else changes: the flow runs against a Prefect API as it would with Prefect's own temporary
server, and the server is stopped when the command exits (``atexit``), as Prefect stops its own.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the process that started it dies, even by
    SIGKILL (``prctl(PR_SET_PDEATHSIG)``), so a killed ``cordon respond`` leaves no server behind;
    ``atexit`` covers an ordinary exit. The server also stays in the command's process group (a
    signal to the group, Ctrl-C, reaches it)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TemporaryServer:
    """One temporary Prefect API server process on 127.0.0.1:``port``.

    ``api_url`` is ``http://127.0.0.1:<port>/api``. :meth:`spawn` returns at once;
    :meth:`wait_ready` blocks until ``GET /api/health`` answers 200 (``RuntimeError`` if the
    process exits or ``timeout`` seconds pass, with its stderr); :meth:`stop` terminates it (SIGTERM,
    then SIGKILL after 5 s), as ``SubprocessASGIServer.stop`` does.
    """

    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None
    ready: bool = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def spawn(self) -> TemporaryServer:
        """Start the server process (the command and environment of Prefect's temporary server:
        no UI, ephemeral mode) without waiting for it."""
        spec = find_spec("prefect")
        if spec is None or spec.origin is None:
            raise RuntimeError("prefect is not installed")
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the API answers ``/health``. Raises ``RuntimeError`` (the process exited,
        with its stderr; or ``timeout`` s passed)."""
        if self.ready:
            return
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"the temporary Prefect server exited with code {self.proc.returncode}: "
                                   f"{stderr.strip()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        self.ready = True
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the temporary Prefect server on {self.api_url} did not answer in {timeout:.0f} s")

    def stop(self) -> None:
        """Terminate the server (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _api_url_in_files() -> bool:
    """Whether a Prefect profile or settings file may set the API URL (then it is not ours to
    choose): the profiles file (``PREFECT_PROFILES_PATH``, default ``$PREFECT_HOME/profiles.toml``),
    and ``prefect.toml`` / ``.env`` / ``pyproject.toml`` in the working directory."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    files = [Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser(),
             Path("prefect.toml"), Path(".env"), Path("pyproject.toml")]
    for path in files:
        try:
            text = path.read_text(errors="replace").lower()
        except OSError:
            continue
        if "prefect_api_url" in text or ("api]" in text and "url" in text) or "api.url" in text:
            return True
    return False


def start_early() -> TemporaryServer | None:
    """Start a :class:`TemporaryServer` and set ``PREFECT_API_URL`` to it, when Prefect would
    start one itself: no ``PREFECT_API_URL`` set and ephemeral mode not disabled
    (``PREFECT_SERVER_EPHEMERAL_ENABLED``). Must run before ``prefect`` is imported (Prefect reads
    its settings from the environment at import). Returns ``None`` when a server is configured (in
    the environment or a settings file, :func:`_api_url_in_files`) or ``prefect`` is already
    imported; then Prefect behaves as before."""
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "").lower() in {"0", "false", "no"}:
        return None
    if _api_url_in_files():
        return None
    server = TemporaryServer().spawn()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server
