"""The whole pipeline for real: upload through the api, every worker in turn.

Real clamd (with the locally written EICAR signature), real SMTP (aiosmtpd),
real Redis queues, SQLite and PostgreSQL. The central admin system is a
stand-in speaking its HTTP protocol (tests/fixtures/admin_server.py).
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, ImageDraw

from core import keys
from core.pipeline import STEP_NAMES
from core.settings import Settings
from core.storage import Area, make_storage
from tests.fixtures.clamd import EICAR
from tests.fixtures.pipeline import drain_pipeline, events, step_states, submission_row

ESSAY = ("The quick brown fox considers the nature of asynchronous work. " * 40).encode()


def png_bytes() -> bytes:
    image = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(image).rectangle((50, 50, 350, 250), fill="navy")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def pdf_bytes(lines: tuple[str, ...] = ("A one-page essay", "on the nature of asynchronous work.")) -> bytes:
    """A minimal PDF with a real text layer (Helvetica), written out by hand."""
    text = " ".join(f"({line}) Tj 0 -24 Td" for line in lines)
    stream = f"BT /F1 18 Tf 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


@pytest.fixture(autouse=True)
def real_services(settings: Settings, clamd: Any, smtp_server: Any, admin_system: Any) -> None:
    settings.scanner.clamd_host, settings.scanner.clamd_port = clamd.host, clamd.port
    settings.smtp.host, settings.smtp.port = smtp_server.host, smtp_server.port
    settings.admin.url, settings.admin.secret = admin_system.url, admin_system.secret


async def upload(as_user: Any, world: Any, name: str, content: bytes) -> int:
    student = await as_user("student")
    answer = await student.post(f"/api/assignments/{world.assignment_id}/submissions", files={"file": (name, content)})
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


@pytest.mark.parametrize(
    ("name", "content", "similarity_state"),
    [("essay.txt", ESSAY, "succeeded"), ("essay.pdf", pdf_bytes(), "succeeded"), ("photo.png", png_bytes(), "skipped")],
    ids=["text", "pdf", "image"],
)
async def test_every_step_completes(
    as_user: Any,
    world: Any,
    sessions: Any,
    settings: Settings,
    run_burst: Any,
    smtp_server: Any,
    admin_system: Any,
    name: str,
    content: bytes,
    similarity_state: str,
) -> None:
    submission_id = await upload(as_user, world, name, content)
    await drain_pipeline(run_burst)

    states = await step_states(sessions, submission_id)
    assert states == {
        "scan": "succeeded",
        "store": "succeeded",
        "similarity": similarity_state,
        "admin": "succeeded",
        "receipt": "succeeded",
        "thumbnail": "succeeded",
    }
    submission = await submission_row(sessions, submission_id)
    assert submission.status == "complete"
    storage = make_storage(settings)
    assert await storage.exists(Area.store, submission.storage_key)
    assert not await storage.exists(Area.incoming, submission.storage_key)
    assert submission.thumbnail_key and await storage.exists(Area.thumbnails, submission.thumbnail_key)
    assert len(smtp_server.received) == 1
    assert submission.sha256 in smtp_server.received[0].message.get_body(("plain",)).get_content()
    assert len(admin_system.records) == 1
    # The student's page sees it finish: the completion is an event on their topic.
    assert [e.type for e in await events(sessions, keys.submission_topic(submission_id), "submission.complete")]

    # The status API tells the same story to the owner.
    student = await as_user("student")
    status = (await student.get(f"/api/submissions/{submission_id}")).json()
    assert status["status"] == "complete"


async def test_infected_upload_is_quarantined_and_goes_nowhere(
    as_user: Any,
    world: Any,
    sessions: Any,
    settings: Settings,
    run_burst: Any,
    smtp_server: Any,
    admin_system: Any,
) -> None:
    submission_id = await upload(as_user, world, "notes.txt", EICAR)
    await drain_pipeline(run_burst)

    submission = await submission_row(sessions, submission_id)
    assert submission.status == "quarantined"
    states = await step_states(sessions, submission_id)
    assert states["scan"] == "succeeded"
    assert {states[step] for step in STEP_NAMES if step != "scan"} == {"skipped"}
    storage = make_storage(settings)
    assert not await storage.exists(Area.store, submission.storage_key)
    assert await storage.exists(Area.quarantine, submission.storage_key)
    assert smtp_server.received == [] and admin_system.records == {}
    flashes = await events(sessions, keys.user_topic(world.users["student"]))
    assert any("quarantined" in str(e.data) for e in flashes)
