"""fingerprints: keyed by (submission_id, ordinal) instead of a serial id

A serial id cost PostgreSQL a sequence call per row and a third index on
every row written; the new key also serves deleting a submission's rows,
which had an index of its own. Existing rows keep their order: each
submission's rows are numbered from 0 in the order of their old ids.

Revision ID: 0006_fingerprint_key
Revises: 0005_fingerprints
Create Date: 2026-12-01 04:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.models import FINGERPRINT_CLEANUP

revision: str = "0006_fingerprint_key"
down_revision: str | None = "0005_fingerprints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite renames a copy of the table into place, which its trigger on submissions would refuse.
SQLITE_TRIGGER = "DROP TRIGGER IF EXISTS submissions_forget_fingerprints"
NUMBER_IN_ID_ORDER = """
    UPDATE fingerprints SET ordinal = (
        SELECT numbered.n FROM (
            SELECT id, row_number() OVER (PARTITION BY submission_id ORDER BY id) - 1 AS n FROM fingerprints
        ) AS numbered WHERE numbered.id = fingerprints.id
    )
"""
NUMBER_IN_ID_ORDER_PG = """
    UPDATE fingerprints AS f SET ordinal = numbered.n
    FROM (SELECT id, row_number() OVER (PARTITION BY submission_id ORDER BY id) - 1 AS n FROM fingerprints) AS numbered
    WHERE numbered.id = f.id
"""


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    op.add_column("fingerprints", sa.Column("ordinal", sa.Integer(), nullable=True))
    op.execute(NUMBER_IN_ID_ORDER_PG if dialect == "postgresql" else NUMBER_IN_ID_ORDER)
    _without_sqlite_trigger(dialect)
    with op.batch_alter_table("fingerprints", recreate="always" if dialect == "sqlite" else "auto") as batch:
        batch.drop_index("ix_fingerprints_submission_id")
        if dialect == "postgresql":
            batch.drop_constraint("fingerprints_pkey", type_="primary")
        batch.drop_column("id")
        batch.alter_column("ordinal", existing_type=sa.Integer(), nullable=False)
        batch.create_primary_key("fingerprints_pkey", ["submission_id", "ordinal"])
    _with_sqlite_trigger(dialect)


def _without_sqlite_trigger(dialect: str) -> None:
    if dialect == "sqlite":
        op.execute(SQLITE_TRIGGER)


def _with_sqlite_trigger(dialect: str) -> None:
    if dialect == "sqlite":
        for statement in FINGERPRINT_CLEANUP["sqlite"]:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    _without_sqlite_trigger(dialect)
    serial = "BIGSERIAL" if dialect == "postgresql" else "INTEGER"
    big = "BIGINT" if dialect == "postgresql" else "INTEGER"
    op.execute(
        f"CREATE TABLE fingerprints_by_id (id {serial} NOT NULL PRIMARY KEY, assignment_id {big} NOT NULL,"
        f" hash BIGINT NOT NULL, submission_id {big} NOT NULL, position INTEGER NOT NULL)"
    )
    op.execute(
        "INSERT INTO fingerprints_by_id (assignment_id, hash, submission_id, position)"
        " SELECT assignment_id, hash, submission_id, position FROM fingerprints ORDER BY submission_id, ordinal"
    )
    op.drop_table("fingerprints")
    op.rename_table("fingerprints_by_id", "fingerprints")
    if dialect == "postgresql":
        op.execute("ALTER TABLE fingerprints RENAME CONSTRAINT fingerprints_by_id_pkey TO fingerprints_pkey")
        op.execute("ALTER SEQUENCE fingerprints_by_id_id_seq RENAME TO fingerprints_id_seq")
    op.create_index("ix_fingerprints_lookup", "fingerprints", ["assignment_id", "hash"])
    op.create_index("ix_fingerprints_submission_id", "fingerprints", ["submission_id"])
    _with_sqlite_trigger(dialect)
