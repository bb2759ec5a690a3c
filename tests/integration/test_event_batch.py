"""The batched event writer: a transaction's staged events in one statement, seq gapless per topic.

Pages catch up with ``after=seq``: a topic's seq must have no gap and no
repeat, and follow the order the events were staged, also when many
transactions write several topics at once, in different orders.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from core.events import EventBatch
from core.models import Event
from core.unit_of_work import unit_of_work

TOPICS = ("submission.1", "submission.2", "course.1.staff")


async def _rows(sessions: Any, topic: str) -> list[Event]:
    async with sessions() as session:
        return list(await session.scalars(select(Event).where(Event.topic == topic).order_by(Event.seq)))


async def test_concurrent_transactions_staging_several_topics_get_gapless_ordered_seqs(
    sessions: Any, redis: Any
) -> None:
    writers, rounds = 8, 5

    async def writer(number: int) -> None:
        # Half the writers visit the topics in reverse: no lock-order deadlock either way.
        order = TOPICS if number % 2 else tuple(reversed(TOPICS))
        for round_ in range(rounds):
            async with unit_of_work(sessions, redis) as work:
                for topic in order:
                    for part in range(2):
                        work.stage(topic, "tick", {"writer": number, "round": round_, "part": part})

    await asyncio.gather(*(writer(number) for number in range(writers)))

    for topic in TOPICS:
        rows = await _rows(sessions, topic)
        assert [row.seq for row in rows] == list(range(1, writers * rounds * 2 + 1))
        # A transaction's two events on a topic are adjacent and in the order staged.
        pairs = list(zip(rows[::2], rows[1::2], strict=True))
        for first, second in pairs:
            assert (first.data["writer"], first.data["round"]) == (second.data["writer"], second.data["round"])
            assert (first.data["part"], second.data["part"]) == (0, 1)


async def test_staged_and_emitted_events_keep_their_order_and_envelopes_match_the_rows(
    sessions: Any, redis: Any
) -> None:
    async with unit_of_work(sessions, redis) as work:
        work.stage("submission.7", "step.succeeded", {"step": "scan"})
        work.stage("course.3.staff", "submission.finished", {"submission_id": 7})
        emitted = await work.emit("submission.7", "note", {"n": 1})
        work.stage("submission.7", "step.queued", {"step": "store"})
        assert emitted.seq == 2  # the staged ones were written first
    async with sessions() as session:
        batch = EventBatch(session)
        batch.stage("submission.7", "later", {})
        await batch.flush()
        await session.commit()
    assert [envelope.seq for envelope in batch.envelopes] == [4]

    rows = await _rows(sessions, "submission.7")
    assert [(row.seq, row.type) for row in rows] == [
        (1, "step.succeeded"),
        (2, "note"),
        (3, "step.queued"),
        (4, "later"),
    ]
    assert rows[0].data == {"step": "scan"} and rows[0].actor == "system"
    assert [(row.seq, row.type) for row in await _rows(sessions, "course.3.staff")] == [(1, "submission.finished")]


async def test_a_transaction_rolled_back_leaves_no_seq_gap(sessions: Any, redis: Any) -> None:
    async with unit_of_work(sessions, redis) as work:
        work.stage("user.5", "flash", {"n": 1})
    try:
        async with unit_of_work(sessions, redis) as work:
            work.stage("user.5", "flash", {"n": 2})
            await work.flush()
            raise RuntimeError("abandoned")
    except RuntimeError:
        pass
    async with unit_of_work(sessions, redis) as work:
        work.stage("user.5", "flash", {"n": 3})
    rows = await _rows(sessions, "user.5")
    assert [(row.seq, row.data["n"]) for row in rows] == [(1, 1), (2, 3)]
