"""Helpers every attack shares: batched prediction, the fixed image subset, per-image clamping, row building.

All attacks work on [0, 1] pixel tensors [n, C, H, W] kept on the CPU; batches move to the model's device for the
forward pass only, so CPU and GPU runs draw the same random numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def derive_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed per (trial seed, attack, eps index, repeat, ...): streams never overlap or shift when
    another attack is added, and Python's randomised str hash is avoided."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


@contextlib.contextmanager
def seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (foolbox draws from it through eagerpy) and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (CPU int64) for images on any device, in batches."""
    device = model_device(model)
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    if len(y) == 0:
        return math.nan
    return int((predict(model, x, batch_size) == y.cpu()).sum()) / len(y)  # exact ratio, like every attack row


def seeded_subset(n_total: int, n: int | None, seed: int, name: str) -> torch.Tensor:
    """The first `n` indices of a seeded permutation (all, in order, when n is None): the same images for every
    trial with this seed, whatever the model."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    generator = torch.Generator().manual_seed(derive_seed(seed, "subset", name))
    return torch.randperm(n_total, generator=generator)[:n].sort().values


def correct_subset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, seed: int, name: str,
                   batch_size: int = 500) -> torch.Tensor:
    """Indices of up to `n` correctly classified test images, in a seeded random order.

    The minimal-perturbation attacks measure how far a correct decision is from the boundary; a misclassified
    image is already adversarial and has distance 0, so the papers attack correctly classified images only.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "correct", name))
    order = torch.randperm(len(y), generator=generator)
    correct = predict(model, x[order], batch_size) == y[order].cpu()
    return order[correct][:n]


def clamp_per_image(noisy: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Clamp each image to its own [min, max] (REFERENCE.md): noise cannot widen an image's intensity range."""
    lo = original.amin(dim=(1, 2, 3), keepdim=True)
    hi = original.amax(dim=(1, 2, 3), keepdim=True)
    return torch.maximum(torch.minimum(noisy, hi), lo)


def row(attack: str, value: float, images: int, *, eps: float | None = None, metric: str = "accuracy",
        variant: str = "", group: str = "", repeat: int = 0, failed: int = 0,
        whitebox: bool = False) -> dict[str, Any]:
    """One robustness row without the key columns (the trainer adds them)."""
    return {"attack": attack, "variant": variant, "group": group, "eps": None if eps is None else float(eps),
            "repeat": int(repeat), "metric": metric, "value": float(value), "images": int(images),
            "failed": int(failed), "whitebox": bool(whitebox)}
