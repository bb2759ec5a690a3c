"""int8_vector: a bigint[] under a name of its own, for arrays sent from numpy

The similarity check's fingerprints and look-up send arrays of ~2,300 values; a
parameter of this type is encoded in one numpy operation (core.int8_vectors)
instead of asyncpg's codec, element by element. PostgreSQL only; SQLite sends
no arrays.

Revision ID: 0008_int8_vector
Revises: 0007_events_one_index
Create Date: 2026-12-01 11:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from core.models import CREATE_INT8_VECTOR, INT8_VECTOR

revision: str = "0008_int8_vector"
down_revision: str | None = "0007_events_one_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(CREATE_INT8_VECTOR)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"DROP DOMAIN IF EXISTS {INT8_VECTOR}")
