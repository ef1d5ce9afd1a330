"""Issue 12, "a real package": the wheel built from this checkout, installed (not editable) in a fresh
virtualenv with the ``sandbox`` extra, runs ``cordon respond`` on the three shipped examples (AWS,
GCP, Entra ID) from a directory outside the checkout: the configuration, Sigma rules and playbooks
come from the installed package. Its only top-level package is ``cordon``. Without the extra,
``--sandbox`` says in one line which extra installs it.

Slow by nature (a virtualenv and every dependency installed from the package index or pip's cache:
about a minute here); ``CORDON_SKIP_WHEEL=1`` skips it locally with that reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"aws": "cloudtrail-create-access-key.json", "gcp": "gcp-create-sa-key.json",
            "azure": "entra-add-sp-credentials.json"}

pytestmark = pytest.mark.skipif(bool(os.environ.get("CORDON_SKIP_WHEEL")), reason="CORDON_SKIP_WHEEL is set")


def run(*args: str | Path, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, REPO, cwd=out)
    assert res.returncode == 0, res.stderr
    (built,) = out.glob("cordon_ir-*.whl")
    return built


def test_the_wheel_holds_only_the_cordon_package_with_its_shipped_configuration(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"cordon"}, top
    for shipped in ("cordon/defaults/cordon.yaml", "cordon/defaults/playbooks/aws-access-key-created.yaml",
                    "cordon/providers/aws/rules/iam_access_key_created.yml",
                    "cordon/server/templates/cases.html", "cordon/flows/respond.py", "cordon/providers/aws/actions.py"):
        assert shipped in names, shipped


def test_the_installed_wheel_runs_the_three_examples_from_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    py, cli = venv / "bin" / "python", venv / "bin" / "cordon"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORDON_", "PREFECT_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", PYTHONPATH="",
               CORDON_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")

    # without the sandbox extra: --sandbox is refused in one line naming the extra
    res = run(py, "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run(cli, "respond", REPO / "examples" / EXAMPLES["aws"], "--sandbox", "--approve", "auto",
              cwd=elsewhere, env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if "sandbox" in ln]
    assert "pip install 'cordon-ir[sandbox]'" in line, line

    # with it: each example contained and verified, from a directory outside the checkout
    res = run(py, "-m", "pip", "install", "-q", f"{wheel}[sandbox]", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    where = run(py, "-c", "import cordon; print(cordon.__file__)", cwd=elsewhere, env=env)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not this checkout
    for provider, example in EXAMPLES.items():
        res = run(cli, "respond", REPO / "examples" / example, "--sandbox", "--approve", "auto", "--output", "json",
                  cwd=elsewhere, env=env)
        assert res.returncode == 0, (provider, res.stderr[-3000:])
        cases = [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()]
        contained = [c for c in cases if c.get("detection", {}).get("provider") == provider]
        assert contained and all(c["verified"] is True for c in contained), (provider, cases)
        assert all(a["status"] == "contained" for c in contained for a in c["actions"]), (provider, cases)
    assert run(cli, "audit", "verify", cwd=elsewhere, env=env).returncode == 0
