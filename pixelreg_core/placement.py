"""A trial's images held on its device, compact, and indexed there: no DataLoader, no per-step host-to-device copy.

Images are float32 in [0, 1] everywhere else in the core. Most datasets are 8-bit at heart (MNIST, FashionMNIST,
CIFAR, IDX files, `folder:` images): their float values are exactly `u / 255` for a uint8 `u`, so they are stored
on the device as that uint8, a quarter of the memory, and turned back into float32 per batch by the same
arithmetic the loader used (`u.to(float32).div_(255.0)`). The round trip is checked, not assumed: a set whose
floats are not all exactly `u / 255` (scikit-learn's digits are k / 16; gray CIFAR is a mean of three channels)
stays float32. So a batch taken here is bit for bit the batch the float tensor would give, on every device.

`DeviceImages.take(idx)` gathers and converts only the batch; the whole set is converted only for the small
validation and test sets that are evaluated whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

UINT8_SCALE = 255.0


def as_uint8_if_exact(x: Tensor) -> Tensor:
    """`x` as uint8 u with u / 255 == x exactly (checked), else `x` itself (float32)."""
    if x.dtype == torch.uint8 or x.numel() == 0 or x.dtype != torch.float32:
        return x
    u = (x * UINT8_SCALE).round_().clamp_(0, 255).to(torch.uint8)
    return u if torch.equal(to_float(u), x) else x


def to_float(stored: Tensor) -> Tensor:
    """Stored images -> float32 in [0, 1]: the loaders' own arithmetic for uint8 (data.to_unit_float)."""
    if stored.dtype == torch.uint8:
        return stored.to(torch.float32).div_(UINT8_SCALE)
    return stored


@dataclass
class DeviceImages:
    """Images [n, C, H, W] on one device, uint8 where exact (see the module docstring)."""

    stored: Tensor

    @classmethod
    def of(cls, x: Tensor, device: torch.device | str) -> DeviceImages:
        return cls(as_uint8_if_exact(x).to(device))

    def __len__(self) -> int:
        return int(self.stored.shape[0])

    @property
    def device(self) -> torch.device:
        return self.stored.device

    @property
    def shape(self) -> torch.Size:
        return self.stored.shape

    def take(self, idx: Tensor) -> Tensor:
        """float32 images at `idx` (an index tensor on any device; on this one nothing waits on the host)."""
        return to_float(self.stored[idx.to(self.stored.device)])

    def all(self) -> Tensor:
        """Every image as float32 (read-only use: a float store is returned as is, not copied)."""
        return to_float(self.stored)

    def nbytes(self) -> int:
        return self.stored.numel() * self.stored.element_size()
