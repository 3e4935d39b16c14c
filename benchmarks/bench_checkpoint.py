"""Bytes a trial's per-epoch checkpoint writes, before and after the best state got its own file (issue 16, item 7).

    .venv/bin/python benchmarks/bench_checkpoint.py             # ResNet18 at width 64, MNIST-shaped (1 x 28 x 28)
    .venv/bin/python benchmarks/bench_checkpoint.py --width 8 --epochs results/quickstart/epochs

Before: every epoch wrote one file holding model, optimizer (momentum) and the best state. After: the epoch file
(model, optimizer, RNGs, rows) every epoch, the best file only in an epoch whose validation loss improves. The
bytes are measured from real EpochCheckpoint.save calls (the write layer counted), not estimated. How often the
best epoch changes comes from a real `epochs` table when one is given (`--epochs DIR`, e.g. a finished sweep's),
else the figures are shown for 20 epochs with the best changing in every epoch (the worst case), 10 and 5 of them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def measure(width: int) -> dict[str, int]:
    """Bytes written by one save in an epoch that improves the best state, one that does not, and the old format."""
    import torch

    from pixelreg_core import checkpoint
    from pixelreg_core.config import TrialConfig
    from pixelreg_core.model import build_model

    cfg = TrialConfig(width=width, arch="ResNet18", alpha=0.0, seed=0)
    model = build_model(cfg, 1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
    loss.backward()
    optimizer.step()  # momentum buffers exist, as after any real step
    written: list[int] = []
    real_write = checkpoint.write_bytes
    checkpoint.write_bytes = lambda path, data: (written.append(len(data)), real_write(path, data))[1]
    generator = torch.Generator().manual_seed(0)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as out:
        ckpt = checkpoint.EpochCheckpoint.for_trial(out, cfg)
        common = dict(model=model, optimizer=optimizer, generator=generator, rows=[], best_state=best, best_valid=1.0)
        ckpt.save(epochs_done=1, best_epoch=1, **common)
        improving = sum(written)
        written.clear()
        ckpt.save(epochs_done=2, best_epoch=1, **common)
        plain = sum(written)
        state = checkpoint._deserialise(Path(ckpt.path).read_bytes())
        state.update(format=1, best_state=best)
        before = len(checkpoint._serialise(state))  # the format-1 file: one file with everything, every epoch
        checkpoint.write_bytes = real_write
    return {"before": before, "improving": improving, "plain": plain,
            "model": sum(t.numel() * t.element_size() for t in best.values())}


def improvements(epochs_dir: Path) -> list[tuple[int, int]]:
    """(epochs, epochs whose validation loss was a new best) per trial of a real epochs table."""
    import pandas as pd

    frame = pd.read_parquet(epochs_dir)
    out = []
    for _, rows in frame.sort_values("epoch").groupby("trial_id"):
        best, count = float("inf"), 0
        for loss in rows["valid_loss"]:
            if loss < best:
                best, count = loss, count + 1
        out.append((len(rows), count))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=Path, default=None, metavar="DIR", help="a real epochs table folder")
    args = parser.parse_args()
    m = measure(args.width)
    mb = 1e6
    print(f"ResNet18 width {args.width}, 1 x 28 x 28 input: the model's state {m['model'] / mb:.1f} MB")
    print(f"before: {m['before'] / mb:.1f} MB every epoch (model + momentum + best state in one file)")
    print(f"after:  {m['plain'] / mb:.1f} MB in an epoch without a new best, {m['improving'] / mb:.1f} MB in one "
          "with a new best (+ the best file)")
    cases = improvements(args.epochs) if args.epochs else [(20, 20), (20, 10), (20, 5)]
    source = f"from {args.epochs}" if args.epochs else "assumed"
    total_before = total_after = 0
    for epochs, better in cases:
        total_before += epochs * m["before"]
        total_after += better * m["improving"] + (epochs - better) * m["plain"]
        if not args.epochs:
            per_before = m["before"] / mb
            per_after = (better * m["improving"] + (epochs - better) * m["plain"]) / epochs / mb
            print(f"  {epochs} epochs, best changes in {better} ({source}): {per_before:.1f} -> {per_after:.1f} "
                  f"MB per epoch on average")
    if args.epochs:
        epochs = sum(e for e, _ in cases)
        better = sum(b for _, b in cases)
        print(f"  {len(cases)} trials, {epochs} epochs, a new best in {better} ({source}): "
              f"{total_before / epochs / mb:.1f} -> {total_after / epochs / mb:.1f} MB per epoch on average, "
              f"{total_before / 1e9:.2f} -> {total_after / 1e9:.2f} GB in all")
    print("model files a sweep keeps: one per finished trial (checkpoints/<trial_id>.pt, the selected epoch, "
          f"{m['model'] / mb:.1f} MB here); while a trial runs, checkpoints/running/ holds its epoch file and one "
          "best file, both removed when it finishes")


if __name__ == "__main__":
    main()
