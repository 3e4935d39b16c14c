"""`orchestrator plan SPEC`: the expanded trials as a table and a work estimate. Runs nothing, writes nothing.

Why a plan step: a paper grid is hundreds of trials and days of GPU time; seeing the trial count, the epochs and
a rough duration before `launch` catches a grid that is ten times larger than meant.

The duration comes from a measurement on this machine: a few real training steps (forward, backward, SGD) of the
typical trial's model at its architecture, width and image shape, on random images, timed after a warm-up step
(a second or two; `--no-measure` skips it). Other trials are scaled from that per-image time by their FLOPs
(width squared, pixels). Without the measurement (or for a GPU spec on a machine without a GPU) it falls back to
an assumed throughput per CPU core or per GPU, and says so. Attacks are not in it.
"""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.commands.arguments import add_max_trials, add_overrides
from orchestrator.plan.estimate import estimate_lines
from orchestrator.plan.work import folder_lines
from orchestrator.spec.expand import expand, race_line
from orchestrator.spec.load import load_spec
from orchestrator.spec.schema import SweepSpec
from orchestrator.sweepdir.tables import DEFAULT_ROOT, sweep_dir_for
from pixelreg_core.config import TrialConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML, e.g. sweeps/mnist_grid.yaml")
    add_overrides(parser)
    add_max_trials(parser)
    parser.add_argument("--results", default=DEFAULT_ROOT,
                        help="output root the sweep would write under (ROOT/<name>/); nothing is written")
    parser.add_argument("--no-measure", action="store_true",
                        help="skip timing a few training steps here; estimate from an assumed throughput instead")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, args.overrides, args.max_trials)
    sweep_dir = sweep_dir_for(args.results, spec.name)
    trials = expand(spec, sweep_dir)
    print(f"sweep {spec.name} ({spec.source}) -> {sweep_dir}/")
    print(format_table(trials, extra_columns(spec)))
    print()
    for line in estimate_lines(spec, trials, measure=not args.no_measure):
        print(line)
    if spec.race is not None:  # the estimate above is the race's most: every seed up to max
        print(f"{race_line(spec, trials)}; the estimate above is for all {len(trials)}")
    for line in folder_lines(trials, sweep_dir):
        print(line)
    return 0


def extra_columns(spec: SweepSpec) -> list[str]:
    """Grid fields beyond th and alpha (e.g. sim_layer) get their own column."""
    return [name for name in spec.grid_field_names() if name not in ("th", "alpha")]


def format_table(trials: list[TrialConfig], extra: list[str]) -> str:
    columns = ["role", "task", "reg_data", "th", "alpha", "seed", "trial_id", *extra]
    rows = [[_cell(getattr(cfg, name)) for name in columns] for cfg in trials]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)



