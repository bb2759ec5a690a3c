"""The similarity step: built-in winnowing, or an external Turnitin-style provider.

With the external provider the step submits the file and frees the worker at
once ("waiting"); the report then completes the step by the api's webhook or
by a chain of deferred poll jobs on this queue (``similarity_poll``), one
every ``poll_interval_seconds``, up to ``max_polls``, then the step fails
with a clear reason. ``finish_step`` records whichever comes first; the other
changes nothing. If Redis loses the poll chain, the reconciler re-runs the
step once its wait is over, and the re-run picks up the provider submission
saved on the step row instead of creating a second one.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from arq import func
from arq.connections import ArqRedis
from arq.worker import Function
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.models import SubmissionStep
from core.pipeline import TERMINAL_STATES, StepState
from core.settings import Settings, get_settings
from core.similarity.external import ExternalProvider, close_shared_clients, final_result
from core.similarity.provider import CheckRequest, ProviderRejected, ProviderUnavailable, make_provider
from core.steps import finish_step
from workers.base import on_worker_shutdown, step_function, worker_settings
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError

log = logging.getLogger(__name__)

STEP = "similarity"
POLL_FUNCTION = "similarity_poll"
POLL_ACTOR = "worker:similarity-poll"


async def handle(ctx: StepContext) -> Outcome:
    async def remember(result: dict[str, Any]) -> None:
        # From here the provider's webhook and our polls act on the row: it must say running.
        await ctx.record_start()
        await save_result(ctx.sessions, ctx.submission.id, result)

    try:
        provider = make_provider(ctx.settings, ctx.sessions)
    except ProviderRejected as error:  # misconfigured: no retry will help
        raise PermanentStepError(str(error)) from error
    try:
        outcome = await provider.check(CheckRequest(ctx.submission, ctx.storage, ctx.previous_result, remember))
    except ProviderUnavailable as error:
        raise TransientStepError(str(error)) from error
    except ProviderRejected as error:
        raise PermanentStepError(str(error)) from error
    finally:
        await provider.close()
    if outcome.state == "waiting":
        # Saved before the first poll is due, so the poll finds what was done.
        await remember(outcome.result)
        await schedule_poll(ctx.redis, ctx.settings, ctx.submission.id, 1)
        return Outcome("waiting", result=outcome.result, wait_seconds=outcome.wait_seconds)
    return Outcome("skipped" if outcome.state == "skipped" else "succeeded", result=outcome.result)


async def poll(ctx: dict[str, Any], submission_id: int, number: int) -> str:
    """One deferred look at the external report; queues the next look until ``max_polls``."""
    settings: Settings = ctx["settings"]
    sessions: async_sessionmaker[AsyncSession] = ctx["sessions"]
    redis: ArqRedis = ctx["redis"]
    async with sessions() as session:
        row = await session.scalar(
            select(SubmissionStep).where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == STEP)
        )
    if row is None:
        return "missing"
    if StepState(row.state) in TERMINAL_STATES:
        return "already " + row.state  # the webhook (or another poll) got there first
    if row.state != StepState.running.value:
        return "step not waiting"  # it failed over to a retry, which starts polls of its own
    if row.wait_until is None:
        # The step's own job has not recorded "waiting" yet: finishing now would race it.
        await schedule_poll(redis, settings, submission_id, number + 1)
        return "step not waiting yet"
    state = dict(row.result or {})
    provider_id = state.get("provider_submission_id")
    if not provider_id:
        return "not submitted"

    provider = ExternalProvider.from_settings(settings)
    score: float | None = None
    try:
        score = await provider.poll(state)
    except ProviderRejected as error:
        await finish_step(sessions, redis, submission_id, STEP, StepState.failed, error=str(error), actor=POLL_ACTOR)
        return "failed"
    except ProviderUnavailable as error:
        # A poll that could not reach the provider counts; the next one tries again.
        log.warning("similarity poll failed", extra={"submission_id": submission_id, "error": str(error)})
    finally:
        await provider.close()

    if score is not None:
        done = await finish_step(
            sessions,
            redis,
            submission_id,
            STEP,
            StepState.succeeded,
            result=final_result(str(provider_id), score),
            actor=POLL_ACTOR,
        )
        return "succeeded" if done else "already finished"
    await save_result(sessions, submission_id, state)
    if number >= settings.similarity.max_polls:
        await finish_step(
            sessions,
            redis,
            submission_id,
            STEP,
            StepState.failed,
            actor=POLL_ACTOR,
            error=f"no similarity report from the provider after {number} polls "
            f"({number * settings.similarity.poll_interval_seconds:g} s)",
        )
        return "gave up"
    await schedule_poll(redis, settings, submission_id, number + 1)
    return "pending"


async def schedule_poll(redis: ArqRedis, settings: Settings, submission_id: int, number: int) -> None:
    await redis.enqueue_job(
        POLL_FUNCTION,
        submission_id,
        number,
        _job_id=keys.poll_job_id(STEP, submission_id, number),
        _queue_name=keys.queue_name(STEP),
        _defer_by=timedelta(seconds=settings.similarity.poll_interval_seconds),
    )


async def save_result(sessions: async_sessionmaker[AsyncSession], submission_id: int, result: dict[str, Any]) -> None:
    """Note progress on the step row, unless the step has finished meanwhile."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(
                SubmissionStep.submission_id == submission_id,
                SubmissionStep.step == STEP,
                SubmissionStep.state.not_in([state.value for state in TERMINAL_STATES]),
            )
            .values(result=result)
        )


# A stopping worker closes its kept-alive connections to the provider.
on_worker_shutdown(close_shared_clients)


def functions(settings: Settings) -> list[Function]:
    """The step itself and its deferred poll, both on the similarity queue."""
    return [
        step_function(STEP, handle, settings),
        func(poll, name=POLL_FUNCTION, timeout=60, max_tries=3),
    ]


WorkerSettings = worker_settings(STEP, functions(get_settings()), get_settings())
