"""The temporary Prefect server ``cordon respond`` boots early (:mod:`cordon.prefect_temp`): it
serves Prefect's API, stops with the command, and never replaces a server the user configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from cordon.prefect_temp import TemporaryServer, _api_url_in_files, start_early

REPO = Path(__file__).resolve().parents[1]
CORDON = str(Path(sys.executable).with_name("cordon"))
FACTORY = "prefect.server.api.server:create_app"


def _servers_for(prefect_home: Path) -> list[int]:
    """PIDs of temporary Prefect servers whose PREFECT_HOME is ``prefect_home``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if FACTORY.encode() in cmdline and f"PREFECT_HOME={prefect_home}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def test_a_temporary_server_answers_the_api_and_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = TemporaryServer().spawn()
    proc = server.proc
    try:
        server.wait_ready(180)
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read()) is True
        assert _servers_for(tmp_path / "prefect") == [proc.pid]
    finally:
        server.stop()
    assert proc.poll() is not None and server.proc is None
    server.stop()  # idempotent


def test_a_server_that_cannot_start_is_reported_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "nosuchdialect://nowhere")
    server = TemporaryServer().spawn()
    try:
        with pytest.raises(RuntimeError, match="exited with code"):
            server.wait_ready(180)
    finally:
        server.stop()


def test_a_configured_server_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert start_early() is None
    monkeypatch.delenv("PREFECT_API_URL")
    import prefect  # noqa: F401 - once imported, Prefect has read its settings: too late to point them

    assert start_early() is None
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "prefect"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    assert not _api_url_in_files()
    (tmp_path / "pyproject.toml").write_text('[tool.prefect.api]\nurl = "https://p/api"\n')
    assert _api_url_in_files()  # Prefect's settings in pyproject.toml
    (tmp_path / "pyproject.toml").unlink()
    (home / "profiles.toml").write_text('active = "prod"\n[profiles.prod]\nPREFECT_API_URL = "https://p/api"\n')
    assert _api_url_in_files()


def test_cordon_respond_runs_on_its_early_server_and_leaves_none_behind(tmp_path):
    home = tmp_path / "prefect"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(CORDON_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", PREFECT_HOME=str(home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    res = subprocess.run([CORDON, "respond", "examples/cloudtrail-create-access-key.json", "--sandbox", "--approve",
                          "auto", "--output", "json"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    case = [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()][-2]
    assert case["verified"] is True and case["flow_run_id"]
    assert (home / "prefect.db").exists()  # the run was recorded by a server on this PREFECT_HOME
    assert _servers_for(home) == []  # and the server stopped with the command


def test_a_killed_cordon_respond_leaves_no_server_behind(tmp_path):
    """SIGKILL gives ``atexit`` no chance: the server must still go (PR_SET_PDEATHSIG)."""
    import signal
    import time

    home = tmp_path / "prefect"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(CORDON_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", PREFECT_HOME=str(home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen([CORDON, "respond", "examples/cloudtrail-create-access-key.json", "--sandbox",
                             "--approve", "auto"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _servers_for(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _servers_for(home), "the early server never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # only the command, not its process group
        proc.wait(30)
    deadline = time.monotonic() + 30
    while _servers_for(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _servers_for(home) == []
