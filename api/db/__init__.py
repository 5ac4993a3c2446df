"""The service's database: ``session`` (engines, sessions, UTC datetimes, migrations run from code),
``models`` (the ORM tables), ``migrations`` (Alembic). The session helpers are this package's API."""
from api.db.session import (MIGRATIONS_DIR, Base, UTCDateTime, alembic_config, downgrade, make_engine,
                            make_sessionmaker, session_scope, sqlite_foreign_keys_off, upgrade, utcnow)

__all__ = ["Base", "UTCDateTime", "make_engine", "make_sessionmaker", "session_scope", "sqlite_foreign_keys_off",
           "upgrade", "downgrade", "utcnow", "alembic_config", "MIGRATIONS_DIR"]
