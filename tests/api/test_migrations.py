"""Alembic: the initial revision builds exactly the ORM schema; upgrade/downgrade round trip."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from api.db import Base, make_engine, upgrade


def test_upgrade_head_matches_models_and_downgrades(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == [], diffs
    names = set(inspect(engine).get_table_names())
    assert {"exhibits", "jobs", "candidates", "reviews", "hit_events", "api_keys", "audit_log", "cases"} <= names
    upgrade(engine)  # idempotent at head
    from alembic import command

    from api.db import alembic_config
    cfg = alembic_config(str(engine.url))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
        conn.commit()
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_no_sqlite_only_sql_in_models():
    """The schema compiles for PostgreSQL too (the production option)."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    for t in Base.metadata.sorted_tables:
        ddl = str(CreateTable(t).compile(dialect=postgresql.dialect()))
        assert "AUTOINCREMENT" not in ddl.upper()
