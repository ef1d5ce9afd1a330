"""Cordon's database schema migrations (Alembic), run from code: no ``alembic.ini`` at runtime.

Layout: ``env.py`` and ``versions/NNNN_*.py`` next to this file (shipped in the wheel).
Alembic docs: https://alembic.sqlalchemy.org/en/latest/api/commands.html (programmatic use),
https://alembic.sqlalchemy.org/en/latest/cookbook.html#sharing-a-connection-across-one-or-more-programmatic-migration-commands

* :func:`ensure_schema` is what :class:`cordon.audit.ledger.Ledger` calls on construction: one
  cheap ``alembic_version`` read per database URL per process (cached), and an upgrade to head
  only when the database is behind (``CORDON_DB_AUTO_UPGRADE=0`` turns the upgrade off, then a
  database that is behind raises :class:`SchemaError` asking for ``cordon db upgrade``).
* :func:`upgrade` is ``cordon db upgrade``. A database created by the previous version's
  ``metadata.create_all`` (tables present, no ``alembic_version``) is stamped at
  :data:`BASELINE_REVISION` first, then upgraded.
* PostgreSQL schemas: the tables, the trigger function and ``alembic_version`` are created
  unqualified, so they land in the first schema of the connection's ``search_path``; put
  ``?options=-csearch_path%3Dcordon`` in the URL to use a schema other than ``public``.
* Concurrency: the upgrade runs in one transaction (``BEGIN IMMEDIATE`` on SQLite, a
  transaction-scoped advisory lock on PostgreSQL), so processes starting at once migrate once.

Tables owned by other modules: add ``"package.module:metadata_name"`` to
:data:`METADATA_SOURCES` (autogenerate then sees them) and a revision in ``versions/`` whose
``down_revision`` is the current head, written out with explicit ``op.create_table`` (see
``script.py.mako``; :func:`new_revision` generates one).
"""

from __future__ import annotations

import importlib
import os
import threading
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent

#: ``module:attribute`` of every MetaData whose tables these migrations own (for autogenerate
#: and :func:`cordon.audit.migrations.grants.grants_sql`).
METADATA_SOURCES: tuple[str, ...] = ("cordon.audit.ledger:metadata", "cordon.approvals.outbox:metadata",
                                     "cordon.sensors.store:metadata")

#: The revision that matches the schema ``metadata.create_all`` made before migrations existed.
BASELINE_REVISION = "0001"

#: Key of the PostgreSQL advisory lock held while upgrading (any constant 64-bit integer).
ADVISORY_LOCK_KEY = 0x636F72646F6E  # "cordon"

_ready: set[str] = set()
_ready_lock = threading.Lock()


class SchemaError(RuntimeError):
    """The database's schema is not what this version of Cordon needs and was not upgraded."""


def target_metadata() -> list[sa.MetaData]:
    """The MetaData objects named in :data:`METADATA_SOURCES`, imported."""
    out = []
    for source in METADATA_SOURCES:
        module, _, attr = source.partition(":")
        out.append(getattr(importlib.import_module(module), attr))
    return out


def alembic_config(*, connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic :class:`~alembic.config.Config` built in code: ``script_location`` is this
    package; ``connection`` (shared, already in a transaction) or ``url`` (offline ``--sql``)."""
    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision id in ``versions/`` (e.g. ``"0002"``)."""
    head = _script().get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    """Every revision id in ``versions/``."""
    return {s.revision for s in _script().walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    """The revision recorded in the database's ``alembic_version`` (``None`` when absent)."""
    return MigrationContext.configure(conn).get_current_revision()


def _has_pre_alembic_schema(conn: Connection) -> bool:
    return sa.inspect(conn).has_table("ledger")


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None, bool]:
    """Upgrade the database behind ``engine`` to ``revision``; returns ``(before, after,
    stamped)`` where ``stamped`` says a pre-Alembic database was stamped at the baseline first.

    ``engine`` should be the ledger's writer engine (on SQLite it begins ``IMMEDIATE``).
    Raises SQLAlchemy's ``DBAPIError`` when the role may not run DDL.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("select pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        before = current_revision(conn)
        stamped = False
        if before is None and _has_pre_alembic_schema(conn):
            command.stamp(alembic_config(connection=conn), BASELINE_REVISION)
            stamped = True
        command.upgrade(alembic_config(connection=conn), revision)
        after = current_revision(conn)
    return before, after, stamped


def upgrade_sql(url: str, revision: str = "head") -> None:
    """Print the SQL of an upgrade from empty to ``revision`` for ``url``'s dialect (offline
    mode, nothing is executed): for DBAs who apply DDL themselves."""
    command.upgrade(alembic_config(url=url), revision, sql=True)


def _redacted(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def ensure_schema(engine: Engine, *, auto_upgrade: bool | None = None) -> None:
    """Make sure the database is at :func:`head_revision`, upgrading when allowed.

    Cached per URL (which includes any ``search_path`` option) for the life of the process.
    ``auto_upgrade`` defaults to ``CORDON_DB_AUTO_UPGRADE`` (``1``; ``0`` turns it off).
    Raises :class:`SchemaError` when the database is at an unknown (newer) revision, when it is
    behind and auto-upgrade is off, or when the upgrade fails (e.g. an application role that
    may not run DDL: run ``cordon db upgrade`` as the schema owner).
    """
    key = engine.url.render_as_string(hide_password=False)
    if key in _ready:
        return
    with _ready_lock:
        if key in _ready:
            return
        with engine.connect() as conn:
            current = current_revision(conn)
        head = head_revision()
        if current != head:
            if current is not None and current not in known_revisions():
                raise SchemaError(f"{_redacted(engine)}: database is at schema revision {current!r}, which this "
                                  f"version of Cordon does not know (it needs {head!r}); upgrade Cordon")
            if auto_upgrade is None:
                auto_upgrade = os.environ.get("CORDON_DB_AUTO_UPGRADE", "1").strip() not in ("0", "false", "no")
            if not auto_upgrade:
                raise SchemaError(f"{_redacted(engine)}: database is at schema revision {current!r}, Cordon needs "
                                  f"{head!r}; run `cordon db upgrade` (CORDON_DB_AUTO_UPGRADE=0)")
            writer = engine.execution_options(cordon_write=True)
            try:
                upgrade(writer)
            except sa.exc.DBAPIError as exc:
                first = str(exc.orig or exc).splitlines()[0]
                raise SchemaError(f"{_redacted(engine)}: could not upgrade the schema from {current!r} to {head!r}: "
                                  f"{first}; run `cordon db upgrade` as the schema owner") from exc
        if not (engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")):
            _ready.add(key)  # an in-memory SQLite is a new database for every engine: never cached


def forget_cache() -> None:
    """Forget which databases were found at head (tests that drop and recreate schemas)."""
    with _ready_lock:
        _ready.clear()


def new_revision(message: str, *, url: str | None = None, autogenerate: bool = False) -> None:
    """Developer helper: write ``versions/NNNN_<slug>.py`` (the next number after the head) from
    the template (with ``autogenerate``, diffed against the database at ``url``, default an
    in-memory SQLite, after upgrading it to head). Then ``ruff check --fix`` the file."""
    head = head_revision()
    rev_id = f"{int(head) + 1:04d}" if head.isdigit() else None
    if not autogenerate:
        command.revision(alembic_config(), message=message, rev_id=rev_id)
        return
    engine = sa.create_engine(url or "sqlite://")
    upgrade(engine)
    with engine.begin() as conn:
        command.revision(alembic_config(connection=conn), message=message, autogenerate=True, rev_id=rev_id)
