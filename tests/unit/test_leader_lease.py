"""A standby times the holder's Lease by its own clock (client-go's rule), so node clocks need not agree."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from autoscaler.leader import LeaseElector


class FakeLeases:
    """The three Lease calls the elector makes, against one stored Lease with a resourceVersion."""

    def __init__(self) -> None:
        self.lease: k8s.V1Lease | None = None
        self.version = 0

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> k8s.V1Lease:
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return self.lease

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        if self.lease is not None:
            raise ApiException(status=409, reason="Conflict")
        self._store(body["spec"])

    def patch_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
        expected = body.get("metadata", {}).get("resourceVersion")
        if expected is not None and expected != str(self.version):
            raise ApiException(status=409, reason="Conflict")
        self._store(body["spec"])

    def _store(self, spec: dict[str, Any]) -> None:
        self.version += 1

        def moment(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

        self.lease = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name="lease", resource_version=str(self.version)),
            spec=k8s.V1LeaseSpec(
                holder_identity=spec.get("holderIdentity"),
                lease_duration_seconds=spec.get("leaseDurationSeconds"),
                acquire_time=moment(spec.get("acquireTime")),
                renew_time=moment(spec.get("renewTime")),
                lease_transitions=spec.get("leaseTransitions"),
            ),
        )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def elector(api: FakeLeases, identity: str, clock: Clock) -> LeaseElector:
    chosen = LeaseElector(k8s.ApiClient(), "ns", "lease", identity, duration=15.0, clock=clock, timeout=5.0)
    chosen.api = api  # type: ignore[assignment]
    return chosen


def test_a_standby_whose_clock_runs_an_hour_ahead_does_not_take_over_a_renewing_leader() -> None:
    api = FakeLeases()
    leader_clock, standby_clock = Clock(1_000_000.0), Clock(1_000_000.0 + 3600)
    leader, standby = elector(api, "a", leader_clock), elector(api, "b", standby_clock)
    assert leader._acquire_logged()
    for _ in range(10):
        leader_clock.now += 5
        standby_clock.now += 5
        assert leader._acquire_logged()
        # The holder's renewTime is an hour old by the standby's clock, but it keeps changing.
        assert not standby._acquire_logged()
    assert api.lease is not None and api.lease.spec.holder_identity == "a"


def test_a_standby_whose_clock_runs_behind_takes_over_one_duration_after_the_last_renewal_it_saw() -> None:
    api = FakeLeases()
    leader_clock, standby_clock = Clock(1_000_000.0), Clock(1_000_000.0 - 3600)
    leader, standby = elector(api, "a", leader_clock), elector(api, "b", standby_clock)
    assert leader._acquire_logged()
    assert not standby._acquire_logged()
    # The leader dies. Its renewTime lies an hour in the standby's future: a clock comparison
    # would wait an hour; the standby waits one lease duration from when it saw the renewal.
    standby_clock.now += 10
    assert not standby._acquire_logged()
    standby_clock.now += 6
    assert standby._acquire_logged()
    assert api.lease is not None and api.lease.spec.holder_identity == "b"
    assert api.lease.spec.lease_transitions == 1
