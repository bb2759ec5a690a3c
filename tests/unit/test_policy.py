"""The scaling policy: pure decisions from queue depth, rates and the forecast."""

from __future__ import annotations

from autoscaler.policy import (
    CounterSample,
    PoolInputs,
    PoolLimits,
    decide,
    measured_arrival_rate,
    measured_service_time,
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


def test_service_time_is_learned_from_every_finished_job_without_counting_replicas() -> None:
    """Workers report busy seconds; pods still starting (no jobs) cannot dilute it, and no backlog is needed."""
    before = CounterSample(at=0, completed=0, queued=0, ready=0, busy=0.0, occupied=0.0)
    after = CounterSample(at=10, completed=20, queued=0, ready=0, busy=10.0, occupied=8.0)
    # io: 10 job-seconds for 20 jobs, 0.5 s a slot each; cpu: workers occupied 8 s for 20 jobs.
    assert measured_service_time(before, after, cpu_bound=False, slots=10) == 0.5
    assert measured_service_time(before, after, cpu_bound=True, slots=1) == 0.4
    assert measured_service_time(after, after, cpu_bound=False, slots=10) is None
    no_reports = CounterSample(at=10, completed=20, queued=0, ready=0)
    assert measured_service_time(before, no_reports, cpu_bound=False, slots=10) is None


def test_forecast_driven_pods_are_held_through_the_window_like_reactive_ones() -> None:
    """The forecast falls at the deadline: pods started for it (ready or still starting) stay for the window."""
    before = decide(inputs(current_replicas=1, forecast_peak_rate=100.0), LIMITS, now=0)
    assert before.desired == 10
    assert before.forecast == 10
    after = decide(inputs(current_replicas=10), LIMITS, now=30, history=before.history)
    assert after.desired == 10
    assert any("window" in reason for reason in after.reasons)
    later = decide(inputs(current_replicas=10), LIMITS, now=301, history=after.history)
    assert later.desired == 1


def test_headroom_is_added_on_slots_not_whole_replicas() -> None:
    """10 jobs/s at 1 s each on 10-slot replicas: 10 busy slots + 10% + sqrt(10) = 14.2 slots, 2 replicas."""
    limits = PoolLimits(max_replicas=100, headroom=0.1, burst_factor=1.0)
    by_slots = decide(inputs(drain_rate=10.0, slots=10, forecast_peak_rate=10.0), limits, now=0)
    assert by_slots.desired == 2
    # Counted on replicas instead, the same load would take 3 (1 + 10% + sqrt(1) = 2.1).
    assert decide(inputs(drain_rate=10.0, slots=1, forecast_peak_rate=10.0), limits, now=0).desired == 3


def test_without_queue_readings_a_pool_holds_and_grows_only_for_the_forecast() -> None:
    blind = decide(inputs(current_replicas=8, queues_known=False), LIMITS, now=0)
    assert blind.desired == 8
    assert any("queues unreadable" in reason for reason in blind.reasons)
    coming = decide(inputs(current_replicas=8, queues_known=False, forecast_peak_rate=200.0), LIMITS, now=0)
    assert coming.desired == 20


def test_queue_read_limit_is_flagged_when_a_full_pool_could_run_more_jobs() -> None:
    problems = queue_read_limit_problems({"scan": 20, "similarity": 200}, max_jobs=10, queue_read_limit=1000)
    assert len(problems) == 1
    assert "similarity" in problems[0]
