"""Transferred FGSM: perturbations from an unregularized source model, accuracy of the evaluated model.

x_adv = clamp(x + eps * (pixel range) * sign(grad_x CE(source(x), y)), 0, 1). Images are in [0, 1], so the pixel
range is 1 and eps is in pixel units, whatever input scaling the models apply inside.

Why cached: the signs depend only on the source model and the test set, not on eps or on the evaluated model.
The reference code recomputed one gradient per image for every eps and every trial; here the signs are computed
once per (source checkpoint, test set), batched, stored as int8 under `cache_dir/fgsm_signs/` by the per-source
cache (pixelreg_core.attacks.source), and every trial of the task and every eps reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelreg_core.attacks.accuracy import accuracy, model_device
from pixelreg_core.attacks.base import UNREGULARIZED_SOURCE, Attack, AttackContext, Measured, Point, Selected
from pixelreg_core.attacks.options import eps_options
from pixelreg_core.attacks.seeds import seeded_subset
from pixelreg_core.attacks.source import cached_input


def gradient_signs(source: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """sign(grad_x CE(source(x), y)) for every image, as int8 on the source's device, one backward pass per
    batch."""
    source.eval()
    device = model_device(source)
    signs = []
    for i in range(0, len(y), batch_size):
        xb = x[i:i + batch_size].to(device).requires_grad_(True)
        loss = F.cross_entropy(source(xb), y[i:i + batch_size].to(device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        signs.append(grad.sign().to(torch.int8))
    return torch.cat(signs)


def transfer_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, signs: torch.Tensor, eps: float,
                      batch_size: int = 500) -> float:
    """Accuracy of `model` on clamp(x + eps * sign, 0, 1)."""
    device = model_device(model)

    def perturb(xb: torch.Tensor, start: int) -> torch.Tensor:
        xb = xb.to(device)
        return (xb + eps * signs[start:start + batch_size].to(device, xb.dtype)).clamp(0.0, 1.0)

    return accuracy(model, x, y, batch_size, perturb)


@dataclass(frozen=True)
class Signed(Selected):
    """The images and their source gradients' signs (int8, on the model's device)."""

    signs: torch.Tensor


def select(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
           opts: dict[str, Any]) -> Signed:
    """The seeded image subset and its signs; the signs cover the whole test set so every trial shares one cache
    entry."""
    source = ctx.source
    signs = ctx.shared_input("fgsm_signs", lambda: cached_input(
        source, "fgsm_signs", ctx.test_sha256(x_all, y_all), ctx.cache_dir,
        lambda: gradient_signs(source.model, x_all, y_all, opts["batch_size"]), tuple(x_all.shape)
    ).to(model_device(model)))  # once per trial, then every eps reads them on the device
    subset = seeded_subset(len(y_all), opts["images"], ctx.seed, "fgsm_transfer")
    return Signed(x_all[subset], y_all[subset], signs[subset])


def measure(model: nn.Module, selected: Signed, point: Point, opts: dict[str, Any]) -> Measured:
    return Measured(transfer_accuracy(model, selected.x, selected.y, selected.signs, point.eps, opts["batch_size"]),
                    len(selected.y))


def clean(selected: Signed) -> tuple[torch.Tensor, torch.Tensor] | None:
    """At eps 0 the images are x itself (x + 0 * sign clamped to [0, 1]) when x is in [0, 1] (Attack.clean)."""
    x = selected.x
    return (x, selected.y) if bool(((x >= 0) & (x <= 1)).all()) else None


ATTACKS = [Attack("fgsm_transfer", "Transferred FGSM", eps_options(), select, measure, clean=clean,
                  source=UNREGULARIZED_SOURCE)]
