"""descriptor_rows: the descriptor log every vector index is kept current from

The service's vector index becomes the library's sharded index (ballistic.retrieval.sharded), whose
shards load a snapshot and replay the rows written after it from a row source: this table. It is filled
here from the descriptors the exhibits hold (id order), so an existing database is indexed as before.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-10 12:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import api.db

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('descriptor_rows',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exhibit_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('space', sa.String(length=20), nullable=False),
    sa.Column('version', sa.String(length=100), nullable=False),
    sa.Column('partition', sa.String(length=200), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['exhibit_id'], ['exhibits.id'], ),
    sa.PrimaryKeyConstraint('seq'),
    sqlite_autoincrement=True,
    )
    op.create_index('ix_descriptor_rows_space_version_seq', 'descriptor_rows', ['space', 'version', 'seq'],
                    unique=False)
    op.execute("INSERT INTO descriptor_rows (exhibit_id, space, version, partition, dim, vector, created_at) "
               "SELECT id, CASE WHEN exhibit_type = 'bullet' THEN 'bullet' ELSE 'breech_face' END, "
               "descriptor_version, partition, descriptor_dim, descriptor, created_at FROM exhibits "
               "WHERE descriptor IS NOT NULL AND descriptor_version IS NOT NULL ORDER BY id")


def downgrade() -> None:
    op.drop_index('ix_descriptor_rows_space_version_seq', table_name='descriptor_rows')
    op.drop_table('descriptor_rows')
