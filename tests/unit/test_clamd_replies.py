"""clamd's INSTREAM answers and framing, without a daemon."""

from __future__ import annotations

import asyncio
import struct

import pytest

from workers.clamd import (
    MAX_CHUNK,
    ClamdClient,
    ClamdError,
    ClamdSizeLimitExceeded,
    frame_chunk,
    parse_scan_reply,
)
from workers.maintenance import cron_schedule


def test_clean_answer() -> None:
    verdict = parse_scan_reply("stream: OK\0")
    assert (verdict.infected, verdict.signature) == (False, None)


def test_found_answer_names_the_signature() -> None:
    verdict = parse_scan_reply("stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0")
    assert (verdict.infected, verdict.signature) == (True, "Eicar-Test-Signature.UNOFFICIAL")


def test_answers_in_a_session_carry_their_command_number() -> None:
    assert parse_scan_reply("1: stream: OK\0").reply == "stream: OK"
    found = parse_scan_reply("1: stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0")
    assert (found.infected, found.signature) == (True, "Eicar-Test-Signature.UNOFFICIAL")
    with pytest.raises(ClamdSizeLimitExceeded):
        parse_scan_reply("1: INSTREAM size limit exceeded. ERROR\0")


def test_size_limit_is_its_own_error() -> None:
    with pytest.raises(ClamdSizeLimitExceeded):
        parse_scan_reply("INSTREAM size limit exceeded. ERROR\0")


@pytest.mark.parametrize("reply", ["", "stream: lstat() failed: No such file. ERROR\0", "UNKNOWN COMMAND\0"])
def test_other_answers_are_errors_never_clean(reply: str) -> None:
    with pytest.raises(ClamdError):
        parse_scan_reply(reply)


def test_frames_carry_a_big_endian_length_and_stay_small() -> None:
    data = bytes(range(256)) * (MAX_CHUNK // 256 * 2 + 1)
    frames = frame_chunk(data)
    assert len(frames) == 3
    assert all(struct.unpack(">I", frame[:4])[0] == len(frame) - 4 <= MAX_CHUNK for frame in frames)
    assert b"".join(frame[4:] for frame in frames) == data
    assert frame_chunk(b"") == []


def test_reconcile_interval_becomes_a_cron_schedule() -> None:
    assert cron_schedule(30) == {"second": {0, 30}}
    assert cron_schedule(5)["second"] == set(range(0, 60, 5))
    assert cron_schedule(300) == {"minute": set(range(0, 60, 5)), "second": {0}}


async def test_an_answer_that_arrives_with_the_hang_up_is_not_lost() -> None:
    """clamd says a limit was passed and resets the connection; both can land before the reply is read,
    and asyncio's StreamReader then raises the reset ahead of the answer it holds."""
    reader = asyncio.StreamReader()
    reader.feed_data(b"INSTREAM size limit exceeded. ERROR\0")
    reader.set_exception(ConnectionResetError(104, "Connection reset by peer"))

    reply = await ClamdClient._read_reply(reader)

    with pytest.raises(ClamdSizeLimitExceeded):
        parse_scan_reply(reply)


async def test_a_hang_up_without_any_answer_is_still_a_reset() -> None:
    reader = asyncio.StreamReader()
    reader.set_exception(ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(ConnectionResetError):
        await ClamdClient._read_reply(reader)
