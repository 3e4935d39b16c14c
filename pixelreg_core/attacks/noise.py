"""Random-noise robustness: Gaussian, uniform and salt-and-pepper noise in [0, 1] pixel space
(docs/method.md, "Evaluation").

Noise comes from a torch.Generator seeded per (trial seed, attack, eps index, repeat), drawn on the device of
the images (the model's: no host-to-device copy of noise), so two evaluations of one model on one device give
exactly the same numbers; CPU and GPU draw different, equally distributed noise.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.accuracy import accuracy, clamp_per_image
from pixelreg_core.attacks.base import Attack, AttackContext, Measured, Point, Selected
from pixelreg_core.attacks.options import Option, eps_options
from pixelreg_core.attacks.seeds import derive_seed, seeded_subset

NOISE_ATTACKS = ("gaussian", "uniform", "salt_pepper")
TITLES = {"gaussian": "Gaussian noise", "uniform": "Uniform noise", "salt_pepper": "Salt-and-pepper noise"}


def add_noise(kind: str, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """x plus `kind` noise of strength eps, each image clamped to its own [min, max].

    gaussian: x + eps * N(0, 1); uniform: x + U(-eps, eps); salt_pepper: each pixel with probability eps gets
    +1 or -1 (random sign), which the clamp turns into the image's max or min.
    """
    on = {"generator": generator, "device": generator.device}
    if kind == "gaussian":
        noise = eps * torch.randn(x.shape, **on)
    elif kind == "uniform":
        noise = eps * (2 * torch.rand(x.shape, **on) - 1)
    elif kind == "salt_pepper":
        hit = torch.rand(x.shape, **on) < eps
        sign = torch.where(torch.rand(x.shape, **on) < 0.5, -1.0, 1.0)
        noise = hit * sign
    else:
        raise ValueError(f"unknown noise {kind!r}")
    return clamp_per_image(x + noise.to(x.dtype), x)


def noise_accuracy(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                   batch_size: int) -> float:
    """Accuracy on one noisy copy of (x, y); the generator runs through the batches in order."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return accuracy(model, x, y, batch_size, lambda xb, _: add_noise(kind, xb, eps, generator))


def select(kind: str, model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
           opts: dict[str, Any]) -> Selected:
    """The seeded image subset (the same for every eps and repeat)."""
    idx = seeded_subset(len(y_all), opts["images"], ctx.seed, kind)
    return Selected(x_all[idx], y_all[idx])


def measure(kind: str, model: nn.Module, images: Selected, point: Point, opts: dict[str, Any]) -> Measured:
    """Accuracy on one noisy copy, its noise seeded by (trial seed, kind, eps index, repeat)."""
    x, y = images.x, images.y
    seed = derive_seed(point.seed, kind, point.index, point.repeat)
    return Measured(noise_accuracy(model, kind, x, y, point.eps, seed, opts["batch_size"]), len(y))


def _salt_pepper_eps_max(record: Any) -> float:
    """The dataset's rule, capped at 0.3: the papers' MNIST range for salt-and-pepper ends there (at p = 0.5 half
    the pixels are replaced and no digit is left to classify); CIFAR's 0.1 is below the cap."""
    return min(record.eps_top("salt_pepper"), 0.3)


def _record(kind: str) -> Attack:
    options = {**eps_options(), "repeats": Option(1, 1, "count", "independent noise draws per eps")}
    # eps 0: x + 0 * noise, clamped to the image's own range, is x (Attack.clean)
    return Attack(kind, TITLES[kind], options, functools.partial(select, kind), functools.partial(measure, kind),
                  clean=lambda images: (images.x, images.y),
                  eps_max=_salt_pepper_eps_max if kind == "salt_pepper" else None)


ATTACKS = [_record(kind) for kind in NOISE_ATTACKS]
