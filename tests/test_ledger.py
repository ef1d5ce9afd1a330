"""The audit ledger on SQLite and PostgreSQL: chain, tamper detection, cases, dead letters."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import sqlalchemy as sa

from cordon.audit.ledger import Ledger, head_table, ledger_table, redact
from tests.dbs import attacker


def test_chain_verifies_and_links(ledger_url):
    ledger = Ledger(ledger_url)
    recs = [ledger.append("step", {"i": i}, case_id="c1") for i in range(5)]
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert all(recs[i].prev_hash == recs[i - 1].hash for i in range(1, 5))
    res = ledger.verify()
    assert res.ok and res.checked == 5


@pytest.mark.parametrize("tamper", ["change", "delete", "reorder", "truncate"])
def test_tampering_is_found(ledger_url, tamper):
    ledger = Ledger(ledger_url)
    for i in range(6):
        ledger.append("step", {"i": i})
    with attacker(ledger.engine) as conn:  # the append-only triggers would refuse these
        if tamper == "change":
            conn.execute(ledger_table.update().where(ledger_table.c.seq == 3).values(payload='{"i":99}'))
        elif tamper == "delete":
            conn.execute(ledger_table.delete().where(ledger_table.c.seq == 4))
        elif tamper == "reorder":
            rows = {r.seq: r for r in conn.execute(sa.select(ledger_table).where(ledger_table.c.seq.in_([2, 3])))}
            conn.execute(ledger_table.update().where(ledger_table.c.seq == 2).values(payload=rows[3].payload))
            conn.execute(ledger_table.update().where(ledger_table.c.seq == 3).values(payload=rows[2].payload))
        else:
            conn.execute(ledger_table.delete().where(ledger_table.c.seq == 6))
    res = ledger.verify()
    assert not res.ok
    expected = {"change": 3, "delete": 4, "reorder": 2, "truncate": 6}[tamper]  # delete/truncate: first missing
    assert res.first_bad_seq == expected, res


def test_head_rewritten_with_tail_is_still_caught_when_hash_differs(ledger_url):
    ledger = Ledger(ledger_url)
    for i in range(3):
        ledger.append("step", {"i": i})
    with ledger.engine.begin() as conn:
        conn.execute(head_table.update().values(hash="f" * 64))
    assert not ledger.verify().ok


def test_secrets_are_redacted_before_hashing(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.append("enrichment", {"credentials": {"accessKeyId": "ASIAX", "sessionToken": "IQoJsecret",
                                                 "SecretAccessKey": "wJalr"}})
    (rec,) = list(ledger.records())
    assert rec.payload["credentials"] == {"accessKeyId": "ASIAX", "sessionToken": "***redacted***",
                                          "SecretAccessKey": "***redacted***"}
    with ledger.engine.connect() as conn:
        raw = conn.execute(sa.select(ledger_table.c.payload)).scalar_one()
    assert "IQoJsecret" not in raw and "wJalr" not in raw
    assert ledger.verify().ok


def test_redact_leaves_other_fields():
    assert redact({"a": [{"password": "p", "b": 1}], "token": ""}) == {"a": [{"password": "***redacted***", "b": 1}],
                                                                       "token": ""}


def test_case_dedup_is_the_databases_unique_key(ledger_url):
    ledger = Ledger(ledger_url)
    first = ledger.open_case("aws|1|aws_access_key|AKIA1", "det-1", {"x": 1}, "aws-access-key-created")
    second = ledger.open_case("aws|1|aws_access_key|AKIA1", "det-2", {"x": 2}, "aws-access-key-created")
    again = ledger.open_case("aws|1|aws_access_key|AKIA1", "det-2", {"x": 2}, "aws-access-key-created")
    other = ledger.open_case("aws|1|aws_access_key|AKIA2", "det-3", {"x": 3}, "aws-access-key-created")
    assert first.opened and not second.opened and second.case_id == first.case_id
    assert again.duplicate_detection
    assert other.opened and other.case_id != first.case_id


def test_dead_letter_keeps_record_and_reason(ledger_url):
    ledger = Ledger(ledger_url)
    dl = ledger.dead_letter("events.json", 3, "userIdentity", "expected an object, got str", '{"userIdentity": "bob"}')
    (row,) = ledger.dead_letters()
    assert row["id"] == dl and row["raw_text"] == '{"userIdentity": "bob"}' and row["field"] == "userIdentity"
    (rec,) = list(ledger.records(kind_prefix="intake."))
    assert rec.payload["dead_letter_id"] == dl and rec.payload["position"] == 3


def _writer(url: str, n: int, who: int) -> None:
    ledger = Ledger(url)
    for i in range(n):
        ledger.append("concurrent", {"writer": who, "i": i})


def test_concurrent_writers_keep_one_linear_chain(ledger_url):
    Ledger(ledger_url)  # create tables once before the writers race
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(ledger_url, 25, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ledger = Ledger(ledger_url)
    res = ledger.verify()
    assert res.ok and res.checked == 100


def test_close_case_sets_the_status_and_closes_in_one_transaction(ledger_url):
    """``close_case``: the status, its ``case.status`` record and ``case.closed`` are written
    together (a transaction that fails leaves none of them), the chain still verifies."""
    ledger = Ledger(ledger_url)
    case_id = ledger.open_case("aws|1|aws_access_key|AKIACLOSE", "det-close", {"x": 1},
                               "aws-access-key-created").case_id
    ledger.set_case(case_id, status="containing")
    before = [r.kind for r in ledger.records(case_id=case_id)]
    statuses = len(list(ledger.records(kind_prefix="case.status")))
    # a failing transaction (keys json cannot sort fail inside it, after the status update): nothing written
    with pytest.raises(TypeError):
        ledger.close_case(case_id, "contained", {"bad": {1: "a", "b": 2}}, run_id="run-1")
    assert ledger.case(case_id)["status"] == "containing"
    assert [r.kind for r in ledger.records(case_id=case_id)] == before
    assert len(list(ledger.records(kind_prefix="case.status"))) == statuses
    closed = ledger.close_case(case_id, "contained", {"status": "contained"}, run_id="run-1", actor="cordon")
    assert closed.kind == "case.closed" and closed.payload == {"status": "contained"}
    assert [r.kind for r in ledger.records(case_id=case_id)][len(before):] == ["case.closed"]
    status = list(ledger.records(kind_prefix="case.status"))[statuses:]
    assert [(r.payload["case_id"], r.payload["status"], r.seq) for r in status] == [
        (case_id, "contained", closed.seq - 1)]  # the status record, then case.closed, in one transaction
    assert ledger.case(case_id)["status"] == "contained" and ledger.verify().ok
