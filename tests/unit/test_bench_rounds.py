"""The pipeline bench's rounds against a baseline: the order swapped each round, figures the rounds' mean."""

from __future__ import annotations

from bench.pipeline import Phase, in_turns, merge_rounds, parse, wanted_phases


def test_each_pair_runs_in_both_orders_so_drift_is_not_charged_to_one_side() -> None:
    args = parse(["--baseline-ref", "abc123", "--rounds", "3"])
    assert wanted_phases(args) == [
        ("no-op", True), ("no-op baseline", True), ("no-op baseline", True), ("no-op", True),
        ("no-op", True), ("no-op baseline", True),
        ("real", False), ("baseline", False), ("baseline", False), ("real", False),
        ("real", False), ("baseline", False),
    ]  # fmt: skip
    # Without a baseline there is nothing to alternate: one run of each phase.
    assert wanted_phases(parse(["--rounds", "3"])) == [("no-op", True), ("real", False)]


def test_rounds_of_a_phase_merge_into_their_mean_and_their_counts() -> None:
    first = Phase("real", 100, 100, 10.0, {"api": 4.0, "redis": 2.0}, {"api": 1.0}, [50.0], {"complete": 100})
    second = Phase("real", 100, 99, 10.5, {"api": 5.0, "redis": 1.0}, {"api": 3.0}, [70.0], {"complete": 99})
    other = Phase("baseline", 100, 100, 10.0, {"api": 6.0}, {}, [60.0], {"complete": 100})
    merged = merge_rounds([first, other, second])
    assert [phase.name for phase in merged] == ["real", "baseline"]
    real = merged[0]
    assert real.cpu_ms == {"api": 4.5, "redis": 1.5} and real.idle_ms_per_s == {"api": 2.0}
    assert (real.offered, real.accepted, real.elapsed_s) == (200, 199, 20.5)
    assert sorted(real.latency_ms) == [50.0, 70.0] and real.statuses == {"complete": 199}
    assert merged[1] is other


def test_look_ups_take_turns_in_both_orders_so_drift_is_shared() -> None:
    order = in_turns(["100", "10000", "100 beside 10000"], 4)
    assert order == [
        "100", "10000", "100 beside 10000", "100 beside 10000", "10000", "100",
        "100", "10000", "100 beside 10000", "100 beside 10000", "10000", "100",
    ]  # fmt: skip
    # Each one is timed as often as the others, and none always first or always last.
    assert {order.count(name) for name in set(order)} == {4}
    assert order[0] != order[3] and order[2] != order[5]
