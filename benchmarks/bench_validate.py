"""How long `orchestrator validate` takes to answer, as a user types it: a fresh process each time.

    .venv/bin/python benchmarks/bench_validate.py           # 5 runs per case, prints the median and the range

The cases: the quickstart as shipped, and the quickstart with `seeds=100000000` (a typo away from 10), which the
trial limit must refuse before expanding anything. Target: the refusal under 2 s on a 2-core machine. What keeps it
there is that the refusal imports neither torch nor Ray; an accepted spec imports torch (the attack registry checks
the attacks' options) but not Ray. tests/test_spec.py checks the imports; this script shows the time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {"quickstart": [], "seeds=100000000": ["seeds=100000000"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}")
    for name, extra in CASES.items():
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", "sweeps/quickstart.yaml",
                                   *extra], cwd=REPO, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
        answer = (done.stdout or done.stderr).strip().splitlines()[0][:100]
        print(f"{name:>16}: median {statistics.median(times):.2f} s (range {min(times):.2f}-{max(times):.2f}, "
              f"{args.runs} runs), exit {done.returncode}: {answer}")


if __name__ == "__main__":
    main()
