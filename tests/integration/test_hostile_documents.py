"""Hostile DOCX files through the real similarity and thumbnail workers.

Each file is built here the way an attacker would: entity expansion (billion
laughs) in UTF-16, where a search of the raw bytes for ``<!DOCTYPE`` finds
nothing, and in UTF-8; an external entity naming a local file (XXE); a zip
member that inflates past the limit, openly or behind a declared size that
lies; an archive of thousands of members. Each must end its step at once with
"this document could not be read" (similarity skipped, thumbnail failed, no
retry), and reading it must not cost memory in proportion to what it would
expand to: peak RSS of a fresh process is compared with the expansion size.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from core.safe_docs import MAX_MEMBERS, UNREADABLE
from core.settings import Settings
from tests.fixtures.factories import Factory
from tests.integration.test_similarity_builtin import similarity_row
from tests.integration.test_thumbnail import finished
from workers import similarity, thumbnail

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
DOCX = {
    "kind": "docx",
    "content_type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
ROOT = Path(__file__).resolve().parents[2]
SECRET = "TOP-SECRET-7f3a9c-do-not-leak"

# Entity nesting: l0 is 12 characters, each level 10 of the one below.
LAUGH_LEVELS = 6
LAUGH_CHARS = 12 * 10**LAUGH_LEVELS
# expat refuses more than 100x amplification of the input: padding gives the expansion room.
LAUGH_PADDING = LAUGH_CHARS // 60
BOMB_BYTES = 80 * 1024 * 1024  # over both readers' limits (64 MiB similarity, 20 MiB thumbnail)


def document(body: str, *, dtd: str = "", encoding: str = "utf-8") -> bytes:
    xml = (
        f'<?xml version="1.0" encoding="{encoding}"?>{dtd}'
        f'<w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>'
    )
    return xml.encode(encoding)


def docx(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", b'<?xml version="1.0"?><Types/>')
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def billion_laughs(encoding: str) -> bytes:
    entities = ['<!ENTITY l0 "lollollollol">'] + [
        f'<!ENTITY l{level} "{f"&l{level - 1};" * 10}">' for level in range(1, LAUGH_LEVELS + 1)
    ]
    dtd = f"<!DOCTYPE w:document [{''.join(entities)}]>"
    body = " " * LAUGH_PADDING + f"<w:p><w:r><w:t>&l{LAUGH_LEVELS};</w:t></w:r></w:p>"
    return docx({"word/document.xml": document(body, dtd=dtd, encoding=encoding)})


def external_entity(secret_file: Path) -> bytes:
    dtd = f'<!DOCTYPE w:document [<!ENTITY x SYSTEM "{secret_file.as_uri()}">]>'
    return docx({"word/document.xml": document("<w:p><w:r><w:t>&x;</w:t></w:r></w:p>", dtd=dtd, encoding="utf-16")})


def zip_bomb(*, declared: int | None = None) -> bytes:
    """document.xml inflating to BOMB_BYTES; with ``declared``, the central directory claims that size instead."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/document.xml", "w", force_zip64=False) as member:
            member.write(f'<w:document xmlns:w="{W_NS}"><w:body><w:p><w:r><w:t>'.encode())
            chunk = b"A" * (1024 * 1024)
            for _ in range(BOMB_BYTES // len(chunk)):
                member.write(chunk)
    data = bytearray(out.getvalue())
    if declared is not None:
        entry = data.rfind(b"PK\x01\x02")  # the only member's central directory entry
        struct.pack_into("<L", data, entry + 24, declared)
    return bytes(data)


def many_members() -> bytes:
    members = {f"customXml/item{n}.xml": b"" for n in range(MAX_MEMBERS + 500)}
    members["word/document.xml"] = document("<w:p><w:r><w:t>Just an essay.</w:t></w:r></w:p>")
    return docx(members)


def hostile_files(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    """name → (file, how much it would expand to: characters or inflated bytes)."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    return {
        "billion laughs, utf-16": (billion_laughs("utf-16"), LAUGH_CHARS),
        "billion laughs, utf-8": (billion_laughs("utf-8"), LAUGH_CHARS),
        "external entity": (external_entity(secret_file), 0),
        "zip bomb": (zip_bomb(), BOMB_BYTES),
        "zip bomb, declared size lies": (zip_bomb(declared=4096), BOMB_BYTES),
        "too many members": (many_members(), 0),
    }


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, int]]:
    return hostile_files(tmp_path_factory.mktemp("hostile"))


async def queue_all(
    factory: Factory, arq_redis: ArqRedis, step: str, files: dict[str, tuple[bytes, int]]
) -> dict[str, int]:
    world = await factory.world()
    ids: dict[str, int] = {}
    for name, (data, _) in files.items():
        submission = await factory.stored_submission(
            world, data, step=step, arq_redis=arq_redis, filename="essay.docx", **DOCX
        )
        ids[name] = submission.id
    return ids


async def test_similarity_skips_each_hostile_document_as_unreadable(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    hostile: dict[str, tuple[bytes, int]],
) -> None:
    ids = await queue_all(factory, arq_redis, similarity.STEP, hostile)

    await run_burst(similarity.STEP, similarity.handle, functions=similarity.functions(settings))

    for name, submission_id in ids.items():
        row = await similarity_row(sessions, submission_id)
        assert (row.state, row.attempts) == ("skipped", 1), name
        reason = row.result["reason"]
        assert reason.startswith(f"no text to compare: {UNREADABLE}: "), (name, reason)
        assert SECRET not in json.dumps(row.result), name
        assert "score" not in row.result, name


async def test_thumbnail_fails_each_hostile_document_once_as_unreadable(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    hostile: dict[str, tuple[bytes, int]],
) -> None:
    ids = await queue_all(factory, arq_redis, thumbnail.TASK, hostile)

    await run_burst(thumbnail.TASK, thumbnail.handle)

    for name, submission_id in ids.items():
        row, submission = await finished(sessions, submission_id)
        assert (row.state, row.attempts) == ("failed", 1), name  # not retried: the file will not change
        assert (row.error or "").startswith(f"{UNREADABLE}: "), (name, row.error)
        assert SECRET not in (row.error or ""), name
        assert submission.thumbnail_key is None, name


MEASURE = """
import json, re, sys
from pathlib import Path
import defusedxml.ElementTree  # loaded before the baseline: code, not data
from core.similarity.text import UnreadableDocument, extract_text
from workers.documents import DocumentError, render_thumbnail

def peak_rss_bytes():
    # This process's own high-water mark (ru_maxrss would include the parent's, kept across exec).
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024

path = Path(sys.argv[1])
baseline = peak_rss_bytes()
outcomes = {}
for name, read in (("similarity", lambda: extract_text(path, "docx")),
                   ("thumbnail", lambda: render_thumbnail("docx", "essay.docx", path))):
    try:
        read()
        outcomes[name] = "read"
    except (UnreadableDocument, DocumentError) as error:
        outcomes[name] = str(error)
    except Exception as error:
        outcomes[name] = f"crashed: {error!r}"
print(json.dumps({"grown_bytes": peak_rss_bytes() - baseline, "outcomes": outcomes}))
"""


@pytest.mark.parametrize(
    "case", ["billion laughs, utf-16", "billion laughs, utf-8", "zip bomb", "zip bomb, declared size lies"]
)
def test_reading_a_hostile_document_keeps_memory_bounded(
    case: str, hostile: dict[str, tuple[bytes, int]], tmp_path: Path
) -> None:
    """Both readers, in a fresh process: its peak RSS grows by far less than the file would expand to."""
    data, expansion = hostile[case]
    path = tmp_path / "essay.docx"
    path.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["grown_bytes"] < expansion / 4, report
    for reader, outcome in report["outcomes"].items():
        assert outcome.startswith(f"{UNREADABLE}: "), (reader, outcome)
