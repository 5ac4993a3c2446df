"""bullets (land scans), firing pins, likelihood ratios, search records

* ``land_scans``: the land engraved area scans of a bullet exhibit (write-once originals, derived
  signatures);
* ``exhibits``: the firing-pin impression of a raw cartridge scan (derived path, what was found);
* ``jobs``: the replayable search record of the job (canonical JSON) and its content hash;
* ``candidates``: ``cmc_count`` becomes optional (bullet and firing-pin scores are not CMC counts),
  log10 likelihood ratio with its interval and the calibration that produced it;
* ``hit_events``: ``cmc_count`` optional as well, and the region of the confirmed comparison
  (filled in from the candidates for existing events).

SQLite cannot drop a NOT NULL in place: ``candidates`` and ``hit_events`` are rebuilt (batch mode,
copy and rename) with foreign-key enforcement switched off around the migration by
:func:`api.db.upgrade` (and the standalone ``env.py`` path), then checked with
``PRAGMA foreign_key_check``. ``hit_events`` keeps ``AUTOINCREMENT`` (a feed cursor is never reused).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 10:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import api.db


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('land_scans',
    sa.Column('id', _ID, nullable=False),
    sa.Column('exhibit_id', _ID, nullable=False),
    sa.Column('land_index', sa.Integer(), nullable=False),
    sa.Column('original_sha256', sa.String(length=64), nullable=False),
    sa.Column('original_filename', sa.String(length=300), nullable=False),
    sa.Column('original_size', sa.BigInteger(), nullable=False),
    sa.Column('signature_path', sa.String(length=300), nullable=True),
    sa.Column('signature_info', sa.JSON(), nullable=True),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['exhibit_id'], ['exhibits.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('exhibit_id', 'land_index', name='uq_land_scans_exhibit_land'),
    sa.UniqueConstraint('original_sha256')
    )
    with op.batch_alter_table('exhibits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('firing_pin_path', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('firing_pin_info', sa.JSON(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('search_record', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('search_record_hash', sa.String(length=64), nullable=True))
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('log10_lr', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('log10_lr_low', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('log10_lr_high', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('calibration_id', sa.String(length=100), nullable=True))
        batch_op.alter_column('cmc_count', existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table('hit_events', schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column('region', sa.String(length=50), nullable=True))
        batch_op.alter_column('cmc_count', existing_type=sa.Integer(), nullable=True)
    op.execute("UPDATE hit_events SET region = (SELECT c.region FROM candidates c WHERE c.id = hit_events.candidate_id)")


def downgrade() -> None:
    # rows whose score has no CMC count cannot go back to a NOT NULL column: they are given 0
    op.execute("UPDATE hit_events SET cmc_count = 0 WHERE cmc_count IS NULL")
    op.execute("UPDATE candidates SET cmc_count = 0 WHERE cmc_count IS NULL")
    with op.batch_alter_table('hit_events', schema=None, table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.alter_column('cmc_count', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column('region')
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.alter_column('cmc_count', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column('calibration_id')
        batch_op.drop_column('log10_lr_high')
        batch_op.drop_column('log10_lr_low')
        batch_op.drop_column('log10_lr')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('search_record_hash')
        batch_op.drop_column('search_record')
    with op.batch_alter_table('exhibits', schema=None) as batch_op:
        batch_op.drop_column('firing_pin_info')
        batch_op.drop_column('firing_pin_path')
    op.drop_table('land_scans')
