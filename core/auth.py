"""Passwords, signed tokens and WebSocket tickets.

Passwords are hashed with scrypt (a memory-hard KDF from the standard library).
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

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(
        password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(_unb64(digest))
    )
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
