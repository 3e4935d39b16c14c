"""Orchestration overhead: wall time of a sweep of many tiny trials vs (sum of trial times / concurrent slots).

    .venv/bin/python benchmarks/bench_orchestration.py [--seeds 40] [--cpus 2] [--train-images 1000] [--epochs 2]

A ratio of 1.0 means Tune adds nothing on top of the trials' own work; the target is <= 1.15. Ray's start-up is
timed separately (it is paid once per launch, not per trial). Trials: digits, width 4, `--train-images` images,
`--epochs` epochs, gaussian noise on 20 images; wall_s in the trials table is each trial's own time inside its
worker. The overhead has a fixed part per launch (Tune starts its trial actors, each worker imports torch and the
trainer once) and a part per trial (scheduling, result round trips): a second, quarter-size sweep separates the two.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40, help="seeds; trials = 2 x seeds (baseline + regularized)")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs = concurrent slots (1 CPU per trial)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=1000)
    args = parser.parse_args()

    import pandas as pd
    import ray

    from orchestrator import cli

    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    ray_start = time.perf_counter() - started

    from orchestrator.commands import launch

    # Time the scheduling alone: the aggregation (summary + figures) after the sweep is reported apart.
    phases: dict[str, float] = {}
    original_run_on_ray = launch.run_on_ray

    def timed_run_on_ray(*a, **k):
        t = time.perf_counter()
        original_run_on_ray(*a, **k)
        phases["sweep"] = time.perf_counter() - t

    launch.run_on_ray = timed_run_on_ray

    def sweep(seeds: int, name: str) -> tuple[int, float, float]:
        """(trials, sweep wall, sum of trial times / slots) of one launch."""
        work = Path(tempfile.mkdtemp(prefix="pixelreg-bench-"))
        spec = {"name": name, "pairs": [{"task": "digits", "reg_data": "digits"}],
                "grid": {"th": [0.3], "alpha": [1.0]}, "seeds": seeds, "baseline": True,
                "train": {"width": 4, "epochs": args.epochs, "train_images": args.train_images, "test_images": 40,
                          "reg_images": 40, "batch_size": 32},
                "attacks": {"gaussian": {"images": 20, "num_eps": 2}}, "resources": {"cpu": 1}, "max_failures": 0}
        spec_path = work / f"{name}.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        rc = cli.main(["launch", str(spec_path), "--results", str(work / "results"), "--progress-every", "60"])
        assert rc == 0, rc
        trials = pd.read_parquet(work / "results" / name / "trials")
        failed = int((trials["status"] != "ok").sum())
        if failed:  # a tiny regularized model can diverge; its time still counts as work done
            print(f"{name}: {failed} trial(s) failed: {trials.loc[trials.status != 'ok', 'error'].iloc[0]}")
        return len(trials), phases["sweep"], trials["wall_s"].sum() / args.cpus

    small = sweep(max(1, args.seeds // 4), "bench_small")
    full = sweep(args.seeds, "bench")
    ray.shutdown()

    (n1, wall1, ideal1), (n2, wall2, ideal2) = small, full
    per_trial = ((wall2 - ideal2) - (wall1 - ideal1)) / (n2 - n1) if n2 > n1 else float("nan")
    fixed = (wall2 - ideal2) - per_trial * n2
    print()
    print(f"ray start: {ray_start:.1f} s (once per launch, not counted below); {args.cpus} slots")
    print(f"{'trials':>7} {'mean trial s':>13} {'sweep wall s':>13} {'sum/slots s':>12} {'ratio':>6}")
    for n, wall, ideal in (small, full):
        print(f"{n:7d} {ideal * args.cpus / n:13.2f} {wall:13.1f} {ideal:12.1f} {wall / ideal:6.3f}")
    print(f"overhead: about {fixed:.1f} s fixed per launch + {per_trial * 1000:.0f} ms of wall time per trial")
    print(f"overhead ratio of the {n2}-trial sweep: {wall2 / ideal2:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
