"""What the target side (registry, builders) reads of a trial's config: plain fields, named once here.

The target code takes any object with these fields (a TrialConfig has them all) instead of importing TrialConfig,
so the registries sit below the config that asks them: no import cycle, not even a type-only one
(tests/test_layers.py).
"""

from __future__ import annotations

from typing import Protocol


class TargetFields(Protocol):
    """A trial's target fields, as pixelreg_core.config.TrialConfig names them."""

    target: str
    range: str
    th: float
    th2: float | None
    matrix: str | None
    matrix_images: str | None
    reg_data: str
    seed: int
    exact_targets: bool
    pair_draw: str
    vgg_weights: str | None
    grayscale: bool
    gray: str
