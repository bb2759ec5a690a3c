"""Passwords, signed tokens and WebSocket tickets.

Passwords are hashed with argon2id (argon2-cffi's defaults follow RFC 9106's
second recommended profile: 64 MiB, 3 passes). Hashes written before that are
scrypt; they still verify, and ``needs_rehash`` tells the login to replace them.
Tokens are ``base64url(json payload).base64url(hmac-sha256)`` signed with the
secret key and a purpose, so a session cookie can never pass as a ticket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current defaults
# The parameters of hashes written before argon2id; they are verified, never written.
LEGACY_SCRYPT_N, LEGACY_SCRYPT_R, LEGACY_SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, stored: str) -> bool:
    if stored.startswith("$argon2"):
        try:
            return _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    return _verify_scrypt(password, stored)


def needs_rehash(stored: str) -> bool:
    """True for scrypt hashes and argon2 hashes with weaker parameters than today's."""
    if not stored.startswith("$argon2"):
        return True
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def legacy_scrypt_hash(password: str) -> str:
    """A hash in the format used before argon2id (for migrations and their tests)."""
    salt = secrets.token_bytes(16)
    n, r, p = LEGACY_SCRYPT_N, LEGACY_SCRYPT_R, LEGACY_SCRYPT_P
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(_unb64(digest))
        )
    except ValueError:
        return False
    return hmac.compare_digest(candidate, _unb64(digest))


class TokenError(Exception):
    """A token that is malformed, forged, for another purpose, or expired."""


def sign(payload: dict[str, Any], secret: str, purpose: str) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_mac(body, secret, purpose)}"


def unsign(token: str, secret: str, purpose: str, now: float | None = None) -> dict[str, Any]:
    body, _, mac = token.partition(".")
    if not body or not mac or not hmac.compare_digest(mac, _mac(body, secret, purpose)):
        raise TokenError("bad signature")
    try:
        payload = json.loads(_unb64(body))
    except ValueError as error:
        raise TokenError("malformed token") from error
    if not isinstance(payload, dict):
        raise TokenError("malformed token")
    expires = payload.get("exp")
    if not isinstance(expires, (int, float)) or expires < (now if now is not None else time.time()):
        raise TokenError("expired")
    return payload


WS_TICKET_PURPOSE = "ws-ticket"


@dataclass(frozen=True)
class Ticket:
    """A short-lived, single-use WebSocket ticket bound to a web session."""

    ticket_id: str
    user_id: int
    session_id: str
    expires_at: float


def mint_ws_ticket(user_id: int, session_id: str, secret: str, ttl_seconds: int) -> str:
    payload = {
        "tid": secrets.token_urlsafe(12),
        "uid": user_id,
        "sid": session_id,
        "exp": int(time.time()) + ttl_seconds,
    }
    return sign(payload, secret, WS_TICKET_PURPOSE)


def read_ws_ticket(token: str, secret: str, now: float | None = None) -> Ticket:
    payload = unsign(token, secret, WS_TICKET_PURPOSE, now)
    try:
        return Ticket(str(payload["tid"]), int(payload["uid"]), str(payload["sid"]), float(payload["exp"]))
    except (KeyError, TypeError, ValueError) as error:
        raise TokenError("malformed ticket") from error


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    """Webhook signatures (admin system, similarity provider)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _mac(body: str, secret: str, purpose: str) -> str:
    key = hashlib.sha256(f"{purpose}:{secret}".encode()).digest()
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
