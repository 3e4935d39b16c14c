"""How much do the paper preset's last four points move the numbers? Real MNIST digits, the project's own trainer.

    nice python benchmarks/bench_paper_options.py /path/to/mnist-folder [--seeds 7] [--epochs 3] ...

The folder holds MNIST IDX files (`idx:` dataset; with only the t10k pair, its first 8,000 digits are the train
split and the last 2,000 the test split). For every seed it trains, with the real trainer (`train.train`):
  paper     the paper preset: alpha 4, Th 0.2 (MNIST-MNIST), pair_bn split, pair_draw without_replacement
  joint     the same with pair_bn joint (one BatchNorm batch over all 2k pair images)
  replace   the same with pair_draw with_replacement
  baseline  alpha 0
and evaluates the model after every epoch, the untrained one (epoch 0) included: validation loss and accuracy,
clean test accuracy, and accuracy under Gaussian noise eps 0.5 (the project's `noise_accuracy`, seeded). The choice
of epoch does not change training, so every `select` rule is then applied to the same runs: the authors' lowest
validation loss with and without epoch 0, on their 80 validation images (the first 80 of the held-out set) and on
the whole held-out set, the highest validation accuracy, the last epoch. Each figure is mean +/- SEM over seeds.

Small on purpose (width 16, a few epochs, a few thousand images, the authors' schedule compressed to one epoch per
lr phase) so that the whole measurement fits in about 20 minutes of one CPU core; the figures show the size and
sign of each effect at that scale, not the papers' accuracies. One JSON line per run goes to --jsonl as it finishes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelreg_core.attacks.noise import noise_accuracy  # noqa: E402
from pixelreg_core.config import TrialConfig  # noqa: E402
from pixelreg_core.data.bundle import prepare_data  # noqa: E402
from pixelreg_core.model import build_model  # noqa: E402
from pixelreg_core.targets.registry import build_target  # noqa: E402
from pixelreg_core.train import evaluate_split, train  # noqa: E402

VARIANTS = {
    "paper": {},
    "joint": {"pair_bn": "joint"},
    "replace": {"pair_draw": "with_replacement"},
    "baseline": {"alpha": 0.0},
}
AUTHORS_VALID = 80  # 1% of 8,000 training digits: the authors' validation set on this data
NOISE_EPS = 0.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder with MNIST IDX files (e.g. the t10k pair)")
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 "
                                                                   "(split a run over processes; --report-only joins)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--valid-images", type=int, default=500, help="held out; the first 80 are the authors' size")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--reg-images", type=int, default=1000, help="N (the authors: 5,000)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--jsonl", default=None, help="append one JSON line per run here")
    parser.add_argument("--coverage-only", action="store_true",
                        help="train nothing: only the pair-coverage figures of pair_draw on a rare range")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: print the report of the runs already in --jsonl (e.g. a cut-short run)")
    return parser.parse_args()


def config(args: argparse.Namespace, variant: str, seed: int) -> TrialConfig:
    name = f"idx:{args.data}"
    base = dict(task=name, reg_data=name, alpha=4.0, th=0.2, seed=seed, width=args.width, epochs=args.epochs,
                phase_epochs=1, train_images=args.train_images, valid_images=args.valid_images,
                test_images=args.test_images, reg_images=args.reg_images, device="cpu", num_threads=1)
    return TrialConfig(**{**base, **VARIANTS[variant]}).validate()


def measure(model, data, seed: int, row: dict | None = None) -> dict[str, float]:
    """Everything a selection rule or a report needs about the model as it is now (eval mode, no trial RNG used).
    `row`: the trainer's epoch row, whose validation (all held-out images) and test figures are reused."""
    loss80, acc80 = evaluate_split(model, data.valid_x[:AUTHORS_VALID], data.valid_y[:AUTHORS_VALID])
    if row is None:
        loss_all, acc_all = evaluate_split(model, data.valid_x, data.valid_y)
        _, clean = evaluate_split(model, data.test_x, data.test_y)
    else:
        loss_all, acc_all, clean = row["valid_loss"], row["valid_acc"], row["test_acc"]
    noisy = noise_accuracy(model, "gaussian", data.test_x, data.test_y, NOISE_EPS, seed=10_000 + seed, batch_size=500)
    return {"valid_loss_80": loss80, "valid_acc_80": acc80, "valid_loss_all": loss_all, "valid_acc_all": acc_all,
            "clean": clean, "gaussian": noisy}


def run(args: argparse.Namespace, variant: str, seed: int) -> dict:
    cfg = config(args, variant, seed)
    started, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    model = build_model(cfg, data.in_channels, data.num_classes, data.input_scale, data.input_shift)
    target = build_target(cfg, data.reg_x, data.reg_y) if cfg.regularized else None
    epochs = [measure(model, data, seed)]  # epoch 0: the untrained model
    model.train()
    train(cfg, data, model, target, torch.device("cpu"),
          on_epoch=lambda row: epochs.append(measure(model, data, seed, row)))
    return {"variant": variant, "seed": seed, "epochs": epochs, "valid_images": len(data.valid_y),
            "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}


# Selection rules over the per-epoch measurements: (name, key, sign, first candidate epoch)
RULES = [
    ("valid_loss, 80 images, epoch 0 a candidate (paper preset)", "valid_loss_80", 1, 0),
    ("valid_loss, 80 images, epochs 1..E", "valid_loss_80", 1, 1),
    ("valid_loss, all held-out images, epoch 0 a candidate", "valid_loss_all", 1, 0),
    ("valid_acc, 80 images, epoch 0 a candidate", "valid_acc_80", -1, 0),
    ("last epoch", None, 0, 0),
]


def chosen_epoch(epochs: list[dict], key: str | None, sign: int, first: int) -> int:
    if key is None:
        return len(epochs) - 1
    candidates = range(first, len(epochs))
    return min(candidates, key=lambda e: (sign * epochs[e][key], e))  # ties: the earlier epoch


def mean_sem(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return f"{mean:.4f} +/- {sem:.4f}"


def report(runs: list[dict], args: argparse.Namespace) -> None:
    by_variant: dict[str, list[dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    print()
    print(f"{'variant':<9} {'rule':<58} {'clean':>17} {'gaussian 0.5':>17}  chosen epochs")
    for variant, items in by_variant.items():
        for name, key, sign, first in RULES:
            picks = [chosen_epoch(r["epochs"], key, sign, first) for r in items]
            clean = [r["epochs"][e]["clean"] for r, e in zip(items, picks, strict=True)]
            noisy = [r["epochs"][e]["gaussian"] for r, e in zip(items, picks, strict=True)]
            print(f"{variant:<9} {name:<58} {mean_sem(clean):>17} {mean_sem(noisy):>17}  "
                  f"{' '.join(map(str, picks))}")
        print()
    paper_rule = RULES[0]
    print("Effect of each option under the paper preset's rule (on minus off, mean over seeds):")
    on = by_variant.get("paper", [])

    def chosen(items, rule):
        return [r["epochs"][chosen_epoch(r["epochs"], *rule[1:])] for r in items]

    for variant, label in (("joint", "pair_bn split vs joint"), ("replace", "pair_draw without vs with replacement")):
        off = by_variant.get(variant, [])
        if on and off:
            for metric in ("clean", "gaussian"):
                a = statistics.fmean(m[metric] for m in chosen(on, paper_rule))
                b = statistics.fmean(m[metric] for m in chosen(off, paper_rule))
                print(f"  {label:<40} {metric:<9} {a - b:+.4f}")
    for variant in ("paper", "baseline"):
        items = by_variant.get(variant, [])
        if items:
            with0 = chosen(items, RULES[0])
            without0 = chosen(items, RULES[1])
            zero = sum(chosen_epoch(r["epochs"], *RULES[0][1:]) == 0 for r in items)
            for metric in ("clean", "gaussian"):
                d = statistics.fmean(a[metric] - b[metric] for a, b in zip(with0, without0, strict=True))
                print(f"  {'epoch 0 a candidate (' + variant + ')':<40} {metric:<9} {d:+.4f}   "
                      f"(epoch 0 chosen for {zero} of {len(items)} seeds)")
    cpu = sum(r["cpu_s"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    print(f"\n{len(runs)} runs, {cpu / 60:.1f} min of CPU time, {wall / 60:.1f} min wall (machine shared; load "
          f"average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def coverage(args: argparse.Namespace, range_: str = "high", th: float = 0.8, k: int = 16) -> None:
    """pair_draw on a rare range, no training: how many of the qualifying pairs a run's draws reach, and how often
    the most-drawn one comes back, with and without replacement (one draw per step, as many steps as the run)."""
    from pixelreg_core.targets.builders import pixel_embeddings
    from pixelreg_core.targets.pairs import PairSampler

    cfg = config(args, "paper", 0)
    data = prepare_data(cfg)
    emb = pixel_embeddings(data.reg_x)
    steps = args.epochs * math.ceil(args.train_images / cfg.batch_size)
    print(f"\npair_draw on range {range_}, Th {th}, N = {args.reg_images} MNIST digits, {steps} steps x k = {k}:")
    for replacement in (False, True):
        sampler = PairSampler(emb, th=th, range=range_, replacement=replacement, order_seed=1)
        generator = torch.Generator().manual_seed(0)
        drawn: dict[tuple[int, int], int] = {}
        for _ in range(steps):
            i, j, _ = sampler.sample(k, generator)
            for a, b in zip(i.tolist(), j.tolist(), strict=True):
                key = (min(a, b), max(a, b))
                drawn[key] = drawn.get(key, 0) + 1
        qualifying = round(sampler.fraction * args.reg_images * (args.reg_images - 1) / 2)
        print(f"  {'with' if replacement else 'without'} replacement ({sampler.mode}): {len(drawn)} distinct of "
              f"{qualifying} qualifying pairs, the most drawn {max(drawn.values())} times, "
              f"{steps * k} draws")


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        print(f"--variants: unknown {unknown[0]!r}; use a subset of {','.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.coverage_only:
        coverage(args)
        return 0
    if args.report_only:
        with open(args.jsonl) as f:
            report([json.loads(line) for line in f if line.strip()], args)
        return 0
    print(f"MNIST digits from {args.data}: width {args.width}, {args.epochs} epochs (one per lr phase), "
          f"{args.train_images} train, {args.valid_images} held out (first {AUTHORS_VALID} = the authors' size), "
          f"{args.test_images} test, N = {args.reg_images}, k = 16, alpha 4, Th 0.2, {args.seeds} seeds; torch "
          f"{torch.__version__}, 1 thread")
    runs = []
    # seeds outermost: a cut-short run still compares every variant
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for variant in variants:
            r = run(args, variant, seed)
            runs.append(r)
            last = r["epochs"][-1]
            print(f"seed {seed} {variant:<8} last epoch clean {last['clean']:.4f} gaussian {last['gaussian']:.4f} "
                  f"({r['cpu_s']:.0f} s CPU, {r['wall_s']:.0f} s wall)", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(r) + "\n")
    report(runs, args)
    coverage(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
