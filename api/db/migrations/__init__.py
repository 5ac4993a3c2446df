"""Alembic migrations of the service schema (run by ``api.db.upgrade``)."""
