"""The sweep spec: a YAML file a user copies and edits, validated on load into a `SweepSpec`.

Why pydantic with `extra="forbid"` and strict types: a misspelt key or a quoted number in a sweep that takes days
must fail in the first second, with one line naming the file, the field path and what is allowed, not after the
first hundred trials. YAML is read with `yaml.safe_load` semantics only (nothing in a spec is ever executed).

Every error leaves here as `UserError("<file>: <field path>: <what is wrong>; <what is allowed>")`; the CLI prints
it as one line with exit code 2. Trial-level checks are not repeated here: every grid point is turned into a
`TrialConfig` and its own `validate()` speaks, translated to the spec's field path.

Also the `validate` subcommand (`add_arguments`/`run`), `spec_fingerprint` (the launcher's "this results
directory holds a different spec" check) and `check_resources` (the GPU check, done by `launch` only: `validate`
and `plan` may run on a laptop for a cluster).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import importlib
import itertools
import json
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from pixelreg_core.config import NON_IDENTITY_FIELDS, RANGES, TARGETS, ConfigError, TrialConfig, demo_attacks

from .errors import UserError

# ---------------------------------------------------------------------------------------------------------------
# Which TrialConfig fields may appear where
# ---------------------------------------------------------------------------------------------------------------
TRIAL_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrialConfig)}
# Set by the spec's own sections (name, pairs, seeds, data_root, download, attacks) or by the expansion itself.
SPEC_OWNED = ("sweep", "role", "task", "reg_data", "seed", "data_root", "download", "attacks", "fgsm_source")
# Top-level regularizer fields; a grid may vary them too (a grid value wins over the top level).
TOP_LEVEL_TRIAL_FIELDS = ("target", "range", "th2")
GRID_FIELDS = tuple(n for n in TRIAL_FIELDS if n not in SPEC_OWNED + ("device", "num_threads"))
TRAIN_FIELDS = tuple(n for n in TRIAL_FIELDS if n not in SPEC_OWNED + TOP_LEVEL_TRIAL_FIELDS + ("th", "alpha"))
# Fields that are not part of what a sweep computes: left out of the fingerprint, like NON_IDENTITY_FIELDS for ids.
NON_FINGERPRINT_KEYS = ("data_root", "download", "resources", "max_failures")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
FGSM_ATTACK = "fgsm_transfer"
# Used only while pixelreg_core.attacks is not importable; that module's PRESETS win (it also has "full").
FALLBACK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": demo_attacks(),
    "paper": {name: {"preset": "paper"} for name in ("gaussian", "uniform", "salt_pepper", FGSM_ATTACK, "boundary")},
}
DEFAULT_RESULTS_ROOT = "results"

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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(path: tuple[str | int, ...], name: str, value: Any) -> Any:
    """A trial field's value, type-checked strictly against TrialConfig's annotation (ints become floats where
    the field is a float, so `alpha: 4` and `alpha: 4.0` are the same trial)."""
    try:
        return _ADAPTERS[name].validate_python(value)
    except ValidationError as exc:
        raise SpecFieldError(path, f"got {_short(value)}; expected {_type_name(_HINTS[name])} "
                                   f"({exc.errors()[0]['msg'].replace('Input should be', 'should be')})") from None


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _config_error_message(exc: ConfigError) -> str:
    return str(exc)[len(exc.field) + 2:] if str(exc).startswith(f"{exc.field}: ") else str(exc)


# ---------------------------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Pair(_Strict):
    """One classification x regularization dataset pair."""

    task: str
    reg_data: str

    @field_validator("task")
    @classmethod
    def _task_known(cls, value: str) -> str:
        return _check_dataset(value, "task", allow_folder=False)

    @field_validator("reg_data")
    @classmethod
    def _reg_known(cls, value: str) -> str:
        return _check_dataset(value, "reg_data", allow_folder=True)


def _check_dataset(name: str, field_name: str, *, allow_folder: bool) -> str:
    """The names pixelreg_core.data can load (imported lazily: it pulls in torch)."""
    from pixelreg_core.data import check_dataset_name

    try:
        check_dataset_name(name, field_name, allow_folder=allow_folder)
    except ConfigError as exc:
        raise ValueError(_config_error_message(exc)) from None
    return name


class Resources(_Strict):
    """Per trial. Fractional GPUs (0.25) pack several trials on one device; above 1 a GPU count must be whole."""

    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"{value} GPUs: above 1 a trial needs a whole number of GPUs (Ray's rule); "
                             "use a fraction <= 1 or an integer")
        return value


class Objective(_Strict):
    """What `search: optuna` maximises: accuracy under `attack` at `eps`, among trials whose clean accuracy is at
    least `min_clean_ratio` times the unregularized baseline's (R0/U0 >= A0 in REFERENCE.md)."""

    attack: str = "gaussian"
    eps: float = Field(default=0.1, ge=0)
    min_clean_ratio: float = Field(default=0.9, gt=0, le=1)


class Search(_Strict):
    """`grid` (exhaustive, the default) or `optuna` (Ray Tune's Optuna searcher over th and alpha ranges)."""

    type: str = "grid"
    trials: int | None = None
    th: list[float] | None = None
    alpha: list[float] | None = None
    objective: Objective | None = None
    pareto: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> Search:
        if self.type not in ("grid", "optuna"):
            raise SpecFieldError(("search", "type"), f"{self.type!r} is not a search; use grid or optuna")
        optuna_only = ("trials", "th", "alpha", "objective", "pareto")
        if self.type == "grid":
            for name in optuna_only:
                if getattr(self, name) is not None:
                    raise SpecFieldError(("search", name), "only for search type optuna; remove it or set "
                                                           "search.type: optuna")
            return self
        self.trials = 20 if self.trials is None else self.trials
        if self.trials < 1:
            raise SpecFieldError(("search", "trials"), f"{self.trials} is not a budget; use an integer >= 1")
        self.th = [0.05, 0.95] if self.th is None else self.th
        self.alpha = [0.5, 20.0] if self.alpha is None else self.alpha
        _check_range(("search", "th"), self.th, lo_ok=lambda lo: lo > 0, hi_ok=lambda hi: hi < 1,
                     allowed="[lo, hi] with 0 < lo < hi < 1")
        _check_range(("search", "alpha"), self.alpha, lo_ok=lambda lo: lo >= 0, hi_ok=lambda hi: True,
                     allowed="[lo, hi] with 0 <= lo < hi")
        self.objective = Objective() if self.objective is None else self.objective
        self.pareto = bool(self.pareto)
        return self


def _check_range(path: tuple[str, ...], values: list[float], *, lo_ok, hi_ok, allowed: str) -> None:
    if len(values) != 2 or not (lo_ok(values[0]) and values[0] < values[1] and hi_ok(values[1])):
        raise SpecFieldError(path, f"{values} is not a range; use {allowed}")


class Scheduler(_Strict):
    """`fifo` runs every trial to the end; `asha` stops weak trials early on validation accuracy."""

    type: str = "fifo"
    grace_period: int | None = None
    reduction_factor: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> Scheduler:
        if self.type not in ("fifo", "asha"):
            raise SpecFieldError(("scheduler", "type"), f"{self.type!r} is not a scheduler; use fifo or asha")
        if self.type == "fifo":
            for name in ("grace_period", "reduction_factor"):
                if getattr(self, name) is not None:
                    raise SpecFieldError(("scheduler", name), "only for scheduler type asha; remove it")
            return self
        self.grace_period = 1 if self.grace_period is None else self.grace_period
        self.reduction_factor = 3.0 if self.reduction_factor is None else self.reduction_factor
        if self.grace_period < 1:
            raise SpecFieldError(("scheduler", "grace_period"), f"{self.grace_period}; use epochs >= 1")
        if self.reduction_factor <= 1:
            raise SpecFieldError(("scheduler", "reduction_factor"), f"{self.reduction_factor}; use a number > 1")
        return self


class SweepSpec(_Strict):
    """A whole study: pairs x grid x seeds, plus baselines and FGSM sources (see orchestrator.expand)."""

    name: str
    data_root: str = "data"
    download: bool = False
    pairs: list[Pair]
    target: str = "threshold"
    range: str = "all"
    th2: float | None = None
    grid: dict[str, Any] | None = None
    seeds: int | list[int] = 7
    baseline: bool = True
    train: dict[str, Any] = Field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = Field(default_factory=demo_attacks)
    resources: Resources = Field(default_factory=Resources)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    max_failures: int = Field(default=2, ge=0)
    fgsm_source_seed: int = Field(default=1000, ge=0)

    _source: str = PrivateAttr(default="<spec>")

    # --- single fields ----------------------------------------------------------------------------------------
    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value) or len(value) > 100:
            raise ValueError(f"{value!r} is not a plain name; use letters, digits, '-' and '_' only "
                             "(it becomes a directory name)")
        return value

    @field_validator("pairs")
    @classmethod
    def _pairs_listed(cls, value: list[Pair]) -> list[Pair]:
        if not value:
            raise ValueError("is empty; list at least one {task: ..., reg_data: ...}")
        seen = set()
        for i, pair in enumerate(value):
            if (pair.task, pair.reg_data) in seen:
                raise SpecFieldError(("pairs", i), f"{pair.task} x {pair.reg_data} is listed twice; remove one")
            seen.add((pair.task, pair.reg_data))
        return value

    @field_validator("target")
    @classmethod
    def _target_known(cls, value: str) -> str:
        if value not in TARGETS:
            raise ValueError(f"{value!r} is not a target; use one of {', '.join(TARGETS)}")
        return value

    @field_validator("range")
    @classmethod
    def _range_known(cls, value: str) -> str:
        if value not in RANGES:
            raise ValueError(f"{value!r} is not a range; use one of {', '.join(RANGES)}")
        return value

    @field_validator("th2")
    @classmethod
    def _th2_inside(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 1:
            raise ValueError(f"{value} is outside (0, 1); use a value between 0 and 1, below every th")
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise ValueError(f"{value} seeds; use a count > 0 (7 in the papers) or a list of seeds")
            return value
        if not isinstance(value, list) or not value:
            raise ValueError(f"got {_short(value)}; use a count > 0 or a non-empty list of distinct integers >= 0")
        for i, seed in enumerate(value):
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise SpecFieldError(("seeds", i), f"got {_short(seed)}; a seed is an integer >= 0")
            if seed in value[:i]:
                raise SpecFieldError(("seeds", i), f"seed {seed} is listed twice; seeds must be distinct")
        return value

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> Any:
        return None if value is None else normalise_grid(value)

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"got {_short(value)}; use a mapping of trial fields, e.g. {{arch: ResNet18, epochs: 20}}")
        out = {}
        for name, item in value.items():
            if name not in TRAIN_FIELDS:
                raise SpecFieldError(("train", str(name)), _unknown_field_message(name, TRAIN_FIELDS, "train"))
            out[name] = _coerce(("train", name), name, item)
        return out

    @field_validator("attacks", mode="before")
    @classmethod
    def _attacks(cls, value: Any) -> Any:
        return normalise_attacks(value)

    # --- the whole spec ---------------------------------------------------------------------------------------
    @model_validator(mode="after")
    def _whole(self) -> SweepSpec:
        if self.search.type == "grid" and self.grid is None:
            raise SpecFieldError(("grid",), "is required for search grid; e.g. grid: {th: [0.2, 0.8], alpha: [4, 10]}")
        if self.search.type == "optuna":
            if self.grid is not None:
                raise SpecFieldError(("grid",), "search optuna draws th and alpha from search.th and search.alpha; "
                                                "remove grid (fixed values go in train) or use search: grid")
            if self.search.objective.attack not in self.attacks:
                raise SpecFieldError(("search", "objective", "attack"),
                                     f"{self.search.objective.attack!r} is not among attacks "
                                     f"({', '.join(self.attacks) or 'none'}); pick one of them")
        if FGSM_ATTACK in self.attacks and self.fgsm_source_seed in self.seed_list:
            raise SpecFieldError(("fgsm_source_seed",), f"{self.fgsm_source_seed} is also in seeds; the FGSM "
                                                        "source must not be a model it is evaluated on: pick a seed "
                                                        "outside seeds")
        for point in self.grid_points():
            for pair in self.pairs:
                self._validate_trial(pair, point)
        if self.scheduler.type == "asha":
            longest = max(self.trial_config(p.task, p.reg_data, 0, pt).epochs
                          for p in self.pairs for pt in self.grid_points())
            if self.scheduler.grace_period > longest:
                raise SpecFieldError(("scheduler", "grace_period"), f"{self.scheduler.grace_period} is more than the "
                                                                    f"{longest} epochs a trial trains; lower it")
        self._validate_attacks()
        return self

    def _validate_trial(self, pair: Pair, point: dict[str, Any]) -> None:
        """A grid point as a real TrialConfig: its own validate() is the one source of the trainer's rules."""
        try:
            self.trial_config(pair.task, pair.reg_data, self.seed_list[0], point).validate()
        except ConfigError as exc:
            path = self._path_of(exc.field, point)
            where = f" (grid point {_short(point)})" if path[0] == "grid" and len(point) > 1 else ""
            raise SpecFieldError(path, _config_error_message(exc) + where) from None

    def _path_of(self, field_name: str, point: dict[str, Any]) -> tuple[str, ...]:
        if field_name in point:
            return ("grid", field_name)
        if field_name in self.train:
            return ("train", field_name)
        return (field_name,)

    def _validate_attacks(self) -> None:
        """pixelreg_core.attacks knows the attack names and options; called when that module is installed."""
        validate_attacks, resolve = _attacks_attr("validate_attacks"), _attacks_attr("resolve")
        if validate_attacks is None:
            return
        fgsm = self.attacks.get(FGSM_ATTACK)

        for task in dict.fromkeys(p.task for p in self.pairs):
            pair = next(p for p in self.pairs if p.task == task)
            point = self.grid_points()[0]
            cfg = self.trial_config(task, pair.reg_data, self.seed_list[0], point)
            # fgsm_transfer's source checkpoint does not exist before launch trains it: check its options only
            cfg.attacks.pop(FGSM_ATTACK, None)
            try:
                validate_attacks(cfg, test_count=cfg.test_images)
                if fgsm is not None and resolve is not None:
                    resolve(FGSM_ATTACK, fgsm)
            except ConfigError as exc:
                parts = tuple(exc.field.split("."))
                path = parts if parts[0] == "attacks" else ("attacks", *parts)
                raise SpecFieldError(path, _config_error_message(exc)) from None

    # --- what expansion needs ---------------------------------------------------------------------------------
    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def source(self) -> str:
        """The file this spec was loaded from (for error messages)."""
        return self._source

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point in a stable order: the cartesian product of the list fields (in the order written),
        times the explicit `points`. For search optuna: one empty point (the searcher adds th and alpha)."""
        if not self.grid:
            return [{}]
        axes = {k: v for k, v in self.grid.items() if k != "points"}
        points = self.grid.get("points") or [{}]
        out = []
        for values in itertools.product(*axes.values()):
            for point in points:
                out.append({**dict(zip(axes, values, strict=True)), **point})
        return out

    def grid_field_names(self) -> list[str]:
        """The fields a grid varies, in the order written (th and alpha included)."""
        if not self.grid:
            return []
        names = [k for k in self.grid if k != "points"]
        for point in self.grid.get("points") or []:
            names += [k for k in point if k not in names]
        return names

    def trial_config(self, task: str, reg_data: str, seed: int, point: dict[str, Any]) -> TrialConfig:
        """One trial: spec defaults < train < grid point. No fgsm_source (expand sets it; not part of the id)."""
        values = {"sweep": self.name, "task": task, "reg_data": reg_data, "seed": seed, "data_root": self.data_root,
                  "download": self.download, "target": self.target, "range": self.range, "th2": self.th2,
                  "attacks": copy.deepcopy(self.attacks), **copy.deepcopy(self.train), **copy.deepcopy(point)}
        return TrialConfig(**values)


# ---------------------------------------------------------------------------------------------------------------
# Grid and attacks normalisation (shared by load and model_validate, so model_dump() round-trips)
# ---------------------------------------------------------------------------------------------------------------
def normalise_grid(value: Any) -> dict[str, Any]:
    """`{field: [values...], ..., points: [{field: value, ...}, ...]}` with every value type-checked.

    The list fields form a cartesian product; `points` lists explicit combinations (e.g. exactly the two
    (th, alpha) settings the authors report) and is crossed with the list fields.
    """
    if not isinstance(value, dict):
        raise ValueError(f"got {_short(value)}; use a mapping such as {{th: [0.2, 0.8], alpha: [4, 10]}}")
    if not value:
        raise ValueError("is empty; give at least alpha, e.g. {th: [0.2], alpha: [4, 10]}")
    out: dict[str, Any] = {}
    for name, values in value.items():
        if name == "points":
            continue
        if name not in GRID_FIELDS:
            raise SpecFieldError(("grid", str(name)), _unknown_field_message(name, GRID_FIELDS, "grid", "points"))
        if not isinstance(values, list) or not values:
            raise SpecFieldError(("grid", name), f"got {_short(values)}; use a non-empty list of values, "
                                                 f"e.g. {name}: [{_example(name)}]")
        out[name] = [_grid_value(("grid", name, i), name, v) for i, v in enumerate(values)]
        for i, v in enumerate(out[name]):
            if v in out[name][:i]:
                raise SpecFieldError(("grid", name, i), f"{_short(v)} is listed twice; list each value once")
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
            raise SpecFieldError(path, f"got {_short(point)}; use a mapping such as {{th: 0.2, alpha: 4}}")
        clean = {}
        for name, v in point.items():
            if name not in GRID_FIELDS:
                raise SpecFieldError(path + (str(name),), _unknown_field_message(name, GRID_FIELDS, "a grid point"))
            if name in axes:
                raise SpecFieldError(path + (name,), f"{name} is also a grid list; give it in one place only")
            clean[name] = _grid_value(path + (name,), name, v)
        if out and set(clean) != set(out[0]):
            raise SpecFieldError(path, f"has fields {sorted(clean)} but points[0] has {sorted(out[0])}; "
                                       "give every point the same fields")
        if clean in out:
            raise SpecFieldError(path, f"{_short(clean)} is listed twice; list each point once")
        out.append(clean)
    return out


def _grid_value(path: tuple[str | int, ...], name: str, value: Any) -> Any:
    value = _coerce(path, name, value)
    if name == "th" and not 0 < value < 1:
        raise SpecFieldError(path, f"{value} is outside (0, 1); use values between 0 and 1")
    if name == "alpha" and not value >= 0:
        raise SpecFieldError(path, f"{value} is negative; use alpha >= 0 (0 trains an unregularized model)")
    return value


def _example(name: str) -> str:
    return {"th": "0.2, 0.8", "alpha": "4, 10", "sim_layer": "null, 1"}.get(name, "...")


def _unknown_field_message(name: Any, allowed: tuple[str, ...], where: str, *extra: str) -> str:
    return f"unknown field {name!r} in {where}; allowed: {', '.join((*extra, *allowed))}"


def _attacks_attr(name: str) -> Any:
    """`pixelreg_core.attacks.<name>`, or None while that module is not there (it is built in parallel)."""
    try:
        module = importlib.import_module("pixelreg_core.attacks")
    except ImportError:
        return None
    return getattr(module, name, None)


def attack_presets() -> dict[str, dict[str, dict[str, Any]]]:
    """Named attack sets for `attacks: {preset: NAME}` (demo, paper, ...)."""
    presets = _attacks_attr("PRESETS")
    return copy.deepcopy(dict(presets if presets is not None else FALLBACK_PRESETS))


def normalise_attacks(value: Any) -> dict[str, dict[str, Any]]:
    """`{name: {options}}`; `preset: paper|demo|full` expands to that set, and other keys beside it add or override.
    A bare `gaussian:` (YAML null) means default options."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"got {_short(value)}; use a mapping of attack name -> options, or {{preset: paper}}")
    out: dict[str, dict[str, Any]] = {}
    if "preset" in value:
        presets = attack_presets()
        if value["preset"] not in presets:
            raise SpecFieldError(("attacks", "preset"), f"{_short(value['preset'])} is not a preset; use one of "
                                                        f"{', '.join(presets)}")
        out = presets[value["preset"]]
    for name, options in value.items():
        if name == "preset":
            continue
        if not isinstance(name, str):
            raise SpecFieldError(("attacks",), f"attack name {_short(name)} is not a string")
        options = {} if options is None else options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise SpecFieldError(("attacks", name), f"got {_short(options)}; use a mapping of options, or {{}}")
        out[name] = options
    return out


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML keeps the last one silently) and reads 1e-3 as a
    number (YAML 1.1 wants a dot: '1e-3' would otherwise be a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass: constructs plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}: {where}invalid YAML ({problem}); fix the syntax there") from None


def parse_spec(data: Any, source: str = "<spec>") -> SweepSpec:
    """A parsed YAML document (or any mapping) -> SweepSpec, or UserError naming source + field path."""
    if data is None:
        raise UserError(f"{source}: is empty; a spec is a mapping with at least name, pairs and grid")
    if not isinstance(data, dict):
        raise UserError(f"{source}: the spec must be a mapping of fields (name, pairs, grid, ...), "
                        f"not a {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data)
    except SpecFieldError as exc:
        raise UserError(f"{source}: {exc}") from None
    except ValidationError as exc:
        raise UserError(f"{source}: {_pydantic_message(exc)}") from None
    spec._source = source
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec file. Every mistake is one UserError line naming the file and field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{source}: no such file; give the path of a sweep spec such as "
                        "sweeps/quickstart.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: cannot read it ({exc.__class__.__name__}: {exc}); give a readable "
                        "UTF-8 YAML file") from None
    return parse_spec(parse_yaml(text, source), source)


def _pydantic_message(exc: ValidationError) -> str:
    """The first pydantic error as '<path>: <what is wrong>; <what is allowed>'."""
    errors = exc.errors()
    # a misspelt key also makes the right one "missing": the unknown key is the cause, so it is reported first
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    path = format_path(loc)
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "should be")
    if kind == "extra_forbidden":
        allowed = _model_at(loc[:-1])
        names = ", ".join(allowed.model_fields) if allowed else "see the README"
        return f"{path}: unknown key; allowed keys: {names}"
    if kind == "missing":
        return f"{path}: is required; {_REQUIRED_HINTS.get(loc[-1], 'add it')}"
    if kind == "value_error":
        return f"{path}: {msg}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path}: got {_short(err.get('input'))}; should be a mapping"
    return f"{path}: got {_short(err.get('input'))}; {msg}"


_REQUIRED_HINTS = {
    "name": "name the sweep (letters, digits, '-', '_'); results go to <results>/<name>/",
    "pairs": "list the dataset pairs, e.g. pairs: [{task: MNIST, reg_data: MNIST}]",
    "task": "name the classification dataset, e.g. MNIST",
    "reg_data": "name the regularization dataset, e.g. MNIST",
}


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class a pydantic error location points into (for listing its allowed keys)."""
    model: type[BaseModel] | None = SweepSpec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------------------------
# Helpers for the launcher
# ---------------------------------------------------------------------------------------------------------------
def spec_fingerprint(spec: SweepSpec) -> str:
    """Stable hash of what the spec computes. Leaves out where data lives, the resources and the retry count
    (moving data or changing the machine does not change the results), and the form seeds are written in."""
    data = spec.model_dump()
    for key in NON_FINGERPRINT_KEYS:
        data.pop(key, None)
    data["seeds"] = spec.seed_list
    data["train"] = {k: v for k, v in data["train"].items() if k not in NON_IDENTITY_FIELDS}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_resources(spec: SweepSpec, available_gpus: float | None = None) -> None:
    """Refuse a GPU request where no GPU exists. Called by `launch` only (validate/plan may run on a laptop for a
    cluster); pass the cluster's GPU count when launching on an existing Ray cluster."""
    if spec.resources.gpu <= 0:
        return
    if available_gpus is None:
        import torch

        available_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available_gpus <= 0:
        raise UserError(f"{spec.source}: resources.gpu: {spec.resources.gpu} GPU per trial asked for, but no CUDA "
                        "GPU is available here; set resources.gpu: 0 to run on CPU, or launch on a GPU machine")
    if spec.resources.gpu > available_gpus:
        raise UserError(f"{spec.source}: resources.gpu: {spec.resources.gpu} GPUs per trial but only "
                        f"{available_gpus:g} available; lower resources.gpu")


# ---------------------------------------------------------------------------------------------------------------
# `orchestrator validate SPEC`
# ---------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="sweep spec YAML file(s), e.g. sweeps/quickstart.yaml")


def run(args: argparse.Namespace) -> int:
    from .expand import expand, role_counts

    for path in args.spec:
        spec = load_spec(path)
        trials = expand(spec, f"{DEFAULT_RESULTS_ROOT}/{spec.name}")
        counts = ", ".join(f"{n} {role}" for role, n in role_counts(trials).items())
        searched = (f" + {spec.search.trials} searched per pair (optuna)" if spec.search.type == "optuna" else "")
        print(f"ok: {len(trials)} trials ({counts}){searched} in {spec.source}")
    return 0
