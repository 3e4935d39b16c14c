"""Which images an attack uses and the random streams it draws: seeds derived per (trial seed, attack, point), the
fixed seeded image subsets, and torch's global RNG seeded for foolbox. Random numbers are drawn on the images'
device, so a CPU run gives exactly the CPU numbers and a GPU run draws its own (equally distributed) ones.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.accuracy import predict


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
