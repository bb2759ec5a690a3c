"""Login throttling in Redis (per account, per client address) and password rehashing on login."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.auth import legacy_scrypt_hash
from core.db import transaction
from core.models import User
from core.settings import Settings
from tests.fixtures.app import PASSWORD, World, make_user, same_origin

LOCKOUT_SECONDS = 5.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A short lockout, so a test can wait for it to end; small limits, so it needs few (slow) hashes."""
    security = settings.security.model_copy(
        update={
            "login_lockout_seconds": LOCKOUT_SECONDS,
            "login_max_failures_per_account": 10,
            "login_max_failures_per_address": 20,
        }
    )
    return settings.model_copy(update={"security": security})


async def log_in(http: httpx.AsyncClient, who: str, password: str) -> httpx.Response:
    return await http.post("/api/login", json={"email": World.email(who), "password": password})


async def wait_until_allowed(http: httpx.AsyncClient, who: str) -> httpx.Response:
    """Retry the right password until the throttle lets it through (the lockout has ended)."""
    async with asyncio.timeout(30):
        while True:
            answer = await log_in(http, who, PASSWORD)
            if answer.status_code != 429:
                return answer
            await asyncio.sleep(min(0.2, float(answer.headers["retry-after"])))


async def test_thirty_wrong_passwords_lock_the_account_even_for_the_right_one(
    client: httpx.AsyncClient, app: FastAPI, world: World, settings: Settings
) -> None:
    answers = [await log_in(client, "student", f"guess {n}") for n in range(30)]
    codes = [answer.status_code for answer in answers]
    assert codes[:10] == [401] * 10
    assert codes[10:] == [429] * 20
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= LOCKOUT_SECONDS
    assert "Too many failed logins" in refused.json()["detail"]

    right = await log_in(client, "student", PASSWORD)
    assert right.status_code == 429
    assert "retry-after" in right.headers
    assert "handin_session" not in right.cookies

    # Another account from another address is not affected meanwhile.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.0.0.9", 4000)),
        base_url="http://handin.test",
        event_hooks=same_origin(settings),
    ) as other:
        assert (await log_in(other, "staff", PASSWORD)).status_code == 200

    assert (await wait_until_allowed(client, "student")).status_code == 200


async def test_many_accounts_from_one_address_are_throttled_by_address(
    client: httpx.AsyncClient, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # 20 failures spread over five accounts: no account reaches its limit, the address does.
    for n in range(20):
        answer = await log_in(client, ("student", "student2", "staff", "outsider", "other_staff")[n % 5], "wrong")
        assert answer.status_code == 401
    answer = await log_in(client, "student", PASSWORD)
    assert answer.status_code == 429
    assert "address" in answer.json()["detail"]
    assert (await wait_until_allowed(client, "student")).status_code == 200


async def test_a_scrypt_hash_is_replaced_by_argon2id_at_login(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await make_user(sessions, "legacy@test.handin")
    async with transaction(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.password_hash = legacy_scrypt_hash(PASSWORD)

    answer = await client.post("/api/login", json={"email": "legacy@test.handin", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    stored = await stored_hash(sessions, user_id)
    assert stored.startswith("$argon2id$")
    # The new hash works, and a wrong password still does not.
    assert (await client.post("/api/login", json={"email": "legacy@test.handin", "password": PASSWORD})).is_success
    wrong = await client.post("/api/login", json={"email": "legacy@test.handin", "password": "nope"})
    assert wrong.status_code == 401
    assert await stored_hash(sessions, user_id) == stored


async def stored_hash(sessions: async_sessionmaker[AsyncSession], user_id: int) -> Any:
    async with sessions() as session:
        return await session.scalar(select(User.password_hash).where(User.id == user_id))
