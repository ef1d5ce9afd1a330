"""The CLI contract, run as a user runs it: the ``cordon`` executable in a child process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORDON = str(Path(sys.executable).with_name("cordon"))


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db",
            "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def cordon(*args: str, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CORDON, *args], env=env, cwd=REPO, capture_output=True, text=True, input=stdin,
                          timeout=300)


def test_quick_start_contains_and_prints_the_json_contract(env, tmp_path):
    res = cordon("respond", "examples/cloudtrail-create-access-key.json", "--sandbox", "--approve", "auto",
                 "--output", "json", env=env)
    assert res.returncode == 0, res.stderr
    (line,) = [ln for ln in res.stdout.splitlines() if ln.strip()]
    case = json.loads(line)
    for key in ("case_id", "playbook", "detection", "approval", "actions", "verified"):
        assert key in case
    det = case["detection"]
    assert det["provider"] == "aws" and det["source"] == "cloudtrail" and det["event_name"] == "CreateAccessKey"
    assert det["technique_ids"] == ["T1098.001"]
    assert det["actor"]["user"]["uid"] == "arn:aws:iam::111122223333:user/mallory"
    assert det["target"]["name"] == "build-bot"
    assert det["credential"] == {**det["credential"], "kind": "aws_access_key", "uid": "AKIAEXAMPLEBUILDBOT9"}
    assert case["approval"] == {"decision": "approve", "approver": "auto (--approve auto)"}
    (action,) = case["actions"]
    assert {k: action[k] for k in ("name", "status")} == {"name": "aws.deactivate-access-key", "status": "contained"}
    assert action["before"]["status"] == "Active" and action["after"]["status"] == "Inactive"
    assert case["verified"] is True

    show = cordon("audit", "show", case["case_id"], env=env)
    assert show.returncode == 0 and "action.contained" in show.stdout and "approval.given" in show.stdout
    assert cordon("audit", "verify", env=env).returncode == 0

    # tamper with one record directly in the database: verify must fail and name it
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("update ledger set payload = replace(payload, 'Inactive', 'Active') where kind = 'action.contained'")
    db.commit()
    db.close()
    broken = cordon("audit", "verify", env=env)
    assert broken.returncode == 1 and "BROKEN" in broken.stderr


def test_rejected_records_exit_2_and_are_named(env):
    res = cordon("respond", "-", "--sandbox", "--approve", "auto", "--output", "json", env=env,
                 stdin=(REPO / "examples" / "mixed-with-bad-records.jsonl").read_text())
    assert res.returncode == 2, res.stderr
    assert "<stdin>: record 2" in res.stderr and "not JSON" in res.stderr
    assert "<stdin>: record 3" in res.stderr and "unrecognised record shape" in res.stderr
    assert [json.loads(ln)["status"] for ln in res.stdout.splitlines() if ln.strip()] == ["contained"]
    dead = cordon("audit", "dead-letters", env=env)
    assert dead.stdout.count("<stdin>") == 2


def test_console_approval_without_a_terminal_says_what_to_do(env):
    res = cordon("respond", "examples/cloudtrail-create-access-key.json", "--sandbox", env=env, stdin="")
    assert res.returncode != 0
    assert "--approve auto" in res.stderr


def test_invalid_playbook_is_named(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: x\nwhen:\n  provider: aws\ncontain:\n  - action: aws.nope\n")
    res = cordon("playbooks", "validate", str(bad), env=env)
    assert res.returncode == 1 and f"{bad}:6: field 'contain.0.action'" in res.stderr
