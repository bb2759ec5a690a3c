"""The demo data `make run` seeds: idempotent, and a demo student can submit straight away."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.demo import DEMO_USERS, seed_demo
from core.models import Assignment, Course, Enrolment, User
from core.settings import Settings
from tests.fixtures.app import same_origin


async def test_seed_demo_is_idempotent_and_usable(
    app: FastAPI, settings: Settings, sessions: async_sessionmaker[AsyncSession], capsys: pytest.CaptureFixture[str]
) -> None:
    assignment_id = await seed_demo(settings, print_credentials=True)
    assert await seed_demo(settings) == assignment_id
    printed = capsys.readouterr().out
    assert all(demo.email in printed and demo.password in printed for demo in DEMO_USERS)
    async with sessions() as session:
        counts = [
            await session.scalar(select(func.count()).select_from(m)) for m in (Course, Assignment, User, Enrolment)
        ]
        assignment = await session.get(Assignment, assignment_id)
    assert counts == [1, 1, 3, 3]
    assert assignment is not None and assignment.max_attempts == 3 and assignment.max_bytes == 20 * 1024 * 1024
    assert sorted(assignment.accepted_types) == ["docx", "image", "pdf", "text"]

    student = DEMO_USERS[0]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://handin.test", event_hooks=same_origin(settings)
    ) as http:
        login = await http.post("/api/login", json={"email": student.email, "password": student.password})
        assert login.status_code == 200
        answer = await http.post(
            f"/api/assignments/{assignment_id}/submissions", files={"file": ("notes.txt", b"hello, handin\n")}
        )
    assert answer.status_code == 202, answer.text
