"""The receipt worker keeps one SMTP connection open from job to job, and opens a new one when it is lost."""

from __future__ import annotations

import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from arq.connections import ArqRedis

from core.settings import Settings
from tests.fixtures.factories import Factory
from tests.fixtures.pipeline import quick_retries, step_row
from tests.services import free_port
from workers import receipt


class PeerCounter:
    """An aiosmtpd handler that accepts every message and notes which client connection sent it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.peers: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.peers.append(session.peer)
        return "250 Message accepted for delivery"


def _note(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "handin@handin.local", "s@example.test", subject
    message.set_content(subject)
    return message


async def _queue_receipts(factory: Factory, arq_redis: ArqRedis, count: int) -> list[int]:
    world = await factory.world()
    ids = []
    for number in range(count):
        submission = await factory.stored_submission(
            world, f"essay {number}\n".encode() * 50, step=receipt.TASK, arq_redis=arq_redis
        )
        ids.append(submission.id)
    return ids


async def test_receipts_share_one_smtp_connection_and_a_lost_one_is_replaced(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    handler = PeerCounter()
    port = free_port()
    server = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=5)
    server.start()
    try:
        settings.smtp.host, settings.smtp.port, settings.smtp.timeout_seconds = "127.0.0.1", port, 2
        quick_retries(settings, receipt.TASK, max_tries=5, delay_seconds=0.1)

        first = await _queue_receipts(factory, arq_redis, 4)
        await run_burst(receipt.TASK, receipt.handle)

        assert len(handler.peers) == 4
        assert len(set(handler.peers)) == 1  # one client connection sent them all
        for submission_id in first:
            assert (await step_row(sessions, submission_id, receipt.TASK)).state == "succeeded"

        # The kept connection is lost (the mail server restarts): the next send opens a new one.
        await receipt.send(_note("one"), settings.smtp)
        server.stop()
        server = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=5)
        server.start()
        await receipt.send(_note("two"), settings.smtp)

        assert len(handler.peers) == 6 and handler.peers[4] != handler.peers[5]
    finally:
        await receipt.close_smtp()
        server.stop()
