"""fingerprints: no foreign keys; a trigger on submissions removes them instead

Checking each of a submission's ~6,000 fingerprint rows against two parents
cost PostgreSQL as much as writing them. See core.models.Fingerprint.

Revision ID: 0005_fingerprints
Revises: 0004_uploads
Create Date: 2026-11-30 04:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

from core.models import FINGERPRINT_CLEANUP

revision: str = "0005_fingerprints"
down_revision: str | None = "0004_uploads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's foreign keys have no names: batch mode finds them by this convention.
SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
FOREIGN_KEYS = (("assignment_id", "assignments"), ("submission_id", "submissions"))


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        for column, _ in FOREIGN_KEYS:
            op.execute(f"ALTER TABLE fingerprints DROP CONSTRAINT IF EXISTS fingerprints_{column}_fkey")
    else:
        with op.batch_alter_table("fingerprints", naming_convention=SQLITE_NAMES) as batch:
            for column, parent in FOREIGN_KEYS:
                batch.drop_constraint(f"fk_fingerprints_{column}_{parent}", type_="foreignkey")
    for statement in FINGERPRINT_CLEANUP.get(dialect, ()):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    op.execute("DROP TRIGGER IF EXISTS submissions_forget_fingerprints" + (" ON submissions" if dialect == "postgresql" else ""))
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS forget_fingerprints()")
    with op.batch_alter_table("fingerprints", naming_convention=SQLITE_NAMES) as batch:
        for column, parent in FOREIGN_KEYS:
            batch.create_foreign_key(
                f"fk_fingerprints_{column}_{parent}" if dialect == "sqlite" else f"fingerprints_{column}_fkey",
                parent, [column], ["id"], ondelete="CASCADE",
            )
