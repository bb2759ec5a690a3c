"""Client of an external similarity provider, shaped like the Turnitin Core API flow.

1. ``POST /submissions`` with owner and title metadata → the provider's submission id;
2. ``PUT /submissions/{id}/original`` — the file, streamed from our store;
3. once the provider has processed the file (``GET /submissions/{id}`` → ``COMPLETE``),
   ``PUT /submissions/{id}/similarity`` asks for a similarity report;
4. the report arrives by a signed webhook (``X-Turnitin-Signature``: hex HMAC-SHA256
   of the raw body) or is fetched by polling ``GET /submissions/{id}/similarity``
   (``PROCESSING`` → ``COMPLETE`` with ``overall_match_percentage``).

The worker never waits for the report: ``check`` goes as far as the provider
lets it right now and answers "waiting"; deferred poll jobs call ``poll``.
Progress (id, uploaded, report requested) is saved on the step row after each
call with a side effect, so a re-run never creates a second provider submission
nor uploads twice.

Authentication is ``Authorization: Bearer <api key>``. 5xx, 429 and network
errors raise ``ProviderUnavailable`` (retry); other 4xx raise ``ProviderRejected``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import weakref
from dataclasses import dataclass
from typing import Any

import httpx

from core.models import Submission
from core.settings import Settings
from core.similarity.provider import CheckOutcome, CheckRequest, ProviderRejected, ProviderUnavailable

SIGNATURE_HEADER = "X-Turnitin-Signature"
EVENT_TYPE_HEADER = "X-Turnitin-EventType"
REPORT_EVENTS = ("SIMILARITY_COMPLETE", "SIMILARITY_UPDATED")
INTEGRATION_NAME = "handin"
INTEGRATION_VERSION = "0.1.0"
REQUEST_TIMEOUT_SECONDS = 30.0


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, signature: str | None) -> bool:
    """Constant-time check of a webhook's signature over its raw body."""
    if not signature:
        return False
    return hmac.compare_digest(sign(secret, body), signature.strip().lower())


@dataclass(frozen=True)
class Report:
    """A similarity report's state as the provider tells it."""

    provider_submission_id: str
    complete: bool
    score: float | None = None


def parse_report(payload: dict[str, Any]) -> Report:
    """A report from a webhook body or a ``GET …/similarity`` answer."""
    submission_id = payload.get("submission_id") or payload.get("id")
    if not isinstance(submission_id, str) or not submission_id:
        raise ValueError("no submission_id in the report")
    if payload.get("status") != "COMPLETE":
        return Report(submission_id, complete=False)
    score = payload.get("overall_match_percentage")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise ValueError("a complete report without overall_match_percentage")
    return Report(submission_id, complete=True, score=float(score))


def final_result(provider_submission_id: str, score: float) -> dict[str, Any]:
    return {
        "provider": ExternalProvider.name,
        "provider_submission_id": provider_submission_id,
        "score": round(score, 1),
    }


# One client per event loop and provider account: a worker process keeps its
# connections to the provider alive across checks and polls instead of a new
# connection (and TLS handshake) for each.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, float], httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def shared_client(base_url: str, api_key: str, timeout_seconds: float) -> httpx.AsyncClient:
    clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    key = (base_url, api_key, timeout_seconds)
    client = clients.get(key)
    if client is None or client.is_closed:
        client = clients[key] = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout_seconds,
            headers={
                "Authorization": f"Bearer {api_key}",
                "X-Turnitin-Integration-Name": INTEGRATION_NAME,
                "X-Turnitin-Integration-Version": INTEGRATION_VERSION,
            },
        )
    return client


async def close_shared_clients() -> None:
    for client in _CLIENTS.pop(asyncio.get_running_loop(), {}).values():
        await client.aclose()


class ExternalProvider:
    name = "external"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        poll_interval_seconds: float,
        max_polls: int,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.poll_interval_seconds = poll_interval_seconds
        self.max_polls = max_polls
        self.client = shared_client(base_url.rstrip("/"), api_key, timeout_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> ExternalProvider:
        section = settings.similarity
        if not section.external_url:
            raise ProviderRejected("the external similarity provider has no URL configured")
        return cls(
            section.external_url,
            section.external_api_key,
            poll_interval_seconds=section.poll_interval_seconds,
            max_polls=section.max_polls,
        )

    @property
    def wait_seconds(self) -> float:
        """How long the step may wait before the reconciler re-runs it: every poll, and some slack."""
        return self.poll_interval_seconds * (self.max_polls + 2) + 60

    async def close(self) -> None:
        """Nothing to release: the client is shared by every check in this process (see ``shared_client``)."""

    async def check(self, request: CheckRequest) -> CheckOutcome:
        state: dict[str, Any] = {
            key: request.previous_result[key]
            for key in ("provider_submission_id", "uploaded", "report_requested")
            if key in request.previous_result
        }
        state["provider"] = self.name

        async def remember() -> None:
            if request.remember is not None:
                await request.remember(dict(state))

        submission = request.submission
        if not state.get("provider_submission_id"):
            state["provider_submission_id"] = await self.create(submission)
            await remember()
        provider_id = str(state["provider_submission_id"])
        if not state.get("uploaded"):
            await self.upload(provider_id, submission, request.storage)
            state["uploaded"] = True
            await remember()
        done = await self.poll(state)
        if done is not None:
            return CheckOutcome("done", final_result(provider_id, done))
        return CheckOutcome("waiting", dict(state), wait_seconds=self.wait_seconds)

    async def poll(self, state: dict[str, Any]) -> float | None:
        """One step forward without waiting: the score if the report is done, else None.

        Sets ``state["report_requested"]`` when it asks for the report; the
        caller saves ``state``.
        """
        provider_id = str(state["provider_submission_id"])
        if not state.get("report_requested"):
            if not await self.file_processed(provider_id):
                return None
            await self.request_report(provider_id)
            state["report_requested"] = True
            return None
        report = await self.report(provider_id)
        return report.score if report.complete else None

    async def create(self, submission: Submission) -> str:
        body = {
            "owner": str(submission.user_id),
            "submitter": str(submission.user_id),
            "title": submission.original_filename,
            "owner_default_permission_set": "LEARNER",
            "submitter_default_permission_set": "LEARNER",
            "metadata": {
                "group": {"id": str(submission.assignment_id), "type": "ASSIGNMENT"},
                "custom": json.dumps({"handin_submission_id": submission.id}),
            },
        }
        answer = await self._send("POST", "/submissions", json=body)
        provider_id = answer.json().get("id")
        if not isinstance(provider_id, str) or not provider_id:
            raise ProviderUnavailable("the provider created a submission without an id")
        return provider_id

    async def upload(self, provider_id: str, submission: Submission, storage: Any) -> None:
        from core.storage import Area

        filename = submission.original_filename.replace('"', "")
        headers = {
            "Content-Type": "binary/octet-stream",
            "Content-Disposition": f'inline; filename="{filename}"',
            # Streamed with a length, not chunked: the file never sits in memory whole.
            "Content-Length": str(submission.size),
        }
        # 409: the file is there already (an earlier run uploaded it before it could note so).
        await self._send(
            "PUT",
            f"/submissions/{provider_id}/original",
            content=storage.open(Area.store, submission.storage_key),
            headers=headers,
            accept=(409,),
        )

    async def file_processed(self, provider_id: str) -> bool:
        answer = await self._send("GET", f"/submissions/{provider_id}")
        status = answer.json().get("status")
        if status == "ERROR":
            code = answer.json().get("error_code", "unknown error")
            raise ProviderRejected(f"the provider could not process the file: {code}")
        return bool(status == "COMPLETE")

    async def request_report(self, provider_id: str) -> None:
        body = {
            "generation_settings": {
                "search_repositories": ["INTERNET", "SUBMITTED_WORK", "PUBLICATION"],
                "auto_exclude_self_matching_scope": "GROUP",
            },
        }
        # 409: a report was already requested for this submission.
        await self._send("PUT", f"/submissions/{provider_id}/similarity", json=body, accept=(409,))

    async def report(self, provider_id: str) -> Report:
        answer = await self._send("GET", f"/submissions/{provider_id}/similarity")
        payload = answer.json()
        payload.setdefault("submission_id", provider_id)
        try:
            return parse_report(payload)
        except ValueError as error:
            raise ProviderUnavailable(f"unreadable similarity report: {error}") from error

    async def _send(self, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        try:
            answer = await self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as error:
            raise ProviderUnavailable(f"{method} {path} timed out") from error
        except httpx.TransportError as error:
            raise ProviderUnavailable(f"{method} {path} failed: {error}") from error
        if answer.status_code in accept or answer.is_success:
            return answer
        detail = _message(answer)
        if answer.status_code >= 500 or answer.status_code == 429:
            raise ProviderUnavailable(f"provider answered {answer.status_code} to {method} {path}{detail}")
        raise ProviderRejected(f"provider refused {method} {path}: {answer.status_code}{detail}")


def _message(answer: httpx.Response) -> str:
    try:
        message = answer.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return f" ({message})" if isinstance(message, str) and message else ""
