"""PostgreSQL grants for the application's database role: append-only where it matters.

The schema owner (who runs ``cordon db upgrade``) owns the tables; Cordon's processes connect as
an application role that may:

* ``ledger``, ``dead_letters``, ``ledger_checkpoints``: SELECT, INSERT only (never UPDATE, DELETE,
  TRUNCATE; the triggers of revision 0002 refuse those even to the owner);
* ``case_detections``, ``incident_cases``: SELECT, INSERT;
* ``ledger_head``: SELECT, UPDATE (the one row every append moves; ``SELECT ... FOR UPDATE``
  needs UPDATE);
* ``cases``: SELECT, INSERT, UPDATE (mutable case state);
* ``alembic_version``: SELECT (to find the schema at head);
* any other table of :data:`cordon.audit.migrations.METADATA_SOURCES` (e.g. an outbox, the
  ``refusal_windows`` counters, whose summarised rows may be pruned): SELECT, INSERT, UPDATE, DELETE;
* the schema's sequences: USAGE, SELECT (serial ids).

PostgreSQL docs: https://www.postgresql.org/docs/current/sql-grant.html. Passwords are not set
here: ``ALTER ROLE cordon_app PASSWORD ...`` or use your platform's IAM authentication.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cordon.audit.migrations import target_metadata

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

FIXED_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "ledger": ("SELECT", "INSERT"),
    "dead_letters": ("SELECT", "INSERT"),
    "ledger_checkpoints": ("SELECT", "INSERT"),
    "case_detections": ("SELECT", "INSERT"),
    "incident_cases": ("SELECT", "INSERT"),
    "ledger_head": ("SELECT", "UPDATE"),
    "cases": ("SELECT", "INSERT", "UPDATE"),
    "alembic_version": ("SELECT",),
}
DEFAULT_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def _ident(value: str, field: str) -> str:
    if not _IDENT.match(value or ""):
        raise ValueError(f"{field}: {value!r} is not a plain SQL identifier (letters, digits, _; at most 63)")
    return f'"{value}"'


def table_privileges() -> dict[str, tuple[str, ...]]:
    """Table name -> privileges granted to the application role (module docstring)."""
    out = dict(FIXED_PRIVILEGES)
    for md in target_metadata():
        for name in md.tables:
            out.setdefault(name, DEFAULT_PRIVILEGES)
    return out


def grants_sql(role: str, schema: str = "public", *, create_role: bool = True) -> list[str]:
    """The statements that (create and) grant ``role`` on the tables in ``schema``; idempotent.

    Raises :class:`ValueError` naming ``role``/``schema`` when either is not a plain identifier.
    """
    r = _ident(role, "role")
    s = _ident(schema, "schema")
    out = []
    if create_role:
        out.append(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
                   f"CREATE ROLE {r} LOGIN; END IF; END $$")
    out.append(f"GRANT USAGE ON SCHEMA {s} TO {r}")
    for table, privileges in sorted(table_privileges().items()):
        out.append(f"REVOKE ALL ON {s}.{_ident(table, 'table')} FROM {r}")
        out.append(f"GRANT {', '.join(privileges)} ON {s}.{_ident(table, 'table')} TO {r}")
    out.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}")
    return out


def apply_grants(engine: Engine, role: str, *, create_role: bool = True) -> list[str]:
    """Run :func:`grants_sql` for the connection's ``current_schema()`` in one transaction, as
    the connecting (owner) role; returns the statements. Raises :class:`ValueError` for a non-
    PostgreSQL engine, SQLAlchemy's ``DBAPIError`` when the owner may not grant."""
    if engine.dialect.name != "postgresql":
        raise ValueError(f"database URL: grants apply to PostgreSQL only, not {engine.dialect.name}")
    with engine.begin() as conn:
        schema = conn.execute(sa.text("select current_schema()")).scalar_one()
        statements = grants_sql(role, schema, create_role=create_role)
        for stmt in statements:
            conn.exec_driver_sql(stmt)
    return statements
