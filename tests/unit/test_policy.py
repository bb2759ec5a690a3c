"""The scaling policy: pure decisions from queue depth, rates and the forecast."""

from __future__ import annotations

from autoscaler.policy import (
    CounterSample,
    PoolInputs,
    PoolLimits,
    decide,
    measured_arrival_rate,
    measured_drain_rate,
    queue_read_limit_problems,
)

# No spare capacity here, so the arithmetic stays visible; square-root staffing has its own test.
LIMITS = PoolLimits(
    min_replicas=1, max_replicas=50, target_wait=30, scale_down_window=300, headroom=0.0, burst_factor=0.0
)


def inputs(**fields: object) -> PoolInputs:
    base: dict[str, object] = {
        "task": "receipt",
        "ready": 0,
        "running": 0,
        "deferred": 0,
        "current_replicas": 1,
        "drain_rate": 10.0,
    }
    base.update(fields)
    return PoolInputs(**base)  # type: ignore[arg-type]


def test_a_backlog_grows_the_pool_to_clear_it_within_the_target_wait() -> None:
    # 1,200 ready jobs at 10 jobs/s per replica within 30 s: 4 replicas.
    decision = decide(inputs(ready=1200), LIMITS, now=0)
    assert decision.desired == 4
    assert decision.changed
    assert any("1200 ready" in reason for reason in decision.reasons)


def test_an_empty_queue_keeps_the_minimum() -> None:
    assert decide(inputs(current_replicas=0), LIMITS, now=0).desired == 1


def test_the_maximum_caps_the_pool_and_says_so() -> None:
    decision = decide(inputs(ready=1_000_000), LIMITS, now=0)
    assert decision.desired == 50
    assert any("bounded" in reason for reason in decision.reasons)


def test_scale_up_is_limited_per_step() -> None:
    limits = PoolLimits(max_replicas=100, max_scale_up_step=5, target_wait=30)
    decision = decide(inputs(ready=30_000, current_replicas=2), limits, now=0)
    assert decision.desired == 7


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    busy = decide(inputs(ready=3000, current_replicas=1), LIMITS, now=0)
    assert busy.desired == 10
    quiet = decide(inputs(current_replicas=10), LIMITS, now=100, history=busy.history)
    assert quiet.desired == 10
    assert any("window" in reason for reason in quiet.reasons)
    later = decide(inputs(current_replicas=10), LIMITS, now=301, history=quiet.history)
    assert later.desired == 1


def test_scale_down_is_limited_per_step() -> None:
    limits = PoolLimits(max_scale_down_step=3, scale_down_window=0)
    assert decide(inputs(current_replicas=10), limits, now=0).desired == 7


def test_the_forecast_grows_the_pool_before_the_backlog_exists() -> None:
    quiet = decide(inputs(), LIMITS, now=0)
    coming = decide(inputs(forecast_jobs=650, forecast_peak_rate=25.0), LIMITS, now=0)
    assert quiet.desired == 1
    assert coming.desired == 3  # 25 submissions/s at 10 jobs/s per replica
    assert coming.forecast == 3
    assert any("forecast 3" in reason for reason in coming.reasons)


def test_jobs_waiting_upstream_count_as_coming() -> None:
    limits = PoolLimits(lead=60, headroom=0.0, burst_factor=0.0)
    assert decide(inputs(upstream=1200), limits, now=0).desired == 2  # 20/s over the lead


def test_spare_capacity_follows_square_root_staffing() -> None:
    """A small pool gets relatively more spare replicas than a large one, against Poisson bursts."""
    limits = PoolLimits(max_replicas=500, max_scale_up_step=500, headroom=0.1, burst_factor=1.0)
    small = decide(inputs(drain_rate=1.0, forecast_peak_rate=4.0), limits, now=0)
    large = decide(inputs(drain_rate=1.0, forecast_peak_rate=100.0), limits, now=0)
    assert small.desired == 7  # 4 x 1.1 + sqrt(4) = 6.4
    assert large.desired == 120  # 100 x 1.1 + sqrt(100) = 120
    assert small.desired / 4 > large.desired / 100


def test_measured_arrival_rate_counts_completions_and_queue_growth() -> None:
    before = CounterSample(at=0, completed=100, queued=10, ready=5)
    after = CounterSample(at=10, completed=150, queued=60, ready=40)
    assert measured_arrival_rate(before, after) == 10.0
    assert measured_arrival_rate(after, CounterSample(at=20, completed=0, queued=0, ready=0)) is None


def test_drain_rate_is_measured_only_while_the_pool_is_saturated() -> None:
    before = CounterSample(at=0, completed=0, queued=100, ready=80)
    after = CounterSample(at=10, completed=200, queued=100, ready=80)
    assert measured_drain_rate(before, after, replicas=4) == 5.0
    idle = CounterSample(at=10, completed=200, queued=0, ready=0)
    assert measured_drain_rate(before, idle, replicas=4) is None


def test_queue_read_limit_is_flagged_when_a_full_pool_could_run_more_jobs() -> None:
    problems = queue_read_limit_problems({"scan": 20, "similarity": 200}, max_jobs=10, queue_read_limit=1000)
    assert len(problems) == 1
    assert "similarity" in problems[0]
