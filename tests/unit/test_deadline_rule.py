"""One deadline-window rule for intake and the pages (core.deadlines): an extension only ever adds time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.routes.views import window_for
from core.deadlines import WindowState, student_window
from core.models import Assignment, Extension

OPENS = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CUTOFF = DEADLINE + timedelta(days=2)


class OneRow:
    """Stands in for the page's database session: every scalar() query finds ``row``."""

    def __init__(self, row: Any) -> None:
        self.row = row

    async def scalar(self, _statement: Any) -> Any:
        return self.row


def page_window(extension: Extension | None) -> Any:
    assignment = Assignment(id=1, opens_at=OPENS, deadline=DEADLINE, cutoff_at=CUTOFF)
    return asyncio.run(window_for(OneRow(extension), assignment, 7))  # type: ignore[arg-type]


def test_an_extension_earlier_than_the_deadline_changes_nothing_on_the_page_or_at_intake() -> None:
    early = Extension(assignment_id=1, user_id=7, deadline=DEADLINE - timedelta(days=3), cutoff_at=DEADLINE)
    shown = page_window(early)
    judged = student_window(OPENS, DEADLINE, CUTOFF, early.deadline, early.cutoff_at)

    assert shown == judged
    assert (shown.deadline, shown.cutoff_at, shown.extended) == (DEADLINE, CUTOFF, False)
    # Between the extension's dates and the assignment's: on time, as intake accepts it.
    assert shown.state_at(DEADLINE - timedelta(days=1)) is WindowState.open
    assert shown.state_at(DEADLINE + timedelta(days=1)) is WindowState.late


def test_a_later_extension_moves_both_dates_and_says_so() -> None:
    later = Extension(assignment_id=1, user_id=7, deadline=DEADLINE + timedelta(days=5), cutoff_at=CUTOFF)
    shown = page_window(later)
    assert (shown.deadline, shown.cutoff_at, shown.extended) == (DEADLINE + timedelta(days=5), CUTOFF, True)
    assert shown.state_at(CUTOFF + timedelta(days=1)) is WindowState.open


@pytest.mark.parametrize(
    ("moment", "state"),
    [
        (OPENS - timedelta(seconds=1), WindowState.not_open),
        (OPENS, WindowState.open),
        (DEADLINE, WindowState.open),
        (DEADLINE + timedelta(seconds=1), WindowState.late),
        (CUTOFF, WindowState.late),
        (CUTOFF + timedelta(seconds=1), WindowState.closed),
    ],
)
def test_the_window_state_at_its_edges(moment: datetime, state: WindowState) -> None:
    assert page_window(None).state_at(moment) is state
