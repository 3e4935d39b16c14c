"""Datasets to tensors: every dataset a trial can name becomes float32 NCHW tensors in [0, 1], labels int64.

Why tensors end to end: a trial touches each image thousands of times, so a per-sample PIL pipeline would dominate
the run; whole-split tensors can also be moved to the GPU once (`DataBundle.to`). The readers cache decoded splits
per process as compact uint8 (pixelreg_core.data.loaders); `load_split` here still returns fresh float tensors on
every call, so a trainer may modify them in place without poisoning that cache.

Dataset names (the `task` and `reg_data` fields) and every fact about them (classes, input scaling, augmentation)
come from the registry, `pixelreg_core.data.registry`; the readers of each dataset's files are in
`pixelreg_core.data.loaders`. This module turns them into one trial's `DataBundle`.

Grayscale convention (`cfg.gray`): RGB -> gray by the luma weights (0.299, 0.587, 0.114), torchvision's
Grayscale() as in the authors' code, or `mean` (the channel average). A gray model's regularization images are
converted the same way, so its targets are computed from exactly the gray images it sees; an RGB model's pixel
similarity averages the channels (`targets.pixel_embeddings`, authors' code). Gray -> RGB repeats the channel.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from pixelreg_core.config import TrialConfig
from pixelreg_core.data import registry as datasets
from pixelreg_core.data.loaders import convert_channels, normalise_path
from pixelreg_core.errors import ConfigError

SPLITS = ("train", "test")


@dataclass
class DataBundle:
    """Everything a trial reads from disk, as tensors. Images float32 [n, C, H, W] in [0, 1]; labels int64.

    The model applies `(x - input_shift) * input_scale` itself, so attacks and noise work in [0, 1] pixel space.
    `reg_y` is -1 where the regularization images have no labels (image folders); baselines get an empty reg set.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    reg_x: torch.Tensor
    reg_y: torch.Tensor
    num_classes: int
    input_scale: float = 1.0
    input_shift: float = 0.0
    augment: bool = False
    # Where train_x, test_x and reg_x came from: {"train": (load_split args, row indices), "test"/"reg": (args,
    # first n rows)}, so that placement.py can hold each loaded split on a GPU once per process and index it there.
    origin: dict[str, tuple] | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    def to(self, device: torch.device | str) -> DataBundle:
        """The same bundle with every tensor on `device` (hold a whole dataset on the GPU once per trial)."""
        moved = {f.name: getattr(self, f.name).to(device)
                 for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)


# --------------------------------------------------------------------------------------------------------------
# Loading one split
# --------------------------------------------------------------------------------------------------------------
def load_split(name: str, root: str | os.PathLike, split: str, grayscale: bool, download: bool, *,
               field_name: str = "task", limit: int | None = None, gray: str = "luma"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of one dataset as (x float32 [n, C, H, W] in [0, 1], y int64); C = 1 if grayscale else 3.

    `limit` decodes only the first `limit` images of an image folder (a folder may hold a million images and a
    trial needs the first N); other datasets are small enough to load whole and are cut by the caller.
    Raises ConfigError naming `field_name` (or data_root) for unknown names and missing files.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    record = datasets.get(name, field_name)
    x, y = record.load(name, normalise_path(root), split, download, limit=limit, field_name=field_name)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return convert_channels(to_unit_float(x), 1 if grayscale else 3, gray), y.clone()


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float input is copied, so the result never aliases a cached tensor."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32, copy=True)


# --------------------------------------------------------------------------------------------------------------
# One trial's data
# --------------------------------------------------------------------------------------------------------------
def split_train_valid(n: int, valid_fraction: float, train_images: int | None, seed: int,
                      valid_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, valid) index sets of a train split of n images, each sorted.

    The validation set is `valid_images` images when that is set; otherwise `valid_fraction` of the images in use
    (at least 1), where "in use" is the whole split, or just enough images for `train_images` training images when
    that cap is set, so a 500-image demo holds out 5 images, not 1% of all 60,000.
    """
    if n < 2:
        raise ConfigError("task", f"the train split has {n} image(s); a validation holdout needs at least 2")
    if valid_images is not None:
        if valid_images >= n:
            raise ConfigError("valid_images", f"is {valid_images} but the train split has {n} images; hold out "
                                              f"at most {n - 1}")
        n_valid = valid_images
    else:
        used = n if train_images is None else min(n, math.ceil(train_images / (1.0 - valid_fraction)))
        n_valid = min(max(1, round(valid_fraction * used)), used - 1)
    n_train = n - n_valid if train_images is None else min(train_images, n - n_valid)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid = order[:n_valid].sort().values
    train = order[n_valid:n_valid + n_train].sort().values
    return train, valid


def prepare_data(cfg: TrialConfig) -> DataBundle:
    """Load everything one trial needs.

    Train split minus a seeded validation holdout (cfg.valid_images, else cfg.valid_fraction and at least 1 image),
    optionally capped at cfg.train_images; the test split capped at its first cfg.test_images images (the same for
    every seed, so seeds are compared on the same images); the regularization set is the first cfg.reg_images
    images of cfg.reg_data's train split (ref. code), converted to the task's channel count, and empty for a
    baseline or a matrix target (its images come with the matrix), augmented once where `reg_augment` says so
    (`augment_regularization`). CIFAR tasks get the reference code's input scaling 5 * (x - 0.5) and training
    augmentation.
    """
    channels = 1 if cfg.grayscale else 3
    load = functools.partial(load_split, root=cfg.data_root, grayscale=cfg.grayscale, download=cfg.download,
                             gray=cfg.gray)
    task = datasets.get(cfg.task, "task", allow_unlabelled=False)
    # A matrix target brings its own N images (targets.load_matrix): reg_data is not loaded then, so its size
    # cannot refuse reg_images.
    regularized = cfg.loads_reg_data
    if regularized:
        datasets.get(cfg.reg_data, "reg_data")  # fail on a bad name before loading anything
    full_x, full_y = load(cfg.task, split="train", field_name="task")
    test_x, test_y = load(cfg.task, split="test", field_name="task")
    train_idx, valid_idx = split_train_valid(len(full_y), cfg.valid_fraction, cfg.train_images, cfg.seed,
                                             cfg.valid_images)
    if cfg.test_images is not None:
        test_x, test_y = test_x[:cfg.test_images].clone(), test_y[:cfg.test_images].clone()

    if regularized:
        reg_x, reg_y = load(cfg.reg_data, split="train", field_name="reg_data", limit=cfg.reg_images)
        if len(reg_y) < cfg.reg_images:
            raise ConfigError("reg_images", f"is {cfg.reg_images} but {cfg.reg_data} has only {len(reg_y)} train "
                                            f"images; set reg_images to at most {len(reg_y)}")
        reg_x = augment_regularization(convert_channels(reg_x, channels, cfg.gray), cfg)
    else:
        reg_x = full_x.new_zeros((0, *full_x.shape[1:]))
        reg_y = torch.zeros(0, dtype=torch.int64)

    source = (cfg.data_root, cfg.grayscale, cfg.download)
    origin = {"train": ((cfg.task, "train", "task", None, *source), train_idx),
              "test": ((cfg.task, "test", "task", None, *source), len(test_y))}
    if regularized:
        origin["reg"] = ((cfg.reg_data, "train", "reg_data", cfg.reg_images, *source), cfg.reg_images)
    return DataBundle(
        train_x=full_x[train_idx], train_y=full_y[train_idx],
        valid_x=full_x[valid_idx], valid_y=full_y[valid_idx],
        test_x=test_x, test_y=test_y,
        reg_x=reg_x, reg_y=reg_y,
        # IDX folders may hold any label set: the largest label seen + 1
        num_classes=task.num_classes or int(max(int(full_y.max()), int(test_y.max()))) + 1,
        input_scale=task.input_scale, input_shift=task.input_shift, augment=task.augment, origin=origin,
    )


# --------------------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------------------
def reg_augment_seed(seed: int) -> int:
    """The seed of a trial's one regularization-set augmentation: fixed by the trial seed (the authors' code draws
    it from the seeded global RNG when the set is loaded), separate from every other stream of the trial."""
    return int(hashlib.sha256(f"{seed}/reg_augment".encode()).hexdigest()[:15], 16)


def augment_regularization(reg_x: torch.Tensor, cfg: TrialConfig) -> torch.Tensor:
    """The authors' load-time augmentation of the regularization set, applied once per image, so S_pixel is
    computed on the augmented copies: CIFAR a random 32 crop (4 px reflect padding) and a horizontal flip, an
    ImageNet-style folder a horizontal flip (`Dataset.reg_augment_padding`). `cfg.reg_augment` None follows the
    reg_data's record (`Dataset.reg_augment`); true / false force it. The same images for the same seed."""
    record = datasets.get(cfg.reg_data, "reg_data")
    on = record.reg_augment if cfg.reg_augment is None else cfg.reg_augment
    if not on or len(reg_x) == 0:
        return reg_x
    generator = torch.Generator().manual_seed(reg_augment_seed(cfg.seed))
    return augment_batch(reg_x, generator, padding=record.reg_augment_padding)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, *, padding: int = 4) -> torch.Tensor:
    """CIFAR training augmentation as one batched gather: random crop back to H x W from the image reflect-padded
    by `padding` pixels, and a horizontal flip with probability 1/2, independently per image.

    Random numbers are drawn on the generator's device and moved to x's, so a CPU generator drives GPU batches
    and the result is the same on every device. `padding` 0: flips only.
    """
    n, channels, height, width = x.shape
    rand_device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rand_device).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rand_device).to(x.device)
    flip = (torch.rand(n, generator=generator, device=rand_device) < 0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding), mode="reflect")
    rows = top[:, None] + torch.arange(height, device=x.device)  # [n, H]
    cols = left[:, None] + torch.arange(width, device=x.device)  # [n, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip is the crop read right to left
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
