"""Database models: the source of truth. Redis only carries the work."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


# SQLite's INTEGER PRIMARY KEY autoincrements only as plain INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300))
    # A service account (e.g. the central admin system) may publish; people are student/staff.
    is_service: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    enrolments: Mapped[list[Enrolment]] = relationship(back_populates="user")


class Course(Base):
    __tablename__ = "courses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    title: Mapped[str] = mapped_column(String(200))

    enrolments: Mapped[list[Enrolment]] = relationship(back_populates="course")
    assignments: Mapped[list[Assignment]] = relationship(back_populates="course")


class Enrolment(Base):
    __tablename__ = "enrolments"
    __table_args__ = (UniqueConstraint("user_id", "course_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))  # "student" | "staff"

    user: Mapped[User] = relationship(back_populates="enrolments")
    course: Mapped[Course] = relationship(back_populates="enrolments")


class Assignment(Base):
    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    opens_at: Mapped[datetime]
    deadline: Mapped[datetime]
    # After the deadline and before the cut-off a submission is accepted but flagged late.
    cutoff_at: Mapped[datetime]
    max_bytes: Mapped[int] = mapped_column(BigInteger, default=20 * 1024 * 1024)
    # Accepted kinds as sniffed from content: "pdf", "text", "image", "docx", ...
    accepted_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # What happens to work handed in between deadline and cut-off, in words shown to students.
    late_policy: Mapped[str] = mapped_column(Text, default="")
    grades_released_at: Mapped[datetime | None] = mapped_column(default=None)
    release_scheduled_at: Mapped[datetime | None] = mapped_column(default=None)

    course: Mapped[Course] = relationship(back_populates="assignments")


class Extension(Base):
    """A per-student deadline/cut-off extension."""

    __tablename__ = "extensions"
    __table_args__ = (UniqueConstraint("assignment_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    deadline: Mapped[datetime]
    cutoff_at: Mapped[datetime]


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (
        UniqueConstraint("assignment_id", "user_id", "attempt"),
        UniqueConstraint("user_id", "assignment_id", "idempotency_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    original_filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    storage_key: Mapped[str] = mapped_column(String(200))
    thumbnail_key: Mapped[str | None] = mapped_column(String(200), default=None)
    status: Mapped[str] = mapped_column(String(20), default="received", index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # When the upload request began (the deadline is judged by it); None on rows from before it was recorded.
    upload_started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    grade: Mapped[str | None] = mapped_column(String(40), default=None)
    feedback: Mapped[str | None] = mapped_column(Text, default=None)
    graded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)

    assignment: Mapped[Assignment] = relationship()
    user: Mapped[User] = relationship(foreign_keys=[user_id])
    steps: Mapped[list[SubmissionStep]] = relationship(back_populates="submission", order_by="SubmissionStep.id")


class SubmissionStep(Base):
    __tablename__ = "submission_steps"
    __table_args__ = (UniqueConstraint("submission_id", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # While a step waits on an external party (e.g. a similarity report) it is
    # "running" with a deadline after which the reconciler steps in.
    wait_until: Mapped[datetime | None] = mapped_column(default=None)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    submission: Mapped[Submission] = relationship(back_populates="steps")


class Upload(Base):
    """A resumable (tus) upload in progress: its bytes grow a partial object in the incoming area.

    ``received`` is the offset acknowledged to the client; the deadline is judged by
    ``created_at``. A request writing to it holds ``locked_until`` (a short lease, so a
    crashed api frees it), which keeps two tabs from writing at once.
    """

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    length: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    filename: Mapped[str] = mapped_column(String(255))
    partial_key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str | None] = mapped_column(String(20), default=None)
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    lock_token: Mapped[str | None] = mapped_column(String(32), default=None)
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id", ondelete="SET NULL"), default=None)


class Event(Base):
    """The audit trail: every state change, with its actor and context."""

    __tablename__ = "events"
    # Its index serves every read by topic and seq (a second one on the same columns was dropped: 0007).
    __table_args__ = (UniqueConstraint("topic", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    topic: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(60))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    actor: Mapped[str] = mapped_column(String(100), default="system")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TopicSeq(Base):
    """The last `seq` handed out per topic; bumping it serialises writers of one topic."""

    __tablename__ = "topic_seqs"

    topic: Mapped[str] = mapped_column(String(100), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class Fingerprint(Base):
    """Inverted winnowing index: fingerprint hash → submissions that contain it.

    No foreign keys: a 64 KB text writes a few thousand rows, and PostgreSQL checked each
    row against both parents (a trigger and an index probe per row, per key), which
    doubled the cost of indexing a submission. The rows are written only by the
    similarity step for a submission it has just read, and a trigger on
    ``submissions`` (FINGERPRINT_CLEANUP) removes them with their submission,
    including when an assignment, course or user is deleted.
    """

    __tablename__ = "fingerprints"
    __table_args__ = (Index("ix_fingerprints_lookup", "assignment_id", "hash"),)

    # The key is the submission and the fingerprint's place in its list, not a serial id: a
    # submission's rows are written together and in order, so the key's index grows at its end
    # and also serves deleting a submission's rows, where a serial id cost a sequence call per
    # row and a third index (a fifth of PostgreSQL's CPU for writing a submission's rows).
    submission_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    assignment_id: Mapped[int] = mapped_column(BigId)
    hash: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(Integer)


# Per dialect: the statements that make deleting submissions delete their fingerprints.
# PostgreSQL: once per statement, from the deleted rows' transition table.
FINGERPRINT_CLEANUP: dict[str, tuple[str, ...]] = {
    "postgresql": (
        """CREATE OR REPLACE FUNCTION forget_fingerprints() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM fingerprints AS f USING gone WHERE f.submission_id = gone.id;
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER submissions_forget_fingerprints AFTER DELETE ON submissions
        REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION forget_fingerprints()""",
    ),
    "sqlite": (
        """CREATE TRIGGER submissions_forget_fingerprints AFTER DELETE ON submissions
        BEGIN DELETE FROM fingerprints WHERE submission_id = OLD.id; END""",
    ),
}


# A bigint[] under a name of its own, for the parameters core.int8_vectors sends from numpy.
# PostgreSQL has no CREATE DOMAIN IF NOT EXISTS.
INT8_VECTOR = "int8_vector"
CREATE_INT8_VECTOR = (
    f"DO $$ BEGIN CREATE DOMAIN {INT8_VECTOR} AS bigint[]; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
)


@event.listens_for(Base.metadata, "after_create")
def _create_fingerprint_cleanup(target: Any, connection: Any, **_: Any) -> None:
    for statement in FINGERPRINT_CLEANUP.get(connection.dialect.name, ()):
        connection.exec_driver_sql(statement)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(CREATE_INT8_VECTOR)


class Flash(Base):
    """A message for one user, shown until the browser confirms it was seen."""

    __tablename__ = "flashes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20), default="info")
    text: Mapped[str] = mapped_column(Text)
    link_url: Mapped[str | None] = mapped_column(String(500), default=None)
    link_text: Mapped[str | None] = mapped_column(String(200), default=None)
    button_text: Mapped[str | None] = mapped_column(String(100), default=None)
    button_action: Mapped[str | None] = mapped_column(String(500), default=None)
    modal: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_hide_seconds: Mapped[int | None] = mapped_column(Integer, default=8)
    # Dedupes system-made flashes, e.g. one grade-release notice per user.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), default=None, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(default=None)


class WebSession(Base):
    """A logged-in browser session; logging out ends its WebSocket sessions too."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class ChatMute(Base):
    """A student who may not post in a course's class chat until ``until`` (staff moderation)."""

    __tablename__ = "chat_mutes"
    __table_args__ = (UniqueConstraint("course_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    until: Mapped[datetime]
    muted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)


class ChatRead(Base):
    """How far a user has read a course's class chat (the seq of ``course.<id>``), for unread counts."""

    __tablename__ = "chat_reads"
    __table_args__ = (UniqueConstraint("user_id", "course_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class MarkingClaim(Base):
    """A member of staff marking a submission now, so a second marker does not take the same script."""

    __tablename__ = "marking_claims"

    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"), primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
