"""Attack options: what each attack accepts, its cheap default, its paper value, and the checks.

Why one table: `cfg.attacks` is user input (JSON on the CLI, YAML in a sweep), so every option an attack reads is
declared here once with its demo default and its paper value. `{"preset": "paper"}` on an attack swaps in the
paper column; explicit keys still win, e.g. `{"preset": "paper", "images": 200}`.

Eps lists: `eps` (an explicit list) or `eps_max` + `num_eps` (evenly spaced, 0 included). Left empty, the range
comes from the task (REFERENCE.md, "Evaluation"): ten values over the dataset's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError

# Upper ends of the eps ranges per task family (REFERENCE.md): noise (gaussian, uniform), salt_pepper, fgsm.
EPS_RANGES: dict[str, dict[str, float]] = {
    "mnist_like": {"gaussian": 0.5, "uniform": 0.5, "salt_pepper": 0.3, "fgsm_transfer": 0.5},
    "CIFAR10": {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.02},
    "CIFAR100": {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.005},
}
NUM_EPS = 10

# imagecorruptions names of the 15 CIFAR-10-C corruptions (Hendrycks & Dietterich 2019), in the benchmark's order.
COMMON_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                      "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                      "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # the benchmark's validation four
DEMO_CORRUPTIONS = ["gaussian_noise", "impulse_noise", "defocus_blur", "pixelate", "fog", "contrast"]


@dataclass(frozen=True)
class Option:
    """One option: demo default, paper value, and the kind of value it must be (see `_check_value`)."""

    default: Any
    paper: Any
    kind: str
    help: str


def _eps_options() -> dict[str, Option]:
    return {
        "eps": Option(None, None, "eps_list", "explicit eps list (null: the task's range)"),
        "eps_max": Option(None, None, "nonneg_or_none", "top of the eps range (null: the task's value)"),
        "num_eps": Option(NUM_EPS, NUM_EPS, "count", "how many evenly spaced eps in [0, eps_max]"),
        "images": Option(None, None, "count_or_all", "test images used (null: all)"),
        "batch_size": Option(500, 500, "count", "images per forward pass"),
    }


def _noise_options() -> dict[str, Option]:
    return {**_eps_options(), "repeats": Option(1, 1, "count", "independent noise draws per eps")}


OPTIONS: dict[str, dict[str, Option]] = {
    "gaussian": _noise_options(),
    "uniform": _noise_options(),
    "salt_pepper": _noise_options(),
    "fgsm_transfer": _eps_options(),
    "boundary": {
        "images": Option(64, 1000, "count", "correctly classified test images attacked"),
        "repeats": Option(1, 5, "count", "independent runs; each gives one score row"),
        "steps": Option(300, 25000, "count", "Boundary Attack steps (25000 = foolbox default)"),
        "batch_size": Option(64, 100, "count", "images attacked together"),
        "spectrum": Option(True, True, "bool", "write the Fourier radial profile of the perturbations"),
    },
    "minimal_l2": {
        "images": Option(16, 1000, "count", "correctly classified test images attacked"),
        "method": Option("brendel_bethge", "brendel_bethge", "l2_method", "brendel_bethge | fmn"),
        "steps": Option(100, 1000, "count", "attack steps"),
        "lrs": Option(None, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "pos_list_or_none",
                      "step sizes searched: Brendel-Bethge lr, FMN max_stepsize (null: the method's default)"),
        "repeats": Option(1, 5, "count", "runs per step size; the smallest distance per image counts"),
        "batch_size": Option(64, 100, "count", "images attacked together"),
    },
    "minimal_linf": {
        "images": Option(16, 1000, "count", "correctly classified test images attacked"),
        "rel_stepsizes": Option([0.1, 0.3], [0.01, 0.03, 0.1, 0.3, 1.0], "pos_list", "PGD step / eps searched"),
        "pgd_steps": Option([20], [10, 30, 50, 100, 200], "count_list", "PGD iteration counts searched"),
        "search_steps": Option(8, 10, "count", "bisection steps over eps per image"),
        "eps_max": Option(1.0, 1.0, "pos", "largest L-inf eps tried (images not fooled there count as failed)"),
        "repeats": Option(1, 5, "count", "random starts per setting"),
        "batch_size": Option(64, 100, "count", "images attacked together"),
    },
    "corruptions": {
        "names": Option(DEMO_CORRUPTIONS, list(COMMON_CORRUPTIONS), "corruption_names", "corruptions to run"),
        "severities": Option([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], "severities", "severities 1..5"),
        "images": Option(100, None, "count_or_all", "test images corrupted (null: all)"),
        "folder": Option(None, None, "path_or_none", "CIFAR-10-C / CIFAR-100-C folder (null: generate)"),
        "batch_size": Option(500, 500, "count", "images per forward pass"),
    },
}
ATTACK_NAMES = tuple(OPTIONS)


def task_family(task: str) -> str:
    """MNIST, FashionMNIST, digits and IDX folders share the MNIST ranges; CIFAR sets have their own."""
    return task if task in ("CIFAR10", "CIFAR100") else "mnist_like"


def eps_list(attack: str, opts: dict[str, Any], task: str) -> list[float]:
    """The eps values an eps-curve attack runs, from explicit `eps`, else `eps_max`/`num_eps`, else the task."""
    if opts.get("eps") is not None:
        return [float(e) for e in opts["eps"]]
    top = opts.get("eps_max")
    if top is None:
        top = EPS_RANGES[task_family(task)][attack]
    n = int(opts["num_eps"])
    return [top * i / (n - 1) for i in range(n)] if n > 1 else [float(top)]


def resolve(name: str, raw: Any) -> dict[str, Any]:
    """Defaults (or paper values) overlaid with the user's options; raises ConfigError on unknown/bad values."""
    field = f"attacks.{name}"
    if name not in OPTIONS:
        raise ConfigError(field, f"unknown attack {name!r}; use one of {', '.join(ATTACK_NAMES)}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(field, f"options must be a mapping such as {{}} or {{\"preset\": \"paper\"}}, got {raw!r}")
    raw = dict(raw)
    preset = raw.pop("preset", "demo")
    if preset not in ("demo", "paper"):
        raise ConfigError(f"{field}.preset", f"is {preset!r}; use \"demo\" (cheap defaults) or \"paper\"")
    spec = OPTIONS[name]
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", f"unknown option; {name} accepts {', '.join(sorted(spec))}, "
                                                    "preset")
    resolved = {key: (opt.paper if preset == "paper" else opt.default) for key, opt in spec.items()}
    resolved.update(raw)
    for key, opt in spec.items():
        resolved[key] = _check_value(f"{field}.{key}", opt.kind, resolved[key])
    return resolved


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_value(field: str, kind: str, value: Any) -> Any:
    """Return the value (lists copied) or raise ConfigError with the field and the fix."""
    if kind == "count":
        _require(_is_count(value), field, f"is {value!r}; must be a whole number >= 1")
    elif kind == "count_or_all":
        _require(value is None or _is_count(value), field, f"is {value!r}; must be >= 1, or null for all")
    elif kind == "pos":
        _require(_is_number(value) and value > 0, field, f"is {value!r}; must be a number > 0")
    elif kind == "nonneg_or_none":
        _require(value is None or (_is_number(value) and value >= 0), field,
                 f"is {value!r}; eps must be a number >= 0 (or null for the task's range)")
    elif kind == "bool":
        _require(isinstance(value, bool), field, f"is {value!r}; must be true or false")
    elif kind == "eps_list":
        if value is None:
            return None
        _require(isinstance(value, (list, tuple)) and len(value) > 0, field, "must be a non-empty list of eps")
        for eps in value:
            _require(_is_number(eps) and eps >= 0, field, f"contains {eps!r}; every eps must be a number >= 0")
        return [float(e) for e in value]
    elif kind in ("pos_list", "pos_list_or_none"):
        if value is None and kind == "pos_list_or_none":
            return None
        _require(isinstance(value, (list, tuple)) and len(value) > 0, field, "must be a non-empty list")
        for v in value:
            _require(_is_number(v) and v > 0, field, f"contains {v!r}; values must be > 0")
        return [float(v) for v in value]
    elif kind == "count_list":
        _require(isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_count(v) for v in value), field,
                 f"is {value!r}; must be a non-empty list of whole numbers >= 1")
        return list(value)
    elif kind == "severities":
        _require(isinstance(value, (list, tuple)) and len(value) > 0
                 and all(_is_count(v) and v <= 5 for v in value), field,
                 f"is {value!r}; must be a non-empty list of severities from 1 to 5")
        return list(value)
    elif kind == "corruption_names":
        known = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS
        _require(isinstance(value, (list, tuple)) and len(value) > 0, field, "must be a non-empty list of names")
        for name in value:
            _require(name in known, field, f"unknown corruption {name!r}; use some of {', '.join(known)}")
        return list(value)
    elif kind == "l2_method":
        _require(value in ("brendel_bethge", "fmn"), field, f"is {value!r}; use brendel_bethge or fmn")
    elif kind == "path_or_none":
        _require(value is None or (isinstance(value, str) and value != ""), field,
                 f"is {value!r}; must be a folder path or null")
    else:  # pragma: no cover - a typo in OPTIONS
        raise AssertionError(f"unknown option kind {kind}")
    return value


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)
