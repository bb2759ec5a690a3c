"""Signed receipts: what a student gets, downloads and anyone can verify, on real services."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.models import Submission
from core.receipts import KeyRing, b64url, verify_receipt
from core.settings import ReceiptKeySettings, Settings
from tests.fixtures.app import World
from tests.fixtures.factories import Factory
from tests.fixtures.smtp import SmtpServer
from workers import receipt

Login = Callable[[str], Awaitable[httpx.AsyncClient]]
PDF = b"%PDF-1.7\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 50


async def upload(student: httpx.AsyncClient, world: World, content: bytes = PDF, name: str = "essay.pdf") -> int:
    answer = await student.post(
        f"/api/assignments/{world.assignment_id}/submissions", files={"file": (name, content, "application/pdf")}
    )
    assert answer.status_code == 202, answer.text
    submission_id: int = answer.json()["id"]
    return submission_id


async def test_the_upload_start_is_recorded_before_its_acceptance(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    submission_id = await upload(await as_user("student"), world)

    async with sessions() as session:
        submission = await session.get(Submission, submission_id)
    assert submission is not None and submission.upload_started_at is not None
    assert submission.upload_started_at <= submission.received_at


# --- signed receipts ------------------------------------------------------------------------------


def new_key(key_id: str, valid_from: datetime, **extra: Any) -> ReceiptKeySettings:
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return ReceiptKeySettings(id=key_id, private_key=b64url(seed), valid_from=valid_from, **extra)


@pytest.fixture
def signing(settings: Settings) -> ReceiptKeySettings:
    """This test's own signing key (not development's shared one)."""
    key = new_key("test-1", utcnow() - timedelta(days=30))
    settings.receipts.installation = "handin.test"
    settings.receipts.signing_keys = [key]
    return key


async def download(http: httpx.AsyncClient, submission_id: int) -> httpx.Response:
    return await http.get(f"/api/submissions/{submission_id}/receipt")


async def test_the_owner_downloads_a_receipt_anyone_can_verify_with_the_published_keys(
    as_user: Login, client: httpx.AsyncClient, world: World, signing: ReceiptKeySettings
) -> None:
    submission_id = await upload(await as_user("student"), world)
    staff = await as_user("staff")

    answer = await download(await as_user("student"), submission_id)

    assert answer.status_code == 200, answer.text
    assert f'filename="handin-receipt-{submission_id}.json"' in answer.headers["content-disposition"]
    receipt = answer.json()
    assert (await download(staff, submission_id)).status_code == 200
    assert (await download(await as_user("student2"), submission_id)).status_code == 404
    published = (await client.get("/.well-known/handin-receipt-keys.json")).json()
    assert published["installation"] == "handin.test"
    assert [(key["id"], key["algorithm"], key["valid_until"]) for key in published["keys"]] == [
        ("test-1", "Ed25519", None)
    ]
    verdict = verify_receipt(receipt, KeyRing.from_public_document(published), hashlib.sha256(PDF).hexdigest())
    assert verdict.summary() == "valid, signed by handin.test with key test-1, file matches"
    payload = receipt["payload"]
    assert (payload["submission_id"], payload["attempt"], payload["timing"]) == (submission_id, 1, "on time")
    assert payload["student"]["email"] == World.email("student") and payload["course"]["code"] == "CS101"
    assert payload["file"] == {"name": "essay.pdf", "size": len(PDF), "sha256": hashlib.sha256(PDF).hexdigest()}
    assert payload["upload_started_at"] <= payload["accepted_at"]


async def test_the_public_check_says_what_is_wrong(
    as_user: Login, client: httpx.AsyncClient, world: World, signing: ReceiptKeySettings
) -> None:
    submission_id = await upload(await as_user("student"), world)
    receipt = (await download(await as_user("student"), submission_id)).json()

    async def check(document: Any, content: bytes | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"receipt": document}
        if content is not None:
            body |= {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
        answer = await client.post("/api/receipts/verify", json=body)  # anonymous: anyone may check
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    good = await check(receipt, PDF)
    assert good["valid"] and good["summary"] == "valid, signed by handin.test with key test-1, file matches"
    wrong_file = await check(receipt, PDF + b"%")
    assert not wrong_file["valid"] and wrong_file["file_matches"] is False
    assert "the file does not match" in wrong_file["summary"]
    made_late = json.loads(json.dumps(receipt))
    made_late["payload"]["timing"] = "late"
    changed = await check(made_late)
    assert not changed["valid"] and "changed after it was signed" in changed["summary"]


async def test_rotation_keeps_a_receipt_signed_with_the_old_key_valid(
    as_user: Login, client: httpx.AsyncClient, world: World, settings: Settings, signing: ReceiptKeySettings
) -> None:
    student = await as_user("student")
    submission_id = await upload(student, world)
    old_receipt = (await download(student, submission_id)).json()
    # Rotate: the old key keeps only its public half and an end date; a new key signs from now on.
    retired_at = utcnow()
    old_public = KeyRing.from_settings("x", [signing]).keys["test-1"].public_entry()["public_key"]
    settings.receipts.signing_keys = [
        ReceiptKeySettings(id="test-1", public_key=old_public, valid_from=signing.valid_from, valid_until=retired_at),
        new_key("test-2", retired_at),
    ]

    new_receipt = (await download(student, submission_id)).json()
    published = (await client.get("/.well-known/handin-receipt-keys.json")).json()
    checks = [
        (await client.post("/api/receipts/verify", json={"receipt": receipt})).json()
        for receipt in (old_receipt, new_receipt)
    ]

    assert (old_receipt["key_id"], new_receipt["key_id"]) == ("test-1", "test-2")
    assert [key["id"] for key in published["keys"]] == ["test-2", "test-1"]
    assert [check["summary"] for check in checks] == [
        "valid, signed by handin.test with key test-1",
        "valid, signed by handin.test with key test-2",
    ]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HANDIN_")}
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "verify-receipt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


async def test_the_command_verifies_offline_with_the_saved_keys(
    as_user: Login, client: httpx.AsyncClient, world: World, signing: ReceiptKeySettings, tmp_path: Path
) -> None:
    submission_id = await upload(await as_user("student"), world)
    receipt_file = tmp_path / f"handin-receipt-{submission_id}.json"
    receipt_file.write_bytes((await download(await as_user("student"), submission_id)).content)
    keys_file = tmp_path / "keys.json"
    keys_file.write_bytes((await client.get("/.well-known/handin-receipt-keys.json")).content)
    essay, other = tmp_path / "essay.pdf", tmp_path / "other.pdf"
    essay.write_bytes(PDF)
    other.write_bytes(PDF.replace(b"Catalog", b"Catalot"))
    forged = tmp_path / "forged.json"
    document = json.loads(receipt_file.read_text())
    document["payload"]["file"]["sha256"] = hashlib.sha256(other.read_bytes()).hexdigest()
    forged.write_text(json.dumps(document))

    valid = await asyncio.to_thread(run_cli, str(receipt_file), str(essay), "--keys", str(keys_file))
    wrong_file = await asyncio.to_thread(run_cli, str(receipt_file), str(other), "--keys", str(keys_file))
    tampered = await asyncio.to_thread(run_cli, str(forged), str(other), "--keys", str(keys_file))

    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.splitlines()[0] == "valid, signed by handin.test with key test-1, file matches"
    assert wrong_file.returncode == 1 and "the file does not match" in wrong_file.stdout
    assert tampered.returncode == 1 and "changed after it was signed" in tampered.stdout


async def test_the_receipt_email_carries_the_signed_receipt(
    factory: Factory,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    smtp_server: SmtpServer,
    signing: ReceiptKeySettings,
) -> None:
    settings.smtp.host, settings.smtp.port = smtp_server.host, smtp_server.port
    content = b"An essay about signatures.\n" * 20
    world = await factory.world()
    submission = await factory.stored_submission(world, content, step=receipt.TASK, arq_redis=arq_redis)

    await run_burst(receipt.TASK, receipt.handle)

    [mail] = smtp_server.received
    [attachment] = list(mail.message.iter_attachments())
    assert attachment.get_filename() == f"handin-receipt-{submission.id}.json"
    assert attachment.get_content_type() == "application/json"
    document = json.loads(attachment.get_content())
    ring = KeyRing.from_settings("handin.test", settings.receipts.signing_keys)
    verdict = verify_receipt(document, ring, hashlib.sha256(content).hexdigest())
    assert verdict.valid, verdict.problems
    assert document["payload"]["submission_id"] == submission.id
    text = mail.message.get_body(("plain",)).get_content()
    assert f"http://127.0.0.1:8000/api/submissions/{submission.id}/receipt" in text
    assert "http://127.0.0.1:8000/verify" in text
