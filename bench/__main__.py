"""`make bench`: every benchmark in turn, each with its default parameters."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("bench.intake", "bench.pipeline", "bench.wake", "bench.router", "bench.autoscale")


def main() -> int:
    failed = 0
    for module in BENCHMARKS:
        print(f"\n=== {module} ===", flush=True)
        failed |= subprocess.call([sys.executable, "-m", module, *sys.argv[1:]])
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
