"""Ledger integrity on SQLite and PostgreSQL: Alembic migrations, append-only triggers and grants,
signed checkpoints and anchors, tampering by someone with database access, 8 concurrent writers,
and secrets kept out of every table."""

from __future__ import annotations

import base64
import json
import multiprocessing as mp

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cordon.audit import migrations
from cordon.audit.checkpoint import Checkpoint, Keyring, LedgerKey, LedgerKeyError, keyring_from_env
from cordon.audit.ledger import (
    GENESIS,
    Ledger,
    _body,
    _hash,
    cases_table,
    checkpoints_table,
    dead_letters_table,
    head_table,
    ledger_table,
    metadata,
)
from cordon.audit.migrations.grants import apply_grants, grants_sql
from tests.dbs import attacker, fresh_postgres_schema, postgres_unavailable, role_url

HEAD = migrations.head_revision()  # "0002" until another module adds a revision
KEY = "k" * 8 + "-test-ledger-key-0123456789abcdef"
OTHER_KEY = "another-key-nobody-configured-0001"


@pytest.fixture
def pg_url():
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    url, cleanup = fresh_postgres_schema()
    yield url
    cleanup()


def _filled(url: str, n: int, every: int = 5, key: str | Keyring | None = KEY) -> Ledger:
    ledger = Ledger(url, key=key, checkpoint_every=every)
    for i in range(n):
        ledger.append("step", {"i": i}, case_id=f"c{i % 2}")
    return ledger


# -- migrations ---------------------------------------------------------------------------------

def test_migrations_from_empty_reach_head_and_match_the_tables_the_code_uses(ledger_url):
    ledger = Ledger(ledger_url)
    with ledger.engine.connect() as conn:
        assert migrations.current_revision(conn) == HEAD
        combined = sa.MetaData()  # every module's tables (METADATA_SOURCES), as the code declares them
        for md in migrations.target_metadata():
            for table in md.tables.values():
                table.to_metadata(combined)
        assert "ledger_checkpoints" in combined.tables
        diff = compare_metadata(MigrationContext.configure(conn), combined)
        assert diff == []
        head = conn.execute(sa.select(head_table)).one()
    assert (head.seq, head.hash) == (0, GENESIS)
    # a second upgrade is a no-op
    assert migrations.upgrade(ledger.writer) == (HEAD, HEAD, False)


def test_postgres_migrations_land_in_the_connections_schema(pg_url):
    ledger = Ledger(pg_url)
    with ledger.engine.connect() as conn:
        schema = conn.execute(sa.text("select current_schema()")).scalar_one()
        where = dict(conn.execute(sa.text(
            "select table_name, table_schema from information_schema.tables "
            "where table_name in ('alembic_version', 'ledger', 'ledger_checkpoints')")).all())
        fn_schema = conn.execute(sa.text(
            "select n.nspname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            "where p.proname = 'cordon_refuse_change' and n.nspname = current_schema()")).scalar_one()
    assert schema.startswith("cordon_t_")
    assert where == {"alembic_version": schema, "ledger": schema, "ledger_checkpoints": schema}
    assert fn_schema == schema


def _old_create_all_database(url: str) -> None:
    """What the previous version left: create_all of the five tables, the head row, 3 records."""
    engine = sa.create_engine(url)
    old = [metadata.tables[t] for t in ("ledger", "ledger_head", "cases", "case_detections", "dead_letters")]
    metadata.create_all(engine, tables=old)
    prev = GENESIS
    with engine.begin() as conn:
        for seq in (1, 2, 3):
            payload = json.dumps({"old": seq})
            digest = _hash(prev, _body(seq, f"2024-01-0{seq}T00:00:00+00:00", None, None, "old", None, payload))
            conn.execute(ledger_table.insert().values(seq=seq, ts=f"2024-01-0{seq}T00:00:00+00:00", kind="old",
                                                      payload=payload, prev_hash=prev, hash=digest))
            prev = digest
        conn.execute(head_table.insert().values(id=1, seq=3, hash=prev))
        conn.execute(cases_table.insert().values(case_id="case-old", case_key="k", opened_at="2024",
                                                 status="open", detection="{}"))
    engine.dispose()


def test_previous_create_all_database_is_stamped_then_upgraded(ledger_url):
    _old_create_all_database(ledger_url)
    with sa.create_engine(ledger_url).connect() as conn:
        assert migrations.current_revision(conn) is None
    ledger = Ledger(ledger_url, key=KEY)
    with ledger.engine.connect() as conn:
        assert migrations.current_revision(conn) == HEAD
    assert ledger.case("case-old")["status"] == "open"
    # revision 0004 chained a baseline for the case the old version left (cases are vouched for)
    (baseline,) = ledger.records(kind_prefix="case.status")
    assert baseline.seq == 4 and baseline.payload["case_id"] == "case-old"
    assert baseline.payload["changed"] == ["baseline"] and baseline.payload["status"] == "open"
    rec = ledger.append("new", {"after": "upgrade"})
    assert rec.seq == 5
    assert ledger.checkpoint().seq == 5
    res = ledger.verify()
    assert res.ok and res.checked == 5 and res.checkpoints == 1 and res.cases == 1, res
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), ledger.engine.begin() as conn:
        conn.execute(ledger_table.delete().where(ledger_table.c.seq == 1))


def test_downgrade_to_base_and_up_again(ledger_url):
    ledger = Ledger(ledger_url)
    with ledger.writer.begin() as conn:
        command.downgrade(migrations.alembic_config(connection=conn), "base")
        assert not sa.inspect(conn).has_table("ledger")
    migrations.forget_cache()
    ledger = Ledger(ledger_url)
    assert ledger.append("x", {}).seq == 1 and ledger.verify().ok


def test_unknown_revision_and_disabled_upgrade_are_refused_with_the_reason(tmp_path):
    newer = f"sqlite:///{tmp_path}/newer.db"
    Ledger(newer)
    with sa.create_engine(newer).begin() as conn:
        conn.execute(sa.text("update alembic_version set version_num = '0099'"))
    migrations.forget_cache()
    with pytest.raises(migrations.SchemaError, match="'0099'.*does not know"):
        Ledger(newer)
    with pytest.raises(migrations.SchemaError, match="cordon db upgrade"):
        Ledger(f"sqlite:///{tmp_path}/empty.db", migrate=False)


def test_offline_sql_for_postgres_has_the_triggers(capsys):
    migrations.upgrade_sql("postgresql+psycopg://nobody@127.0.0.1:1/none")
    sql = capsys.readouterr().out
    assert "CREATE TABLE ledger_checkpoints" in sql
    assert "CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger" in sql
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in sql


# -- append-only ---------------------------------------------------------------------------------

@pytest.mark.parametrize("table,where", [(ledger_table, ledger_table.c.seq == 1),
                                         (dead_letters_table, dead_letters_table.c.id == 1),
                                         (checkpoints_table, checkpoints_table.c.id == 1)])
@pytest.mark.parametrize("verb", ["update", "delete"])
def test_update_and_delete_are_refused_by_the_trigger(ledger_url, table, where, verb):
    ledger = _filled(ledger_url, 5)
    ledger.dead_letter("f.json", 1, "x", "bad", "{")
    stmt = table.delete().where(where) if verb == "delete" else \
        table.update().where(where).values(ts="2000-01-01T00:00:00+00:00")
    with pytest.raises(sa.exc.DBAPIError, match=f"{verb.upper()} on .*{table.name} refused"), \
            ledger.engine.begin() as conn:
        conn.execute(stmt)
    assert ledger.verify().ok


def test_mutable_tables_stay_mutable(ledger_url):
    ledger = _filled(ledger_url, 2)
    case = ledger.open_case("k1", "d1", {}, "pb")
    ledger.set_case(case.case_id, status="contained")
    assert ledger.case(case.case_id)["status"] == "contained"
    # each change of the row was chained with it (case.status, seq 3 and 4)
    assert [r.payload["status"] for r in ledger.records(kind_prefix="case.status")] == ["open", "contained"]
    assert ledger.append("x", {}).seq == 5  # the head row is updated by design


def test_postgres_truncate_is_refused(pg_url):
    ledger = _filled(pg_url, 3)
    with pytest.raises(sa.exc.DBAPIError, match="TRUNCATE on .*ledger refused"), ledger.engine.begin() as conn:
        conn.exec_driver_sql("truncate ledger cascade")


def test_app_role_can_append_but_never_update_or_delete(pg_url):
    owner = Ledger(pg_url, key=KEY)
    statements = apply_grants(owner.engine, "cordon_app")
    assert any("GRANT SELECT, INSERT ON" in s and '"ledger"' in s for s in statements)
    app = Ledger(role_url(pg_url, "cordon_app"), key=KEY, checkpoint_every=2)
    with app.engine.connect() as conn:
        assert conn.execute(sa.text("select current_user")).scalar_one() == "cordon_app"
    for i in range(4):
        app.append("app.step", {"i": i})
    app.dead_letter("f.json", 0, None, "bad json", "{")
    case = app.open_case("key-1", "det-1", {"d": 1}, "pb")
    app.set_case(case.case_id, status="awaiting_approval")
    assert app.checkpoint().seq == 7  # 4 appends, intake.rejected, 2 x case.status
    for sql in ("update ledger set kind = 'x' where seq = 1", "delete from ledger where seq = 5",
                "delete from dead_letters", "update ledger_checkpoints set seq = 1", "truncate ledger",
                "delete from cases", "drop trigger ledger_append_only on ledger",
                "alter table ledger disable trigger all"):
        with pytest.raises(sa.exc.DBAPIError, match="permission denied|must be owner"), app.engine.begin() as conn:
            conn.exec_driver_sql(sql)
    res = app.verify()
    assert res.ok and res.checked == 7 and res.checkpoints == 5, res  # seq 1, 2, 4, 6 and the one at 7


def test_grants_sql_names_bad_identifiers():
    assert "GRANT SELECT, INSERT ON \"cordon\".\"ledger\" TO \"cordon_app\"" in grants_sql("cordon_app", "cordon")
    with pytest.raises(ValueError, match="role: 'x; drop table ledger'"):
        grants_sql("x; drop table ledger")


# -- checkpoints and tampering -------------------------------------------------------------------

def test_periodic_checkpoints_are_signed_and_verified(ledger_url):
    ledger = _filled(ledger_url, 12, every=5)
    cps = ledger.checkpoints()
    assert [c.seq for c in cps] == [1, 5, 10]  # the chain's first record, then every 5th
    assert all(c.key_id == LedgerKey.from_text(KEY).key_id and c.check(ledger.keyring) is None for c in cps)
    res = ledger.verify()
    assert res.ok and res.checked == 12 and res.checkpoints == 3 and res.warnings == ()
    # without the key, hashes are still compared but the signatures are not: said as a warning
    res = Ledger(ledger_url, key=Keyring.of(None)).verify()
    assert res.ok and any("not checked" in w for w in res.warnings)
    # a rotated key: old checkpoints verify with the old key among the accepted ones
    rotated = Ledger(ledger_url, key=Keyring.of(LedgerKey.from_text(OTHER_KEY), LedgerKey.from_text(KEY)))
    rotated.checkpoint()
    assert rotated.verify().ok
    res = Ledger(ledger_url, key=OTHER_KEY).verify()
    assert not res.ok and res.first_bad_seq == 1 and "not configured" in res.reason and res.problem == "checkpoint"


def _truncate_and_rewrite_head(ledger: Ledger, keep: int, drop_checkpoints_after: int | None = None) -> None:
    with attacker(ledger.engine) as conn:
        conn.execute(ledger_table.delete().where(ledger_table.c.seq > keep))
        last = conn.execute(sa.select(ledger_table.c.hash).where(ledger_table.c.seq == keep)).scalar_one()
        conn.execute(head_table.update().values(seq=keep, hash=last))
        if drop_checkpoints_after is not None:
            conn.execute(checkpoints_table.delete().where(checkpoints_table.c.seq > drop_checkpoints_after))


def test_truncated_tail_with_rewritten_head_is_found_by_the_checkpoint(ledger_url, tmp_path):
    ledger = _filled(ledger_url, 12, every=5)
    _truncate_and_rewrite_head(ledger, keep=7)
    res = ledger.verify()
    assert not res.ok and res.first_bad_seq == 8, res
    assert "records 8..10 are missing" in res.reason and "truncated" in res.reason
    # the same attack on a ledger without checkpoints is invisible: that is what checkpoints add
    bare = _filled(f"sqlite:///{tmp_path}/bare.db", 12, key=Keyring.of(None))
    _truncate_and_rewrite_head(bare, keep=7)
    res = bare.verify()
    assert res.ok and any("no signed checkpoints" in w for w in res.warnings)


def test_rewritten_chain_with_recomputed_hashes_is_found(ledger_url):
    ledger = _filled(ledger_url, 12, every=5)
    with attacker(ledger.engine) as conn:
        rows = conn.execute(sa.select(ledger_table).order_by(ledger_table.c.seq)).all()
        prev = rows[6].prev_hash  # rewrite record 7 and everything after, consistently
        for row in rows[6:]:
            payload = json.dumps({"i": "forged"}) if row.seq == 7 else row.payload
            digest = _hash(prev, _body(row.seq, row.ts, row.case_id, row.run_id, row.kind, row.actor, payload))
            conn.execute(ledger_table.update().where(ledger_table.c.seq == row.seq)
                         .values(payload=payload, prev_hash=prev, hash=digest))
            prev = digest
        conn.execute(head_table.update().values(hash=prev))
    res = ledger.verify()
    assert not res.ok and res.first_bad_seq == 10, res
    assert "rewritten" in res.reason and "records 6..10" in res.reason


@pytest.mark.parametrize("tamper,first_bad", [("swap-seq", 3), ("delete-middle", 4), ("change-ts", 6),
                                              ("forge-checkpoint", 10), ("drop-prev-link", 9)])
def test_tampering_reports_the_first_broken_record(ledger_url, tamper, first_bad):
    ledger = _filled(ledger_url, 12, every=5)
    with attacker(ledger.engine) as conn:
        if tamper == "swap-seq":  # reorder: records 3 and 4 trade places
            conn.execute(ledger_table.update().where(ledger_table.c.seq == 3).values(seq=-3))
            conn.execute(ledger_table.update().where(ledger_table.c.seq == 4).values(seq=3))
            conn.execute(ledger_table.update().where(ledger_table.c.seq == -3).values(seq=4))
        elif tamper == "delete-middle":
            conn.execute(ledger_table.delete().where(ledger_table.c.seq == 4))
        elif tamper == "change-ts":
            conn.execute(ledger_table.update().where(ledger_table.c.seq == 6).values(ts="2001-01-01T00:00:00+00:00"))
        elif tamper == "forge-checkpoint":
            real = conn.execute(sa.select(checkpoints_table).where(checkpoints_table.c.seq == 10)).one()
            conn.execute(checkpoints_table.update().where(checkpoints_table.c.id == real.id)
                         .values(ts="2099-01-01T00:00:00+00:00"))
        else:
            conn.execute(ledger_table.update().where(ledger_table.c.seq == 9).values(prev_hash="e" * 64))
    res = ledger.verify()
    assert not res.ok and res.first_bad_seq == first_bad, res
    if tamper == "forge-checkpoint":
        assert "signature does not match" in res.reason


def test_anchor_file_catches_what_the_database_alone_cannot(ledger_url, tmp_path):
    ledger = _filled(ledger_url, 12, every=5)
    anchor = ledger.checkpoint()  # seq 12
    path = anchor.write_anchor(tmp_path / "anchor.json")
    assert Checkpoint.read_anchor(path) == Checkpoint(12, anchor.hash, anchor.ts, anchor.key_id, anchor.signature)
    assert ledger.verify(anchor=Checkpoint.read_anchor(path)).ok
    # the attacker also deletes the checkpoints that would betray the truncation
    _truncate_and_rewrite_head(ledger, keep=6, drop_checkpoints_after=6)
    assert ledger.verify().ok  # consistent with checkpoint 5: the database alone cannot tell
    res = ledger.verify(anchor=Checkpoint.read_anchor(path))
    assert not res.ok and res.first_bad_seq == 7 and "the anchor" in res.reason, res


def test_anchor_and_key_errors_name_the_file_and_the_variable(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps({"format": "cordon-ledger-anchor/1", "seq": "12"}))
    with pytest.raises(ValueError, match=r"a\.json: field 'seq': expected int"):
        Checkpoint.read_anchor(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="a.json: not a readable JSON anchor"):
        Checkpoint.read_anchor(bad)
    with pytest.raises(LedgerKeyError, match="CORDON_LEDGER_KEY: a ledger key needs at least 16"):
        keyring_from_env({"CORDON_LEDGER_KEY": "short"})
    ring = keyring_from_env({"CORDON_LEDGER_KEY": KEY, "CORDON_LEDGER_OLD_KEYS": OTHER_KEY})
    assert ring.current.key_id == LedgerKey.from_text(KEY).key_id and len(ring.accepted) == 2
    assert KEY not in repr(ring)
    with pytest.raises(LedgerKeyError, match="CORDON_LEDGER_KEY is not set"):
        Ledger(f"sqlite:///{tmp_path}/l.db", key=Keyring.of(None)).checkpoint()


# -- concurrency ---------------------------------------------------------------------------------

def _writer(url: str, n: int, who: int) -> None:
    ledger = Ledger(url, key=KEY, checkpoint_every=10)
    for i in range(n):
        ledger.append("concurrent", {"writer": who, "i": i})


def test_eight_processes_append_one_linear_chain(ledger_url):
    Ledger(ledger_url)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(ledger_url, 25, w)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    ledger = Ledger(ledger_url, key=KEY)
    recs = list(ledger.records())
    assert [r.seq for r in recs] == list(range(1, 201))
    for w in range(8):  # each writer's records appear in its own order
        assert [r.payload["i"] for r in recs if r.payload["writer"] == w] == list(range(25))
    assert [c.seq for c in ledger.checkpoints()] == [1, *range(10, 201, 10)]
    res = ledger.verify()
    assert res.ok and res.checked == 200 and res.checkpoints == 21, res


def test_processes_starting_on_an_empty_database_migrate_once(ledger_url):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(ledger_url, 3, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    res = Ledger(ledger_url, key=KEY).verify()
    assert res.ok and res.checked == 12


# -- secrets -------------------------------------------------------------------------------------

PEM = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
       "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n-----END PRIVATE KEY-----\n")
SA_KEY_FILE = {"type": "service_account", "project_id": "p1",
               "private_key_id": "3f1c0a5d9e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c", "private_key": PEM,
               "client_email": "backdoor@p1.iam.gserviceaccount.com", "client_id": "1049"}
SECRETS = ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJH",
           "Zx8Q~abcDEFghiJKLmnoPQRstuVWXyz0123456789",
           "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
           "bGoa+V7g/yqDXvKRqq+JTFn4uQZbPiQJo4pf9RzJ", "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
           "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy", "xoxp-2210535565-2210535577-2222222222-abcdef0123",
           "hunter2-Passw0rd!", "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2dyYXBoIn0.c2lnbmF0dXJl",
           "s3cr3t-db-pass", base64.b64encode(json.dumps(SA_KEY_FILE).encode()).decode()[:60]]


def _payloads() -> dict:
    return {
        # IAM CreateAccessKey (boto3 shape) and the CloudTrail event's responseElements
        "iam.create_access_key": {"AccessKey": {"UserName": "bob", "AccessKeyId": "AKIAIOSFODNN7EXAMPLE",
                                                "Status": "Active", "SecretAccessKey": SECRETS[0],
                                                "CreateDate": "2024-05-01T10:00:00Z"},
                                  "ResponseMetadata": {"RequestId": "7a62c49f", "HTTPStatusCode": 200}},
        "cloudtrail": {"eventName": "CreateAccessKey", "responseElements": {"accessKey": {
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE", "status": "Active", "userName": "bob",
            "secretAccessKey": SECRETS[0], "createDate": "May 1, 2024 10:00:00 AM"}}},
        "sts.assume_role": {"Credentials": {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": SECRETS[0],
                                            "SessionToken": SECRETS[1], "Expiration": "2024-05-01T11:00:00Z"},
                            "AssumedRoleUser": {"Arn": "arn:aws:sts::123456789012:assumed-role/r/s"}},
        # Graph addPassword response
        "graph.addPassword": {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph."
                                                "passwordCredential", "customKeyIdentifier": None,
                              "displayName": "backdoor", "endDateTime": "2026-05-01T10:00:00Z", "hint": "Zx8",
                              "keyId": "f0b0b335-1d71-4883-8f98-567911bfdca6", "secretText": SECRETS[2]},
        # GCP serviceAccounts.keys.create, hmacKeys.create, apikeys getKeyString
        "gcp.keys.create": {"name": "projects/p1/serviceAccounts/backdoor@p1.iam.gserviceaccount.com/keys/3f1c",
                            "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
                            "privateKeyData": base64.b64encode(json.dumps(SA_KEY_FILE).encode()).decode(),
                            "keyAlgorithm": "KEY_ALG_RSA_2048"},
        "gcp.hmac": {"kind": "storage#hmacKey", "secret": SECRETS[4],
                     "metadata": {"accessId": "GOOG1EABCDEF", "state": "ACTIVE"}},
        "gcp.keyString": {"keyString": SECRETS[5]},
        "sa_key_file_as_text": json.dumps(SA_KEY_FILE),
        # Slack oauth.v2.access, and an error message that quotes a token
        "slack.oauth": {"ok": True, "access_token": SECRETS[6], "token_type": "bot",
                        "authed_user": {"id": "U1", "access_token": SECRETS[7]}},
        "errors": [f"invalid_auth for token {SECRETS[6]}",
                   f"request failed: Authorization: Bearer {SECRETS[9]}",
                   f"could not connect to postgresql://cordon:{SECRETS[10]}@db.internal:5432/cordon",
                   f"login with password={SECRETS[8]} refused", f"key material follows {PEM}"],
        "headers": [{"name": "Authorization", "value": f"Bearer {SECRETS[9]}"}, {"Authorization": SECRETS[9]}],
        "ecs.environment": [{"name": "DB_PASSWORD", "value": SECRETS[10]}, {"name": "REGION", "value": "eu-west-1"}],
        "pagination": {"NextToken": "eyJuZXh0IjoyfQ==", "IsTruncated": True},
        "db": {"dbPassword": SECRETS[8], "hasPassword": True, "password": None},
    }


def test_redaction_of_real_looking_api_responses():
    from cordon.audit.ledger import redact

    out = redact(_payloads())
    text = json.dumps(out)
    for s in SECRETS:
        assert s not in text, s
    assert "PRIVATE KEY-----***redacted***" in text
    # what is not a secret is kept, so the record still says what happened
    assert out["iam.create_access_key"]["AccessKey"]["AccessKeyId"] == "AKIAIOSFODNN7EXAMPLE"
    assert out["cloudtrail"]["responseElements"]["accessKey"]["userName"] == "bob"
    assert out["graph.addPassword"]["keyId"] == "f0b0b335-1d71-4883-8f98-567911bfdca6"
    assert out["gcp.keys.create"]["privateKeyType"] == "TYPE_GOOGLE_CREDENTIALS_FILE"
    assert out["gcp.hmac"]["metadata"]["accessId"] == "GOOG1EABCDEF"
    assert json.loads(out["sa_key_file_as_text"])["client_email"] == "backdoor@p1.iam.gserviceaccount.com"
    assert out["slack.oauth"]["token_type"] == "bot" and out["slack.oauth"]["authed_user"]["id"] == "U1"
    assert out["errors"][0] == "invalid_auth for token xoxb-***redacted***"
    assert out["errors"][2] == "could not connect to postgresql://cordon:***redacted***@db.internal:5432/cordon"
    assert out["ecs.environment"][1] == {"name": "REGION", "value": "eu-west-1"}
    assert out["pagination"] == {"NextToken": "eyJuZXh0IjoyfQ==", "IsTruncated": True}
    assert out["db"] == {"dbPassword": "***redacted***", "hasPassword": True, "password": None}


def test_no_secret_reaches_any_table(ledger_url):
    ledger = Ledger(ledger_url, key=KEY, checkpoint_every=1)
    payloads = _payloads()
    for kind, payload in payloads.items():
        ledger.append(f"enrichment.{kind}", {"response": payload})
    ledger.open_case("aws|1|key|AKIA", "det-1", {"raw": payloads["cloudtrail"]}, "pb")
    ledger.dead_letter("events.json", 7, "responseElements", f"bad record with token={SECRETS[6]}",
                       json.dumps(payloads["sts.assume_role"]))
    with ledger.engine.connect() as conn:
        dump = json.dumps([[list(r) for r in conn.execute(sa.select(t))]
                           for t in (ledger_table, cases_table, dead_letters_table, checkpoints_table)], default=str)
    for s in SECRETS:
        assert s not in dump, s
    assert "***redacted***" in dump
    assert ledger.verify().ok


# -- command line --------------------------------------------------------------------------------

def test_cli_upgrade_checkpoint_anchor_verify_and_grants(tmp_path):
    from typer.testing import CliRunner

    from cordon.cli import app

    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {"CORDON_DATABASE_URL": url, "CORDON_LEDGER_KEY": KEY, "CORDON_LEDGER_CHECKPOINT_EVERY": "0"}
    res = runner.invoke(app, ["db", "upgrade"], env=env)
    assert res.exit_code == 0 and f"schema at {HEAD} (was empty)" in res.output, res.output
    ledger = Ledger(url, key=KEY, checkpoint_every=0)
    for i in range(5):
        ledger.append("step", {"i": i})
    anchor = tmp_path / "anchor.json"
    res = runner.invoke(app, ["audit", "checkpoint", "--export", str(anchor)], env=env)
    assert res.exit_code == 0 and "seq 5" in res.output and json.loads(anchor.read_text())["seq"] == 5
    res = runner.invoke(app, ["audit", "verify", "--anchor", str(anchor)], env=env)
    # the chain's first record (signed on append), the one just made and the anchor
    assert res.exit_code == 0 and "5 record(s) and 3 checkpoint(s) verified" in res.output, res.output
    _truncate_and_rewrite_head(ledger, keep=3, drop_checkpoints_after=3)
    res = runner.invoke(app, ["audit", "verify", "--anchor", str(anchor)], env=env)
    assert res.exit_code == 1 and "BROKEN at record 4" in res.output and "truncated" in res.output, res.output
    anchor.write_text("{}")
    res = runner.invoke(app, ["audit", "verify", "--anchor", str(anchor)], env=env)
    assert res.exit_code == 2 and "field 'format'" in res.output
    res = runner.invoke(app, ["audit", "checkpoint"], env={**env, "CORDON_LEDGER_KEY": ""})
    assert res.exit_code == 2 and "CORDON_LEDGER_KEY is not set" in res.output
    res = runner.invoke(app, ["db", "grants", "--role", "cordon_app", "--schema", "cordon"], env=env)
    assert res.exit_code == 0 and 'GRANT SELECT, INSERT ON "cordon"."ledger" TO "cordon_app";' in res.output
    assert "UPDATE" not in [ln for ln in res.output.splitlines() if '"ledger" TO' in ln][0]
