"""Alembic: head builds exactly the ORM schema; upgrade/downgrade round trip; a 0001 database with data
upgrades to head."""
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


def test_upgrade_from_0001_with_data(tmp_path):
    """A database created and filled by revision 0001 upgrades to head: rows kept (feed cursor
    included), the new columns empty, hit events given their region, foreign keys intact,
    AUTOINCREMENT kept on hit_events, and the result equals the models; and it downgrades back."""
    from api.db import downgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0001")
    ts = "2024-01-01 00:00:00"
    with engine.begin() as c:
        c.exec_driver_sql(f"INSERT INTO cases (id, agency, case_number, created_at) VALUES (1, 'A', 'K-1', '{ts}')")
        for i in (1, 2):
            c.exec_driver_sql(
                "INSERT INTO exhibits (id, case_id, exhibit_ref, exhibit_type, role, original_sha256, "
                "original_filename, original_size, media_type, region, partition, created_at) VALUES "
                f"({i}, 1, 'e{i}', 'cartridge_case', 'evidence', '{str(i) * 64}', 'f{i}.x3p', 10, 'x3p', "
                f"'breech_face', 'breech_face|9mm|any', '{ts}')")
        c.exec_driver_sql(f"INSERT INTO jobs (id, exhibit_id, kind, status, attempts, max_attempts, created_at, "
                          f"updated_at) VALUES (1, 1, 'correlate', 'done', 1, 3, '{ts}', '{ts}')")
        c.exec_driver_sql(
            "INSERT INTO candidates (id, exhibit_a_id, exhibit_b_id, pair_lo, pair_hi, region, similarity, cmc_count, "
            "identification, registration, explanation, algorithm_version, review_status, job_id, created_at) VALUES "
            f"(1, 1, 2, 1, 2, 'breech_face', 12.5, 12, 1, '{{}}', '{{}}', 'cmc-coarse2fine/1', 'confirmed', 1, '{ts}')")
        c.exec_driver_sql(f"INSERT INTO api_keys (id, name, scope, key_hash, prefix, created_at) VALUES "
                          f"(1, 'k', 'examiner', 'h', 'bk_', '{ts}')")
        c.exec_driver_sql(f"INSERT INTO reviews (id, candidate_id, decision, examiner, key_id, created_at) VALUES "
                          f"(1, 1, 'confirmed', 'E', 1, '{ts}')")
        c.exec_driver_sql("INSERT INTO hit_events (seq, kind, candidate_id, review_id, exhibit_a_id, exhibit_b_id, "
                          f"score, cmc_count, confirmed_by, created_at) VALUES (7, 'hit', 1, 1, 1, 2, 12.5, 12, 'E', '{ts}')")
    upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.exec_driver_sql("SELECT seq, region, cmc_count FROM hit_events").all() == [(7, "breech_face", 12)]
        assert conn.exec_driver_sql("SELECT cmc_count, log10_lr, review_status FROM candidates").all() == [
            (12, None, "confirmed")]
        assert conn.exec_driver_sql("SELECT search_record FROM jobs").all() == [(None,)]
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'hit_events'").scalar()
        assert "AUTOINCREMENT" in ddl
        assert conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'hit_events'").scalar() == 7
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # enforcement back on
    assert "land_scans" in set(inspect(engine).get_table_names())
    downgrade(engine, "0001")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT seq, cmc_count FROM hit_events").all() == [(7, 12)]
    assert "land_scans" not in set(inspect(engine).get_table_names())
    engine.dispose()
