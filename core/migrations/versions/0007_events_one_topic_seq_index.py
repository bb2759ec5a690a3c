"""events: one index on (topic, seq), the unique constraint's

ix_events_topic_seq indexed the same columns, in the same order, as the unique
constraint on (topic, seq): every event written was inserted into both, and
every read by topic and seq is served by the unique one alone.

Revision ID: 0007_events_one_index
Revises: 0006_fingerprint_key
Create Date: 2026-12-01 08:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_events_one_index"
down_revision: str | None = "0006_fingerprint_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_events_topic_seq", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_topic_seq", "events", ["topic", "seq"], unique=False)
