"""The similarity look-up keeps its plan on a fingerprint table PostgreSQL has never analysed.

A new assignment on a busy installation starts without planner statistics
(autovacuum has not got round to it). With 10,000 earlier submissions'
fingerprints in such a table, the look-up must still probe the
(assignment_id, hash) index per hash, never scan the assignment's whole slice
of it, and find what it should.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.db import make_engine, make_sessionmaker
from core.models import Assignment, Base, Course, User
from core.similarity import index
from core.similarity.winnowing import fingerprint
from tests.conftest import create_pg_database, drop_pg_database, pg_url

EARLIER = 10_000
PRINTS_EACH = 20
# The submission being checked: not among the earlier ones, so none of its rows are in the index.
CHECKED = EARLIER + 1


@pytest.fixture
async def never_analysed() -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], dict[str, int]]]:
    """A PostgreSQL database whose fingerprints table holds 10,000 submissions and was never analysed."""
    name = await create_pg_database()
    engine = make_engine(pg_url(name))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
            for table in ("fingerprints", "submissions"):
                await connection.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        sessions = make_sessionmaker(engine)
        async with sessions() as session, session.begin():
            course = Course(code="P1", title="Plans")
            earlier, checker = (User(email=f"{who}@plans.test", name=who, password_hash="") for who in "ec")
            session.add_all([course, earlier, checker])
            await session.flush()
            now = utcnow()
            assignment = Assignment(
                course_id=course.id,
                title="A",
                opens_at=now,
                deadline=now + timedelta(days=1),
                cutoff_at=now + timedelta(days=1),
                max_bytes=1000,
                accepted_types=["text"],
                max_attempts=1,
            )
            session.add(assignment)
            await session.flush()
            ids = {"assignment": assignment.id, "earlier": earlier.id, "checker": checker.id}
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO submissions (assignment_id, user_id, attempt, late, sha256, size, original_filename,"
                    " content_type, kind, storage_key, status, received_at)"
                    " SELECT :a, :u, g, false, '', 1, 'e.txt', 'text/plain', 'text', 'k' || g, 'complete', now()"
                    " FROM generate_series(1, :n) AS g"
                ),
                {"a": ids["assignment"], "u": ids["earlier"], "n": EARLIER},
            )
            # Distinct hashes per earlier submission; hash 7 is in the first one only.
            await connection.execute(
                text(
                    "INSERT INTO fingerprints (assignment_id, hash, submission_id, ordinal, position)"
                    " SELECT :a, s.id * 1000 + g, s.id, g, g FROM submissions AS s, generate_series(0, :p - 1) AS g"
                ),
                {"a": ids["assignment"], "p": PRINTS_EACH},
            )
            analysed = (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'fingerprints'"
                        " AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
                    )
                )
            ).scalar_one()
            assert analysed == 0
        yield sessions, ids
    finally:
        await engine.dispose()
        await drop_pg_database(name)


def scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


async def test_lookup_probes_the_index_per_hash_on_a_never_analysed_table(
    never_analysed: tuple[async_sessionmaker[AsyncSession], dict[str, int]],
) -> None:
    sessions, ids = never_analysed
    essay = " ".join(f"word{i} and then some more words {i * 7}" for i in range(1500))
    hashes = [fp.hash for fp in fingerprint(essay, 25, 20)]
    async with sessions() as session:
        first_submission = (await session.execute(text("SELECT min(id) FROM submissions"))).scalar_one()
    # Two hashes the first earlier submission holds, among the essay's own.
    wanted = [*hashes, first_submission * 1000 + 3, first_submission * 1000 + 5]

    statement, parameters = index.lookup_statement(ids["assignment"], CHECKED, sorted(set(wanted)), 20)
    async with sessions() as session:
        raw = (await session.execute(text(f"EXPLAIN (FORMAT JSON) {statement.text}"), parameters)).scalar_one()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    nodes = scans(plan)
    on_fingerprints = [node for node in nodes if node.get("Relation Name") == "fingerprints"]
    assert on_fingerprints, nodes
    for node in on_fingerprints:
        assert node["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), node
    probes = [node for node in nodes if node.get("Index Name") == "ix_fingerprints_lookup"]
    assert probes and all("hash" in node.get("Index Cond", "") for node in probes), probes
    # The index is probed once per hash inside a nested loop, not scanned by assignment.
    assert any(node["Node Type"] == "Nested Loop" for node in nodes)
    # Holders' owners come by primary key: no table is read whole, however many submissions it holds.
    assert not [node for node in nodes if node["Node Type"] == "Seq Scan"], nodes

    hits = await index.lookup(
        sessions, ids["assignment"], wanted, submission_id=CHECKED, exclude_user_id=ids["checker"], max_holders=20
    )
    assert hits.holders == {
        first_submission * 1000 + 3: {first_submission},
        first_submission * 1000 + 5: {first_submission},
    }
    assert hits.owners == {first_submission: ids["earlier"]}
    # Where each match's file is comes with the hits: its passages are read without another query.
    assert hits.files == {first_submission: index.StoredFile("k1", "text")}
    # The student's own earlier submissions never count.
    mine = await index.lookup(
        sessions, ids["assignment"], wanted, submission_id=CHECKED, exclude_user_id=ids["earlier"], max_holders=20
    )
    assert mine.holders == {}
    # Nor are the checked submission's own rows read back (its check wrote them just before).
    itself = await index.lookup(
        sessions,
        ids["assignment"],
        wanted,
        submission_id=first_submission,
        exclude_user_id=ids["checker"],
        max_holders=20,
    )
    assert itself.holders == {} and itself.owners == {}


async def test_a_hash_every_earlier_submission_holds_is_boilerplate_and_read_no_further(
    never_analysed: tuple[async_sessionmaker[AsyncSession], dict[str, int]],
) -> None:
    """The question's text in all 10,000 earlier essays: the look-up reads 21 holders of it, not 10,000."""
    sessions, ids = never_analysed
    question = 7_777_777
    async with sessions() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO fingerprints (assignment_id, hash, submission_id, ordinal, position)"
                " SELECT :a, :h, id, :p, 0 FROM submissions WHERE assignment_id = :a"
            ),
            {"a": ids["assignment"], "h": question, "p": PRINTS_EACH},
        )
        first_submission = (await session.execute(text("SELECT min(id) FROM submissions"))).scalar_one()
    wanted = [question, first_submission * 1000 + 3]

    statement, parameters = index.lookup_statement(ids["assignment"], CHECKED, wanted, 20)
    async with sessions() as session:
        explained = await session.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement.text}"), parameters)
        raw = explained.scalar_one()
    nodes = scans((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
    limits = [node for node in nodes if node["Node Type"] == "Limit"]
    assert limits and sum(node["Actual Rows"] * node["Actual Loops"] for node in limits) <= 22, limits

    hits = await index.lookup(
        sessions, ids["assignment"], wanted, submission_id=CHECKED, exclude_user_id=ids["checker"], max_holders=20
    )
    assert hits.boilerplate == {question}
    assert hits.holders == {first_submission * 1000 + 3: {first_submission}}
