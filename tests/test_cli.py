"""The CLI contract, run as a user runs it: the ``cordon`` executable in a child process."""

from __future__ import annotations

import json
import os
import re
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
    *cases, last = [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()]
    # one record, matched by two Sigma rules: the second detection joins the first one's case; and
    # (actor_access, on by default) a case for the key the actor, mallory, signed the call with
    assert last == {"summary": {"read": 1, "detections": 2, "cases": 2, "joined": 1, "suppressed": 0, "rejected": 0,
                                "failed": 0}}
    joined, case, actor = cases
    assert joined["joined"]["case_id"] == case["case_id"] and joined["joined"]["rerun"] is False
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
    # the actor's own key: deactivated in the sandbox (seeded from userIdentity.accessKeyId), not Cordon's own
    adet = actor["detection"]
    assert adet["uid"] == f"{det['uid']}#actor" and adet["technique_ids"] == ["T1078.004", "T1098.001"]
    assert adet["credential"]["uid"] == "AKIAEXAMPLEMALLORY01" and adet["target"]["name"] == "mallory"
    assert actor["playbook"] == "aws-access-key-created" and actor["status"] == "contained"
    (deactivated,) = actor["actions"]
    assert deactivated["name"] == "aws.deactivate-access-key" and deactivated["after"]["status"] == "Inactive"

    show = cordon("audit", "show", case["case_id"], env=env)
    assert show.returncode == 0 and "action.contained" in show.stdout and "approval.given" in show.stdout
    assert f"the actor's own access is case {actor['case_id']}" in show.stdout
    assert cordon("audit", "verify", env=env).returncode == 0

    # the sandbox's stand-ins are gone with the run: rollback says so in one line, touches no real AWS
    back = cordon("rollback", case["case_id"], "--yes", env={**env, "AWS_ACCESS_KEY_ID": "AKIANOTREAL",
                                                            "AWS_SECRET_ACCESS_KEY": "x"})
    assert back.returncode == 1 and "Traceback" not in back.stderr, back.stderr
    assert "sandbox" in back.stderr and len(back.stderr.strip().splitlines()) == 1, back.stderr
    assert cordon("rollback", "case-000000000000", "--yes", env=env).stderr.strip().startswith("no case")
    # --sandbox rehearses it: fresh stand-ins seeded from the detection, the plan applied again, rolled back
    rehearsed = cordon("rollback", case["case_id"], "--yes", "--sandbox", env=env)
    assert rehearsed.returncode == 0 and "rehearsing the rollback" in rehearsed.stderr, rehearsed.stderr
    assert rehearsed.stdout.startswith("aws.deactivate-access-key: rolled_back"), rehearsed.stdout

    # tamper with one record directly in the database (an attacker with file access drops the
    # append-only trigger first): verify must fail and name it
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        db.execute("update ledger set kind = kind where seq = 1")
        raise AssertionError("the append-only trigger let an UPDATE through")
    except sqlite3.IntegrityError:
        pass
    db.execute("drop trigger ledger_no_update")
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
    docs = [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()]
    # the login profile, and the sessions of the role whose session set it (actor_access, on by default)
    assert sorted((d["playbook"], d["status"]) for d in docs if "case_id" in d) == [
        ("aws-actor-role-sessions", "contained"), ("aws-login-profile", "contained")]
    # rejected records are objects on stdout too, then one summary object closes the output
    rejected = [d["rejected"] for d in docs if "rejected" in d]
    assert [(r["origin"], r["position"]) for r in rejected] == [("<stdin>", 2), ("<stdin>", 3)]
    assert "not JSON" in rejected[0]["reason"] and "unrecognised record shape" in rejected[1]["reason"]
    summary = docs[-1]["summary"]
    assert summary["rejected"] == 2 and summary["cases"] == 2 and summary["read"] >= 3, summary
    dead = cordon("audit", "dead-letters", env=env)
    assert dead.stdout.count("<stdin>") == 2


def test_console_approval_without_a_terminal_says_what_to_do(env):
    res = cordon("respond", "examples/cloudtrail-create-access-key.json", env=env, stdin="")
    assert res.returncode == 1
    assert "--approve auto" in res.stderr and "--approve slack" in res.stderr


def test_sandbox_without_a_terminal_rehearses_with_auto_approval(env):
    res = cordon("respond", "examples/cloudtrail-create-access-key.json", "--sandbox", "--output", "json", env=env,
                 stdin="")
    assert res.returncode == 0, res.stderr
    assert "approving automatically" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-2])["status"] == "contained"


def test_invalid_playbook_is_named(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: x\nwhen:\n  provider: aws\ncontain:\n  - action: aws.nope\n")
    res = cordon("playbooks", "validate", str(bad), env=env)
    assert res.returncode == 1 and f"{bad}:6: field 'contain.0.action'" in res.stderr


def test_validation_errors_print_brackets_verbatim(env, tmp_path):
    """Rich markup must not eat ``[...]``: a pattern error shows the whole pattern."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Not_A_Name\ndescription: x\nwhen:\n  provider: aws\ncontain: []\n")
    res = cordon("playbooks", "validate", str(bad), env=env)
    assert res.returncode == 1, res.stderr
    assert "^[a-z0-9][a-z0-9-]{1,62}$" in res.stderr, res.stderr


def test_version_and_an_aligned_playbook_table(env):
    from importlib.metadata import version

    from cordon import DISTRIBUTION

    res = cordon("--version", env=env)
    assert res.returncode == 0 and res.stdout.startswith(f"cordon {version(DISTRIBUTION)} (Prefect "), res.stdout
    listed = cordon("playbooks", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    # one playbook per line, every column starting at the same offset on every line
    starts = [header.index(col) for col in ("provider", "credential kinds", "contain", "by hand")]
    books = [json.loads(ln) for ln in cordon("playbooks", "list", "--output", "json", env=env).stdout.splitlines()]
    assert [r.split()[0] for r in rows] == [b["name"] for b in books]
    for row, book in zip(rows, books, strict=True):
        assert row[starts[0]:].startswith(book["provider"]) and row[starts[0] - 1] == " ", row
        assert row[starts[2]:].startswith((book["contain"] or ["-"])[0]), row
    runnable = [b["name"] for b in books if b["parameters"]]
    assert len(runnable) >= 16 and "azure-sp-certificate-added" in runnable, runnable


def _read_until(fd: int, needle: bytes, proc: subprocess.Popen, timeout: float) -> bytes:
    import select
    import time

    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        elif proc.poll() is not None:
            break
    return buf


@pytest.mark.parametrize("answer,status", [(b"y\n", "contained"), (b"n\n", "denied")])
def test_console_approval_at_a_terminal(env, answer, status):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([CORDON, "respond", "examples/cloudtrail-create-access-key.json", "--sandbox"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                            env={**env, "COLUMNS": "200", "NO_COLOR": "1"})
    os.close(slave)
    try:
        seen = _read_until(master, b"Approve containment?", proc, 240)
        assert b"Approve containment?" in seen, seen.decode(errors="replace")[-2000:]
        assert b"iam:UpdateAccessKey" in seen  # the exact plan is shown before the question
        os.write(master, answer)
        rest = re.sub(rb"\x1b\[[0-9;]*m", b"", _read_until(master, b"record(s) rejected", proc, 120))
        assert f"status={status}".encode() in rest, rest.decode(errors="replace")[-2000:]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_a_ledger_that_cannot_be_used_is_one_clear_line(env, tmp_path):
    """A schema behind this version with auto-upgrade off (the production setting for an app role
    that cannot migrate) exits 1 naming the database and the command to run; no traceback."""
    import sqlite3

    db = tmp_path / "old.db"
    sqlite3.connect(db).execute("create table unrelated (x int)").connection.close()
    res = cordon("audit", "cases", env={**env, "CORDON_DATABASE_URL": f"sqlite:///{db}",
                                        "CORDON_DB_AUTO_UPGRADE": "0"})
    assert res.returncode == 1
    assert "ledger error" in res.stderr and "cordon db upgrade" in res.stderr and str(db) in res.stderr
    assert "Traceback" not in res.stderr
