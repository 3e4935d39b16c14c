"""Benchmark: where one quickstart trial's time goes, on this CPU. Prints figures; asserts nothing.

Takes the trials of a sweep spec (default sweeps/quickstart.yaml: mnist5k, ResNet18 width 8, its attacks), trains
the FGSM source and one regularized trial for `--epochs` epochs (default 1: per-epoch figures; the spec's epoch
count scales them), then runs each attack of the spec alone on the trained model, and prints for every phase wall
seconds and process CPU seconds. On a shared machine wall time is inflated by other work; CPU seconds are what
the phase costs on a quiet core (one torch thread per trial, as the quickstart runs).

Then the CPU step: forward + backward + SGD of one regularized step (a classification batch and a pair batch),
plain vs `channels_last`, and torch.set_num_threads 1 vs 2.

Usage: python benchmarks/bench_quickstart.py [--spec sweeps/quickstart.yaml] [--epochs 1] [--steps 20]
       [--skip-step] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from contextlib import contextmanager

import torch

from orchestrator.spec.expand import expand
from orchestrator.spec.load import load_spec
from pixelreg_core import attacks
from pixelreg_core.data.bundle import prepare_data
from pixelreg_core.kernels import make_optimizer
from pixelreg_core.model import build_model
from pixelreg_core.targets.registry import build_target
from pixelreg_core.train import batch_starts, step_losses, train
from pixelreg_core.trial import run_trial


@contextmanager
def clock(label: str, out: dict):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    out[label] = (time.perf_counter() - wall, time.process_time() - cpu)


def show(label: str, wall: float, cpu: float, note: str = "") -> None:
    print(f"  {label:<34} wall {wall:8.2f} s   CPU {cpu:8.2f} s  {note}")


def phase_figures(trials, epochs: int, spec_epochs: int, tmp: str) -> dict[str, tuple[float, float]]:
    source_cfg = next(t for t in trials if t.role == "fgsm_source").replace(epochs=epochs)
    cfg = next(t for t in trials if t.role == "trial" and t.alpha > 0)
    source_row = run_trial(source_cfg, tmp)  # the real trainer, as a sweep runs it: writes the source checkpoint
    cfg = cfg.replace(epochs=epochs, fgsm_source=source_row["checkpoint"])
    times: dict[str, tuple[float, float]] = {}
    torch.set_num_threads(cfg.num_threads or 1)
    torch.manual_seed(cfg.seed)
    with clock("data + target", times):
        data = prepare_data(cfg)
        target = build_target(cfg, data.reg_x, data.reg_y)
    model = build_model(cfg, data.train_x.shape[1], data.num_classes, data.input_scale, data.input_shift)
    with clock(f"training ({epochs} epoch(s))", times):
        result = train(cfg, data, model, target, torch.device("cpu"))
    model.load_state_dict(result.best_state)
    model.eval()
    resolved = attacks.validate_attacks(cfg)
    source = attacks.load_source(cfg)
    for name, opts in resolved.items():  # each attack alone (its own eps-0 pass included)
        with clock(f"attack {name} (alone)", times):
            attacks.evaluate(model, data, cfg, tmp, {name: opts}, source)
    wall_by_attack: dict[str, float] = {}
    with clock("every attack, as a trial runs them", times):  # eps-0 pass shared, FGSM signs from the cache
        attacks.evaluate(model, data, cfg, tmp, resolved, source, seconds=wall_by_attack)
    y = data.test_y
    print(f"trial {cfg.trial_id}: {cfg.task}, {cfg.arch} width {cfg.width}, th {cfg.th} alpha {cfg.alpha}, "
          f"{len(data.train_x)} train / {len(y)} test images, {torch.get_num_threads()} torch thread(s); "
          f"FGSM source trained in {source_row['wall_s']:.1f} s wall, {source_row['cpu_s']:.1f} s CPU")
    return times


def step_figures(trials, steps: int) -> None:
    cfg = next(t for t in trials if t.role == "trial" and t.alpha > 0)
    data = prepare_data(cfg)
    target = build_target(cfg, data.reg_x, data.reg_y)
    gen = torch.Generator().manual_seed(0)
    x, y = data.train_x[:cfg.batch_size], data.train_y[:cfg.batch_size]
    i, j, s_target = target.sample(cfg.reg_pairs, gen)
    xa, xb = data.reg_x[i], data.reg_x[j]
    n_steps = len(batch_starts(len(data.train_x), cfg.batch_size))
    print(f"CPU step (batch {cfg.batch_size} + {cfg.reg_pairs} pairs, width {cfg.width}; {n_steps} steps per "
          f"epoch), median of {steps} steps after 3 warm-up steps:")
    base = None
    for threads in (1, 2):
        for channels_last in (False, True):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = build_model(cfg, x.shape[1], data.num_classes, data.input_scale, data.input_shift)
            args = (x, y, xa, xb)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
                args = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in args)
            model.train()
            opt = make_optimizer(cfg, model, torch.device("cpu"))
            walls, cpus = [], []
            for k in range(steps + 3):
                wall, cpu = time.perf_counter(), time.process_time()
                loss = step_losses(model, args[0], args[1], args[2], args[3], s_target, cfg.alpha, cfg.arctanh,
                                   False)[0]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if k >= 3:
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
            wall_ms, cpu_ms = 1000 * sorted(walls)[len(walls) // 2], 1000 * sorted(cpus)[len(cpus) // 2]
            base = base or wall_ms
            print(f"  threads {threads}, channels_last {str(channels_last):<5}: {wall_ms:7.1f} ms wall, "
                  f"{cpu_ms:7.1f} ms CPU  ({wall_ms / base:.2f}x the 1-thread plain step)")
    torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="sweeps/quickstart.yaml")
    parser.add_argument("--epochs", type=int, default=1, help="epochs trained here (per-epoch figures are scaled)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per step variant")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        trials = expand(spec, tmp)
        spec_epochs = trials[0].epochs
        n_trials = len(trials)
        if not args.skip_train:
            times = phase_figures(trials, args.epochs, spec_epochs, tmp)
            print(f"phases of one regularized trial ({args.spec}: {n_trials} trials, {spec_epochs} epochs):")
            for label, (wall, cpu) in times.items():
                show(label, wall, cpu)
            train_wall, train_cpu = next(v for k, v in times.items() if k.startswith("training"))
            per_epoch = train_cpu / args.epochs
            eval_cpu = times["every attack, as a trial runs them"][1]
            trial_cpu = per_epoch * spec_epochs + eval_cpu + times["data + target"][1]
            show(f"training, {spec_epochs} epochs (scaled)", train_wall / args.epochs * spec_epochs,
                 per_epoch * spec_epochs)
            slots = 2
            print(f"estimate on a quiet {slots}-core machine (CPU seconds, {n_trials} trials on {slots} slots, no "
                  f"idle slot, Ray start and aggregation not counted): {trial_cpu:.0f} s per trial, "
                  f"{math.ceil(n_trials / slots) * trial_cpu / 60:.1f} min for the sweep")
            print("json:", json.dumps({k: [round(w, 3), round(c, 3)] for k, (w, c) in times.items()}))
        if not args.skip_step:
            step_figures(trials, args.steps)


if __name__ == "__main__":
    main()
