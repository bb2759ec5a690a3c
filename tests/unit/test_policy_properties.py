"""Properties of the scaling policy, checked with hypothesis over many inputs."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.policy import PoolInputs, PoolLimits, decide

counts = st.integers(min_value=0, max_value=200_000)
rates = st.floats(min_value=0.0, max_value=5_000.0, allow_nan=False)


@st.composite
def limits(draw: st.DrawFn) -> PoolLimits:
    low = draw(st.integers(min_value=0, max_value=20))
    return PoolLimits(
        min_replicas=low,
        max_replicas=draw(st.integers(min_value=low, max_value=500)),
        target_wait=draw(st.floats(min_value=0.5, max_value=600)),
        max_scale_up_step=draw(st.integers(min_value=1, max_value=200)),
        max_scale_down_step=draw(st.integers(min_value=1, max_value=50)),
        scale_down_window=draw(st.floats(min_value=0, max_value=900)),
        headroom=draw(st.floats(min_value=0, max_value=1)),
        lead=draw(st.floats(min_value=1, max_value=600)),
    )


@st.composite
def pool_inputs(draw: st.DrawFn) -> PoolInputs:
    return PoolInputs(
        task="scan",
        ready=draw(counts),
        running=draw(counts),
        deferred=draw(counts),
        due_soon=draw(counts),
        upstream=draw(counts),
        current_replicas=draw(st.integers(min_value=0, max_value=600)),
        drain_rate=draw(st.floats(min_value=0.01, max_value=1000)),
        arrival_rate=draw(rates),
        forecast_jobs=draw(st.floats(min_value=0, max_value=100_000)),
        forecast_peak_rate=draw(rates),
    )


@given(pool_inputs(), limits(), st.floats(min_value=0, max_value=1e6))
def test_bounds_are_always_respected(inputs: PoolInputs, limits: PoolLimits, now: float) -> None:
    decision = decide(inputs, limits, now)
    assert limits.min_replicas <= decision.desired <= limits.max_replicas


@given(pool_inputs(), limits(), counts)
def test_more_backlog_never_means_fewer_replicas(inputs: PoolInputs, limits: PoolLimits, extra: int) -> None:
    fewer = decide(inputs, limits, now=0)
    more = decide(
        PoolInputs(**{**inputs.__dict__, "ready": inputs.ready + extra}),  # type: ignore[arg-type]
        limits,
        now=0,
    )
    assert more.desired >= fewer.desired


@given(pool_inputs(), limits(), st.floats(min_value=1, max_value=60))
@settings(max_examples=200)
def test_a_steady_load_settles_and_never_oscillates(inputs: PoolInputs, limits: PoolLimits, interval: float) -> None:
    """Same observations every cycle: replicas move one way only, then stay put."""
    current, history, seen = inputs.current_replicas, (), []
    for cycle in range(40):
        steady = PoolInputs(**{**inputs.__dict__, "current_replicas": current})  # type: ignore[arg-type]
        decision = decide(steady, limits, now=cycle * interval, history=history)
        history, current = decision.history, decision.desired
        seen.append(current)
    moves = [b - a for a, b in itertools.pairwise(seen) if b != a]
    assert all(m > 0 for m in moves) or all(m < 0 for m in moves)
