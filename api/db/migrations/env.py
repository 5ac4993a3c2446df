"""Alembic environment: the target metadata is the service's SQLAlchemy models.

Run programmatically by :func:`api.db.upgrade` (which hands over a connection), or from a
shell for PostgreSQL deployments::

    BALLISTIC_DATABASE_URL=postgresql+psycopg://... python -c "from api.db import *; \\
        from api.settings import Settings; upgrade(make_engine(Settings().database_url))"
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

import api.db.models  # noqa: F401  (registers the tables)
from api.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from api.db import sqlite_foreign_keys_off

    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn, sqlite_foreign_keys_off(conn):
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
