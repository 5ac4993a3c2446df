"""initial schema: cases, exhibits, jobs, candidates, reviews, hit events, API keys, audit log

The audit log is made append-only in the database too: UPDATE and DELETE on it are refused by
triggers (SQLite and PostgreSQL); the hash chain still detects any edit made around them.

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 15:54:43.037133
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import api.db


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('scope', sa.String(length=20), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('revoked_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_table('audit_log',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('ts', sa.String(length=40), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('resource_type', sa.String(length=50), nullable=False),
    sa.Column('resource_id', sa.String(length=100), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('hash'),
    sa.UniqueConstraint('prev_hash')
    )
    op.create_table('cases',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('agency', sa.String(length=200), nullable=False),
    sa.Column('case_number', sa.String(length=200), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('agency', 'case_number', name='uq_cases_agency_number')
    )
    op.create_table('service_state',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('exhibits',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exhibit_ref', sa.String(length=200), nullable=False),
    sa.Column('exhibit_type', sa.String(length=20), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('calibre', sa.String(length=50), nullable=True),
    sa.Column('firing_pin_shape', sa.String(length=50), nullable=True),
    sa.Column('land_count', sa.Integer(), nullable=True),
    sa.Column('twist', sa.String(length=10), nullable=True),
    sa.Column('recovery_date', sa.Date(), nullable=True),
    sa.Column('place_text', sa.String(length=500), nullable=True),
    sa.Column('lat', sa.Float(), nullable=True),
    sa.Column('lon', sa.Float(), nullable=True),
    sa.Column('firearm_serial', sa.String(length=100), nullable=True),
    sa.Column('spacing_um', sa.Float(), nullable=True),
    sa.Column('original_sha256', sa.String(length=64), nullable=False),
    sa.Column('original_filename', sa.String(length=300), nullable=False),
    sa.Column('original_size', sa.BigInteger(), nullable=False),
    sa.Column('media_type', sa.String(length=10), nullable=False),
    sa.Column('region', sa.String(length=50), nullable=False),
    sa.Column('partition', sa.String(length=200), nullable=False),
    sa.Column('derived_path', sa.String(length=300), nullable=True),
    sa.Column('preprocess_info', sa.Text(), nullable=True),
    sa.Column('descriptor', sa.LargeBinary(), nullable=True),
    sa.Column('descriptor_version', sa.String(length=100), nullable=True),
    sa.Column('descriptor_dim', sa.Integer(), nullable=True),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('original_sha256')
    )
    with op.batch_alter_table('exhibits', schema=None) as batch_op:
        batch_op.create_index('ix_exhibits_case', ['case_id'], unique=False)
        batch_op.create_index('ix_exhibits_partition', ['partition'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exhibit_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('candidates_found', sa.Integer(), nullable=True),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', api.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['exhibit_id'], ['exhibits.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_exhibit', ['exhibit_id'], unique=False)
        batch_op.create_index('ix_jobs_status', ['status'], unique=False)

    op.create_table('candidates',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exhibit_a_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exhibit_b_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('pair_lo', sa.BigInteger(), nullable=False),
    sa.Column('pair_hi', sa.BigInteger(), nullable=False),
    sa.Column('region', sa.String(length=50), nullable=False),
    sa.Column('vector_score', sa.Float(), nullable=True),
    sa.Column('similarity', sa.Float(), nullable=False),
    sa.Column('cmc_count', sa.Integer(), nullable=False),
    sa.Column('identification', sa.Boolean(), nullable=False),
    sa.Column('registration', sa.JSON(), nullable=False),
    sa.Column('explanation', sa.JSON(), nullable=False),
    sa.Column('algorithm_version', sa.String(length=100), nullable=False),
    sa.Column('descriptor_version', sa.String(length=100), nullable=True),
    sa.Column('review_status', sa.String(length=20), nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['exhibit_a_id'], ['exhibits.id'], ),
    sa.ForeignKeyConstraint(['exhibit_b_id'], ['exhibits.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pair_lo', 'pair_hi', 'region', name='uq_candidates_pair_region')
    )
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.create_index('ix_candidates_a', ['exhibit_a_id'], unique=False)
        batch_op.create_index('ix_candidates_b', ['exhibit_b_id'], unique=False)

    op.create_table('reviews',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('candidate_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('decision', sa.String(length=20), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('examiner', sa.String(length=200), nullable=False),
    sa.Column('key_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['candidate_id'], ['candidates.id'], ),
    sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.create_index('ix_reviews_candidate', ['candidate_id'], unique=False)

    op.create_table('hit_events',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('candidate_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('review_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exhibit_a_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exhibit_b_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('cmc_count', sa.Integer(), nullable=False),
    sa.Column('confirmed_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['candidate_id'], ['candidates.id'], ),
    sa.ForeignKeyConstraint(['exhibit_a_id'], ['exhibits.id'], ),
    sa.ForeignKeyConstraint(['exhibit_b_id'], ['exhibits.id'], ),
    sa.ForeignKeyConstraint(['review_id'], ['reviews.id'], ),
    sa.PrimaryKeyConstraint('seq'),
    sqlite_autoincrement=True,
    )
    _append_only_triggers()


def _append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for what in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_log_no_{what.lower()} BEFORE {what} ON audit_log "
                       f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")
    elif dialect == "postgresql":
        op.execute("CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                   "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table('hit_events')
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_index('ix_reviews_candidate')

    op.drop_table('reviews')
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.drop_index('ix_candidates_b')
        batch_op.drop_index('ix_candidates_a')

    op.drop_table('candidates')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status')
        batch_op.drop_index('ix_jobs_exhibit')

    op.drop_table('jobs')
    with op.batch_alter_table('exhibits', schema=None) as batch_op:
        batch_op.drop_index('ix_exhibits_partition')
        batch_op.drop_index('ix_exhibits_case')

    op.drop_table('exhibits')
    op.drop_table('service_state')
    op.drop_table('cases')
    op.drop_table('audit_log')
    op.drop_table('api_keys')
