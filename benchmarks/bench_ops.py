"""Operators dispatched per regularized training step, and how many of them the pair draw takes.

    .venv/bin/python benchmarks/bench_ops.py [--steps 40] [--json FILE]

On a GPU each dispatched operator is one kernel launch, a few microseconds of host time whatever its size, so the
count per step bounds how fast a small model's step can run there. The count is rounding-free (it depends on the
code path only), so it is measured here on a CPU with a TorchDispatchMode (pixelreg_core/hooks/opcount.py) and
holds on every device: the draw (`target.sample`, k = 16) over WINDOW_STEPS draws from a fresh target, and the rest
of the step over one epoch of `train_epoch` on generated 28 x 28 images (width 8, batch 64) after a warm-up epoch,
for every pair draw, every range and every target kind. tests/test_paper_options.py bounds the draw's share.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixelreg_core.config import TrialConfig  # noqa: E402
from pixelreg_core.data.bundle import DataBundle  # noqa: E402
from pixelreg_core.hooks.opcount import OpCount  # noqa: E402
from pixelreg_core.model import build_model  # noqa: E402
from pixelreg_core.targets.pairs import WINDOW_STEPS  # noqa: E402
from pixelreg_core.targets.registry import build_target  # noqa: E402
from pixelreg_core.train import PlacedData, step_losses, train_epoch  # noqa: E402

RANGES = {"all": {}, "high": {"th": 0.2}, "low": {"th": 0.2}, "positive": {"th": 0.2}, "negative": {"th": 0.2},
          "double": {"th": 0.3, "th2": 0.02}}
KINDS = ("threshold", "pixel", "shuffle", "categorical", "matrix")
EVERY_PAIR_KINDS = ("categorical", "matrix")  # these allow range all only


def generated_data(n_train: int, n_reg: int, seed: int = 0) -> DataBundle:
    """28 x 28 images with a shared low-frequency structure (so pixel similarities spread like real digits')."""
    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        base = torch.rand(n, 1, 7, 7, generator=g)
        return torch.nn.functional.interpolate(base, size=(28, 28), mode="bilinear").clamp_(0, 1)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=g)

    return DataBundle(images(n_train), labels(n_train), images(32), labels(32), images(64), labels(64),
                      images(n_reg), labels(n_reg), num_classes=10)


def config(kind: str, range_: str, pair_draw: str, matrix_files: tuple[str, str] | None = None) -> TrialConfig:
    extra = dict(RANGES[range_])
    if kind in ("matrix",) and matrix_files is not None:
        extra.update(matrix=matrix_files[0], matrix_images=matrix_files[1])
    return TrialConfig(task="MNIST", reg_data="MNIST", width=8, batch_size=64, alpha=1.0, target=kind,
                       range=range_, pair_draw=pair_draw, device="cpu", num_threads=1, **extra)


def matrix_files(folder: Path, n: int, seed: int = 0) -> tuple[str, str]:
    """An n x n similarity and its n images as .npy files (the matrix target reads files)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    np.save(folder / "sim.npy", m)
    np.save(folder / "images.npy", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    return str(folder / "sim.npy"), str(folder / "images.npy")


def step_ops(cfg: TrialConfig, data: DataBundle, device: str = "cpu") -> dict[str, float]:
    """Operators per regularized step: the draw's (over WINDOW_STEPS draws from a fresh target, so its one
    evaluation of the pair order is spread as in training), the rest of the step's (an epoch of `train_epoch`
    after a warm-up epoch, its draws left out), and the draw's share of the two."""
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    target = build_target(cfg, data.reg_x.to(dev), data.reg_y.to(dev))
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    with OpCount() as ops:
        for _ in range(WINDOW_STEPS):
            target.sample(cfg.reg_pairs, generator)
    draw = ops.total / WINDOW_STEPS
    model = build_model(cfg, data.in_channels, data.num_classes).to(dev)
    reg_x = target.images if getattr(target, "images", None) is not None else data.reg_x
    placed = PlacedData.of(data, reg_x, dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_epoch(cfg, placed, False, model, target, optimizer, step_losses, generator)  # warm-up
    sample = target.sample
    with OpCount() as ops:
        def counted_sample(k, gen=None):  # noqa: ANN001, ANN202
            with ops.section("draw"):
                return sample(k, gen)

        target.sample = counted_sample
        try:
            per_step, _ = train_epoch(cfg, placed, False, model, target, optimizer, step_losses, generator)
        finally:
            del target.sample
    rest = (ops.total - ops.by_section["draw"]) / len(per_step)
    return {"draw_ops": round(draw, 1), "step_ops": round(draw + rest, 1), "draw_share": round(draw / (draw + rest), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps of the counted epoch (batches of 64)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = generated_data(64 * args.steps, 300)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = matrix_files(Path(tmp), 300)
        for pair_draw in ("without_replacement", "with_replacement"):
            for kind in KINDS:
                for range_ in (("all",) if kind in EVERY_PAIR_KINDS else RANGES):
                    row = {"pair_draw": pair_draw, "target": kind, "range": range_,
                           **step_ops(config(kind, range_, pair_draw, files), data)}
                    rows.append(row)
                    print(f"{pair_draw:20s} {kind:12s} {range_:9s} draw {row['draw_ops']:7.1f} ops/step of "
                          f"{row['step_ops']:7.1f} ({100 * row['draw_share']:4.1f}%)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
