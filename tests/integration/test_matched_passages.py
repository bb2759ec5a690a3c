"""Matched passages: the similarity step pairs what two submissions share, in text, DOCX and PDF files.

Real files through a burst similarity worker on SQLite and PostgreSQL. Each match carries
``passages`` ([start, end, other_start, other_end]) into both submissions' extracted texts, which the
step keeps beside the file; the two ranges of a pair hold the same words (as winnowing normalises
them), and together they cover the copied part.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis

from core.models import Submission
from core.settings import Settings
from core.similarity.passages import decode_kept_text, text_key
from core.similarity.winnowing import normalise
from core.storage import Area, Storage, make_storage
from tests.fixtures.factories import Factory
from tests.integration.test_similarity_builtin import essay, queued_similarity_step, run, similarity_row
from tests.integration.test_similarity_text import docx_with_paragraphs, pdf_with_text

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    store = make_storage(settings)
    yield store
    await store.close()


async def kept_text(storage: Storage, submission: Submission) -> str:
    return decode_kept_text(await storage.read_prefix(Area.store, text_key(submission.storage_key), 10**7))


def words(text: str) -> str:
    return normalise(text).text


async def check_pairs(
    sessions: Any, storage: Storage, copy: Submission, source: Submission, copied: str
) -> list[list[int]]:
    """The copy's match names the source, and every passage pair holds the same words on both sides."""
    row = await similarity_row(sessions, copy.id)
    assert row.state == "succeeded", row.error
    match = row.result["matches"][0]
    assert match["submission_id"] == source.id
    passages: list[list[int]] = match["passages"]
    assert passages, match
    mine, theirs = await kept_text(storage, copy), await kept_text(storage, source)
    for start, end, other_start, other_end in passages:
        assert words(mine[start:end]) == words(theirs[other_start:other_end])
    # The copied part is found whole (up to a few characters at its edges), not only its start.
    found = sum(len(words(mine[start:end])) for start, end, _, _ in passages)
    assert found >= 0.9 * len(words(copied)), (found, len(words(copied)))
    return passages


async def test_text_passages_are_aligned_in_both_texts(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, storage: Storage
) -> None:
    world = await factory.world()
    source_text = essay(31, 5000)
    source = await queued_similarity_step(factory, arq_redis, world, source_text.encode(), user=world.student)
    await run(run_burst, settings)
    start = source_text.index("\n", 2000) + 1
    copied = source_text[start : start + 1200]
    own = essay(32, 3000)
    # Re-cased and re-wrapped, in the middle of the student's own text.
    copy_text = own[:1500] + "\n" + copied.upper().replace("\n", "  ") + "\n" + own[1500:]
    copy = await queued_similarity_step(factory, arq_redis, world, copy_text.encode(), user=world.other_student)
    await run(run_burst, settings)

    passages = await check_pairs(sessions, storage, copy, source, copied)
    (start_mine, end_mine, start_theirs, end_theirs) = max(passages, key=lambda p: p[1] - p[0])
    # Offsets in the original texts: where the copy put it, and where the source had it.
    assert abs(start_mine - copy_text.index(copied[:40].upper())) <= 1
    assert abs(start_theirs - start) <= 1 and abs(end_theirs - (start + len(copied))) <= 2
    assert end_mine <= len(copy_text)


async def test_a_pdf_copying_a_docx_is_aligned_with_it(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, storage: Storage
) -> None:
    world = await factory.world()
    paragraphs = essay(33, 4000).split("\n")
    source = await queued_similarity_step(
        factory,
        arq_redis,
        world,
        docx_with_paragraphs(paragraphs),
        user=world.student,
        filename="mine.docx",
        kind="docx",
        content_type=DOCX,
    )
    await run(run_burst, settings)
    copied = "\n".join(paragraphs[5:15])
    pdf = pdf_with_text(essay(34, 1500) + "\n" + copied + "\n" + essay(35, 1500))
    copy = await queued_similarity_step(
        factory,
        arq_redis,
        world,
        pdf,
        user=world.other_student,
        filename="theirs.pdf",
        kind="pdf",
        content_type="application/pdf",
    )
    await run(run_burst, settings)
    await check_pairs(sessions, storage, copy, source, copied)


async def test_an_earlier_submission_without_kept_text_is_read_from_its_file(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, storage: Storage
) -> None:
    """A submission checked before texts were kept: its DOCX is read again to pair the passages."""
    world = await factory.world()
    paragraphs = essay(36, 3000).split("\n")
    source = await queued_similarity_step(
        factory,
        arq_redis,
        world,
        docx_with_paragraphs(paragraphs),
        user=world.student,
        filename="old.docx",
        kind="docx",
        content_type=DOCX,
    )
    await run(run_burst, settings)
    source_text = await kept_text(storage, source)
    await storage.delete(Area.store, text_key(source.storage_key))
    copied = "\n".join(paragraphs[3:10])
    copy = await queued_similarity_step(
        factory, arq_redis, world, (essay(37, 800) + "\n" + copied).encode(), user=world.other_student
    )
    await run(run_burst, settings)
    row = await similarity_row(sessions, copy.id)
    passages = row.result["matches"][0]["passages"]
    mine = await kept_text(storage, copy)
    assert passages and all(words(mine[a:b]) == words(source_text[c:d]) for a, b, c, d in passages)
