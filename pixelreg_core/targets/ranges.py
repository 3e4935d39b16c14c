"""Which pairs a regularized trial regularizes (`range`) and the bounds of its thresholds: the one place for both.

Torch-free, so the config, the sweep spec and the pair sampler all ask here (the bounds once disagreed: the config
refused th = 0 while the sampler took it).
"""

from __future__ import annotations

from pixelreg_core.errors import ConfigError

# all: every pair; high |S| > th; low |S| <= th; positive S > th or |S| <= th; negative S < -th or |S| <= th;
# double |S| > th or |S| < th2.
RANGES = ("all", "high", "low", "positive", "negative", "double")
# Th and th2 lie strictly between these: at 0 or 1 a range would hold every pair or none.
TH_BOUNDS = (0.0, 1.0)


def inside_th_bounds(value: float) -> bool:
    """The one rule for a threshold's bounds: the config, the spec's grid, th2 and the search range all ask here."""
    return TH_BOUNDS[0] < value < TH_BOUNDS[1]


def check_thresholds(range: str, th: float, th2: float | None) -> None:
    """Raise ConfigError unless `range` is known, 0 < th < 1, and (range double) 0 < th2 < th."""
    if range not in RANGES:
        raise ConfigError("range", f"is {range!r}; use one of {', '.join(RANGES)}")
    if not inside_th_bounds(th):
        raise ConfigError("th", f"is {th}; Th must lie in (0, 1), e.g. 0.2")
    if range == "double" and (th2 is None or not inside_th_bounds(th2) or not th2 < th):
        raise ConfigError("th2", f"range double needs th2 with 0 < th2 < th ({th}); got {th2}")
