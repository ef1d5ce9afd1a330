"""Alembic environment for Cordon's schema (run by :mod:`cordon.audit.migrations`, not by an
``alembic.ini``). Online mode uses the connection passed in ``config.attributes["connection"]``
(already in a transaction, so the whole upgrade commits or rolls back together); offline mode
(``--sql``) renders DDL for ``sqlalchemy.url``'s dialect.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from cordon.audit.migrations import target_metadata

config = context.config


def _configure(**kw) -> None:
    context.configure(target_metadata=target_metadata(), render_as_batch=True, compare_type=True, **kw)


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
