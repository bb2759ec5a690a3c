"""Every Redis key, queue name, pub/sub channel and topic, in one place.

Nobody spells one of these by hand elsewhere.
"""

from __future__ import annotations

import re

PREFIX = "handin"

# Steps (= worker tasks) in pipeline order; the reconciler runs on its own queue.
TASKS: tuple[str, ...] = ("scan", "store", "similarity", "admin", "receipt", "thumbnail")
MAINTENANCE_TASK = "maintenance"


def queue_name(task: str) -> str:
    return f"{PREFIX}:queue:{task}"


def job_id(step: str, submission_id: int) -> str:
    return f"{step}:{submission_id}"


def poll_job_id(step: str, submission_id: int, poll: int) -> str:
    """A deferred follow-up job for a step waiting on an external provider."""
    return f"{step}-poll:{submission_id}:{poll}"


def parse_job_id(value: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"([a-z_]+)(?:-poll)?:(\d+)(?::\d+)?", value)
    return (match.group(1), int(match.group(2))) if match else None


def events_channel(topic: str) -> str:
    """Redis pub/sub channel that carries a topic's event envelopes."""
    return f"{PREFIX}:events:{topic}"


EVENTS_CHANNEL_PREFIX = f"{PREFIX}:events:"


def completed_counter(task: str) -> str:
    """Jobs a pool has finished, for the autoscaler's drain-rate measurement."""
    return f"{PREFIX}:stats:completed:{task}"


def worker_heartbeat(task: str) -> str:
    return f"{PREFIX}:stats:workers:{task}"


def idempotency_key(user_id: int, assignment_id: int, key: str) -> str:
    return f"{PREFIX}:idem:{user_id}:{assignment_id}:{key}"


def ws_ticket_used(ticket_id: str) -> str:
    return f"{PREFIX}:ticket:used:{ticket_id}"


def receipt_sent(submission_id: int) -> str:
    """Set once the mail server accepted a submission's receipt, so a retry sends none."""
    return f"{PREFIX}:receipt:sent:{submission_id}"


def web_session_revoked(session_id: str) -> str:
    return f"{PREFIX}:session:revoked:{session_id}"


WEB_SESSION_REVOKED_CHANNEL = f"{PREFIX}:sessions:revoked"
AUTHZ_INVALIDATE_CHANNEL = f"{PREFIX}:authz:invalidate"
AUTOSCALER_LOCK = f"{PREFIX}:autoscaler:leader"


# Topics: the URIs browsers subscribe to through the router.
def submission_topic(submission_id: int) -> str:
    return f"submission.{submission_id}"


def assignment_topic(assignment_id: int) -> str:
    return f"assignment.{assignment_id}"


def user_topic(user_id: int) -> str:
    return f"user.{user_id}"


def course_topic(course_id: int) -> str:
    return f"course.{course_id}"


STAFF_DASHBOARD_TOPIC = "staff.dashboard"


# Grade release: one deferred job per assignment on the maintenance queue.
RELEASE_GRADES_FUNCTION = "release_grades"


def release_job_id(assignment_id: int) -> str:
    return f"release-grades:{assignment_id}"
