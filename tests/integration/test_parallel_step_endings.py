"""Parallel steps ending at the same moment: exactly one of them finishes the submission.

The four steps after store run on four workers; their endings race. Each
ending locks the submission, and the last one to get the lock must see the
others' endings and mark the submission complete, once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select, update

from core.models import Event, Submission, SubmissionStep
from core.pipeline import StepState
from core.steps import finish_step
from tests.fixtures.factories import Factory

FAN_OUT = ("similarity", "admin", "receipt", "thumbnail")


async def test_the_last_of_four_parallel_endings_completes_the_submission_once(
    factory: Factory, sessions: Any, redis: Any
) -> None:
    world = await factory.world()
    ids = [(await factory.submission(world, f"essay {n}\n".encode())).id for n in range(12)]
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id.in_(ids), SubmissionStep.step.in_(("scan", "store")))
            .values(state=StepState.succeeded.value)
        )
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id.in_(ids), SubmissionStep.step.in_(FAN_OUT))
            .values(state=StepState.running.value)
        )

    await asyncio.gather(
        *(
            finish_step(sessions, redis, submission_id, step, StepState.succeeded, result={})
            for submission_id in ids
            for step in FAN_OUT
        )
    )

    async with sessions() as session:
        statuses = list(await session.scalars(select(Submission.status).where(Submission.id.in_(ids))))
        completions = list(
            await session.scalars(
                select(Event.topic).where(
                    Event.topic.in_([f"submission.{i}" for i in ids]), Event.type == "submission.complete"
                )
            )
        )
    assert statuses == ["complete"] * len(ids)
    assert sorted(completions) == sorted(f"submission.{i}" for i in ids)
