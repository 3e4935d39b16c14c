"""Decision-based Boundary Attack (Brendel et al. 2017) with foolbox, on batches of images.

Score per repeat (REFERENCE.md): median over images of the squared L2 distance per pixel, in [0, 1] scale, between
the original and its adversarial; larger is more robust. The images are a fixed seeded subset of correctly
classified test images, the same for every trial with this seed.

Starting points come from foolbox's LinearSearchBlendedUniformNoiseAttack, run here rather than inside
BoundaryAttack: foolbox raises for the whole batch if any image gets no adversarial starting point, while here such
images are counted in `failed` and left out of the median, and the rest are attacked. Images whose final point is
not adversarial are counted the same way. foolbox draws its random numbers from torch's global RNG (through
eagerpy), so each (repeat, batch) runs under its own seed inside `seeded_torch`, which restores the RNG after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .common import correct_subset, derive_seed, model_device, predict, row, seeded_torch

INIT_STEPS = 50  # blending steps of the starting-point search (BoundaryAttack's own fallback uses 50)


@dataclass
class BoundaryResult:
    """Originals, adversarials and which of them are adversarial, all on the CPU."""

    x: torch.Tensor
    y: torch.Tensor
    adv: torch.Tensor
    success: torch.Tensor  # bool [n]

    @property
    def per_pixel_sq_l2(self) -> torch.Tensor:
        """Squared L2 distance divided by the number of pixel values, per image ([0, 1] scale)."""
        return (self.adv - self.x).pow(2).flatten(1).mean(1)

    def score(self) -> float:
        """Median per-pixel squared L2 over the successful images; NaN when none succeeded."""
        if not bool(self.success.any()):
            return float("nan")
        return float(self.per_pixel_sq_l2[self.success].median())


def boundary_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int,
                    seed: int) -> BoundaryResult:
    """Run foolbox's BoundaryAttack on (x, y) in batches of `batch_size`; x in [0, 1]."""
    import foolbox as fb

    model.eval()
    device = model_device(model)
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)
    advs, successes = [], []
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        adv = xb.clone()
        with seeded_torch(derive_seed(seed, "boundary", start), device):
            init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=INIT_STEPS)
            starts = init.run(fmodel, xb, fb.criteria.Misclassification(yb))
            ok = predict(model, starts).to(device) != yb
            if bool(ok.any()):
                attack = fb.attacks.BoundaryAttack(steps=steps)
                adv[ok] = attack.run(fmodel, xb[ok], fb.criteria.Misclassification(yb[ok]),
                                     starting_points=starts[ok])
        success = ok & (predict(model, adv).to(device) != yb)
        advs.append(adv.detach().cpu())
        successes.append(success.cpu())
    return BoundaryResult(x.cpu(), y.cpu(), torch.cat(advs), torch.cat(successes))


def run(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, opts: dict[str, Any],
        seed: int) -> tuple[list[dict[str, Any]], list[BoundaryResult]]:
    """One boundary_score row per repeat, and the raw results (for the spectrum)."""
    idx = correct_subset(model, x_all, y_all, opts["images"], seed, "boundary")
    x, y = x_all[idx], y_all[idx]
    rows, results = [], []
    for r in range(opts["repeats"]):
        result = boundary_attack(model, x, y, steps=opts["steps"], batch_size=opts["batch_size"],
                                 seed=derive_seed(seed, "repeat", r))
        n_ok = int(result.success.sum())
        rows.append(row("boundary", result.score(), n_ok, metric="boundary_score", repeat=r,
                        failed=len(y) - n_ok))
        results.append(result)
    return rows, results
