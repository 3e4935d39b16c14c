"""Decision-based Boundary Attack (Brendel et al. 2017) with foolbox, on batches of images.

Score per repeat: median over the successfully attacked images of the squared L2 distance per pixel, in [0, 1]
scale, between the original and its adversarial; larger is more robust.

Which images, against which labels (docs/method.md, "Evaluation"): the images are drawn once per task by
`image_seed`, independent of the trial seed, so every model and baseline of a task is scored on the same images.
`criterion: prediction` (the authors' code) attacks each of them away from the model's own prediction, so
misclassified images are attacked too; `criterion: label` attacks the first `images` correctly classified ones
(in the same fixed order) against the true label, the classic minimal-perturbation reading (`preset: minimal`,
with foolbox's 25,000 steps for converged perturbations).

Starting points come from `foolbox_support.attack_from_starts` (images without one are counted in `failed` and left out
of the median, and the rest are attacked). Images whose final point is not adversarial are counted the same way.
foolbox draws its random numbers from torch's global RNG (through
eagerpy), so each (repeat, batch) runs under its own seed inside `seeded_torch`, which restores the RNG after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.accuracy import model_device, predict
from pixelreg_core.attacks.base import Attack, AttackContext, Measured, Point, Selected
from pixelreg_core.attacks.foolbox_support import attack_from_starts, import_foolbox
from pixelreg_core.attacks.options import Option
from pixelreg_core.attacks.seeds import correct_subset, derive_seed, seeded_subset, seeded_torch


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
    fb = import_foolbox()

    model.eval()
    device = model_device(model)
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)
    advs, successes = [], []
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        with seeded_torch(derive_seed(seed, "boundary", start), device):
            adv, success = attack_from_starts(fmodel, model, fb.attacks.BoundaryAttack(steps=steps), xb, yb)
        advs.append(adv.detach().cpu())
        successes.append(success.cpu())
    return BoundaryResult(x.cpu(), y.cpu(), torch.cat(advs), torch.cat(successes))


def attacked_images(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, opts: dict[str, Any]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices into the test set, the labels to attack away from), by `criterion` (module docstring).

    The order of the test images is fixed by `image_seed` alone: with `prediction` the indices are the same for
    every model of a task; with `label` they are the first correctly classified ones in that same order.
    """
    if opts["criterion"] == "prediction":
        idx = seeded_subset(len(y_all), opts["images"], opts["image_seed"], "boundary")
        return idx, predict(model, x_all[idx])
    idx = correct_subset(model, x_all, y_all, opts["images"], opts["image_seed"], "boundary")
    return idx, y_all[idx]


def select(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
           opts: dict[str, Any]) -> Selected:
    """The attacked images and the labels to attack away from (`attacked_images`)."""
    idx, labels = attacked_images(model, x_all, y_all, opts)
    return Selected(x_all[idx], labels)


def measure(model: nn.Module, images: Selected, point: Point, opts: dict[str, Any]) -> Measured:
    """One repeat: the score, the images attacked successfully, and their perturbations (for the spectrum)."""
    x, y = images.x, images.y
    result = boundary_attack(model, x, y, steps=opts["steps"], batch_size=opts["batch_size"],
                             seed=derive_seed(point.seed, "repeat", point.repeat))
    n_ok = int(result.success.sum())
    return Measured(result.score(), n_ok, failed=len(y) - n_ok,
                    perturbations=(result.adv - result.x)[result.success])


ATTACKS = [Attack("boundary", "Boundary attack", {
    "images": Option(64, 1000, "count", "test images attacked, drawn once per task by image_seed"),
    "repeats": Option(1, 5, "count", "independent runs; each gives one score row"),
    "steps": Option(300, 50, "count", "Boundary Attack steps (authors' code 50; foolbox's default 25000)"),
    "criterion": Option("prediction", "prediction", "choice", "attack away from the model's prediction (authors' "
                        "code; misclassified images too) or from the true label (correct images only)",
                        ("prediction", "label")),
    "image_seed": Option(0, 0, "seed", "seed of the image draw, the same for every model and seed of a task"),
    "batch_size": Option(64, 100, "count", "images attacked together"),
    "spectrum": Option(True, True, "bool", "write the Fourier radial profile of the perturbations"),
}, select, measure, metric="boundary_score", eps=False, presets={
    # converged minimal perturbations: foolbox's default step count, correct images against their true label
    "minimal": {"steps": 25000, "criterion": "label"},
})]
