"""index candidates.review_status

Series, the i2/GraphML exports and the workbench dashboard select the confirmed links out of every
compared pair; without an index that is a full scan of ``candidates`` (measured: p50 432 ms for the
dashboard's series rebuild on 10^4 exhibits / 10^5 candidates).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 12:00:00
"""
from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_candidates_review_status", "candidates", ["review_status"])


def downgrade() -> None:
    op.drop_index("ix_candidates_review_status", table_name="candidates")
