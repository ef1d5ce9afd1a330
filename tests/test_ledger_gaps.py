"""What the chain now vouches for, on SQLite and PostgreSQL: checkpoint coverage with a key, the
``cases`` rows (every change chained as ``case.status`` in the same transaction), and the
``dead_letters`` rows (``intake.rejected`` carries the stored text's and the row's hashes).
Tampering is done as someone with database access would: around the append-only triggers."""

from __future__ import annotations

import hashlib
import threading

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cordon.audit import migrations
from cordon.audit.checkpoint import Keyring
from cordon.audit.ledger import (
    Ledger,
    case_detections_table,
    case_state_sha256,
    cases_table,
    checkpoints_table,
    dead_letters_table,
    head_table,
    ledger_table,
)
from tests.dbs import attacker

KEY = "gaps-test-ledger-key-0123456789abcdef"


def _ledger(url: str, key: str | None = KEY, every: int = 5) -> Ledger:
    return Ledger(url, key=key if key else Keyring.of(None), checkpoint_every=every)


def _case(ledger: Ledger, n: int = 1) -> str:
    opened = ledger.open_case(f"aws|111122223333|aws_access_key|AKIA{n:016d}", f"det-{n}",
                              {"credential": {"uid": f"AKIA{n:016d}"}}, "aws-access-key-created")
    ledger.set_case(opened.case_id, status="running", flow_run_id=f"run-{n}")
    ledger.set_case(opened.case_id, plan_hash=hashlib.sha256(b"plan").hexdigest())
    ledger.set_case(opened.case_id, status="awaiting_approval")
    return opened.case_id


# -- checkpoints: with a key, deleting them all is a failure ------------------------------------

def test_every_checkpoint_deleted_fails_with_a_key_and_warns_without(ledger_url):
    ledger = _ledger(ledger_url)
    for i in range(12):
        ledger.append("step", {"i": i})
    assert [c.seq for c in ledger.checkpoints()] == [1, 5, 10]
    assert ledger.verify().ok
    with attacker(ledger.engine) as conn:
        conn.execute(checkpoints_table.delete())
    res = ledger.verify()
    assert not res.ok and res.problem == "coverage" and res.first_bad_seq is None, res
    assert "no signed checkpoint covers the chain (12 record(s))" in res.reason and "deleted" in res.reason
    # without a key nothing can be signed or checked: a warning, as before
    res = _ledger(ledger_url, key=None).verify()
    assert res.ok and any("no signed checkpoints" in w for w in res.warnings), res


def test_a_key_configured_after_the_records_fails_until_the_head_is_signed(ledger_url):
    plain = _ledger(ledger_url, key=None)
    for i in range(3):
        plain.append("step", {"i": i})
    keyed = _ledger(ledger_url)
    res = keyed.verify()
    assert not res.ok and res.problem == "coverage" and "cordon audit checkpoint" in res.reason
    keyed.checkpoint()
    assert keyed.verify().ok


def test_an_empty_keyed_ledger_verifies(ledger_url):
    res = _ledger(ledger_url).verify()
    assert res.ok and res.checked == 0 and res.warnings == ()


def test_recent_checkpoints_deleted_is_a_warning(ledger_url):
    ledger = _ledger(ledger_url, every=5)
    for i in range(12):
        ledger.append("step", {"i": i})
    with attacker(ledger.engine) as conn:
        conn.execute(checkpoints_table.delete().where(checkpoints_table.c.seq > 1))
    res = ledger.verify()
    assert res.ok and any("records 2..12 are not covered" in w for w in res.warnings), res


# -- cases ------------------------------------------------------------------------------------------

def test_every_case_change_is_chained_with_the_rows_state(ledger_url):
    ledger = _ledger(ledger_url)
    case_id = _case(ledger)
    recs = list(ledger.records(kind_prefix="case.status"))
    assert [r.payload["status"] for r in recs] == ["open", "running", "running", "awaiting_approval"]
    assert [r.payload["changed"] for r in recs] == [["opened"], ["flow_run_id", "status"], ["plan_hash"],
                                                    ["status"]]
    assert all(r.case_id is None and r.payload["case_id"] == case_id for r in recs)  # not in the case timeline
    assert list(ledger.records(case_id=case_id)) == []
    row = ledger.case(case_id)
    assert recs[-1].payload["state_sha256"] == case_state_sha256(row)
    assert recs[-1].payload["flow_run_id"] == "run-1" and recs[-1].payload["plan_hash"] == row["plan_hash"]
    res = ledger.verify()
    assert res.ok and res.cases == 1, res
    # a case that does not exist is left alone; a column that is not state is refused
    n = len(list(ledger.records()))
    ledger.set_case("case-nope", status="contained")
    assert len(list(ledger.records())) == n
    with pytest.raises(ValueError, match="case_key cannot be changed"):
        ledger.set_case(case_id, case_key="other")


@pytest.mark.parametrize("column,value,says", [
    ("status", "contained", "status is 'contained' in the row but 'awaiting_approval' in the chain"),
    ("plan_hash", "f" * 64, "plan_hash is 'ffff"),
    ("flow_run_id", "run-evil", "flow_run_id is 'run-evil' in the row but 'run-1' in the chain"),
    ("detection", '{"credential": {"uid": "AKIA-SOMEONE-ELSE"}}', "detection differs"),
])
def test_a_case_row_edited_outside_the_ledger_is_named(ledger_url, column, value, says):
    ledger = _ledger(ledger_url)
    other = _case(ledger, 2)
    case_id = _case(ledger, 1)
    last = list(ledger.records(kind_prefix="case.status"))[-1]
    with ledger.engine.begin() as conn:  # cases is mutable by design: no trigger, no attacker needed
        conn.execute(cases_table.update().where(cases_table.c.case_id == case_id).values({column: value}))
    res = ledger.verify()
    assert not res.ok and res.problem == "case" and res.first_bad_seq == last.seq, res
    assert f"case {case_id}" in res.reason and says in res.reason and other not in res.reason


def test_a_case_row_inserted_or_deleted_outside_the_ledger_is_named(ledger_url):
    ledger = _ledger(ledger_url)
    case_id = _case(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(cases_table.insert().values(case_id="case-forged0000", case_key="k", opened_at="2026",
                                                 status="contained", detection="{}"))
    res = ledger.verify()
    assert not res.ok and res.problem == "case" and res.first_bad_seq is None
    assert "case case-forged0000: no case.status record vouches" in res.reason
    with ledger.engine.begin() as conn:
        conn.execute(cases_table.delete().where(cases_table.c.case_id == "case-forged0000"))
        conn.execute(case_detections_table.delete().where(case_detections_table.c.case_id == case_id))
        conn.execute(cases_table.delete().where(cases_table.c.case_id == case_id))
    res = ledger.verify()
    assert not res.ok and f"case {case_id}: its cases row is gone" in res.reason


def test_the_status_change_and_its_record_commit_together(ledger_url):
    ledger = _ledger(ledger_url)
    case_id = _case(ledger)
    head = ledger.verify().checked
    with attacker(ledger.engine) as conn:  # the head points one back: the next append collides on seq
        prev = conn.execute(sa.select(ledger_table.c.hash).where(ledger_table.c.seq == head - 1)).scalar_one()
        conn.execute(head_table.update().values(seq=head - 1, hash=prev))
    with pytest.raises(sa.exc.IntegrityError):
        ledger.set_case(case_id, status="contained")
    assert ledger.case(case_id)["status"] == "awaiting_approval"  # rolled back with the record
    with pytest.raises(sa.exc.IntegrityError):
        ledger.open_case("aws|1|aws_access_key|AKIANEW", "det-new", {}, "pb")
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cases_table)).scalar_one() == 1


def test_verify_while_cases_change_reports_no_false_alarm(ledger_url):
    ledger = _ledger(ledger_url, every=0)
    ids = [_case(ledger, n) for n in range(5)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        writer = _ledger(ledger_url, every=0)
        i = 0
        try:
            while not stop.is_set():
                writer.set_case(ids[i % 5], status=f"s{i}")
                if i % 7 == 0:
                    writer.open_case(f"aws|2|aws_access_key|AKIAC{i:015d}", f"det-c{i}", {"i": i}, "pb")
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    try:
        results = [ledger.verify() for _ in range(8)]
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert ledger.verify().ok


# -- dead letters -------------------------------------------------------------------------------------

def test_dead_letter_record_carries_the_stored_texts_hash(ledger_url):
    ledger = _ledger(ledger_url)
    raw = '{"eventName": "CreateAccessKey", "password": "hunter2-Passw0rd!"'
    dl = ledger.dead_letter("events.json", 4, "eventName", "truncated JSON", raw)
    (row,) = ledger.dead_letters()
    assert "hunter2" not in row["raw_text"]
    (rec,) = ledger.records(kind_prefix="intake.rejected")
    p = rec.payload
    assert p["dead_letter_id"] == dl and p["position"] == 4 and p["field"] == "eventName"
    assert p["raw_sha256"] == hashlib.sha256(raw.encode()).hexdigest()  # as received, kept
    assert p["stored_sha256"] == hashlib.sha256(row["raw_text"].encode()).hexdigest()  # as stored
    assert p["raw_sha256"] != p["stored_sha256"] and rec.ts == row["ts"]
    res = ledger.verify()
    assert res.ok and res.dead_letters == 1


@pytest.mark.parametrize("column,value,says", [
    ("raw_text", '{"eventName": "Harmless"}', "raw_text was edited"),
    ("reason", "nothing to see", "a column"),
    ("position", 99, "a column"),
])
def test_an_edited_dead_letter_is_named(ledger_url, column, value, says):
    ledger = _ledger(ledger_url)
    ledger.dead_letter("a.json", 1, None, "bad", "{")
    dl = ledger.dead_letter("events.json", 4, "eventName", "truncated JSON", '{"eventName": "CreateAccessKey"')
    rec = list(ledger.records(kind_prefix="intake.rejected"))[-1]
    with attacker(ledger.engine) as conn:
        conn.execute(dead_letters_table.update().where(dead_letters_table.c.id == dl).values({column: value}))
    res = ledger.verify()
    assert not res.ok and res.problem == "dead_letter" and res.first_bad_seq == rec.seq, res
    assert f"dead letter #{dl} (events.json record " in res.reason and says in res.reason


def test_a_dead_letter_inserted_or_deleted_outside_the_ledger_is_named(ledger_url):
    ledger = _ledger(ledger_url)
    dl = ledger.dead_letter("a.json", 1, None, "bad", "{")
    with attacker(ledger.engine) as conn:
        conn.execute(dead_letters_table.insert().values(ts="2026", origin="forged.json", position=0, field=None,
                                                        reason="x", raw_text="{}", raw_sha256="0" * 64))
    res = ledger.verify()
    assert not res.ok and res.problem == "dead_letter" and "(forged.json record 0): no intake.rejected" in res.reason
    # the append-only trigger still refuses changes to the application: only an attacker gets round it
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), ledger.engine.begin() as conn:
        conn.execute(dead_letters_table.delete())
    with attacker(ledger.engine) as conn:
        conn.execute(dead_letters_table.delete())
    res = ledger.verify()
    assert not res.ok and f"dead letter #{dl}: its row is gone" in res.reason


# -- a database from before revision 0004 ------------------------------------------------------------

def test_rows_from_before_0004_get_a_chained_baseline(ledger_url):
    engine = sa.create_engine(ledger_url)
    migrations.upgrade(engine, "0003")
    # what the previous version wrote: a case, a dead letter and its intake.rejected without hashes
    from cordon.audit.ledger import _body, _hash
    from cordon.detections.model import canonical_json
    with engine.begin() as conn:
        conn.execute(cases_table.insert().values(case_id="case-old", case_key="k-old", opened_at="2025-01-01",
                                                 playbook="pb", status="contained", detection='{"x": 1}'))
        conn.execute(dead_letters_table.insert().values(id=1, ts="2025-01-01", origin="old.json", position=2,
                                                        field="f", reason="bad", raw_text="{", raw_sha256="a" * 64))
        payload = canonical_json({"dead_letter_id": 1, "origin": "old.json", "position": 2, "field": "f",
                                  "reason": "bad", "raw_sha256": "a" * 64})
        digest = _hash("0" * 64, _body(1, "2025-01-01", None, None, "intake.rejected", None, payload))
        conn.execute(ledger_table.insert().values(seq=1, ts="2025-01-01", kind="intake.rejected", payload=payload,
                                                  prev_hash="0" * 64, hash=digest))
        conn.execute(head_table.update().values(seq=1, hash=digest))
    engine.dispose()
    migrations.forget_cache()
    ledger = _ledger(ledger_url, key=None)  # upgrades to head: the baseline is chained
    kinds = [(r.kind, r.actor) for r in ledger.records()]
    assert kinds == [("intake.rejected", None), ("case.status", "cordon-migration"),
                     ("dead_letter.baseline", "cordon-migration")]
    res = ledger.verify()
    assert res.ok and res.cases == 1 and res.dead_letters == 1, res
    with attacker(ledger.engine) as conn:
        conn.execute(dead_letters_table.update().values(raw_text='{"edited": true}'))
    res = ledger.verify()
    assert not res.ok and "raw_text was edited" in res.reason and res.first_bad_seq == 3


# -- the command line ---------------------------------------------------------------------------------

def test_cli_verify_fails_naming_why(tmp_path):
    from cordon.cli import app

    url = f"sqlite:///{tmp_path}/cli.db"
    env = {"CORDON_DATABASE_URL": url, "CORDON_LEDGER_KEY": KEY, "CORDON_LEDGER_CHECKPOINT_EVERY": "100"}
    ledger = Ledger(url, key=KEY, checkpoint_every=100)
    case_id = _case(ledger)
    ledger.dead_letter("x.json", 0, None, "bad", "{")
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "verify"], env=env)
    assert res.exit_code == 0 and "1 case row(s) and 1 dead letter(s) match the chain" in res.output, res.output
    with ledger.engine.begin() as conn:
        conn.execute(cases_table.update().values(status="contained"))
    res = runner.invoke(app, ["audit", "verify"], env=env)
    assert res.exit_code == 1 and "BROKEN at record 4 (case)" in res.output and case_id in res.output, res.output
    with ledger.engine.begin() as conn:
        conn.execute(cases_table.update().values(status="awaiting_approval"))
    with attacker(ledger.engine) as conn:
        conn.execute(checkpoints_table.delete())
    res = runner.invoke(app, ["audit", "verify"], env=env)
    assert res.exit_code == 1 and "ledger BROKEN (coverage)" in res.output and "no signed checkpoint" in res.output
    res = runner.invoke(app, ["audit", "verify"], env={**env, "CORDON_LEDGER_KEY": ""})
    assert res.exit_code == 0 and "warning" in res.output and "no signed checkpoints" in res.output
