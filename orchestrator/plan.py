"""`orchestrator plan SPEC`: the expanded trials as a table and a work estimate. Runs nothing, writes nothing.

Why a plan step: a paper grid is hundreds of trials and days of GPU time; seeing the trial count, the epochs and
a rough duration before `launch` catches a grid that is ten times larger than meant.

The duration is a deliberately rough guess (FLOPs of the architecture scaled by width and image size, at an
assumed throughput per CPU core or per GPU); it says so when printed. Attacks are not in it.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from pixelreg_core import datasets
from pixelreg_core.config import ConfigError, TrialConfig

from .expand import expand, role_counts
from .spec import DEFAULT_RESULTS_ROOT, SweepSpec, load_spec

# Training FLOPs per 32x32 image at base width 64 (forward + backward ~ 3x the forward's 2 x MACs):
# ResNet18 ~0.56 GMACs, ResNet34 ~1.16 GMACs forward at 32x32 with a stride-1 stem and no max-pool.
TRAIN_GFLOP_PER_IMAGE = {"ResNet18": 3.3, "ResNet34": 7.0}
CPU_GFLOPS_PER_CORE = 20.0     # sustained conv throughput of one modern x86 core (rough)
GPU_GFLOPS = 5000.0            # one data-centre GPU on small images; gives the authors' ~34 min per CIFAR-10 model
PER_IMAGE_FLOOR_S = 5e-5       # framework overhead per image that tiny widths cannot go below
TRIAL_OVERHEAD_S = 5.0         # process, data loading, checkpoint and Parquet writes per trial


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML, e.g. sweeps/mnist_grid.yaml")
    parser.add_argument("--results", default=DEFAULT_RESULTS_ROOT,
                        help="output root the sweep would write under (ROOT/<name>/); nothing is written")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    sweep_dir = f"{str(args.results).rstrip('/')}/{spec.name}"
    trials = expand(spec, sweep_dir)
    print(f"sweep {spec.name} ({spec.source}) -> {sweep_dir}/")
    print(format_table(trials, extra_columns(spec)))
    print()
    for line in estimate_lines(spec, trials):
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


# ---------------------------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------------------------
def estimate_lines(spec: SweepSpec, trials: list[TrialConfig]) -> list[str]:
    counts = role_counts(trials)
    lines = [f"trials: {len(trials)} ({', '.join(f'{n} {role}' for role, n in counts.items())})"]
    searched = searched_count(spec)
    if searched:
        lines.append(f"  + up to {searched} searched trials (search optuna: {spec.search.trials} (th, alpha) "
                     f"points x {len(spec.pairs)} pairs x {len(spec.seed_list)} seeds)")
    epochs = sum(cfg.epochs for cfg in trials)
    lines.append(f"epochs: {epochs} in all" + (f" (+ {searched * _typical(trials).epochs} searched)" if searched
                                                else ""))
    cpus, gpus = machine_resources(spec)
    slots = concurrent_slots(spec, cpus, gpus)
    res = spec.resources
    lines.append(f"resources per trial: {res.cpu:g} CPU, {res.gpu:g} GPU; this machine ({cpus} CPUs, {gpus} GPUs) "
                 f"runs {slots} at a time" + ("" if slots else " (it has no GPU: launch on a GPU machine or cluster)"))
    seconds = sum(trial_seconds(cfg, spec) for cfg in trials)
    seconds += searched * trial_seconds(_typical(trials, regularized=True), spec)
    device = f"{res.gpu:g} GPU" if res.gpu > 0 else f"{res.cpu:g} CPU core(s)"
    wall = f", ~{_duration(seconds / slots)} wall with {slots} at a time" if slots else ""
    lines.append(f"time: ~{_duration(seconds)} of trial time on {device} each{wall}")
    lines.append("  (a rough guess: epochs x images x a per-image cost for the architecture and width, at an assumed "
                 "throughput; attacks, the boundary attack above all, come on top)")
    return lines


def searched_count(spec: SweepSpec) -> int:
    if spec.search.type != "optuna":
        return 0
    return spec.search.trials * len(spec.pairs) * len(spec.seed_list)


def _typical(trials: list[TrialConfig], regularized: bool = False) -> TrialConfig:
    """A searched trial costs about what a baseline of the same settings costs, plus the regularization batch."""
    cfg = next((c for c in trials if c.role == "baseline"), trials[0])
    return cfg.replace(alpha=1.0, th=0.5) if regularized else cfg


def machine_resources(spec: SweepSpec) -> tuple[int, int]:
    """(CPUs, GPUs) here. torch is imported only when the spec asks for GPUs (plan stays fast otherwise)."""
    cpus = os.cpu_count() or 1
    gpus = 0
    if spec.resources.gpu > 0:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return cpus, gpus


def concurrent_slots(spec: SweepSpec, cpus: int, gpus: int) -> int:
    slots = max(1, int(cpus // spec.resources.cpu))
    if spec.resources.gpu > 0:
        slots = min(slots, int(gpus // spec.resources.gpu + 1e-9))
    return slots


def dataset_size(name: str) -> tuple[int, int, int]:
    """(train images, test images, pixels per image) from the dataset's record (pixelreg_core.datasets); a name
    it does not know (a baseline's reg_data "none") is guessed MNIST-sized, like idx: folders."""
    try:
        return datasets.get(name).sizes
    except ConfigError:
        return datasets.REGISTRY["idx"].sizes


def trial_seconds(cfg: TrialConfig, spec: SweepSpec) -> float:
    """Training time of one trial under the rough cost model (see the module docstring)."""
    n_train, n_test, pixels = dataset_size(cfg.task)
    if cfg.train_images is not None:
        n_train = min(n_train, cfg.train_images)
    if cfg.test_images is not None:
        n_test = min(n_test, cfg.test_images)
    n_valid = math.ceil(n_train * cfg.valid_fraction)
    channels = 1 if cfg.grayscale else 3
    per_image = _image_cost(cfg, pixels, channels, spec)
    step_images = 1.0
    if cfg.regularized:
        reg_pixels = dataset_size(cfg.reg_data)[2]
        step_images += 2 * cfg.reg_pairs / cfg.batch_size * reg_pixels / pixels
    per_epoch = n_train * step_images * per_image + (n_valid + n_test) * per_image / 3
    return cfg.epochs * per_epoch + TRIAL_OVERHEAD_S


def _image_cost(cfg: TrialConfig, pixels: int, channels: int, spec: SweepSpec) -> float:
    gflop = TRAIN_GFLOP_PER_IMAGE.get(cfg.arch, 3.3) * (cfg.width / 64) ** 2 * pixels / 1024
    gflop *= 1 + 0.01 * (channels - 1)  # only the stem sees the extra channels
    res = spec.resources
    throughput = GPU_GFLOPS * min(res.gpu, 1.0) if res.gpu > 0 else CPU_GFLOPS_PER_CORE * res.cpu
    return max(gflop / throughput, PER_IMAGE_FLOOR_S)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
