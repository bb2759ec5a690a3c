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


def wake_list(queue: str) -> str:
    """A token per job queued to run now; a waiting worker of the queue pops one and polls."""
    return f"{queue}:wake"


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


def busy_counter(task: str) -> str:
    """Milliseconds a pool's jobs ran, summed over jobs (the autoscaler's service time, io pools)."""
    return f"{PREFIX}:stats:busy-ms:{task}"


def occupied_counter(task: str) -> str:
    """Milliseconds a pool's workers had a job running, summed over workers (service time, cpu pools)."""
    return f"{PREFIX}:stats:occupied-ms:{task}"


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


def login_failures(kind: str, who: str) -> str:
    """Failed logins in the current window, per account (kind "account") or client address ("address")."""
    return f"{PREFIX}:login:failures:{kind}:{who}"


def login_lockout(kind: str, who: str) -> str:
    """Present while logins for this account or address are refused (its TTL is the wait)."""
    return f"{PREFIX}:login:lockout:{kind}:{who}"


WEB_SESSION_REVOKED_CHANNEL = f"{PREFIX}:sessions:revoked"
AUTHZ_INVALIDATE_CHANNEL = f"{PREFIX}:authz:invalidate"
AUTOSCALER_LOCK = f"{PREFIX}:autoscaler:leader"
# The autoscaler's meters, holds and last decisions, so a restart or a new leader continues.
AUTOSCALER_STATE = f"{PREFIX}:autoscaler:state"


def chat_rate(user_id: int) -> str:
    """Class chat messages a user sent in the current window (shared by every router replica)."""
    return f"{PREFIX}:chat:rate:{user_id}"


# Topics: the URIs browsers subscribe to through the router.
def submission_topic(submission_id: int) -> str:
    return f"submission.{submission_id}"


def assignment_topic(assignment_id: int) -> str:
    return f"assignment.{assignment_id}"


def user_topic(user_id: int) -> str:
    return f"user.{user_id}"


def course_topic(course_id: int) -> str:
    return f"course.{course_id}"


def course_staff_topic(course_id: int) -> str:
    """Live analytics of one course (arrivals, finishes, quarantines): its staff only."""
    return f"course.{course_id}.staff"


# Fleet state for any staff member: queue depth, replicas, autoscaler decisions; no student data.
FLEET_TOPIC = "fleet"

# One spelling per topic: ids are decimal without sign or leading zero, so
# ``submission.02`` or ``submission.+2`` is refused, never a second channel for ``submission.2``.
_TOPIC = re.compile(r"(submission|assignment|user|course)\.([1-9][0-9]{0,17})(\.staff)?|(fleet)")
COURSE_STAFF = "course.staff"
TOPIC_KINDS = ("submission", "assignment", "user", "course", COURSE_STAFF, FLEET_TOPIC)


def parse_topic(topic: str) -> tuple[str, int | None] | None:
    """``(kind, id)`` of a canonical topic name (a kind of ``TOPIC_KINDS``), else ``None``.

    ``course.<id>.staff`` is kind ``course.staff``; ``fleet`` has no id.
    """
    match = _TOPIC.fullmatch(topic)
    if match is None:
        return None
    if match.group(4):
        return FLEET_TOPIC, None
    kind = match.group(1)
    if match.group(3):
        if kind != "course":
            return None
        kind = COURSE_STAFF
    return kind, int(match.group(2))


# Grade release: one deferred job per assignment on the maintenance queue.
RELEASE_GRADES_FUNCTION = "release_grades"


def release_job_id(assignment_id: int) -> str:
    return f"release-grades:{assignment_id}"


# Emailed announcements: jobs on the receipt queue (its worker sends mail), in parts that each fit its
# time limit; the students the mail server accepted one for, so a rerun or the next part skips them.
ANNOUNCEMENT_MAIL_FUNCTION = "announcement_mail"


def announcement_mail_job_id(course_id: int, seq: int, part: int) -> str:
    return f"announcement-mail:{course_id}:{seq}:{part}"


def announcement_mailed(course_id: int, seq: int) -> str:
    return f"{PREFIX}:announcement:mailed:{course_id}:{seq}"
