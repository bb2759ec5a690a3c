"""Only one autoscaler acts: a coordination.k8s.io/v1 Lease, or a Redis lock on one machine."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
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
        """Take or renew leadership; True while this process leads."""
        ...

    async def release(self) -> None: ...


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """client-go's Lease protocol: renew while holding; take over only after the holder's lease expired.

    Writes carry the resourceVersion read just before, so of two autoscalers
    taking over at once the API server lets only one through (409 for the other).
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = k8s.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.clock = clock

    def _spec(self, now: float, transitions: int, acquired: float | None = None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": _micro_time(acquired if acquired is not None else now),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    async def acquire(self) -> bool:
        return await asyncio.to_thread(self._acquire)

    def _acquire(self) -> bool:
        now = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            return self._create(now)
        spec = lease.spec
        holder = spec.holder_identity if spec else None
        transitions = (spec.lease_transitions or 0) if spec else 0
        if holder == self.identity:
            acquired = spec.acquire_time.timestamp() if spec.acquire_time else now
            return self._patch(lease, self._spec(now, transitions, acquired))
        renewed = spec.renew_time.timestamp() if spec and spec.renew_time else 0.0
        duration = (spec.lease_duration_seconds or self.duration) if spec else self.duration
        if holder and now < renewed + duration:
            return False
        log.info("taking over the lease", extra={"lease": self.name, "from": holder, "to": self.identity})
        return self._patch(lease, self._spec(now, transitions + 1))

    def _create(self, now: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(now, 0),
        }
        try:
            self.api.create_namespaced_lease(self.namespace, body)
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
            self.api.patch_namespaced_lease(
                self.name, self.namespace, body
            )
        except ApiException as error:
            if error.status == 409:  # someone else wrote it since we read it
                return False
            raise
        return True

    async def release(self) -> None:
        """Give the lease up at once, so a standby need not wait for it to expire."""
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                body: dict[str, Any] = {"spec": {"holderIdentity": None, "renewTime": None}}
                if lease.metadata and lease.metadata.resource_version:
                    body["metadata"] = {"resourceVersion": lease.metadata.resource_version}
                self.api.patch_namespaced_lease(
                    self.name, self.namespace, body
                )
        except ApiException as error:
            log.warning("lease release failed", extra={"status": error.status})


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

    def __init__(self, redis: Redis, identity: str, duration: float = 15.0, key: str = keys.AUTOSCALER_LOCK) -> None:
        self.redis = redis
        self.identity = identity
        self.ttl_ms = max(1, int(duration * 1000))
        self.key = key
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        if await self.redis.set(self.key, self.identity, nx=True, px=self.ttl_ms):
            return True
        return bool(await self._renew(keys=[self.key], args=[self.identity, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.identity])
