"""Benchmark: N regularized training steps taken apart vs as one seed pack (pixelreg_core/pack/). Prints figures;
asserts nothing.

A step is what train.py runs: a classification batch and a pair batch (two more forward passes under the default
`pair_bn: split`), the loss, backward, SGD with momentum. "apart" is N models stepped one after another in one
process (what N trials sharing a device do, without their process and context overhead); "packed" is the same N
models as one grouped network. Data are random images of the task's shape (only the shapes matter for speed).
steps/s counts model-steps (N per packed step), so the two columns compare directly; `x` is packed / apart.

On CPU packing is not expected to pay (issue 17: 0.87x for 3 width-8 models, 1.01x for 9); on a GPU it makes each
kernel N times larger for the same launches. Run it on the GPU before turning `pack` on anywhere.

Usage: .venv/bin/python benchmarks/bench_pack.py [--device cpu|cuda] [--packs 1 4 8 16] [--width 16]
       [--image 28] [--channels 1] [--batch 64] [--pairs 16] [--steps 20] [--threads 1] [--amp] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pixelreg_core.config import TrialConfig
from pixelreg_core.model import build_model
from pixelreg_core.pack.model import GroupedPairResNet
from pixelreg_core.pack.train import packed_step_losses
from pixelreg_core.train import step_losses


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(n: int, args, device: torch.device, generator: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    """Per model: images, labels, pair images a and b, pair targets (+-1 and 0, like S^Th)."""
    shape = (args.channels, args.image, args.image)
    out = []
    for _ in range(n):
        out.append((torch.rand(args.batch, *shape, generator=generator).to(device),
                    torch.randint(10, (args.batch,), generator=generator).to(device),
                    torch.rand(args.pairs, *shape, generator=generator).to(device),
                    torch.rand(args.pairs, *shape, generator=generator).to(device),
                    torch.randint(-1, 2, (args.pairs,), generator=generator).float().to(device)))
    return out


def time_apart(models, opts, data, args, device) -> float:
    def step() -> None:
        for model, opt, (x, y, xa, xb, t) in zip(models, opts, data, strict=True):
            loss, *_ = step_losses(model, x, y, xa, xb, t, 1.0, True, args.amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return _timed(step, args, device)


def time_packed(grouped, opt, data, args, device) -> float:
    x = torch.cat([d[0] for d in data], 1)
    y = torch.stack([d[1] for d in data], 1)
    xa, xb = torch.cat([d[2] for d in data], 1), torch.cat([d[3] for d in data], 1)
    t = torch.stack([d[4] for d in data], 1)
    alpha = torch.ones(len(data), device=device)

    def step() -> None:
        total, *_ = packed_step_losses(grouped, x, y, xa, xb, t, alpha, True, args.amp)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return _timed(step, args, device)


def _timed(step, args, device) -> float:
    """Seconds per step after `args.warmup` untimed steps."""
    for _ in range(args.warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return (time.perf_counter() - started) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--arch", default="ResNet18")
    parser.add_argument("--image", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast of the forward passes (as `amp`)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = TrialConfig(arch=args.arch, width=args.width, alpha=1.0)
    print(f"seed pack vs apart: {args.arch} width {args.width}, {args.channels}x{args.image}x{args.image}, batch "
          f"{args.batch}, {args.pairs} pairs, {args.steps} steps, {device}"
          f"{'' if device.type == 'cuda' else f' ({args.threads} thread(s))'}{', amp' if args.amp else ''}")
    print(f"{'N':>4} {'apart steps/s':>14} {'packed steps/s':>15} {'x':>6}")
    rows = []
    for n in args.packs:
        models = []
        for seed in range(n):
            torch.manual_seed(seed)
            models.append(build_model(cfg.replace(seed=seed), args.channels, 10).to(device).train())
        grouped = GroupedPairResNet.of(models).train()
        data = batches(n, args, device, torch.Generator().manual_seed(0))
        opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
        apart = n / time_apart(models, opts, data, args, device)
        packed = n / time_packed(grouped, torch.optim.SGD(grouped.parameters(), lr=0.01, momentum=0.9), data,
                                 args, device)
        rows.append({"n": n, "apart_steps_per_s": apart, "packed_steps_per_s": packed, "speedup": packed / apart})
        print(f"{n:>4} {apart:>14.1f} {packed:>15.1f} {packed / apart:>5.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
