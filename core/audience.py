"""What each audience sees of every event and JSON view: one projection per audience, in one place.

Audiences (who they are on a topic is decided by ``core.access.audience_for``):

- ``owner``: the student a submission or ``user.<id>`` topic belongs to;
- ``member``: an enrolled student on a shared topic (``assignment.<id>``, ``course.<id>``);
- ``staff``: staff of the course (and service accounts): everything.

Students get allow-lists, nested fields included: a field nobody listed here
is hidden from them, and an event type nobody listed reaches them as the
envelope alone (seq, topic, type, at; ``data`` empty), so a new field or event
is private until someone decides otherwise. Withholding a whole event would
leave a gap in the topic's seq that the browser would keep fetching.

The one rule this module exists for: a student never receives another user's
identifiers (similarity ``matches`` name other students' users, submissions
and text spans: staff only). And the one rule beside it: a student reads only
core.wording's fixed sentences about a step (``note``; ``error`` and ``reason``
carry that sentence too), never a worker's error text, a setting's name or a
mail server's reply: staff keep those.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from core import wording


class Audience(StrEnum):
    OWNER = "owner"
    MEMBER = "member"
    STAFF = "staff"


# A shape lists the keys an audience may see; a key maps to None (the value whole:
# a scalar, or a structure that carries nothing about anyone else) or to a nested shape.
Shape = Mapping[str, "Shape | None"]
ENVELOPE_KEYS = ("seq", "topic", "type", "at")


def _keys(names: str) -> Shape:
    """A flat shape: these keys, values whole."""
    return dict.fromkeys(names.split())


# What the owner sees of each step's result (also inside step.* events and the submission view).
# No ``reason``: a worker wrote it for staff; the student reads the step's ``note`` instead.
STEP_RESULTS: dict[str, Shape] = {
    "scan": {"verdict": None, "signature": None, "engine": None},
    "store": {"sha256": None, "size": None, "verified": None},
    # No matches: they name other students. No provider ids: they are the provider's business.
    "similarity": {"provider": None, "score": None},
    "admin": {"reference": None},
    "receipt": {"message_id": None, "to": None, "delivery": None},
    "thumbnail": {"width": None, "height": None, "source": None},
}
STEP_RESULT = "result"  # a step's result: shaped by the step it belongs to, see STEP_RESULTS

_STEP_END: Shape = {
    "step": None,
    "state": None,
    STEP_RESULT: None,
    "error": None,
    "duration_ms": None,
    "reason": None,
    "note": None,
}
_FLASH: Shape = _keys("id kind text link_url link_text button_text button_action modal auto_hide_seconds created_at")
_SUBMISSION_END: Shape = {"status": None, "steps": None}

# The owner: their submission's topic and their own user topic.
OWNER_EVENTS: dict[str, Shape] = {
    "submission.received": _keys("submission_id assignment_id attempt late size sha256 filename kind status steps"),
    "step.queued": {"step": None},
    "step.running": {"step": None, "attempt": None},
    "step.progress": {"step": None, "message": None, "fraction": None},
    "step.retrying": {"step": None, "attempt": None, "error": None, "retry_in_seconds": None},
    "step.waiting": {"step": None},  # the rest is the provider's state
    "step.succeeded": _STEP_END,
    "step.failed": _STEP_END,
    "step.skipped": _STEP_END,
    "reconciler.requeued": {"step": None, "state": None},
    "submission.complete": _SUBMISSION_END,
    "submission.needs_attention": _SUBMISSION_END,
    "submission.quarantined": _SUBMISSION_END,
    "grade.released": {"submission_id": None, "grade": None, "feedback": None},
    "flash": _FLASH,
    "flash.confirmed": {"id": None, "reason": None},
    "extension.updated": {"assignment_id": None, "deadline": None, "cutoff_at": None},
    # Where the owner's submission is in marking (queued, marking, marked): never who marks it, nor a grade.
    "marking.state": {"submission_id": None, "state": None},
}

# Another enrolled student: the assignment's and the course's shared topics.
MEMBER_EVENTS: dict[str, Shape] = {
    "assignment.created": {"assignment_id": None, "title": None},
    "assignment.updated": _keys("assignment_id title opens_at deadline cutoff_at max_attempts late_policy"),
    "grades.released": {"assignment_id": None, "released_at": None},
    "grades.release_scheduled": {"assignment_id": None},
    "grades.release_cancelled": {"assignment_id": None},
    # How far the marking has got (latest attempts): counts only. The submission just marked and
    # whether it was marked stay with staff.
    "marking.updated": {"submissions": None, "graded": None},
    # Class chat is signed: members see who wrote, as in any course forum. A hidden message keeps its
    # text in hidden_* fields, which are not listed: staff only.
    "message": {"author_id": None, "args": None, "kwargs": None, "deleted": None, "hidden": None},
    "announcement": _keys("author_id text pinned emailed deleted hidden"),
    # Staff removed or hid a chat message: open pages drop message `seq` (or show it again).
    "message.deleted": {"seq": None},
    "message.hidden": {"seq": None, "hidden": None},
}

STUDENT_EVENTS: dict[Audience, dict[str, Shape]] = {Audience.OWNER: OWNER_EVENTS, Audience.MEMBER: MEMBER_EVENTS}

# One step of the JSON view and the pages (api.views.step_view) as its owner sees it.
STEP_VIEW: Shape = _keys(
    "step label state state_text tone note time time_prefix attempts queued_at started_at finished_at error result"
)
# The submission JSON view (api.views.submission_view) as its owner sees it.
SUBMISSION_VIEW: Shape = {
    **_keys(
        "id assignment_id assignment_title user_id attempt late status status_text status_tone sha256 size"
        " original_filename content_type kind received_at completed_at topic seq file_url thumbnail_url grade"
        " feedback"
    ),
    "steps": STEP_VIEW,
}


def _shape(value: Any, shape: Shape | None) -> Any:
    """``value`` cut down to ``shape``; lists are shaped item by item."""
    if shape is None:
        return value
    if isinstance(value, list):
        return [_shape(item, shape) for item in value]
    if not isinstance(value, Mapping):
        return None
    return {key: _shape(value[key], inner) for key, inner in shape.items() if key in value}


def step_result(step: str, result: Mapping[str, Any] | None, audience: Audience) -> dict[str, Any]:
    """What ``audience`` sees of one step's result."""
    if audience is Audience.STAFF:
        return dict(result or {})
    if audience is not Audience.OWNER or not isinstance(result, Mapping):
        return {}
    shaped: dict[str, Any] = _shape(result, STEP_RESULTS.get(step, {}))
    return shaped


def _with_step_results(shaped: dict[str, Any], original: Mapping[str, Any], audience: Audience) -> dict[str, Any]:
    """Put back each kept ``result`` shaped for its own step (nothing of it when the step is unnamed)."""
    if STEP_RESULT in shaped:
        step = original.get("step")
        shaped[STEP_RESULT] = step_result(step, original.get(STEP_RESULT), audience) if isinstance(step, str) else {}
    return shaped


def _in_student_words(shaped: dict[str, Any], original: Mapping[str, Any], state: str) -> dict[str, Any]:
    """A step's ``error`` and ``reason`` become its note (core.wording): the worker's words stay with staff."""
    step = original.get("step")
    if not isinstance(step, str):
        return shaped
    worker_words = original.get("error") or original.get("reason")
    result = original.get(STEP_RESULT)
    note = wording.student_note(step, state, result if isinstance(result, Mapping) else None, worker_words)
    for key in ("error", "reason"):
        if shaped.get(key):
            shaped[key] = note
    if note is not None or "note" in shaped:
        shaped["note"] = note
    return shaped


def event_data(event_type: str, data: Mapping[str, Any] | None, audience: Audience) -> dict[str, Any]:
    """What ``audience`` sees of the data of one event of ``event_type``."""
    if audience is Audience.STAFF:
        return dict(data or {})
    shape = STUDENT_EVENTS.get(audience, {}).get(event_type)
    if shape is None or not isinstance(data, Mapping):
        return {}
    shaped = _with_step_results(_shape(data, shape), data, audience)
    if event_type.startswith("step."):
        shaped = _in_student_words(shaped, data, str(data.get("state") or event_type.removeprefix("step.")))
    return shaped


def project_event(envelope: Mapping[str, Any], audience: Audience) -> dict[str, Any]:
    """One event envelope as ``audience`` sees it. Staff get the envelope itself (no copy)."""
    if audience is Audience.STAFF:
        return envelope if isinstance(envelope, dict) else dict(envelope)
    shaped = {key: envelope[key] for key in ENVELOPE_KEYS if key in envelope}
    event_type = envelope.get("type")
    data = envelope.get("data")
    shaped["data"] = event_data(event_type, data, audience) if isinstance(event_type, str) else {}
    return shaped


def project_events(envelopes: list[dict[str, Any]], audience: Audience) -> list[dict[str, Any]]:
    return [project_event(envelope, audience) for envelope in envelopes]


def step_view(view: Mapping[str, Any], audience: Audience) -> dict[str, Any]:
    """One step of a submission as ``audience`` sees it."""
    if audience is Audience.STAFF:
        return dict(view)
    if audience is not Audience.OWNER:
        return {}
    shaped = _with_step_results(_shape(view, STEP_VIEW), view, audience)
    return _in_student_words(shaped, view, str(view.get("state", "")))


def submission_view(view: Mapping[str, Any], audience: Audience) -> dict[str, Any]:
    """The submission JSON view as ``audience`` sees it (members never see another's submission)."""
    if audience is Audience.STAFF:
        return dict(view)
    if audience is not Audience.OWNER:
        return {}
    shaped: dict[str, Any] = _shape(view, SUBMISSION_VIEW)
    steps = view.get("steps")
    if isinstance(steps, list):
        shaped["steps"] = [step_view(original, audience) for original in steps if isinstance(original, Mapping)]
    return shaped
