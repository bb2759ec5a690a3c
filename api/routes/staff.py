"""JSON for the staff pages: grades, grade release, the live submissions table, the dashboard.

Everything answers 404 to anyone who is not staff of the course concerned,
the same as for something that does not exist: ``core.grades`` raises
``GradeRefused``, answered by one exception handler (``api.errors``). Each
write goes through the request's own session, in one unit of work.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from sqlalchemy import select

from api.deps import CurrentUser, RedisDep, SessionDep
from core import keys, wording
from core.clock import isoformat, utcnow
from core.grades import (
    cancel_release,
    enter_grade,
    marking_progress,
    release_now,
    schedule_release,
    staff_assignment,
)
from core.marking import claims_of
from core.models import Assignment, Enrolment, Event, Submission, SubmissionStep, TopicSeq, User
from core.pipeline import STEP_NAMES

router = APIRouter(prefix="/api", tags=["staff"])

Filter = Literal["all", "late", "failed", "quarantined", "unscanned", "similar"]
HIGH_SIMILARITY = 40.0
TABLE_LIMIT = 500


class GradeIn(BaseModel):
    grade: str = Field(default="", max_length=40)
    feedback: str = Field(default="", max_length=20_000)


class ReleaseIn(BaseModel):
    # Absent or null: release now. Otherwise an ISO 8601 time with its zone.
    at: datetime | None = None
    # "Release now" with an undo window: released this many seconds from now, cancellable until then.
    undo_seconds: int | None = Field(default=None, ge=1, le=3600)


@router.put("/submissions/{submission_id}/grade")
async def put_grade(
    submission_id: int, body: GradeIn, user: CurrentUser, session: SessionDep, redis: RedisDep
) -> dict[str, Any]:
    submission = await enter_grade(session, redis, submission_id, user.id, body.grade, body.feedback)
    return {
        "submission_id": submission.id,
        "grade": submission.grade,
        "feedback": submission.feedback,
        "progress": await marking_progress(session, submission.assignment_id),
    }


@router.post("/assignments/{assignment_id}/release")
async def release(
    assignment_id: int, body: ReleaseIn, user: CurrentUser, session: SessionDep, redis: RedisDep
) -> dict[str, Any]:
    if body.at is None and body.undo_seconds is None:
        summary = await release_now(session, redis, assignment_id, user.id)
        return {
            "released_at": isoformat(summary.released_at),
            "grades_sent": summary.grades_sent,
            "flashes_created": summary.flashes_created,
            "already_released": summary.already_released,
            "detail": summary.detail,
        }
    at = body.at if body.at is not None else utcnow() + timedelta(seconds=body.undo_seconds or 0)
    at, seq = await schedule_release(session, redis, assignment_id, user.id, at)
    # seq: the event this change published on the assignment's topic, so the page that asked can
    # tell its echo (and anything older) from a later change by someone else.
    return {"scheduled_at": isoformat(at), "detail": f"Release scheduled for {isoformat(at)}.", "seq": seq}


@router.delete("/assignments/{assignment_id}/release")
async def cancel(assignment_id: int, user: CurrentUser, session: SessionDep, redis: RedisDep) -> dict[str, Any]:
    seq = await cancel_release(session, redis, assignment_id, user.id)
    if seq is None:
        return {"cancelled": False, "detail": "Nothing was scheduled."}
    return {"cancelled": True, "detail": "Scheduled release cancelled.", "seq": seq}


def similarity_score(steps: dict[str, SubmissionStep]) -> float | None:
    step = steps.get("similarity")
    score = (step.result or {}).get("score") if step is not None else None
    return float(score) if isinstance(score, (int, float)) else None


def keep(row: dict[str, Any], wanted: Filter) -> bool:
    if wanted == "late":
        return bool(row["late"])
    if wanted == "failed":
        return "failed" in row["steps"].values() or row["status"] == "needs_attention"
    if wanted == "unscanned":
        return row["steps"].get("scan") == "skipped"
    if wanted == "quarantined":
        return row["status"] == "quarantined"
    if wanted == "similar":
        return row["similarity"] is not None and row["similarity"] >= HIGH_SIMILARITY
    return True


@router.get("/staff/assignments/{assignment_id}/submissions")
async def submissions_table(
    assignment_id: int, user: CurrentUser, session: SessionDep, show: Annotated[Filter, Query(alias="filter")] = "all"
) -> dict[str, Any]:
    assignment = await staff_assignment(session, assignment_id, user.id)
    submissions = list(
        await session.scalars(
            select(Submission)
            .where(Submission.assignment_id == assignment_id)
            .order_by(Submission.received_at.desc(), Submission.id.desc())
            .limit(TABLE_LIMIT)
        )
    )
    ids = [s.id for s in submissions]
    steps: dict[int, dict[str, SubmissionStep]] = {i: {} for i in ids}
    if ids:
        for step in await session.scalars(select(SubmissionStep).where(SubmissionStep.submission_id.in_(ids))):
            steps[step.submission_id][step.step] = step
    topics = [keys.submission_topic(i) for i in ids]
    seqs: dict[str, int] = {}
    if topics:
        found = await session.execute(select(TopicSeq.topic, TopicSeq.seq).where(TopicSeq.topic.in_(topics)))
        seqs = {topic: int(seq) for topic, seq in found.all()}
    names = {
        u.id: u.name
        for u in await session.scalars(select(User).where(User.id.in_({s.user_id for s in submissions} or {0})))
    }
    markers = await claims_of(session, ids)
    rows = []
    for submission in submissions:
        own = steps[submission.id]
        row = {
            "id": submission.id,
            "topic": keys.submission_topic(submission.id),
            "seq": seqs.get(keys.submission_topic(submission.id), 0),
            "student": names.get(submission.user_id, "?"),
            "attempt": submission.attempt,
            "received_at": isoformat(submission.received_at),
            "late": submission.late,
            "status": submission.status,
            "filename": submission.original_filename,
            "steps": {name: own[name].state if name in own else "pending" for name in STEP_NAMES},
            "similarity": similarity_score(own),
            "grade": submission.grade,
            # Who has claimed it for marking (core.marking), updated live by marking.state on the staff topic.
            "marker": markers.get(submission.id),
        }
        # In core.wording's words: a finished but unscanned file is "complete, not virus-scanned".
        row["status_text"], row["status_tone"] = wording.overall(submission.status, row["steps"]["scan"])
        if keep(row, show):
            rows.append(row)
    return {
        "assignment_id": assignment.id,
        "filter": show,
        "steps": list(STEP_NAMES),
        "rows": rows,
        "progress": await marking_progress(session, assignment_id),
        "released_at": isoformat(assignment.grades_released_at) if assignment.grades_released_at else None,
        "release_scheduled_at": (
            isoformat(assignment.release_scheduled_at) if assignment.release_scheduled_at else None
        ),
    }


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


async def latest_replicas(session: SessionDep) -> dict[str, int]:
    """Workers per pool as the autoscaler last decided them (none: no autoscaler has run)."""
    row = await session.scalar(
        select(Event)
        .where(Event.topic == keys.FLEET_TOPIC, Event.type == "autoscaler.decision")
        .order_by(Event.seq.desc())
        .limit(1)
    )
    pools = (row.data or {}).get("pools", []) if row is not None else []
    return {str(p.get("pool")): int(p.get("desired", 0)) for p in pools if isinstance(p, dict)}


@router.get("/staff/dashboard")
async def dashboard_data(user: CurrentUser, session: SessionDep, redis: RedisDep) -> dict[str, Any]:
    """Arrivals per minute around now with the deadlines in view, queue depth per task, step latencies."""
    course_ids = list(
        await session.scalars(
            select(Enrolment.course_id).where(Enrolment.user_id == user.id, Enrolment.role == "staff")
        )
    )
    if not course_ids:
        raise HTTPException(404, "There is no dashboard for you: you teach no course.")
    now = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=1)
    start, end = now - timedelta(minutes=60), now + timedelta(minutes=30)
    assignments = list(await session.scalars(select(Assignment).where(Assignment.course_id.in_(course_ids))))
    assignment_ids = [a.id for a in assignments] or [0]
    arrivals = [0] * 60
    received = await session.scalars(
        select(Submission.received_at).where(
            Submission.assignment_id.in_(assignment_ids), Submission.received_at >= start
        )
    )
    for moment in received:
        index = int((moment - start).total_seconds() // 60)
        if 0 <= index < 60:
            arrivals[index] += 1
    deadlines = [
        {"assignment_id": a.id, "title": a.title, "at": isoformat(a.deadline)}
        for a in assignments
        if start <= a.deadline <= end
    ]
    latencies: dict[str, dict[str, float | None]] = {}
    finished = await session.execute(
        select(SubmissionStep.step, SubmissionStep.started_at, SubmissionStep.finished_at)
        .join(Submission, Submission.id == SubmissionStep.submission_id)
        .where(
            Submission.assignment_id.in_(assignment_ids),
            SubmissionStep.finished_at >= start,
            SubmissionStep.started_at.is_not(None),
        )
    )
    samples: dict[str, list[float]] = {name: [] for name in STEP_NAMES}
    for step, started, ended in finished.all():
        if step in samples and started is not None and ended is not None:
            samples[step].append((ended - started).total_seconds() * 1000)
    for name, values in samples.items():
        latencies[name] = {"p50_ms": percentile(values, 0.5), "p95_ms": percentile(values, 0.95), "count": len(values)}
    replicas = await latest_replicas(session)
    queues = []
    for task in (*keys.TASKS, keys.MAINTENANCE_TASK):
        try:
            depth = int(await redis.zcard(keys.queue_name(task)))
            alive = bool(await redis.exists(keys.worker_heartbeat(task)))
        except (RedisError, OSError):
            depth, alive = -1, False
        queues.append({"task": task, "depth": depth, "worker_alive": alive, "replicas": replicas.get(task)})
    return {
        "window": {"start": isoformat(start), "end": isoformat(end), "minutes": 60},
        "arrivals_per_minute": arrivals,
        "deadlines": deadlines,
        "queues": queues,
        "latencies": latencies,
    }
