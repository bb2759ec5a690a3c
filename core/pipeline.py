"""The shape of the submission pipeline: which step follows which.

intake ─▶ scan ─▶ store ─┬─▶ similarity
                         ├─▶ admin
                         ├─▶ receipt
                         └─▶ thumbnail
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StepState(enum.StrEnum):
    pending = "pending"
    queued = "queued"
    running = "running"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({StepState.succeeded, StepState.failed, StepState.skipped})


class SubmissionStatus(enum.StrEnum):
    received = "received"
    processing = "processing"
    complete = "complete"
    needs_attention = "needs_attention"
    quarantined = "quarantined"


@dataclass(frozen=True)
class Step:
    name: str
    after: tuple[str, ...]
    profile: str  # "io" or "cpu": sizes its worker pool
    label: str


STEPS: tuple[Step, ...] = (
    Step("scan", (), "io", "Virus scan"),
    Step("store", ("scan",), "io", "Stored"),
    Step("similarity", ("store",), "cpu", "Similarity check"),
    Step("admin", ("store",), "io", "Posted to admin system"),
    Step("receipt", ("store",), "io", "Receipt emailed"),
    Step("thumbnail", ("store",), "cpu", "Thumbnail"),
)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
STEPS_BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}
FIRST_STEPS: tuple[str, ...] = tuple(step.name for step in STEPS if not step.after)


def ready_steps(states: dict[str, StepState]) -> list[str]:
    """Steps still pending whose predecessors all succeeded (or were skipped)."""
    done = {name for name, state in states.items() if state in (StepState.succeeded, StepState.skipped)}
    return [
        step.name
        for step in STEPS
        if states.get(step.name) == StepState.pending and all(dep in done for dep in step.after)
    ]


def blocked_steps(states: dict[str, StepState]) -> list[str]:
    """Pending steps that can never run because a predecessor failed for good."""
    failed = {name for name, state in states.items() if state == StepState.failed}
    blocked: list[str] = []
    for step in STEPS:
        if states.get(step.name) == StepState.pending and any(dep in failed or dep in blocked for dep in step.after):
            blocked.append(step.name)
    return blocked


def overall_status(states: dict[str, StepState], quarantined: bool = False) -> SubmissionStatus:
    if quarantined:
        return SubmissionStatus.quarantined
    if not all(state.terminal for state in states.values()):
        return SubmissionStatus.processing
    if any(state == StepState.failed for state in states.values()):
        return SubmissionStatus.needs_attention
    return SubmissionStatus.complete
