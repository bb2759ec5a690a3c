"""The projections of core.audience: what a student, the owner and staff see, nested fields included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core import audience
from core.audience import Audience
from core.keys import parse_topic
from core.pipeline import SubmissionStatus

OTHER_USER, OTHER_SUBMISSION = 7070, 8080


def similarity_succeeded() -> dict[str, Any]:
    """A step.succeeded of the built-in similarity check as core.steps.finish_step records it."""
    return {
        "seq": 9,
        "topic": "submission.42",
        "type": "step.succeeded",
        "at": "2026-11-27T10:00:00.123Z",
        "data": {
            "step": "similarity",
            "state": "succeeded",
            "duration_ms": 12,
            "result": {
                "provider": "builtin",
                "score": 97.5,
                "fingerprints": 40,
                "guarantee_chars": 60,
                "matches": [
                    {"submission_id": OTHER_SUBMISSION, "user_id": OTHER_USER, "score": 97.5, "spans": [[0, 99]]}
                ],
            },
        },
    }


def test_the_owner_sees_the_score_but_not_whom_they_match() -> None:
    shaped = audience.project_event(similarity_succeeded(), Audience.OWNER)

    assert shaped["data"]["result"] == {"provider": "builtin", "score": 97.5}
    assert shaped["data"]["step"] == "similarity"
    assert str(OTHER_USER) not in json.dumps(shaped) and str(OTHER_SUBMISSION) not in json.dumps(shaped)


def test_staff_see_the_matches() -> None:
    event = similarity_succeeded()
    assert audience.project_event(event, Audience.STAFF) == similarity_succeeded()


def test_an_unknown_event_type_reaches_students_as_the_envelope_alone() -> None:
    event = {"seq": 3, "topic": "course.1", "type": "something.new", "at": "t", "data": {"user_id": OTHER_USER}}
    for who in (Audience.OWNER, Audience.MEMBER):
        assert audience.project_event(event, who) == {
            "seq": 3,
            "topic": "course.1",
            "type": "something.new",
            "at": "t",
            "data": {},
        }


def test_a_new_field_is_hidden_until_listed() -> None:
    event = {
        "seq": 1,
        "topic": "submission.1",
        "type": "step.running",
        "at": "t",
        "data": {"step": "scan", "attempt": 1, "worker_host": "pod-7"},
    }
    assert audience.project_event(event, Audience.OWNER)["data"] == {"step": "scan", "attempt": 1}


def test_a_step_result_without_a_step_name_shows_nothing() -> None:
    event = {
        "seq": 1,
        "topic": "submission.1",
        "type": "step.failed",
        "at": "t",
        "data": {"state": "failed", "result": {"matches": [{"user_id": OTHER_USER}]}},
    }
    assert audience.project_event(event, Audience.OWNER)["data"] == {"state": "failed", "result": {}}


def test_members_see_how_far_marking_got_but_not_which_submission_was_marked() -> None:
    event = {
        "seq": 5,
        "topic": "assignment.3",
        "type": "marking.updated",
        "at": "t",
        "data": {"submission_id": OTHER_SUBMISSION, "marked": True, "submissions": 4, "graded": 2},
    }
    assert audience.project_event(event, Audience.MEMBER)["data"] == {"submissions": 4, "graded": 2}


def test_member_projection_of_owner_events_is_empty() -> None:
    """An owner-only event that somehow lands on a shared topic tells other students nothing."""
    assert audience.project_event(similarity_succeeded(), Audience.MEMBER)["data"] == {}


def test_the_submission_view_keeps_its_fields_but_no_matches() -> None:
    view = {
        "id": 42,
        "user_id": 1,
        "status": "completed",
        "grade": None,
        "steps": [
            {"step": "similarity", "state": "succeeded", "result": similarity_succeeded()["data"]["result"]},
            {"step": "thumbnail", "state": "succeeded", "result": {"key": "thumbs/x.png", "width": 10}},
        ],
        "internal_note": "x",
    }
    shaped = audience.submission_view(view, Audience.OWNER)
    assert shaped["steps"][0]["result"] == {"provider": "builtin", "score": 97.5}
    assert shaped["steps"][1]["result"] == {"width": 10}
    assert "internal_note" not in shaped and shaped["id"] == 42
    assert audience.submission_view(view, Audience.STAFF) == view
    assert audience.submission_view(view, Audience.MEMBER) == {}


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("submission.2", ("submission", 2)),
        ("user.17", ("user", 17)),
        ("course.3.staff", ("course.staff", 3)),
        ("fleet", ("fleet", None)),
        ("submission.02", None),
        ("submission.+2", None),
        ("submission.0", None),
        ("submission.2 ", None),
        ("submission.\uff12", None),
        ("user.3.staff", None),
        ("staff.dashboard", None),
        ("submission.1234567890123456789", None),
    ],
)
def test_only_canonical_topic_names_parse(topic: str, parsed: tuple[str, int | None] | None) -> None:
    assert parse_topic(topic) == parsed


@pytest.mark.parametrize("status", [s for s in SubmissionStatus if s is not SubmissionStatus.processing])
def test_every_submission_outcome_the_pipeline_emits_reaches_its_owner(status: SubmissionStatus) -> None:
    """core.steps emits submission.<status>; an event type missing here reaches the owner as an empty envelope."""
    shaped = audience.project_event(
        {"seq": 1, "topic": "submission.1", "type": f"submission.{status.value}", "at": "", "data": {"status": status}},
        Audience.OWNER,
    )
    assert shaped is not None and shaped["data"].get("status") == status.value
