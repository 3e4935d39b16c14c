"""An attack's options: what it accepts (`Option`: its cheap default, its paper value, its kind) and the one
checker of user-given values (`resolve_options`).

Why declared options: `cfg.attacks` is user input (JSON on the CLI, YAML in a sweep), so every option an attack
reads is declared once, in its attack's record (`Attack.options`, next to the attack's code), with its demo default
and its paper value. `{"preset": "paper"}` on an attack swaps in the paper column; explicit keys still win, e.g.
`{"preset": "paper", "images": 200}`.

Eps lists: `eps` (an explicit list) or `eps_max` + `num_eps` (evenly spaced, 0 included). Left empty, the top of
the range comes from the task's record in pixelreg_core.data.registry (`Dataset.eps_top`: the papers' distortion D
where the record gives one for the attack, else the record's `eps_max`); an attack may override that rule with its
own (`Attack.eps_max`, e.g. salt-and-pepper's cap). base.eps_list turns them into the eps axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pixelreg_core.errors import ConfigError

NUM_EPS = 10


@dataclass(frozen=True)
class Option:
    """One option: demo default, paper value, and the kind of value it must be (see `_check_value`)."""

    default: Any
    paper: Any
    kind: str
    help: str
    choices: tuple[str, ...] = ()  # kinds "choice" and "names": the allowed values


def eps_options() -> dict[str, Option]:
    """Options of an eps-curve attack (the noises, transferred FGSM)."""
    return {
        "eps": Option(None, None, "eps_list", "explicit eps list (null: the task's range)"),
        "eps_max": Option(None, None, "nonneg_or_none", "top of the eps range (null: the task's value)"),
        "num_eps": Option(NUM_EPS, NUM_EPS, "count", "how many evenly spaced eps in [0, eps_max]"),
        "images": Option(None, None, "count_or_all", "test images used (null: all)"),
        "batch_size": Option(500, 500, "count", "images per forward pass"),
    }


def resolve_options(name: str, spec: dict[str, Option], raw: Any,
                    presets: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Defaults (or paper values, or a named extra preset over the paper values) overlaid with the user's options;
    raises ConfigError on unknown/bad values."""
    presets = presets or {}
    field = f"attacks.{name}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(field, f"options must be a mapping such as {{}} or {{\"preset\": \"paper\"}}, got {raw!r}")
    raw = dict(raw)
    preset = raw.pop("preset", "demo")
    if preset not in ("demo", "paper", *presets):
        allowed = "".join(f", \"{p}\"" for p in presets)
        raise ConfigError(f"{field}.preset", f"is {preset!r}; use \"demo\" (cheap defaults), \"paper\"{allowed}")
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", f"unknown option; {name} accepts {', '.join(sorted(spec))}, "
                                                    "preset")
    resolved = {key: (opt.default if preset == "demo" else opt.paper) for key, opt in spec.items()}
    resolved.update(presets.get(preset, {}))
    resolved.update(raw)
    for key, opt in spec.items():
        resolved[key] = _check_value(f"{field}.{key}", opt, resolved[key])
    return resolved


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_value(field: str, option: Option, value: Any) -> Any:
    """Return the value (lists copied) or raise ConfigError with the field and the fix."""
    kind = option.kind
    if kind == "count":
        _require(_is_count(value), field, f"is {value!r}; must be a whole number >= 1")
    elif kind == "seed":
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, field,
                 f"is {value!r}; must be a whole number >= 0")
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
    elif kind == "names":
        _require(isinstance(value, (list, tuple)) and len(value) > 0, field, "must be a non-empty list of names")
        for name in value:
            _require(name in option.choices, field, f"unknown name {name!r}; use some of {', '.join(option.choices)}")
        return list(value)
    elif kind == "choice":
        _require(value in option.choices, field, f"is {value!r}; use {' or '.join(option.choices)}")
    elif kind == "path_or_none":
        _require(value is None or (isinstance(value, str) and value != ""), field,
                 f"is {value!r}; must be a folder path or null")
    else:  # pragma: no cover - a typo in an attack's options
        raise AssertionError(f"unknown option kind {kind}")
    return value


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)
