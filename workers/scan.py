"""The scan step: stream the upload through clamd before anything else touches it.

A flagged file is moved to the quarantine area — never to the store, never
sent anywhere — and the student (a flash on ``user.<id>``) and staff (the
dashboard) are told. Without a scanner configured the step is ``skipped``,
never reported clean.
"""

from __future__ import annotations

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.flash import FlashSpec, add_flash
from core.models import Assignment, Submission
from core.storage import Area, Storage
from core.unit_of_work import unit_of_work
from workers.base import step_worker_settings
from workers.clamd import ClamdClient, ClamdError, ClamdSizeLimitExceeded, ClamdUnavailable, ScanVerdict
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError


async def handle(ctx: StepContext) -> Outcome:
    scanner = ctx.settings.scanner
    if not scanner.configured:
        return Outcome(state="skipped", result={"verdict": "not scanned", "reason": "no scanner configured"})
    client = ClamdClient.from_settings(scanner)
    submission = ctx.submission
    area = await _where_is(ctx.storage, submission.storage_key)
    try:
        verdict, engine = await client.scan(ctx.storage.open(area, submission.storage_key))
    except ClamdUnavailable as error:
        raise TransientStepError(f"virus scanner unavailable: {error}") from error
    except ClamdSizeLimitExceeded as error:
        raise PermanentStepError(
            f"file too large for the virus scanner ({error}); raise clamd's StreamMaxLength to scan it"
        ) from error
    except ClamdError as error:
        raise PermanentStepError(f"virus scanner error: {error}") from error

    if not verdict.infected:
        if area is Area.quarantine:
            # An earlier attempt quarantined it; never let a later verdict release it.
            raise PermanentStepError("file is in quarantine but rescans clean; left quarantined for staff")
        return Outcome(result={"verdict": "clean", "engine": engine})

    # Quarantine first, so the file is out of reach before anyone is told.
    await ctx.storage.move(Area.incoming, Area.quarantine, submission.storage_key)
    await _tell_student_and_staff(ctx.sessions, ctx.redis, submission, verdict)
    return Outcome(result={"verdict": "infected", "signature": verdict.signature, "engine": engine}, quarantine=True)


async def _where_is(storage: Storage, key: str) -> Area:
    """The file is in incoming, unless an earlier attempt already quarantined it."""
    if await storage.exists(Area.incoming, key):
        return Area.incoming
    if await storage.exists(Area.quarantine, key):
        return Area.quarantine
    raise PermanentStepError(f"the uploaded file is missing from the incoming area ({key})")


def quarantine_flash(submission: Submission, verdict: ScanVerdict) -> FlashSpec:
    return FlashSpec(
        kind="error",
        text=(
            f"Your file “{submission.original_filename}” was flagged by the virus scanner "
            f"({verdict.signature}) and quarantined; it has not been stored or sent anywhere."
        ),
        link_url=f"/submissions/{submission.id}",
        link_text="See the submission",
        auto_hide_seconds=None,  # stays until the student has seen it
        dedupe_key=f"quarantined:{submission.id}",
    )


async def _tell_student_and_staff(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, submission: Submission, verdict: ScanVerdict
) -> None:
    """One flash for the owner and one dashboard event; a retried attempt adds nothing."""
    async with unit_of_work(sessions, redis) as work:
        flash = await add_flash(work, submission.user_id, quarantine_flash(submission, verdict))
        if flash is not None:
            assignment = await work.session.get(Assignment, submission.assignment_id)
            assert assignment is not None  # a submission's assignment is never deleted
            await work.emit(
                keys.course_staff_topic(assignment.course_id),
                "submission.quarantined",
                {
                    "submission_id": submission.id,
                    "assignment_id": submission.assignment_id,
                    "course_id": assignment.course_id,
                    "signature": verdict.signature,
                },
                actor="worker:scan",
            )


WorkerSettings = step_worker_settings("scan", handle)
