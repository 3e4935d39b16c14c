"""The work estimate `orchestrator plan` prints: trial and epoch counts, resources, and a duration.

The duration comes from a measurement on this machine: a few real training steps (forward, backward, SGD) of the
typical trial's model at its architecture, width and image shape, on random images, timed after a warm-up step
(a second or two; `--no-measure` skips it). Other trials are scaled from that per-image time by their FLOPs
(width squared, pixels). Without the measurement (or for a GPU spec on a machine without a GPU) it falls back to
an assumed throughput per CPU core or per GPU, and says so. Attacks are not in it."""

from __future__ import annotations

import math
import os

from orchestrator.plan.resources import concurrent_slots, local_gpus
from orchestrator.spec.expand import role_counts
from orchestrator.spec.schema import SweepSpec
from pixelreg_core.config import TrialConfig
from pixelreg_core.data import registry as datasets
from pixelreg_core.pack.key import packs

# Training FLOPs per 32x32 image at base width 64 (forward + backward ~ 3x the forward's 2 x MACs):
# ResNet18 ~0.56 GMACs, ResNet34 ~1.16 GMACs forward at 32x32 with a stride-1 stem and no max-pool.
TRAIN_GFLOP_PER_IMAGE = {"ResNet18": 3.3, "ResNet34": 7.0}


MEASURE_STEPS = 5              # timed steps after one warm-up step, fewer when they take longer than the budget


MEASURE_BUDGET_S = 1.5


MEASURE_BATCH = 64             # at most (the default batch size); a step of a wide model on 32x32 images takes seconds


CPU_GFLOPS_PER_CORE = 20.0     # sustained conv throughput of one modern x86 core (rough)


GPU_GFLOPS = 5000.0            # one data-centre GPU on small images; gives the authors' ~34 min per CIFAR-10 model


PER_IMAGE_FLOOR_S = 5e-5       # framework overhead per image that tiny widths cannot go below


TRIAL_OVERHEAD_S = 5.0         # process, data loading, checkpoint and Parquet writes per trial


# ---------------------------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------------------------
def estimate_lines(spec: SweepSpec, trials: list[TrialConfig], measure: bool = True) -> list[str]:
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
    slots = concurrent_slots(cpus, gpus, spec.resources.cpu, spec.resources.gpu)
    res = spec.resources
    lines.append(f"resources per trial: {res.cpu:g} CPU, {res.gpu:g} GPU; this machine ({cpus} CPUs, {gpus} GPUs) "
                 f"runs {slots} at a time" + ("" if slots else " (it has no GPU: launch on a GPU machine or cluster)"))
    lines += pack_lines(spec, trials)
    typical = _typical(trials)
    cost = ImageCost(spec, typical)
    if measure and res.gpu > 0 and not gpus:
        lines.append("not measured: the spec asks for GPUs and this machine has none")
    elif measure:
        lines.append(cost.measure(gpu=res.gpu > 0, threads=max(1, int(res.cpu))))
    seconds = sum(trial_seconds(cfg, cost) for cfg in trials)
    seconds += searched * trial_seconds(_typical(trials, regularized=True), cost)
    device = f"{res.gpu:g} GPU" if res.gpu > 0 else f"{res.cpu:g} CPU core(s)"
    wall = f", ~{_duration(seconds / slots)} wall with {slots} at a time" if slots else ""
    lines.append(f"time: ~{_duration(seconds)} of trial time on {device} each{wall}")
    how = ("the measured per-image time, scaled by FLOPs for other widths and image sizes" if cost.measured
           else "a rough guess: a per-image cost for the architecture and width at an assumed throughput")
    lines.append(f"  (epochs x images x {how}; attacks, the boundary attack above all, come on top)")
    return lines


def pack_lines(spec: SweepSpec, trials: list[TrialConfig]) -> list[str]:
    """With `pack` > 1: how many Tune trials the seed packs make (as launch groups them, docs/spec.md)."""
    size = max((cfg.pack for cfg in trials), default=1)
    if size <= 1:
        return []
    sources = [c for c in trials if c.role == "fgsm_source"]
    rest = [c for c in trials if c.role != "fgsm_source"]
    if spec.scheduler.type == "fifo":
        units = len(packs(sources)) + len(packs(rest))
        note = ""
    else:  # launch's phases: ASHA stops the grid trials one by one, so only sources and baselines are packed
        baselines = [c for c in rest if c.role == "baseline"]
        units = len(packs(sources)) + len(packs(baselines)) + len(rest) - len(baselines)
        note = f" ({spec.scheduler.type}: the grid trials unpacked)"
    return [f"seed packs (pack {size}): {len(trials)} trials as {units} Tune trials{note}, each with one trial's "
            "resources; the time below counts the trials unpacked"]


def searched_count(spec: SweepSpec) -> int:
    if spec.search.type != "optuna":
        return 0
    return spec.search.trials * len(spec.pairs) * len(spec.seed_list)


def _typical(trials: list[TrialConfig], regularized: bool = False) -> TrialConfig:
    """The trial whose model the estimate measures: the first baseline (else the first trial). A searched trial
    costs about what a baseline of the same settings costs, plus the regularization batch."""
    cfg = next((c for c in trials if c.role == "baseline"), trials[0])
    return cfg.replace(alpha=1.0, th=0.5) if regularized else cfg


def machine_resources(spec: SweepSpec) -> tuple[int, int]:
    """(CPUs, GPUs) here. torch is imported only when the spec asks for GPUs (plan stays fast otherwise)."""
    return os.cpu_count() or 1, local_gpus() if spec.resources.gpu > 0 else 0


def dataset_record(name: str) -> datasets.Dataset:
    """The dataset's record; for a name the registry does not know (a baseline's reg_data "none") its guess."""
    return datasets.get_or_guess(name)


def dataset_size(name: str) -> tuple[int, int, int]:
    """(train images, test images, pixels per image) from the dataset's record."""
    return dataset_record(name).sizes


def image_shape(cfg: TrialConfig) -> tuple[int, int, int]:
    """(channels, height, width) the model sees for this trial's task: the record's image size, else square."""
    record = dataset_record(cfg.task)
    side = round(math.sqrt(record.sizes[2]))
    height, width = record.image_size or (side, side)
    return (1 if cfg.grayscale else 3), height, width


def _gflop_per_image(cfg: TrialConfig, pixels: int, channels: int) -> float:
    gflop = TRAIN_GFLOP_PER_IMAGE.get(cfg.arch, 3.3) * (cfg.width / 64) ** 2 * pixels / 1024
    return gflop * (1 + 0.01 * (channels - 1))  # only the stem sees the extra channels


class ImageCost:
    """Seconds per training image (forward + backward + step) of a trial's model. Measured once for the typical
    trial (`measure`), other trials scaled by FLOPs; before or without a measurement, an assumed throughput."""

    def __init__(self, spec: SweepSpec, typical: TrialConfig):
        self.spec = spec
        self.typical = typical
        self.measured: float | None = None  # seconds per image of the typical trial, measured here

    def measure(self, gpu: bool, threads: int, steps: int = MEASURE_STEPS, budget_s: float = MEASURE_BUDGET_S) -> str:
        """Time a few SGD steps of the typical trial's model on random images; returns the line saying so."""
        import time

        import torch

        from pixelreg_core.model import build_model

        cfg = self.typical
        channels, height, width = image_shape(cfg)
        batch = min(cfg.batch_size, MEASURE_BATCH)
        device = torch.device("cuda" if gpu else "cpu")
        threads_before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            generator = torch.Generator().manual_seed(0)
            x = torch.rand(batch, channels, height, width, generator=generator).to(device)
            y = torch.randint(0, 10, (batch,), generator=generator).to(device)
            model = build_model(cfg, channels, 10).to(device).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            times: list[float] = []
            started = time.perf_counter()
            for step in range(steps + 1):  # step 0 warms up (allocations, kernel choice) and is not counted
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                if gpu:
                    torch.cuda.synchronize()
                if step:
                    times.append(time.perf_counter() - t0)
                if step and time.perf_counter() - started > budget_s:
                    break
        finally:
            torch.set_num_threads(threads_before)
        self.measured = sorted(times)[len(times) // 2] / batch
        where = "GPU" if gpu else f"{threads} CPU thread(s)"
        return (f"measured here: {len(times)} training step(s) of {cfg.arch} width {cfg.width} on "
                f"{channels}x{height}x{width} images, batch {batch}, {where}: {self.measured * 1e3:.3g} ms per image")

    def seconds(self, cfg: TrialConfig, pixels: int, channels: int) -> float:
        gflop = _gflop_per_image(cfg, pixels, channels)
        if self.measured is not None:
            t_channels, t_height, t_width = image_shape(self.typical)
            return self.measured * gflop / _gflop_per_image(self.typical, t_height * t_width, t_channels)
        res = self.spec.resources
        throughput = GPU_GFLOPS * min(res.gpu, 1.0) if res.gpu > 0 else CPU_GFLOPS_PER_CORE * res.cpu
        return max(gflop / throughput, PER_IMAGE_FLOOR_S)


def trial_seconds(cfg: TrialConfig, cost: ImageCost) -> float:
    """Training time of one trial: its images per epoch (with the regularization pairs) x the per-image cost."""
    n_train, n_test, pixels = dataset_size(cfg.task)
    if cfg.train_images is not None:
        n_train = min(n_train, cfg.train_images)
    if cfg.test_images is not None:
        n_test = min(n_test, cfg.test_images)
    n_valid = cfg.valid_images if cfg.valid_images is not None else math.ceil(n_train * cfg.valid_fraction)
    channels = 1 if cfg.grayscale else 3
    per_image = cost.seconds(cfg, pixels, channels)
    step_images = 1.0
    if cfg.regularized:
        reg_pixels = dataset_size(cfg.reg_data)[2]
        step_images += 2 * cfg.reg_pairs / cfg.batch_size * reg_pixels / pixels
    per_epoch = n_train * step_images * per_image + (n_valid + n_test) * per_image / 3
    return cfg.epochs * per_epoch + TRIAL_OVERHEAD_S


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
