"""The sweep spec's fields below the models: which TrialConfig fields may appear where, their strict type check,
the one error type with its field path, and the normalisation of the `grid` and `attacks` sections.

Used by the schema's validators (orchestrator.spec.schema); normalising here, inside validation, is what makes
`SweepSpec.model_validate(spec.model_dump())` round-trip.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.targets.ranges import inside_th_bounds

# ---------------------------------------------------------------------------------------------------------------
# Which TrialConfig fields may appear where
# ---------------------------------------------------------------------------------------------------------------
TRIAL_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrialConfig)}
# Set by the spec's own sections (name, pairs, seeds, data_root, download, attacks) or by the expansion itself.
SPEC_OWNED = ("sweep", "role", "task", "reg_data", "seed", "data_root", "download", "attacks", "fgsm_source")
# Top-level regularizer fields; a grid may vary them too (a grid value wins over the top level).
TOP_LEVEL_TRIAL_FIELDS = ("target", "range", "th2")
GRID_FIELDS = tuple(n for n in TRIAL_FIELDS if n not in SPEC_OWNED + ("device", "num_threads", "pack"))
TRAIN_FIELDS = tuple(n for n in TRIAL_FIELDS if n not in SPEC_OWNED + TOP_LEVEL_TRIAL_FIELDS + ("th", "alpha"))

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")

_HINTS = typing.get_type_hints(TrialConfig)
_ADAPTERS = {name: TypeAdapter(_HINTS[name], config=ConfigDict(strict=True)) for name in TRIAL_FIELDS}


class SpecFieldError(Exception):
    """A spec mistake with its full field path. Deliberately not a ValueError: pydantic lets it through unchanged,
    so validators deep inside `grid` or `train` can name the exact item (`grid.th[2]`)."""

    def __init__(self, path: tuple[str | int, ...], message: str):
        super().__init__(f"{format_path(path)}: {message}")
        self.path = path
        self.message = message


def format_path(path: tuple[str | int, ...]) -> str:
    """('grid', 'th', 2) -> 'grid.th[2]'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(spec)"


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce_field(path: tuple[str | int, ...], name: str, value: Any) -> Any:
    """A trial field's value, type-checked strictly against TrialConfig's annotation (ints become floats where
    the field is a float, so `alpha: 4` and `alpha: 4.0` are the same trial)."""
    try:
        out = _ADAPTERS[name].validate_python(value)
    except ValidationError as exc:
        raise SpecFieldError(path, f"got {short(value)}; expected {_type_name(_HINTS[name])} "
                                   f"({exc.errors()[0]['msg'].replace('Input should be', 'should be')})") from None
    if isinstance(out, float) and not math.isfinite(out):  # here, before any range check: nan compares false
        raise SpecFieldError(path, f"{out} is not a finite number (YAML .nan or .inf); give a number")
    return out


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def config_error_message(exc: ConfigError) -> str:
    return str(exc)[len(exc.field) + 2:] if str(exc).startswith(f"{exc.field}: ") else str(exc)


# ---------------------------------------------------------------------------------------------------------------
# Grid and attacks normalisation (shared by load and model_validate, so model_dump() round-trips)
# ---------------------------------------------------------------------------------------------------------------
def normalise_grid(value: Any) -> dict[str, Any]:
    """`{field: [values...], ..., points: [{field: value, ...}, ...]}` with every value type-checked.

    The list fields form a cartesian product; `points` lists explicit combinations (e.g. exactly the two
    (th, alpha) settings the authors report) and is crossed with the list fields.
    """
    if not isinstance(value, dict):
        raise ValueError(f"got {short(value)}; use a mapping such as {{th: [0.2, 0.8], alpha: [4, 10]}}")
    if not value:
        raise ValueError("is empty; give at least alpha, e.g. {th: [0.2], alpha: [4, 10]}")
    out: dict[str, Any] = {}
    for name, values in value.items():
        if name == "points":
            continue
        if name not in GRID_FIELDS:
            raise SpecFieldError(("grid", str(name)), unknown_field_message(name, GRID_FIELDS, "grid", "points"))
        if not isinstance(values, list) or not values:
            raise SpecFieldError(("grid", name), f"got {short(values)}; use a non-empty list of values, "
                                                 f"e.g. {name}: [{_example(name)}]")
        out[name] = [_grid_value(("grid", name, i), name, v) for i, v in enumerate(values)]
        for i, v in enumerate(out[name]):
            if v in out[name][:i]:
                raise SpecFieldError(("grid", name, i), f"{short(v)} is listed twice; list each value once")
    if "points" in value:
        out["points"] = _grid_points(value["points"], axes=set(out))
    keys = set(out) | set(out.get("points", [{}])[0])
    if "alpha" not in keys:
        raise SpecFieldError(("grid", "alpha"), "is required; e.g. alpha: [4, 10] (0 trains unregularized)")
    return out


def _grid_points(points: Any, axes: set[str]) -> list[dict[str, Any]]:
    if not isinstance(points, list) or not points:
        raise SpecFieldError(("grid", "points"), "use a non-empty list of mappings, e.g. "
                                                 "[{th: 0.2, alpha: 4}, {th: 0.8, alpha: 10}]")
    out: list[dict[str, Any]] = []
    for i, point in enumerate(points):
        path = ("grid", "points", i)
        if not isinstance(point, dict) or not point:
            raise SpecFieldError(path, f"got {short(point)}; use a mapping such as {{th: 0.2, alpha: 4}}")
        clean = {}
        for name, v in point.items():
            if name not in GRID_FIELDS:
                raise SpecFieldError(path + (str(name),), unknown_field_message(name, GRID_FIELDS, "a grid point"))
            if name in axes:
                raise SpecFieldError(path + (name,), f"{name} is also a grid list; give it in one place only")
            clean[name] = _grid_value(path + (name,), name, v)
        if out and set(clean) != set(out[0]):
            raise SpecFieldError(path, f"has fields {sorted(clean)} but points[0] has {sorted(out[0])}; "
                                       "give every point the same fields")
        if clean in out:
            raise SpecFieldError(path, f"{short(clean)} is listed twice; list each point once")
        out.append(clean)
    return out


def _grid_value(path: tuple[str | int, ...], name: str, value: Any) -> Any:
    value = coerce_field(path, name, value)
    if name == "th" and not inside_th_bounds(value):
        raise SpecFieldError(path, f"{value} is outside (0, 1); use values between 0 and 1")
    if name == "alpha" and not value >= 0:
        raise SpecFieldError(path, f"{value} is negative; use alpha >= 0 (0 trains an unregularized model)")
    return value


def _example(name: str) -> str:
    return {"th": "0.2, 0.8", "alpha": "4, 10", "sim_layer": "null, 1"}.get(name, "...")


def unknown_field_message(name: Any, allowed: tuple[str, ...], where: str, *extra: str) -> str:
    return f"unknown field {name!r} in {where}; allowed: {', '.join((*extra, *allowed))}"


def source_attacks(names: Any) -> list[str]:
    """The transferred attacks among `names`: those whose record says they need a source model (`Attack.source`;
    imported when needed: it pulls in torch). The spec and the expansion read this flag, never an attack's name."""
    from pixelreg_core.attacks import source_attacks as from_records

    return from_records(names)


def attack_presets() -> dict[str, dict[str, dict[str, Any]]]:
    """Named attack sets for `attacks: {preset: NAME}` (demo, paper, ...)."""
    from pixelreg_core.attacks import PRESETS  # imported when needed: it pulls in torch

    return copy.deepcopy(PRESETS)


def normalise_attacks(value: Any) -> dict[str, dict[str, Any]]:
    """`{name: {options}}`; `preset: paper|demo|full` expands to that set, and other keys beside it add or override.
    A bare `gaussian:` (YAML null) means default options."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"got {short(value)}; use a mapping of attack name -> options, or {{preset: paper}}")
    out: dict[str, dict[str, Any]] = {}
    if "preset" in value:
        presets = attack_presets()
        if value["preset"] not in presets:
            raise SpecFieldError(("attacks", "preset"), f"{short(value['preset'])} is not a preset; use one of "
                                                        f"{', '.join(presets)}")
        out = presets[value["preset"]]
    for name, options in value.items():
        if name == "preset":
            continue
        if not isinstance(name, str):
            raise SpecFieldError(("attacks",), f"attack name {short(name)} is not a string")
        options = {} if options is None else options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise SpecFieldError(("attacks", name), f"got {short(options)}; use a mapping of options, or {{}}")
        out[name] = options
    return out
