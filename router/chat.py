"""Limits on class chat (PUBLISH to ``course.<id>``): message size, and a rate per user.

The rate is counted in Redis (one counter per user and window), so a user who
opens sockets on several router replicas still gets one budget.
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis

from core import chat, keys
from core.settings import ChatSettings

MESSAGE_TOO_LARGE = "handin.error.message_too_large"
RATE_LIMITED = "handin.error.rate_limited"


class ChatGate:
    def __init__(self, redis: Redis, settings: ChatSettings) -> None:
        self.redis = redis
        self.settings = settings

    async def refusal(self, user_id: int, args: Any, kwargs: Any) -> tuple[str, str] | None:
        """(error URI, text) when this message may not go out, else None; counts it when it may."""
        limit = self.settings.max_message_bytes
        size = chat.message_bytes(args, kwargs)
        if size > limit:
            return MESSAGE_TOO_LARGE, f"a message may be at most {limit} bytes; this one is {size}"
        window = max(1, math.ceil(self.settings.rate_limit_window_seconds))
        key = keys.chat_rate(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=window, nx=True)
            pipe.incr(key)
            pipe.ttl(key)
            _, count, ttl = await pipe.execute()
        if int(count) > self.settings.rate_limit_messages:
            wait = max(1, int(ttl))
            text = f"at most {self.settings.rate_limit_messages} messages per {window} s; try again in {wait} s"
            return RATE_LIMITED, text
        return None
