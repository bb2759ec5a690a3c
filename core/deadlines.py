"""An assignment's dates as they apply to one student: the one rule intake and the pages share.

A per-student extension only ever gives more time: each of the deadline and
the cut-off is the later of the assignment's own and the extension's. An
extension row that would end earlier than the assignment (staff moved the
assignment's dates past it) changes nothing, and the page does not call the
dates "your extension" then.

The window's state at a moment decides everything else: before ``opens_at``
nothing is accepted; up to and including the deadline work is on time; after
it and up to and including the cut-off work is accepted and marked late;
after the cut-off nothing is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.clock import utcnow


class WindowState(StrEnum):
    not_open = "not_open"
    open = "open"
    late = "late"
    closed = "closed"


@dataclass(frozen=True)
class Window:
    opens_at: datetime
    deadline: datetime
    cutoff_at: datetime
    extended: bool  # an extension moved the deadline or the cut-off later

    def state_at(self, now: datetime) -> WindowState:
        if now < self.opens_at:
            return WindowState.not_open
        if now <= self.deadline:
            return WindowState.open
        if now <= self.cutoff_at:
            return WindowState.late
        return WindowState.closed

    @property
    def state(self) -> WindowState:
        return self.state_at(utcnow())

    @property
    def accepting(self) -> bool:
        return self.state in (WindowState.open, WindowState.late)


def student_window(
    opens_at: datetime,
    deadline: datetime,
    cutoff_at: datetime,
    extended_deadline: datetime | None = None,
    extended_cutoff: datetime | None = None,
) -> Window:
    """The dates that apply to a student with (or without) an extension row."""
    new_deadline = max(deadline, extended_deadline) if extended_deadline is not None else deadline
    new_cutoff = max(cutoff_at, extended_cutoff) if extended_cutoff is not None else cutoff_at
    extended = new_deadline != deadline or new_cutoff != cutoff_at
    return Window(opens_at, new_deadline, new_cutoff, extended)
