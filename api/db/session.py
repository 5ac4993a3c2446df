"""Database engine, session factory and migrations (SQLAlchemy 2, Alembic).

SQLite is the embedded default. To keep the hash-chained audit log linear and the
write-once rules simple, every SQLite transaction starts with ``BEGIN IMMEDIATE``
(writers queue on the busy timeout instead of failing on a stale snapshot); WAL
lets readers of committed data proceed. On PostgreSQL the audit append takes a
transaction-scoped advisory lock instead (see :mod:`api.audit`). No SQLite-only SQL
is used outside those dialect switches and the append-only triggers in the migration.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

__all__ = ["Base", "UTCDateTime", "make_engine", "make_sessionmaker", "session_scope", "upgrade", "downgrade", "utcnow"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


def make_engine(url: str, *, echo: bool = False, immediate: bool = True) -> Engine:
    """An engine; on SQLite ``immediate`` makes every transaction ``BEGIN IMMEDIATE`` (writers), otherwise
    plain deferred ``BEGIN`` (read-only sessions: WAL readers never wait for the writer)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    s = factory()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def sqlite_foreign_keys_off(conn) -> Iterator[None]:
    """SQLite: switch foreign-key enforcement off around a migration (batch mode rebuilds tables that
    others reference by copy, drop and rename, which enforcement would refuse or cascade), then back on,
    and refuse the result if ``PRAGMA foreign_key_check`` finds any dangling reference. The PRAGMA only
    works outside a transaction, so it goes to the DB-API connection before SQLAlchemy begins one."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.dbapi_connection
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")
    bad = raw.execute("PRAGMA foreign_key_check").fetchall()
    if bad:
        raise RuntimeError(f"migration left {len(bad)} dangling foreign key(s), e.g. {bad[:3]}")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """``alembic upgrade head`` on this engine (programmatic, same connection settings)."""
    from alembic import command

    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.connect() as conn:
        with sqlite_foreign_keys_off(conn):
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()


def downgrade(engine: Engine, revision: str) -> None:
    """``alembic downgrade <revision>`` on this engine (tests, and a deliberate roll-back)."""
    from alembic import command

    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.connect() as conn:
        with sqlite_foreign_keys_off(conn):
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            conn.commit()
