"""A trial's images held on its device, compact, and indexed there: no DataLoader, no per-step host-to-device copy.

Images are float32 in [0, 1] everywhere else in the core. Most datasets are 8-bit at heart (MNIST, FashionMNIST,
CIFAR, IDX files, `folder:` images): their float values are exactly `u / 255` for a uint8 `u`, so they are stored
on the device as that uint8, a quarter of the memory, and turned back into float32 per batch by the same
arithmetic the loader used (`u.to(float32).div_(255.0)`). The round trip is checked, not assumed: a set whose
floats are not all exactly `u / 255` (scikit-learn's digits are k / 16; gray CIFAR is a luma-weighted sum of
three channels) stays float32. So a batch taken here is bit for bit the batch the float tensor would give, on
every device.

`DeviceImages.take(idx)` gathers and converts only the batch; the whole set is converted only for the small
validation and test sets that are evaluated whole.

Once per process: a split a trial loaded (`DataBundle.origin` says which) is kept on the device in a small
process-wide cache (`resident_split`), so a Ray worker that runs many trials of one dataset copies it to the GPU
once; each trial then holds only its row indices. Before a cached split stands in for a bundle's tensor, a spread
sample of its images is compared with the bundle's, so a bundle changed after loading falls back to its own
tensors.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

UINT8_SCALE = 255.0
CACHE_SPLITS = 6  # splits kept per process (train/test of a task + a reg set, for two devices or two tasks)
CHECK_IMAGES = 64  # images compared before a cached split stands in for a bundle's tensor
_RESIDENT: OrderedDict[tuple, Tensor] = OrderedDict()


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


def resident_split(load_args: tuple, device: torch.device) -> Tensor:
    """One whole split (`data.load_split` arguments) stored compactly on `device`, loaded once per process."""
    key = (*load_args, str(device))
    if key in _RESIDENT:
        _RESIDENT.move_to_end(key)
        return _RESIDENT[key]
    from pixelreg_core.data.bundle import (
        load_split,  # data imports nothing from here; deferred to keep the modules independent
    )

    name, split, field_name, limit, root, grayscale, download = load_args
    x, _ = load_split(name, root, split, grayscale, download, field_name=field_name, limit=limit)
    _RESIDENT[key] = as_uint8_if_exact(x).to(device)
    while len(_RESIDENT) > CACHE_SPLITS:
        _RESIDENT.popitem(last=False)
    return _RESIDENT[key]


def clear_cache() -> None:
    _RESIDENT.clear()


def images_for(origin: tuple | None, x: Tensor, device: torch.device) -> DeviceImages:
    """The bundle tensor `x` as DeviceImages: from the process cache when `origin` says where it came from and a
    sample of images agrees, else `x` itself placed on the device."""
    if origin is not None:
        load_args, rows = origin
        full = resident_split(load_args, device)
        images = (DeviceImages(full, rows.to(device)) if isinstance(rows, Tensor)
                  else DeviceImages(full[:rows]))
        if len(images) == len(x) and images.shape[1:] == x.shape[1:]:
            probe = torch.linspace(0, len(x) - 1, min(CHECK_IMAGES, len(x))).long()
            if torch.equal(images.take(probe.to(device)).cpu(), x[probe].cpu()):
                return images
    return DeviceImages.of(x, device)


@dataclass
class DeviceImages:
    """Images [n, C, H, W] on one device, uint8 where exact (see the module docstring); with `index`, the rows
    `index` of a cached split."""

    stored: Tensor
    index: Tensor | None = None

    @classmethod
    def of(cls, x: Tensor, device: torch.device | str) -> DeviceImages:
        return cls(as_uint8_if_exact(x).to(device))

    def __len__(self) -> int:
        return int(self.stored.shape[0] if self.index is None else self.index.shape[0])

    @property
    def device(self) -> torch.device:
        return self.stored.device

    @property
    def shape(self) -> torch.Size:
        return self.stored.shape

    def take(self, idx: Tensor) -> Tensor:
        """float32 images at `idx` (an index tensor on any device; on this one nothing waits on the host)."""
        idx = idx.to(self.stored.device)
        return to_float(self.stored[idx if self.index is None else self.index[idx]])

    def all(self) -> Tensor:
        """Every image as float32 (read-only use: a float store is returned as is, not copied)."""
        return to_float(self.stored if self.index is None else self.stored[self.index])

    def nbytes(self) -> int:
        """Bytes of the stored images (a cached split counts whole: it is shared by the trials of a process)."""
        return self.stored.numel() * self.stored.element_size()
