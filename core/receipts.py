"""Signed receipts: proof of what a student handed in and when, that anyone can check.

A receipt is a small JSON document::

    {"format": "handin-receipt/1", "payload": {...}, "key_id": "2026-11",
     "algorithm": "Ed25519", "signature": "<base64url>"}

The signature is Ed25519 over the payload's canonical form (JSON, keys sorted,
no whitespace, UTF-8; ``canonical``), so the document may be pretty-printed or
re-indented and still verify, while any change to a value does not. Ed25519
receipt also states when it was issued (signed): the key that signed it must
have been valid then.

The installation's public keys are published at
``/.well-known/handin-receipt-keys.json`` (``KeyRing.public_document``) with
each key's validity; a retired key stays published, so receipts it signed
while it was current stay valid after a rotation. Verification
(``verify_receipt``) needs only that document, never the database: the verify
page, its JSON endpoint and ``handin verify-receipt`` all use it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import isoformat, utcnow
from core.db import entities_from, entity_columns, rows_of
from core.models import Assignment, Course, Submission, SubmissionStep, User
from core.settings import ReceiptKeySettings, ReceiptSettings, Settings
from core.storage import file_sha256

FORMAT = "handin-receipt/1"
KEYS_FORMAT = "handin-receipt-keys/1"
ALGORITHM = "Ed25519"
WELL_KNOWN_PATH = "/.well-known/handin-receipt-keys.json"
MAX_RECEIPT_BYTES = 64 * 1024


class ReceiptKeyError(ValueError):
    """The configured signing keys cannot be used (malformed, none current, duplicate ids)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Strict base64url (padding optional): anything else raises ValueError."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url text")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error as error:
        raise ValueError("not base64url text") from error


def canonical(payload: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: JSON with sorted keys, no whitespace, UTF-8 (not \\u-escaped)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def receipt_filename(submission_id: int) -> str:
    return f"handin-receipt-{submission_id}.json"


def installation_name(settings: Settings) -> str:
    return settings.receipts.installation or urlsplit(settings.public_url).netloc or settings.public_url


# ---------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class ReceiptKey:
    id: str
    public_key: Ed25519PublicKey
    valid_from: datetime
    valid_until: datetime | None = None
    private_key: Ed25519PrivateKey | None = field(default=None, repr=False)

    def valid_at(self, moment: datetime) -> bool:
        # Receipts state times to the millisecond: compare the key's start at that precision too.
        start = self.valid_from.replace(microsecond=self.valid_from.microsecond // 1000 * 1000)
        return start <= moment and (self.valid_until is None or moment <= self.valid_until)

    def public_entry(self) -> dict[str, Any]:
        raw = self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "id": self.id,
            "algorithm": ALGORITHM,
            "public_key": b64url(raw),
            "valid_from": isoformat(self.valid_from),
            "valid_until": isoformat(self.valid_until) if self.valid_until else None,
        }


def _private_key(text: str) -> Ed25519PrivateKey:
    if "-----BEGIN" in text:
        loaded = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("the PEM key is not an Ed25519 key")
        return loaded
    seed = unb64url(text.strip())
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 private key is 32 bytes, this is {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def _public_key(text: str) -> Ed25519PublicKey:
    raw = unb64url(text.strip())
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _key_from_settings(entry: ReceiptKeySettings) -> ReceiptKey:
    try:
        private = _private_key(entry.private_key.get_secret_value()) if entry.private_key is not None else None
        public = private.public_key() if private is not None else _public_key(entry.public_key or "")
    except ValueError as error:
        raise ReceiptKeyError(f"receipt key {entry.id!r}: {error}") from error
    return ReceiptKey(entry.id, public, entry.valid_from, entry.valid_until, private)


@dataclass(frozen=True)
class KeyRing:
    """The installation's receipt keys: the one that signs now, and every one still published."""

    installation: str
    keys: dict[str, ReceiptKey]
    signing: ReceiptKey | None = None

    @classmethod
    def from_settings(cls, installation: str, entries: list[ReceiptKeySettings]) -> KeyRing:
        keys: dict[str, ReceiptKey] = {}
        for entry in entries:
            if entry.id in keys:
                raise ReceiptKeyError(f"receipt key id {entry.id!r} is listed twice")
            keys[entry.id] = _key_from_settings(entry)
        # The current key: holds its private half and has not been retired; the newest if several.
        current = [key for key in keys.values() if key.private_key is not None and key.valid_until is None]
        if not current:
            raise ReceiptKeyError("no current receipt signing key (one with private_key and no valid_until)")
        return cls(installation, keys, max(current, key=lambda key: key.valid_from))

    @classmethod
    def from_public_document(cls, document: Any) -> KeyRing:
        """The keys a verifier trusts, from the well-known document (or a saved copy of it)."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ReceiptKeyError("not a handin receipt keys document (no list of keys)")
        keys: dict[str, ReceiptKey] = {}
        for entry in document["keys"]:
            try:
                if entry.get("algorithm") != ALGORITHM:
                    continue
                until = entry.get("valid_until")
                keys[str(entry["id"])] = ReceiptKey(
                    str(entry["id"]),
                    _public_key(entry["public_key"]),
                    _parse_time(entry["valid_from"]),
                    _parse_time(until) if until else None,
                )
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                raise ReceiptKeyError(f"a key in the keys document is malformed: {error}") from error
        return cls(str(document.get("installation", "")), keys)

    def public_document(self) -> dict[str, Any]:
        ordered = sorted(self.keys.values(), key=lambda key: key.valid_from, reverse=True)
        return {
            "format": KEYS_FORMAT,
            "installation": self.installation,
            "keys": [key.public_entry() for key in ordered],
        }


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("a time must be an ISO 8601 string")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text}")
    return moment


def _dev_entries(path: Path) -> list[ReceiptKeySettings]:
    """Development's key: generated on first use and kept, so receipts survive restarts."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        now = utcnow()
        entry = {"id": f"dev-{now:%Y%m%d%H%M%S}", "private_key": b64url(seed), "valid_from": isoformat(now)}
        try:  # O_EXCL: two processes starting at once keep the first one's key
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w") as handle:
                json.dump([entry], handle, indent=2)
    return _entries_from_file(path)


def _entries_from_file(path: Path) -> list[ReceiptKeySettings]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReceiptKeyError(f"cannot read the receipt keys in {path}: {error}") from error
    if not isinstance(data, list):
        raise ReceiptKeyError(f"{path} must hold a JSON list of keys")
    return [ReceiptKeySettings.model_validate(entry) for entry in data]


_RINGS: dict[tuple[str, str], KeyRing] = {}


def key_ring(settings: Settings) -> KeyRing:
    """The installation's key ring from settings (an inline list, a file, or development's own key)."""
    section: ReceiptSettings = settings.receipts
    installation = installation_name(settings)
    cache_key = (installation, section.model_dump_json())
    ring = _RINGS.get(cache_key)
    if ring is None:
        if section.signing_keys:
            entries = section.signing_keys
        elif section.signing_key_file is not None:
            entries = _entries_from_file(section.signing_key_file)
        elif settings.environment == "development":
            entries = _dev_entries(section.dev_key_file)
        else:
            raise ReceiptKeyError("no receipt signing keys configured")
        ring = _RINGS[cache_key] = KeyRing.from_settings(installation, entries)
    return ring


# ---------------------------------------------------------------------------- building and signing


@dataclass(frozen=True)
class ReceiptFacts:
    """What a receipt states, read from the database."""

    submission: Submission
    assignment: Assignment
    course: Course
    student: User


_FACT_MODELS = (Submission, Assignment, Course, User)
_FACTS = (
    select(
        *entity_columns(*_FACT_MODELS),
        # The scan step's state: a receipt must say when the file was not scanned.
        select(SubmissionStep.state)
        .where(SubmissionStep.submission_id == Submission.id, SubmissionStep.step == "scan")
        .scalar_subquery()
        .label("scan_state"),
    )
    .join_from(Submission, Assignment, Submission.assignment_id == Assignment.id)
    .join(Course, Assignment.course_id == Course.id)
    .join(User, Submission.user_id == User.id)
    .where(Submission.id == bindparam("submission_id"))
)


def _facts_from(row: Any) -> ReceiptFacts:
    return ReceiptFacts(*entities_from(row, *_FACT_MODELS))


async def load_facts(session: AsyncSession, submission_id: int) -> ReceiptFacts | None:
    row = (await session.execute(_FACTS, {"submission_id": submission_id})).mappings().first()
    return _facts_from(row) if row is not None else None


async def read_facts(
    sessions: async_sessionmaker[AsyncSession], submission_id: int
) -> tuple[ReceiptFacts, str | None] | None:
    """The facts and the scan step's state (None: no such step), in one statement; on
    PostgreSQL on the pool's asyncpg connection, as the steps that send them run it per job."""
    rows = await rows_of(sessions, _FACTS, {"submission_id": submission_id})
    return (_facts_from(rows[0]), rows[0]["scan_state"]) if rows else None


def receipt_payload(facts: ReceiptFacts, installation: str, issued_at: datetime | None = None) -> dict[str, Any]:
    submission = facts.submission
    started = submission.upload_started_at
    return {
        "format": FORMAT,
        "installation": installation,
        "submission_id": submission.id,
        "assignment": {"id": facts.assignment.id, "title": facts.assignment.title},
        "course": {"id": facts.course.id, "code": facts.course.code, "title": facts.course.title},
        "student": {"id": facts.student.id, "name": facts.student.name, "email": facts.student.email},
        "attempt": submission.attempt,
        "file": {"name": submission.original_filename, "size": submission.size, "sha256": submission.sha256},
        # Rows from before the start was recorded have none: the receipt says so rather than guess.
        "upload_started_at": isoformat(started) if started else None,
        "accepted_at": isoformat(submission.received_at),
        "late": submission.late,
        "timing": "late" if submission.late else "on time",
        # When it was signed: the key must have been current then (a rotation keeps older receipts valid).
        "issued_at": isoformat(issued_at or utcnow()),
    }


def sign_payload(payload: dict[str, Any], ring: KeyRing) -> dict[str, Any]:
    key = ring.signing
    if key is None or key.private_key is None:
        raise ReceiptKeyError("this key ring cannot sign (public keys only)")
    return {
        "format": FORMAT,
        "payload": payload,
        "key_id": key.id,
        "algorithm": ALGORITHM,
        "signature": b64url(key.private_key.sign(canonical(payload))),
    }


def receipt_bytes(document: Mapping[str, Any]) -> bytes:
    """The receipt file: indented for people to read (the signature covers the canonical form)."""
    return json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n"


def build_receipt(facts: ReceiptFacts, settings: Settings) -> dict[str, Any]:
    ring = key_ring(settings)
    return sign_payload(receipt_payload(facts, ring.installation), ring)


# ---------------------------------------------------------------------------- verifying


@dataclass
class Verdict:
    """What a check found: ``valid`` only when the signature holds and nothing else is wrong."""

    signature_valid: bool = False
    problems: list[str] = field(default_factory=list)
    installation: str | None = None
    key_id: str | None = None
    payload: dict[str, Any] | None = None
    file_matches: bool | None = None  # None: no file given

    @property
    def valid(self) -> bool:
        return self.signature_valid and not self.problems and self.file_matches is not False

    def summary(self) -> str:
        if not self.valid:
            return "NOT valid: " + "; ".join(self.problems)
        text = f"valid, signed by {self.installation} with key {self.key_id}"
        if self.file_matches:
            text += ", file matches"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "signature_valid": self.signature_valid,
            "summary": self.summary(),
            "problems": self.problems,
            "installation": self.installation,
            "key_id": self.key_id,
            "file_matches": self.file_matches,
            "payload": self.payload,
        }


def parse_receipt(data: bytes | str) -> Any:
    if len(data) > MAX_RECEIPT_BYTES:
        raise ValueError(f"a receipt is at most {MAX_RECEIPT_BYTES // 1024} KB; this is not one")
    return json.loads(data)


def verify_receipt(
    document: Any, ring: KeyRing, file_sha256: str | None = None, file_size: int | None = None
) -> Verdict:
    """Check a receipt against the published keys and, if given, the file's SHA-256 (and size)."""
    verdict = Verdict()
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        verdict.problems.append(f'this is not a handin receipt (no "format": "{FORMAT}")')
        return verdict
    payload, key_id, signature = document.get("payload"), document.get("key_id"), document.get("signature")
    if not isinstance(payload, dict):
        verdict.problems.append("the receipt has no payload")
        return verdict
    verdict.payload = payload
    if document.get("algorithm") != ALGORITHM:
        verdict.problems.append(f"the signature algorithm is {document.get('algorithm')!r}, not {ALGORITHM}")
        return verdict
    verdict.key_id = key_id if isinstance(key_id, str) else None
    key = ring.keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        verdict.problems.append(
            f"it names signing key {key_id!r}, which {ring.installation or 'this installation'} does not publish"
        )
        return verdict
    try:
        raw_signature = unb64url(signature if isinstance(signature, str) else "")
        key.public_key.verify(raw_signature, canonical(payload))
    except (ValueError, InvalidSignature):
        verdict.problems.append(
            "the signature does not match the receipt's contents: it was changed after it was signed, "
            f"or not signed with key {key_id}"
        )
        return verdict
    verdict.signature_valid = True
    verdict.installation = str(payload.get("installation") or ring.installation)
    _check_signed_contents(verdict, payload, key, ring)
    if file_sha256 is not None:
        _check_file(verdict, payload, file_sha256, file_size)
    return verdict


def _check_signed_contents(verdict: Verdict, payload: dict[str, Any], key: ReceiptKey, ring: KeyRing) -> None:
    if ring.installation and payload.get("installation") != ring.installation:
        verdict.problems.append(
            f"it says it was issued by {payload.get('installation')!r}, but these keys are {ring.installation!r}'s"
        )
    try:
        issued = _parse_time(payload.get("issued_at"))
    except ValueError:
        verdict.problems.append("its issue time is missing or malformed")
        return
    if not key.valid_at(issued):
        until = isoformat(key.valid_until) if key.valid_until else "now"
        verdict.problems.append(
            f"key {key.id} was valid from {isoformat(key.valid_from)} until {until}, "
            f"but the receipt says it was issued at {isoformat(issued)}"
        )


def _check_file(verdict: Verdict, payload: dict[str, Any], sha256: str, size: int | None) -> None:
    stated = payload.get("file")
    if not isinstance(stated, dict):
        stated = {}
    expected, expected_size = stated.get("sha256"), stated.get("size")
    if sha256.lower() != expected:
        verdict.file_matches = False
        verdict.problems.append(
            f"the file does not match: its SHA-256 is {sha256.lower()}, the receipt's is {expected}"
        )
    elif size is not None and size != expected_size:
        verdict.file_matches = False
        verdict.problems.append(f"the file does not match: it is {size} bytes, the receipt says {expected_size}")
    else:
        verdict.file_matches = True


# ---------------------------------------------------------------------------- the command


def _load_keys(source: str | None) -> KeyRing:
    """A saved keys document (offline), its URL, or without either this installation's own keys."""
    if source is None:
        from core.settings import get_settings

        return key_ring(get_settings())
    if source.startswith(("https://", "http://")):
        answer = httpx.get(source, timeout=10.0, follow_redirects=True)
        answer.raise_for_status()
        return KeyRing.from_public_document(answer.json())
    return KeyRing.from_public_document(json.loads(Path(source).read_text()))


def verify_receipt_command(receipt: str, file: str | None, keys: str | None) -> int:
    """``handin verify-receipt``: 0 valid, 1 not valid (and why), 2 could not check."""
    try:
        ring = _load_keys(keys)
        document = parse_receipt(Path(receipt).read_bytes())
        size, sha256 = file_sha256(Path(file), 1024 * 1024) if file else (None, None)
    except (OSError, ValueError, httpx.HTTPError) as error:  # ReceiptKeyError and bad JSON are ValueErrors
        print(f"cannot check: {error}", file=sys.stderr)
        return 2
    verdict = verify_receipt(document, ring, sha256, size)
    print(verdict.summary())
    payload = verdict.payload if verdict.signature_valid and verdict.payload else None
    if payload is not None:
        stated = payload.get("file") or {}
        print(f"  submission {payload.get('submission_id')}, attempt {payload.get('attempt')}, {payload.get('timing')}")
        print(f"  file {stated.get('name')} ({stated.get('size')} bytes), sha256 {stated.get('sha256')}")
        print(f"  upload started {payload.get('upload_started_at')}, accepted {payload.get('accepted_at')}")
    return 0 if verdict.valid else 1
