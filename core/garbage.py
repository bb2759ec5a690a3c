"""The garbage collector tuned for a long-running service process."""

from __future__ import annotations

import gc

# Net allocations (allocations less deallocations) between collections of the youngest generation
# (CPython's default: 700).
YOUNG_THRESHOLD = 50_000


def collect_garbage_rarely(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Fewer, larger collections, over what is created after start-up only.

    With CPython's thresholds the collector runs every 700 net allocations and each older
    collection re-walks the whole heap, imports included (~100,000 objects in a worker: 50-60 ms a
    full collection). What a request or a job creates is mostly freed by reference counting, so a
    larger first generation costs a few MB at most; a collection then pauses for longer, far less
    in all. Call it once start-up has imported what the process runs.
    """
    gc.freeze()  # modules, settings, the engine: never garbage, never walked again
    gc.set_threshold(young_threshold, 20, 10)
