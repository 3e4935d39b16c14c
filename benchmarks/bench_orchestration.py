"""Orchestration overhead: wall time of a sweep of many tiny trials vs (sum of trial times / concurrent slots).

    .venv/bin/python benchmarks/bench_orchestration.py [--seeds 12] [--cpus 2]

A ratio of 1.0 means Tune adds nothing on top of the trials' own work; the target is <= 1.15. Ray's start-up is
timed separately (it is paid once per launch, not per trial). Trials: digits, width 4, 1 epoch, 100 images,
gaussian noise on 20 images; wall_s in the trials table is each trial's own time inside its worker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12, help="seeds; trials = 2 x seeds (baseline + regularized)")
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs = concurrent slots (1 CPU per trial)")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    import pandas as pd
    import ray

    from orchestrator import cli

    work = Path(tempfile.mkdtemp(prefix="pixelreg-bench-"))
    spec = {"name": "bench", "pairs": [{"task": "digits", "reg_data": "digits"}],
            "grid": {"th": [0.3], "alpha": [1.0]}, "seeds": args.seeds, "baseline": True,
            "train": {"width": 4, "epochs": args.epochs, "train_images": 100, "test_images": 40, "reg_images": 40,
                      "batch_size": 32},
            "attacks": {"gaussian": {"images": 20, "num_eps": 2}}, "resources": {"cpu": 1}, "max_failures": 0}
    spec_path = work / "bench.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    ray_start = time.perf_counter() - started

    from orchestrator import launch

    # Time the scheduling alone: the aggregation (summary + figures) after the sweep is reported apart.
    phases: dict[str, float] = {}
    original_run_on_ray, original_report = launch.run_on_ray, launch.report_outputs

    def timed_run_on_ray(*a, **k):
        t = time.perf_counter()
        original_run_on_ray(*a, **k)
        phases["sweep"] = time.perf_counter() - t

    def timed_report(*a, **k):
        t = time.perf_counter()
        original_report(*a, **k)
        phases["aggregate"] = time.perf_counter() - t

    launch.run_on_ray, launch.report_outputs = timed_run_on_ray, timed_report
    cli.COMMANDS = {"launch": cli.COMMANDS["launch"]}
    started = time.perf_counter()
    rc = cli.main(["launch", str(spec_path), "--results", str(work / "results"), "--progress-every", "30"])
    total = time.perf_counter() - started
    wall = phases["sweep"]
    ray.shutdown()
    assert rc == 0, rc

    trials = pd.read_parquet(work / "results" / "bench" / "trials")
    assert (trials["status"] == "ok").all()
    work_s = trials["wall_s"].sum()
    ideal = work_s / args.cpus
    print(f"trials: {len(trials)}, slots: {args.cpus}, mean trial {trials['wall_s'].mean():.2f} s")
    print(f"ray start: {ray_start:.1f} s (once per launch, not counted below)")
    print(f"whole command: {total:.1f} s, of which aggregation {phases.get('aggregate', 0):.1f} s")
    print(f"sweep wall (Tune phases): {wall:.1f} s; sum of trial times / slots: {ideal:.1f} s")
    print(f"overhead ratio: {wall / ideal:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
