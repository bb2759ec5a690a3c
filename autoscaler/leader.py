"""Only one autoscaler acts: a coordination.k8s.io/v1 Lease, or a Redis lock on one machine."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from redis.asyncio import Redis

from core import keys

log = logging.getLogger(__name__)


class Elector(Protocol):
    async def acquire(self) -> bool:
        """Take or renew leadership; True while this process leads. Never raises: failures are logged."""
        ...

    def leading(self) -> bool:
        """Whether a change made now still lands before another process could take over."""
        ...

    async def release(self) -> None: ...


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reason(error: BaseException) -> dict[str, Any]:
    if isinstance(error, ApiException):
        return {"status": error.status, "reason": error.reason, "error": str(error.body or "")[:300]}
    return {"error": f"{type(error).__name__}: {error}"[:300]}


class LeaseElector:
    """client-go's Lease protocol: renew while holding; take over only after the holder's lease expired.

    Writes carry the resourceVersion read just before, so of two autoscalers
    taking over at once the API server lets only one through (409 for the other).

    A standby times the holder's lease by its own clock, as client-go does: it
    notes when it first saw the current (holder, renewTime, resourceVersion) and
    takes over only `duration` after that, if nothing changed meanwhile. The
    two clocks need not agree; only their rates matter.

    A standby may thus take over `duration` after it saw the last renewal. The
    holder therefore treats itself as leader only until `duration - timeout`
    after the moment it stamped into renewTime: a change it starts before then
    has finished (or been given up, every call carries `timeout`) before any
    standby may act. Every call to the API server carries that timeout, and a
    failed renewal is logged with the server's answer, never swallowed.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
    ) -> None:
        if timeout >= duration:
            raise ValueError(
                f"the Kubernetes call timeout ({timeout} s) must be below the lease duration ({duration} s)"
            )
        self.api = k8s.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.timeout = timeout
        self.clock = clock
        self.renew_deadline = duration - timeout
        self._valid_until = 0.0  # clock() before which a change started by this process is safe
        self._failing = False
        self._announced = False  # what the log last said: leading or not
        self._seen_holder: str | None = None  # the other leader last logged
        # The holder's lease as this standby last saw it, and when (by its own clock).
        self._observed: tuple[str | None, str | None, str | None] | None = None
        self._observed_at = 0.0
        # acquire and release run in threads; a release waits for a renewal still in flight.
        self._lock = threading.Lock()
        self._released = False

    def leading(self) -> bool:
        return self.clock() < self._valid_until

    def _spec(self, now: float, transitions: int, acquired: float | None = None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": _micro_time(acquired if acquired is not None else now),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    async def acquire(self) -> bool:
        return await asyncio.to_thread(self._acquire_logged)

    def _acquire_logged(self) -> bool:
        with self._lock:
            if self._released:
                return False
            try:
                held, stamped = self._acquire()
            except Exception as error:  # the API refused or did not answer: say why, and stand by
                held, stamped = False, 0.0
                log.error(
                    "lease renewal failed" if self._announced else "lease acquisition failed",
                    extra={"lease": self.name, "identity": self.identity, **_reason(error)},
                )
                self._failing = True
            else:
                if self._failing:
                    log.info("lease calls succeed again", extra={"lease": self.name, "identity": self.identity})
                    self._failing = False
            if held:
                self._valid_until = stamped + self.renew_deadline
            # A failed renewal leaves the last one in force until its deadline.
            leading = self.leading()
            if leading != self._announced:
                if leading:
                    log.info("leading", extra={"lease": self.name, "identity": self.identity})
                else:
                    log.warning("no longer leading", extra={"lease": self.name, "identity": self.identity})
                self._announced = leading
            return leading

    def _acquire(self) -> tuple[bool, float]:
        """(holding, the time stamped into renewTime) after one read and at most one write."""
        now = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
        except ApiException as error:
            if error.status != 404:
                raise
            return self._create(now), now
        spec = lease.spec
        holder = spec.holder_identity if spec else None
        transitions = (spec.lease_transitions or 0) if spec else 0
        if holder == self.identity:
            acquired = spec.acquire_time.timestamp() if spec.acquire_time else now
            return self._patch(lease, self._spec(now, transitions, acquired)), now
        renewed = spec.renew_time.isoformat() if spec and spec.renew_time else None
        version = lease.metadata.resource_version if lease.metadata else None
        duration = (spec.lease_duration_seconds or self.duration) if spec else self.duration
        if (holder, renewed, version) != self._observed:
            # A renewal (or a new holder) seen now: its lease runs `duration` from now, by our clock.
            self._observed, self._observed_at = (holder, renewed, version), now
        if holder and renewed is not None and now < self._observed_at + duration:
            if holder != self._seen_holder:
                log.info("standing by; another autoscaler leads", extra={"lease": self.name, "holder": holder})
                self._seen_holder = holder
            return False, now
        log.info("taking over the lease", extra={"lease": self.name, "from": holder, "to": self.identity})
        return self._patch(lease, self._spec(now, transitions + 1)), now

    def _create(self, now: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(now, 0),
        }
        try:
            self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 409:  # another autoscaler created it first
                return False
            raise
        return True

    def _patch(self, lease: k8s.V1Lease, spec: dict[str, Any]) -> bool:
        body: dict[str, Any] = {"spec": spec}
        if lease.metadata and lease.metadata.resource_version:
            body["metadata"] = {"resourceVersion": lease.metadata.resource_version}
        try:
            self.api.patch_namespaced_lease(self.name, self.namespace, body, _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 409:  # someone else wrote it since we read it
                return False
            raise
        return True

    async def release(self) -> None:
        """Give the lease up at once, so a standby need not wait for it to expire."""
        self._valid_until = 0.0  # act no more, whatever the release below achieves
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self._lock:
            self._released = True
            self._valid_until = 0.0
            try:
                lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
                if not (lease.spec and lease.spec.holder_identity == self.identity):
                    return
                body: dict[str, Any] = {"spec": {"holderIdentity": None, "renewTime": None}}
                if lease.metadata and lease.metadata.resource_version:
                    body["metadata"] = {"resourceVersion": lease.metadata.resource_version}
                self.api.patch_namespaced_lease(self.name, self.namespace, body, _request_timeout=self.timeout)
            except Exception as error:
                log.error(
                    "lease release failed; a standby takes over once it expires",
                    extra={"lease": self.name, "identity": self.identity, **_reason(error)},
                )
                return
            log.info("lease released", extra={"lease": self.name, "identity": self.identity})


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLockElector:
    """A Redis key holding the leader's identity with a TTL; renewed by its holder only."""

    def __init__(
        self,
        redis: Redis,
        identity: str,
        duration: float = 15.0,
        key: str = keys.AUTOSCALER_LOCK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.identity = identity
        self.ttl_ms = max(1, int(duration * 1000))
        self.key = key
        self.clock = clock
        # The key expires ttl after the server ran the command, which is after we sent it;
        # a third of the ttl is left for the change itself.
        self.renew_deadline = duration * 2 / 3
        self._valid_until = 0.0
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def leading(self) -> bool:
        return self.clock() < self._valid_until

    async def acquire(self) -> bool:
        sent = self.clock()
        try:
            held = bool(await self.redis.set(self.key, self.identity, nx=True, px=self.ttl_ms)) or bool(
                await self._renew(keys=[self.key], args=[self.identity, self.ttl_ms])
            )
        except Exception as error:
            log.error("leader lock renewal failed", extra={"key": self.key, **_reason(error)})
            return self.leading()
        if held:
            self._valid_until = sent + self.renew_deadline
        return held

    async def release(self) -> None:
        self._valid_until = 0.0
        try:
            await self._release(keys=[self.key], args=[self.identity])
        except Exception as error:
            log.error("leader lock release failed", extra={"key": self.key, **_reason(error)})
