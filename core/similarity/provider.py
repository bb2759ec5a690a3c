"""What a similarity provider does for the similarity step, whichever it is.

A provider gets one submission and answers with a ``CheckOutcome``: done
(with a score), skipped (no text to compare) or waiting (an external party
is working; a webhook or a poll will finish the step later). It raises
``ProviderUnavailable`` for what may pass (5xx, timeouts) and
``ProviderRejected`` for what never will (4xx). The worker maps these onto
the step runner's states; this module does not depend on the worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import Submission
from core.settings import Settings

NO_TEXT = "no text to compare"


class ProviderUnavailable(Exception):
    """The provider may answer later: retry."""


class ProviderRejected(Exception):
    """The provider refused the request for good: fail the step with this reason."""


@dataclass(frozen=True)
class CheckRequest:
    submission: Submission
    storage: Any  # core.storage.Storage; the file is in Area.store
    # The step's stored result from an earlier run (e.g. the provider's submission id).
    previous_result: dict[str, Any] = field(default_factory=dict)
    # Saves progress on the step row at once, so a crash or retry never repeats a side effect.
    remember: Callable[[dict[str, Any]], Awaitable[None]] | None = None


@dataclass(frozen=True)
class CheckOutcome:
    state: Literal["done", "skipped", "waiting"]
    result: dict[str, Any]
    wait_seconds: float | None = None


class SimilarityProvider(Protocol):
    name: str

    async def check(self, request: CheckRequest) -> CheckOutcome: ...

    async def close(self) -> None: ...


def make_provider(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> SimilarityProvider:
    if settings.similarity.provider == "external":
        from core.similarity.external import ExternalProvider

        return ExternalProvider.from_settings(settings)
    from core.similarity.builtin import BuiltinProvider

    return BuiltinProvider(settings, sessions)
