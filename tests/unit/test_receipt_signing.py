"""Receipt signing and verification without I/O: every kind of tampering is caught, rotation keeps old receipts."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.models import Assignment, Course, Submission, User
from core.receipts import (
    KeyRing,
    ReceiptFacts,
    b64url,
    parse_receipt,
    receipt_bytes,
    receipt_payload,
    sign_payload,
    verify_receipt,
)
from core.settings import ReceiptKeySettings

INSTALLATION = "handin.example.edu"
CONTENT = b"%PDF-1.7\nmy essay\n"
START = datetime(2026, 11, 27, 23, 58, 59, 250000, tzinfo=UTC)
ACCEPTED = START + timedelta(seconds=7)
JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
JUNE = datetime(2026, 6, 1, tzinfo=UTC)


def seed() -> str:
    key = Ed25519PrivateKey.generate()
    return b64url(
        key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    )


def facts() -> ReceiptFacts:
    submission = Submission(
        id=420,
        assignment_id=7,
        user_id=3,
        attempt=2,
        late=False,
        sha256=hashlib.sha256(CONTENT).hexdigest(),
        size=len(CONTENT),
        original_filename="Essay \u2013 final.pdf",
        upload_started_at=START,
        received_at=ACCEPTED,
    )
    return ReceiptFacts(
        submission,
        Assignment(id=7, title="Essay 2", course_id=5),
        Course(id=5, code="CS101", title="Systems"),
        User(id=3, name="Ada Lovelace", email="ada@example.edu"),
    )


def ring(*entries: dict[str, Any], installation: str = INSTALLATION) -> KeyRing:
    return KeyRing.from_settings(installation, [ReceiptKeySettings.model_validate(entry) for entry in entries])


def public(keys: KeyRing) -> KeyRing:
    """What a verifier has: the published document, round-tripped through JSON."""
    return KeyRing.from_public_document(json.loads(json.dumps(keys.public_document())))


@pytest.fixture
def keys() -> KeyRing:
    return ring({"id": "2026-01", "private_key": seed(), "valid_from": JANUARY.isoformat()})


def signed(keys: KeyRing, issued_at: datetime = ACCEPTED) -> dict[str, Any]:
    return sign_payload(receipt_payload(facts(), keys.installation, issued_at), keys)


def test_a_receipt_states_everything_and_verifies(keys: KeyRing) -> None:
    document = signed(keys)
    # As the student has it: a file, indented for reading.
    verdict = verify_receipt(parse_receipt(receipt_bytes(document)), public(keys), hashlib.sha256(CONTENT).hexdigest())

    assert verdict.valid, verdict.problems
    assert verdict.summary() == f"valid, signed by {INSTALLATION} with key 2026-01, file matches"
    payload = document["payload"]
    assert payload["submission_id"] == 420 and payload["attempt"] == 2
    assert payload["assignment"] == {"id": 7, "title": "Essay 2"}
    assert payload["course"] == {"id": 5, "code": "CS101", "title": "Systems"}
    assert payload["student"] == {"id": 3, "name": "Ada Lovelace", "email": "ada@example.edu"}
    assert payload["file"] == {
        "name": "Essay \u2013 final.pdf",
        "size": len(CONTENT),
        "sha256": hashlib.sha256(CONTENT).hexdigest(),
    }
    assert (payload["upload_started_at"], payload["accepted_at"]) == (
        "2026-11-27T23:58:59.250Z",
        "2026-11-27T23:59:06.250Z",
    )
    assert (payload["late"], payload["timing"]) == (False, "on time")


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict):
        return [path for key, inner in value.items() for path in _paths(inner, (*prefix, key))]
    return [prefix]


def _altered(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return "2026-11-27T23:00:00.000Z"
    return value[:-1] + ("0" if value[-1:] != "0" else "1")


PAYLOAD_PATHS = _paths(receipt_payload(facts(), INSTALLATION, ACCEPTED))


@pytest.mark.parametrize("path", PAYLOAD_PATHS, ids=[".".join(path) for path in PAYLOAD_PATHS])
def test_changing_any_field_breaks_the_signature(keys: KeyRing, path: tuple[str, ...]) -> None:
    document = copy.deepcopy(signed(keys))
    holder = document["payload"]
    for name in path[:-1]:
        holder = holder[name]
    holder[path[-1]] = _altered(holder[path[-1]])

    verdict = verify_receipt(document, public(keys))

    assert not verdict.valid and not verdict.signature_valid
    assert "changed after it was signed" in verdict.summary()


def test_an_added_field_breaks_the_signature(keys: KeyRing) -> None:
    document = signed(keys)
    document["payload"]["late_excused"] = True

    assert not verify_receipt(document, public(keys)).valid


def test_a_changed_signature_is_caught(keys: KeyRing) -> None:
    document = signed(keys)
    raw = bytearray(document["signature"].encode())
    raw[5] = ord("A") if raw[5] != ord("A") else ord("B")
    document["signature"] = raw.decode()

    verdict = verify_receipt(document, public(keys))

    assert not verdict.valid and "changed after it was signed" in verdict.summary()


def test_a_signature_by_someone_else_is_caught(keys: KeyRing) -> None:
    # A forger signs the altered payload with their own key but claims ours.
    forger = ring({"id": "2026-01", "private_key": seed(), "valid_from": JANUARY.isoformat()})
    payload = receipt_payload(facts(), INSTALLATION, ACCEPTED)
    payload["late"] = True
    forged = sign_payload(payload, forger)

    assert not verify_receipt(forged, public(keys)).valid


def test_an_unknown_key_id_is_caught(keys: KeyRing) -> None:
    document = signed(keys)
    document["key_id"] = "2027-01"

    verdict = verify_receipt(document, public(keys))

    assert not verdict.valid
    assert verdict.summary() == f"NOT valid: it names signing key '2027-01', which {INSTALLATION} does not publish"


def test_another_published_key_id_is_caught() -> None:
    both = ring(
        {"id": "old", "private_key": seed(), "valid_from": JANUARY.isoformat(), "valid_until": JUNE.isoformat()},
        {"id": "new", "private_key": seed(), "valid_from": JUNE.isoformat()},
    )
    document = signed(both)
    assert document["key_id"] == "new"
    document["key_id"] = "old"

    assert not verify_receipt(document, public(both)).valid


def test_a_different_file_is_caught(keys: KeyRing) -> None:
    other = hashlib.sha256(CONTENT + b" ").hexdigest()

    verdict = verify_receipt(signed(keys), public(keys), other)

    assert verdict.signature_valid and not verdict.valid and verdict.file_matches is False
    assert f"its SHA-256 is {other}" in verdict.summary()


def test_rotation_keeps_old_receipts_valid() -> None:
    old_seed = seed()
    before = ring({"id": "2026-01", "private_key": old_seed, "valid_from": JANUARY.isoformat()})
    old_receipt = signed(before, issued_at=JANUARY + timedelta(days=30))
    # Rotated in June: the old key is retired (kept only as its public half), a new one signs.
    retired = before.keys["2026-01"].public_entry()["public_key"]
    after = ring(
        {"id": "2026-01", "public_key": retired, "valid_from": JANUARY.isoformat(), "valid_until": JUNE.isoformat()},
        {"id": "2026-06", "private_key": seed(), "valid_from": JUNE.isoformat()},
    )
    new_receipt = signed(after, issued_at=JUNE + timedelta(days=1))

    assert new_receipt["key_id"] == "2026-06"
    assert verify_receipt(old_receipt, public(after)).valid
    assert verify_receipt(new_receipt, public(after)).valid
    assert [key["id"] for key in after.public_document()["keys"]] == ["2026-06", "2026-01"]


def test_a_retired_key_signing_after_its_retirement_is_caught() -> None:
    # The retired key's secret leaked: a receipt it "issued" after June is refused.
    leaked = seed()
    then = ring({"id": "2026-01", "private_key": leaked, "valid_from": JANUARY.isoformat()})
    late_forgery = signed(then, issued_at=JUNE + timedelta(days=2))
    now = ring(
        {"id": "2026-01", "private_key": leaked, "valid_from": JANUARY.isoformat(), "valid_until": JUNE.isoformat()},
        {"id": "2026-06", "private_key": seed(), "valid_from": JUNE.isoformat()},
    )

    verdict = verify_receipt(late_forgery, public(now))

    assert not verdict.valid and "key 2026-01 was valid from" in verdict.summary()


def test_not_a_receipt_says_so(keys: KeyRing) -> None:
    assert verify_receipt({"hello": 1}, public(keys)).summary().startswith("NOT valid: this is not a handin receipt")
