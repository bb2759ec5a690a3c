"""The similarity step with the built-in provider: real files, real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import Event, Fingerprint, Submission, SubmissionStep
from core.queues import enqueue_step
from core.settings import Settings
from tests.fixtures.factories import Factory, World
from workers import similarity

_VOCABULARY = random.Random(1)
WORDS = ["".join(_VOCABULARY.choices("abcdefghijklmnopqrstuvwxyz", k=2 + i % 9)) for i in range(800)]


def essay(seed: int, chars: int) -> str:
    rng = random.Random(seed)
    sentences: list[str] = []
    size = 0
    while size < chars:
        sentence = " ".join(rng.choices(WORDS, k=rng.randint(6, 18))).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
    return "\n".join(sentences)


async def queued_similarity_step(
    factory: Factory, arq_redis: ArqRedis, world: World, content: bytes, **details: Any
) -> Submission:
    """A submission as the store step leaves it: file in the store, similarity job queued."""
    return await factory.stored_submission(world, content, step=similarity.STEP, arq_redis=arq_redis, **details)


async def similarity_row(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> SubmissionStep:
    async with sessions() as session:
        row = await session.scalar(
            select(SubmissionStep).where(
                SubmissionStep.submission_id == submission_id, SubmissionStep.step == similarity.STEP
            )
        )
    assert row is not None
    return row


async def run(run_burst: Any, settings: Settings) -> None:
    await run_burst(similarity.STEP, similarity.handle, functions=similarity.functions(settings))


async def test_a_copy_of_40_percent_scores_near_40_and_names_the_source(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    world = await factory.world()
    source_text = essay(1, 6000)
    first = await queued_similarity_step(factory, arq_redis, world, source_text.encode(), user=world.student)
    await run(run_burst, settings)

    start = source_text.index("\n", 1500) + 1
    copied = source_text[start : start + 2400]
    own = essay(2, 3600)
    # The copy is re-wrapped and re-cased: normalising still finds it.
    copy_text = own[:1800] + "\n" + copied.upper().replace("\n", "  ") + "\n" + own[1800:]
    second = await queued_similarity_step(
        factory, arq_redis, world, copy_text.encode("cp1252"), user=world.other_student
    )
    await run(run_burst, settings)

    first_row, second_row = await similarity_row(sessions, first.id), await similarity_row(sessions, second.id)
    assert first_row.state == "succeeded" and first_row.result["score"] == 0.0
    # About 2 / (w + 1) of the k-grams are kept (the winnowing density).
    expected = 2 * len(source_text) / (settings.similarity.window + 1)
    assert 0.7 * expected < first_row.result["fingerprints"] < 1.3 * expected, (first_row.result, expected)
    assert second_row.state == "succeeded"
    result = second_row.result
    assert 32 <= result["score"] <= 48, result["score"]
    top = result["matches"][0]
    assert top["submission_id"] == first.id and top["user_id"] == world.student.id
    assert top["score"] == result["score"]
    # The spans cover the copied passage of the second document.
    copy_at = copy_text.index(copied.upper()[:40])
    assert all(copy_at - 25 <= start and end <= copy_at + len(copied) + 25 for start, end in top["spans"])
    async with sessions() as session:
        indexed = await session.scalar(select(func.count()).select_from(Fingerprint))
        event = await session.scalar(
            select(Event).where(Event.topic == f"submission.{second.id}", Event.type == "step.succeeded")
        )
    assert indexed == first_row.result["fingerprints"] + result["fingerprints"]
    assert event is not None and event.data["result"]["score"] == result["score"]


async def test_the_same_students_resubmission_is_not_copying(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    world = await factory.world()
    draft = essay(3, 3000)
    await queued_similarity_step(factory, arq_redis, world, draft.encode())
    await run(run_burst, settings)
    again = await queued_similarity_step(factory, arq_redis, world, (draft + " Fixed.").encode())
    await run(run_burst, settings)

    row = await similarity_row(sessions, again.id)
    assert row.state == "succeeded"
    assert row.result["score"] == 0.0 and row.result["matches"] == []


async def test_other_assignments_are_not_compared(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    text = essay(4, 3000).encode()
    world, other_world = await factory.world(), await factory.world()
    await queued_similarity_step(factory, arq_redis, world, text)
    await run(run_burst, settings)
    elsewhere = await queued_similarity_step(factory, arq_redis, other_world, text)
    await run(run_burst, settings)

    assert (await similarity_row(sessions, elsewhere.id)).result["score"] == 0.0


async def test_an_image_is_skipped_with_no_text_to_compare(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    world = await factory.world()
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    image = await queued_similarity_step(
        factory,
        arq_redis,
        world,
        png,
        filename="photo.png",
        kind="image",
        content_type="image/png",
    )
    await run(run_burst, settings)

    row = await similarity_row(sessions, image.id)
    assert row.state == "skipped"
    assert row.result["reason"] == "no text to compare"


async def test_a_rerun_replaces_its_index_rows_instead_of_doubling_them(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    world = await factory.world()
    text = essay(5, 3000).encode()
    submission = await queued_similarity_step(factory, arq_redis, world, text)
    await run(run_burst, settings)
    # As if the job was delivered again after its worker died before recording success.
    async with sessions() as session, session.begin():
        row = await session.scalar(
            select(SubmissionStep).where(
                SubmissionStep.submission_id == submission.id, SubmissionStep.step == similarity.STEP
            )
        )
        assert row is not None
        row.state = "queued"
    await enqueue_step(arq_redis, similarity.STEP, submission.id)
    await run(run_burst, settings)

    row = await similarity_row(sessions, submission.id)
    async with sessions() as session:
        indexed = await session.scalar(select(func.count()).select_from(Fingerprint))
    assert row.state == "succeeded" and row.attempts == 2
    assert indexed == row.result["fingerprints"]


async def test_a_look_up_costs_the_same_however_many_submissions_came_before(
    factory: Factory, sessions: Any, engine: Any
) -> None:
    """Only this document's own hashes are asked for, in batches: more history, no more queries."""
    from sqlalchemy import event

    from core.similarity import index
    from core.similarity.winnowing import fingerprint

    world = await factory.world()
    text = essay(40, 20_000)
    prints = fingerprint(text, 25, 20)
    checked = await factory.submission(world, b"x", user=world.student)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM fingerprints" in statement:
            statements.append(statement)

    def logged(query: Any) -> None:  # what runs on the driver's own connection (PostgreSQL)
        count(None, None, query.query)

    def log_driver(dbapi_connection: Any, _record: Any) -> None:
        if engine.dialect.name == "postgresql":
            dbapi_connection.driver_connection.add_query_logger(logged)

    await engine.dispose()  # every connection from here on is a new one, logged
    event.listen(engine.sync_engine, "connect", log_driver)
    event.listen(engine.sync_engine, "before_cursor_execute", count)

    async def look_up() -> tuple[int, index.Hits]:
        # asyncpg hands each logged query to the loop's next turn: the index writes before land first.
        await asyncio.sleep(0)
        statements.clear()
        hits = await index.lookup(
            sessions,
            world.assignment.id,
            (p.hash for p in prints),
            submission_id=checked.id,
            exclude_user_id=world.student.id,
            max_holders=20,
        )
        await asyncio.sleep(0)
        return len(statements), hits

    source = await factory.submission(world, b"x", user=world.other_student)
    await index.replace(sessions, world.assignment.id, source.id, fingerprint(text[:5000], 25, 20))
    few_queries, few_hits = await look_up()
    for seed in range(6):
        other = await factory.submission(world, b"x", user=world.other_student)
        await index.replace(sessions, world.assignment.id, other.id, fingerprint(essay(100 + seed, 10_000), 25, 20))
    many_queries, many_hits = await look_up()
    event.remove(engine.sync_engine, "before_cursor_execute", count)
    event.remove(engine.sync_engine, "connect", log_driver)

    distinct = len({p.hash for p in prints})
    # PostgreSQL: one statement with every hash as an array; SQLite: batches of IN lists.
    expected = 1 if engine.dialect.name == "postgresql" else -(-distinct // index.LOOKUP_BATCH)
    assert few_queries == many_queries == expected
    assert set(many_hits.owners) == {source.id} and many_hits.holders == few_hits.holders


async def test_text_most_of_the_class_shares_is_boilerplate_and_copying_is_still_found(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    """The question pasted into every essay matches nobody and is left out of the score; a passage
    copied from one classmate is still found, and the look-up reads no more holders than the cap."""
    settings.similarity.boilerplate_holders = 3
    world = await factory.world()
    question = essay(50, 1200)
    classmates = [world.student, world.other_student, await factory.user("student"), await factory.user("student")]
    own_texts = [essay(60 + n, 3000) for n in range(len(classmates))]
    earlier = []
    for student, own in zip(classmates, own_texts, strict=True):
        earlier.append(
            await queued_similarity_step(factory, arq_redis, world, f"{question}\n{own}".encode(), user=student)
        )
        await run(run_burst, settings)

    copied = own_texts[0][1000:2200]
    mine = essay(70, 3000)
    copier = await factory.user("student")
    checked = await queued_similarity_step(
        factory, arq_redis, world, f"{question}\n{mine[:1500]}\n{copied}\n{mine[1500:]}".encode(), user=copier
    )
    await run(run_burst, settings)

    result = (await similarity_row(sessions, checked.id)).result
    # The question's fingerprints, about 2 / (w + 1) of its k-grams, are set aside.
    assert result["boilerplate_fingerprints"] > 0.6 * 2 * len(question) / (settings.similarity.window + 1), result
    assert [match["submission_id"] for match in result["matches"]] == [earlier[0].id]
    # The score is over the student's own writing (the question left out): 1,200 copied characters
    # of 4,200.
    copied_share = 100 * len(copied) / (len(mine) + len(copied))
    assert abs(result["score"] - copied_share) <= 6, (result["score"], copied_share)
    # Below the cap the same question is an ordinary match: the second essay matched the first on it.
    second = (await similarity_row(sessions, earlier[1].id)).result
    assert second["boilerplate_fingerprints"] == 0 and second["matches"][0]["submission_id"] == earlier[0].id
    # At the cap, the essay checked among its holders, it still is; one holder more and it is boilerplate.
    third, fourth = [(await similarity_row(sessions, row.id)).result for row in earlier[2:]]
    assert third["boilerplate_fingerprints"] == 0 and fourth["boilerplate_fingerprints"] > 0, (third, fourth)
