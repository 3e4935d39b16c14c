"""The target registry: one record per `target` kind, asked by the config checks, the data loader and the trainer.

A record says how to build the target (`build(cfg, reg_x, reg_y)`, the builders are in pixelreg_core.targets.builders),
whether it brings its own regularization images (then reg_data is not loaded) and which `range` values it allows.
Torch-free (the builders are imported when a target is built), so the config and the sweep spec can check a
target without importing torch. Adding a target kind: a builder in targets/builders.py and one record in `KINDS`
below. The records take any object with the fields of pixelreg_core.targets.fields (a TrialConfig), never
TrialConfig itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pixelreg_core.errors import ConfigError
from pixelreg_core.targets.fields import TargetFields
from pixelreg_core.targets.ranges import RANGES, check_thresholds


@dataclass(frozen=True)
class TargetKind:
    """`own_images(cfg)`: the target's N images replace reg_data's. `ranges(cfg)`: the `range` values it allows."""

    name: str
    help: str
    build: Callable[[TargetFields, Any, Any], Any]
    own_images: Callable[[TargetFields], bool] = lambda cfg: False
    ranges: Callable[[TargetFields], tuple[str, ...]] = lambda cfg: RANGES


def _embedding(cfg: TargetFields, reg_x: Any, reg_y: Any) -> Any:
    from pixelreg_core.targets.builders import embedding_target

    return embedding_target(cfg, reg_x)


def _matrix(cfg: TargetFields, reg_x: Any, reg_y: Any) -> Any:
    from pixelreg_core.targets.builders import matrix_target

    return matrix_target(cfg, getattr(reg_x, "device", None))  # the trial's device (trial.py puts reg_x there)


def _shuffle(cfg: TargetFields, reg_x: Any, reg_y: Any) -> Any:
    return _matrix(cfg, reg_x, reg_y) if cfg.matrix is not None else _embedding(cfg, reg_x, reg_y)


def _categorical(cfg: TargetFields, reg_x: Any, reg_y: Any) -> Any:
    from pixelreg_core.targets.builders import categorical_target

    return categorical_target(cfg, reg_y)


EVERY_PAIR = ("all",)  # kinds that regularize every pair
KINDS: dict[str, TargetKind] = {k.name: k for k in (
    TargetKind("threshold", "S^Th of the pixel similarities", _embedding),
    TargetKind("pixel", "raw pixel similarities", _embedding),
    TargetKind("matrix", "your N x N similarity over its N images", _matrix, own_images=lambda cfg: True,
               ranges=lambda cfg: EVERY_PAIR),
    TargetKind("shuffle", "permuted control (of the matrix when one is given)", _shuffle,
               own_images=lambda cfg: cfg.matrix is not None,
               ranges=lambda cfg: EVERY_PAIR if cfg.matrix is not None else RANGES),
    TargetKind("vgg", "S^Th of VGG19 conv3_1 features", _embedding),
    TargetKind("categorical", "1 for the same class, 0 otherwise", _categorical, ranges=lambda cfg: EVERY_PAIR),
)}
TARGETS = tuple(KINDS)


def get(name: str) -> TargetKind:
    if name not in KINDS:
        raise ConfigError("target", f"is {name!r}; use one of {', '.join(TARGETS)}")
    return KINDS[name]


def check(cfg: TargetFields) -> TargetKind:
    """Every check of a regularized trial's target fields that touches no file; returns the kind."""
    kind = get(cfg.target)
    check_thresholds(cfg.range, cfg.th, cfg.th2)
    if cfg.range not in kind.ranges(cfg):
        raise ConfigError("range", f"is {cfg.range!r}, but target {kind.name} regularizes every pair; set range: all "
                                   "(ranges apply to threshold, pixel, vgg and shuffle without a matrix)")
    if kind.name == "matrix" and cfg.matrix is None:
        raise ConfigError("matrix", "target matrix needs a .npy N x N similarity file; set matrix: PATH")
    if kind.own_images(cfg) and cfg.matrix_images is None:
        raise ConfigError("matrix_images", "target matrix needs its N images; set matrix_images: PATH.npy")
    return kind


def build_target(cfg: TargetFields, reg_x: Any, reg_y: Any = None) -> Any:
    """The target of cfg.target over the regularization set, prepared once; `.sample(k, generator)` per step.

    For a kind with its own images (matrix, shuffle with a matrix) the returned object's `.images` replace reg_x as
    the regularization set. Raises ConfigError for anything the user must fix, before any training.
    """
    return check(cfg).build(cfg, reg_x, reg_y)
