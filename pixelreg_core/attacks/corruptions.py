"""Common corruptions (Hendrycks & Dietterich 2019): accuracy per corruption x severity, grouped by frequency.

Two sources:
- A CIFAR-10-C / CIFAR-100-C folder (`folder` option): `<name>.npy` uint8 of shape (5 * N, H, W, 3), severity 1's
  N images first, and `labels.npy` of shape (5 * N,). For a grayscale model RGB becomes gray by the trial's
  `gray` rule, with the data code's own conversion (loaders.convert_channels), so corrupted and clean test images
  are converted alike.
- Otherwise the corruptions are generated for any dataset with the `imagecorruptions` package (PyPI
  imagecorruptions-imaug); none is written here. Its `corrupt()` wrapper refuses images under 32 px, but the
  corruption functions themselves run on 8x8 digits and 28x28 MNIST when given HxWx3 uint8 (checked for all 19
  with imagecorruptions-imaug 1.1.5), so images go in as gray repeated to three channels, as `corrupt()` does,
  and come back averaged to gray (the channel mean undoes the repetition). A corruption that still fails on some
  image size is skipped, with a warning and a row of metric "skipped" (value NaN, `failed` = the images), never
  a crash. The library draws from numpy's global RNG: it is seeded per (corruption, severity) and restored
  afterwards; glass_blur and impulse_noise get a per-image seed.

Frequency groups: the table below follows the Fourier analysis of the CIFAR-10-C corruptions (Yin et al. 2019,
"A Fourier perspective on model robustness"), used by Li et al. 2023 to group corruptions: noise, pixelate and
JPEG perturb mostly high frequencies; blurs and elastic warps mostly the middle band; weather and global
photometric changes mostly low frequencies. The four validation corruptions are placed by the same reasoning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelreg_core.attacks.accuracy import accuracy
from pixelreg_core.attacks.base import Attack, AttackContext, Measured, Point, Selected
from pixelreg_core.attacks.options import Option
from pixelreg_core.attacks.seeds import derive_seed, seeded_subset
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data.loaders import convert_channels

log = logging.getLogger(__name__)

# imagecorruptions names of the 15 CIFAR-10-C corruptions (Hendrycks & Dietterich 2019), in the benchmark's order.
COMMON_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                      "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                      "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # the benchmark's validation four
DEMO_CORRUPTIONS = ["gaussian_noise", "impulse_noise", "defocus_blur", "pixelate", "fog", "contrast"]
FREQUENCY_GROUP = {
    "gaussian_noise": "high", "shot_noise": "high", "impulse_noise": "high", "speckle_noise": "high",
    "pixelate": "high", "jpeg_compression": "high",
    "defocus_blur": "medium", "glass_blur": "medium", "motion_blur": "medium", "zoom_blur": "medium",
    "elastic_transform": "medium", "gaussian_blur": "medium", "spatter": "medium",
    "snow": "low", "frost": "low", "fog": "low", "brightness": "low", "contrast": "low", "saturate": "low",
}
SEEDED_BY_ARGUMENT = ("glass_blur", "impulse_noise")  # take a seed; the rest use numpy's global RNG
FOLDER_FIELD = "attacks.corruptions.folder"
# Generating corruptions needs imagecorruptions-imaug (448 MB with opencv, numba, scikit-image): an optional extra of
# pyproject.toml, so the main install stays lean; a CIFAR-10-C folder needs nothing beyond numpy.
LIBRARY, EXTRA = "imagecorruptions", "corruptions"


# ----------------------------------------------------------------------------------------------------------------
# Folder (CIFAR-10-C layout)
# ----------------------------------------------------------------------------------------------------------------
def check_folder(folder: str | os.PathLike, names: list[str]) -> int:
    """Check the CIFAR-10-C layout from the .npy headers only; returns N (images per severity)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(FOLDER_FIELD, f"{folder} is not a folder; give the CIFAR-10-C folder or null to generate")
    labels = _open(root / "labels.npy", f"{folder} has no labels.npy; expected <name>.npy files and labels.npy "
                                        "(the CIFAR-10-C layout)")
    if labels.ndim != 1 or len(labels) % 5 != 0:
        raise ConfigError(FOLDER_FIELD, f"labels.npy has shape {labels.shape}; expected (5 * N,), e.g. (50000,)")
    n = len(labels) // 5
    for name in names:
        arr = _open(root / f"{name}.npy", f"{folder} has no {name}.npy; add it or drop {name} from names")
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != 5 * n or arr.shape[3] != 3:
            raise ConfigError(FOLDER_FIELD, f"{name}.npy is {arr.dtype} {arr.shape}; expected uint8 "
                                            f"({5 * n}, H, W, 3) like CIFAR-10-C's (50000, 32, 32, 3)")
    return n


def _open(path: Path, missing: str) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(FOLDER_FIELD, missing)
    try:
        return np.load(path, mmap_mode="r")
    except Exception as exc:
        raise ConfigError(FOLDER_FIELD, f"{path} is not a readable .npy file ({exc})") from exc


def folder_images(folder: str | os.PathLike, name: str, severity: int, n: int | None, channels: int,
                  gray: str = "luma") -> tuple[torch.Tensor, torch.Tensor]:
    """(x [n, C, H, W] float in [0, 1], y) of one corruption and severity from the folder; RGB -> gray by `gray`
    (the trial's rule for its clean images, `cfg.gray`)."""
    per_severity = check_folder(folder, [name])
    count = per_severity if n is None else min(n, per_severity)
    start = (severity - 1) * per_severity
    images = np.load(Path(folder) / f"{name}.npy", mmap_mode="r")[start:start + count]
    labels = np.load(Path(folder) / "labels.npy", mmap_mode="r")[start:start + count]
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255.0
    return convert_channels(x, channels, gray), torch.from_numpy(np.array(labels, dtype=np.int64))


# ----------------------------------------------------------------------------------------------------------------
# Generated with imagecorruptions
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt_images(x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """Corrupted copies of x ([n, C, H, W] in [0, 1]), same shape, values in [0, 1]. Raises if the library fails."""
    from imagecorruptions import corruption_dict
    from PIL import Image

    function = corruption_dict[name]
    rgb = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    out = np.empty_like(rgb)
    with _numpy_seed(derive_seed(seed, "corruption", name, severity)):
        for i, image in enumerate(rgb):
            kwargs = {"seed": derive_seed(seed, name, severity, i) % 2**31} if name in SEEDED_BY_ARGUMENT else {}
            corrupted = np.uint8(function(Image.fromarray(image), severity, **kwargs))  # as imagecorruptions.corrupt
            if corrupted.ndim == 2:
                corrupted = np.repeat(corrupted[..., None], 3, axis=-1)
            if corrupted.shape != image.shape:
                raise ValueError(f"returned shape {corrupted.shape} for an image of shape {image.shape}")
            out[i] = corrupted
    result = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0
    return result.mean(dim=1, keepdim=True) if x.shape[1] == 1 else result


# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corrupting(Selected):
    """The seeded subset, and what a folder's images must match: the test images' shape and the trial's gray rule."""

    shape: tuple[int, ...]
    gray: str


def select(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
           opts: dict[str, Any]) -> Corrupting:
    idx = seeded_subset(len(y_all), opts["images"], ctx.seed, "corruptions")
    return Corrupting(x_all[idx], y_all[idx], tuple(x_all.shape), ctx.cfg.gray)


def measure(model: nn.Module, selected: Corrupting, point: Point, opts: dict[str, Any]) -> Measured:
    """Accuracy on one corruption (the variant) at one severity (the eps column); group: its frequency band."""
    name, severity, x, y = point.variant, point.eps, selected.x, selected.y
    group = FREQUENCY_GROUP[name]
    if opts["folder"] is not None:
        xc, yc = folder_images(opts["folder"], name, severity, opts["images"], selected.shape[1], selected.gray)
        if xc.shape[1:] != selected.shape[1:]:
            raise ConfigError(FOLDER_FIELD, f"{name}.npy images are {tuple(xc.shape[2:])}, the test "
                                            f"images {tuple(selected.shape[2:])}; use the matching -C set")
    else:
        try:
            xc, yc = corrupt_images(x, name, severity, point.seed), y
        except Exception as exc:  # recorded, not fatal: some corruptions cannot run on some sizes
            log.warning("corruption %s severity %d skipped: %s: %s", name, severity, type(exc).__name__, exc)
            return Measured(float("nan"), 0, failed=len(y), group=group, metric="skipped")
    return Measured(accuracy(model, xc, yc, opts["batch_size"]), len(yc), group=group)


def check(opts: dict[str, Any], cfg: TrialConfig, check_source: bool) -> None:
    if opts["folder"] is not None:
        check_folder(opts["folder"], opts["names"])
    elif importlib.util.find_spec(LIBRARY) is None:  # found, not imported: the check stays cheap
        raise ConfigError("attacks.corruptions", f"generating corruptions needs the {LIBRARY} package, which is not "
                                                 f"installed; pip install -e '.[{EXTRA}]', or give folder: a "
                                                 "CIFAR-10-C style folder")


ATTACKS = [Attack("corruptions", "Corruptions", {
    "names": Option(DEMO_CORRUPTIONS, list(COMMON_CORRUPTIONS), "names", "corruptions to run",
                    choices=COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS),
    "severities": Option([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], "severities", "severities 1..5"),
    "images": Option(100, None, "count_or_all", "test images corrupted (null: all)"),
    "folder": Option(None, None, "path_or_none", "CIFAR-10-C / CIFAR-100-C folder (null: generate)"),
    "batch_size": Option(500, 500, "count", "images per forward pass"),
}, select, measure, variants=lambda opts: list(opts["names"]), eps_axis=lambda opts: list(opts["severities"]),
   repeat_axis=False, check=check, on_test_images=lambda opts: opts["folder"] is None, eps_name="severity")]
