"""Benchmark: batched + cached attacks vs how the reference code runs them. Prints figures; asserts nothing.

1. Transferred FGSM over a 10-eps curve. Reference: for every eps, loop over the images, one forward + backward
   of the source model per image, then classify the perturbed image. Here: the signs of all images in batched
   backward passes, stored on disk once, then one batched forward pass per eps (and nothing but the forward
   passes for every later trial of the task: "cache hit").
2. Boundary Attack at equal steps: foolbox on one image at a time vs the same images in one batch.

Usage: .venv/bin/python benchmarks/bench_attacks.py [--task digits|idx:PATH] [--width 8] [--images 360]
       [--boundary-images 64] [--steps 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.fit, also when run as a script

from benchmarks.fit import quick_fit  # noqa: E402
from pixelreg_core.attacks import boundary, fgsm  # noqa: E402
from pixelreg_core.attacks import source as attack_source  # noqa: E402
from pixelreg_core.attacks.accuracy import accuracy  # noqa: E402
from pixelreg_core.attacks.seeds import correct_subset  # noqa: E402
from pixelreg_core.config import TrialConfig  # noqa: E402
from pixelreg_core.data.bundle import prepare_data  # noqa: E402
from pixelreg_core.model import save_checkpoint  # noqa: E402


def cached_signs(ckpt, cfg, x, y, cache_dir):
    """The signs as a trial gets them: the source read once, then the per-source cache (hit or miss)."""
    source = attack_source.load(cfg.replace(fgsm_source=ckpt))
    return attack_source.cached_input(source, "fgsm_signs", attack_source.test_set_sha256(x, y), cache_dir,
                                      lambda: fgsm.gradient_signs(source.model, x, y), tuple(x.shape))


def fgsm_reference(source, model, x, y, eps_values) -> list[float]:
    """The reference code's loop: per eps, per image, one gradient of the source and one prediction."""
    accs = []
    for eps in eps_values:
        correct = 0
        for i in range(len(y)):
            xi = x[i:i + 1].clone().requires_grad_(True)
            loss = F.cross_entropy(source(xi), y[i:i + 1])
            (grad,) = torch.autograd.grad(loss, xi)
            with torch.no_grad():
                adv = (xi + eps * grad.sign()).clamp(0, 1)
                correct += int(model(adv).argmax(1).item() == y[i].item())
        accs.append(correct / len(y))
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="digits")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--boundary-images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="Boundary Attack steps (both variants)")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = TrialConfig(task=args.task, width=args.width, seed=0, alpha=0.0, device="cpu", test_images=args.images)
    data = prepare_data(cfg)
    model = quick_fit(cfg, data, args.train_steps)
    source_cfg = cfg.replace(seed=1, role="fgsm_source")
    source = quick_fit(source_cfg, data, args.train_steps)
    x, y = data.test_x, data.test_y
    eps_values = [0.5 * i / 9 for i in range(10)]
    print(f"task {args.task}: {len(y)} test images {tuple(x.shape[1:])}, ResNet18 width {args.width}, "
          f"clean acc {accuracy(model, x, y):.3f}, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    ref = fgsm_reference(source, model, x, y, eps_values)
    t_ref = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = f"{tmp}/source.pt"
        save_checkpoint(source, source_cfg, ckpt)
        t0 = time.perf_counter()
        signs = cached_signs(ckpt, cfg, x, y, tmp)
        ours = [fgsm.transfer_accuracy(model, x, y, signs, eps) for eps in eps_values]
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        signs = cached_signs(ckpt, cfg.replace(seed=7), x, y, tmp)
        [fgsm.transfer_accuracy(model, x, y, signs, eps) for eps in eps_values]
        t_hit = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(ref, ours, strict=True))
    print(f"FGSM 10-eps curve, {len(y)} images: reference per-image loop {t_ref:.2f} s | batched, first trial "
          f"(gradients + cache write) {t_first:.3f} s -> {t_ref / t_first:.1f}x | later trial (cache hit) "
          f"{t_hit:.3f} s -> {t_ref / t_hit:.1f}x | max |acc difference| {diff:.4f}")

    idx = correct_subset(model, x, y, args.boundary_images, 0, "bench")
    xb, yb = x[idx], y[idx]
    t0 = time.perf_counter()
    singles = [boundary.boundary_attack(model, xb[i:i + 1], yb[i:i + 1], steps=args.steps, batch_size=1, seed=i)
               for i in range(len(yb))]
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = boundary.boundary_attack(model, xb, yb, steps=args.steps, batch_size=len(yb), seed=0)
    t_batch = time.perf_counter() - t0
    single_score = torch.cat([s.per_pixel_sq_l2[s.success] for s in singles]).median().item()
    print(f"Boundary Attack, {len(yb)} images x {args.steps} steps: image by image {t_single:.2f} s | batched "
          f"{t_batch:.2f} s -> {t_single / t_batch:.1f}x | score (median per-pixel squared L2) "
          f"single {single_score:.4f}, batched {batched.score():.4f}")


if __name__ == "__main__":
    main()
