from core.pipeline import StepState, blocked_steps, overall_status, ready_steps

P, S, F, K = StepState.pending, StepState.succeeded, StepState.failed, StepState.skipped


def test_only_scan_is_ready_at_first():
    states = dict.fromkeys(["scan", "store", "similarity", "admin", "receipt", "thumbnail"], P)
    assert ready_steps(states) == ["scan"]


def test_after_store_the_four_fan_out_together():
    states = {"scan": S, "store": S, "similarity": P, "admin": P, "receipt": P, "thumbnail": P}
    assert ready_steps(states) == ["similarity", "admin", "receipt", "thumbnail"]


def test_a_skipped_scan_still_lets_store_run():
    assert ready_steps({"scan": K, "store": P}) == ["store"]


def test_a_failed_store_blocks_everything_after_it():
    states = {"scan": S, "store": F, "similarity": P, "admin": P, "receipt": P, "thumbnail": P}
    assert blocked_steps(states) == ["similarity", "admin", "receipt", "thumbnail"]


def test_overall_status():
    assert overall_status({"scan": S, "store": P}).value == "processing"
    assert overall_status({"scan": S, "store": S}).value == "complete"
    assert overall_status({"scan": S, "store": F}).value == "needs_attention"
    assert overall_status({"scan": S, "store": S}, quarantined=True).value == "quarantined"
