"""Database URLs for the ledger's tests: SQLite always, PostgreSQL when a server answers.

PostgreSQL is expected on 127.0.0.1:5432 with trust auth and a ``test`` database (override with
``CORDON_TEST_POSTGRES_URL``). Each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid

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
