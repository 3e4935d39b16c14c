"""Random-noise robustness: Gaussian, uniform and salt-and-pepper noise in [0, 1] pixel space (REFERENCE.md).

Noise comes from a torch.Generator seeded per (trial seed, attack, eps index, repeat) and drawn on the CPU, so
two evaluations of one model give exactly the same numbers, on any device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .common import clamp_per_image, derive_seed, model_device, row

NOISE_ATTACKS = ("gaussian", "uniform", "salt_pepper")


def add_noise(kind: str, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """x plus `kind` noise of strength eps, each image clamped to its own [min, max].

    gaussian: x + eps * N(0, 1); uniform: x + U(-eps, eps); salt_pepper: each pixel with probability eps gets
    +1 or -1 (random sign), which the clamp turns into the image's max or min.
    """
    if kind == "gaussian":
        noise = eps * torch.randn(x.shape, generator=generator)
    elif kind == "uniform":
        noise = eps * (2 * torch.rand(x.shape, generator=generator) - 1)
    elif kind == "salt_pepper":
        hit = torch.rand(x.shape, generator=generator) < eps
        sign = torch.where(torch.rand(x.shape, generator=generator) < 0.5, -1.0, 1.0)
        noise = hit * sign
    else:
        raise ValueError(f"unknown noise {kind!r}")
    return clamp_per_image(x + noise.to(x.dtype), x)


@torch.no_grad()
def noise_accuracy(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                   batch_size: int) -> float:
    """Accuracy on one noisy copy of (x, y); the generator runs through the batches in order."""
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = x[i:i + batch_size].cpu()
        noisy = add_noise(kind, xb, eps, generator)
        correct += int((model(noisy.to(device)).argmax(1).cpu() == y[i:i + batch_size].cpu()).sum())
    return correct / len(y)


def run(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values: list[float],
        opts: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One accuracy row per (eps, repeat)."""
    rows = []
    for i, eps in enumerate(eps_values):
        for r in range(opts["repeats"]):
            acc = noise_accuracy(model, kind, x, y, eps, derive_seed(seed, kind, i, r), opts["batch_size"])
            rows.append(row(kind, acc, len(y), eps=eps, repeat=r))
    return rows
