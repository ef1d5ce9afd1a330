"""Database URLs for the ledger's tests: SQLite always, PostgreSQL when a server answers.

PostgreSQL is expected on 127.0.0.1:5432 with trust auth and a ``test`` database (override with
``CORDON_TEST_POSTGRES_URL``). Each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

POSTGRES_URL = os.environ.get("CORDON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_unavailable() -> str | None:
    """``None`` when PostgreSQL answers, else the reason (used as the skip message)."""
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: no server to test against
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}: {str(exc).splitlines()[0]}"


def fresh_postgres_schema() -> tuple[str, callable]:
    """Create a schema; return (URL whose search_path is that schema, cleanup function)."""
    schema = "cordon_t_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"

    def cleanup() -> None:
        with admin.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
        admin.dispose()

    return url, cleanup


def role_url(url: str, role: str) -> str:
    """``url`` (keeping its ``search_path`` option) connecting as ``role`` instead (trust auth)."""
    return sa.engine.make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


@contextmanager
def attacker(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction in which the append-only triggers do not fire: what someone with the
    schema owner's or the superuser's access can do. PostgreSQL: ``SET LOCAL
    session_replication_role = replica`` (superuser; ordinary triggers do not fire). SQLite: the
    triggers are dropped and re-created around the block."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            yield conn
            return
        saved = conn.exec_driver_sql("select name, sql from sqlite_master where type = 'trigger'").all()
        for name, _sql in saved:
            conn.exec_driver_sql(f'drop trigger "{name}"')
        yield conn
        for _name, sql in saved:
            conn.exec_driver_sql(sql)
