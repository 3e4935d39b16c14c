"""The sweep spec's schema: pydantic models a YAML file is validated into (`SweepSpec`), with the normalisation of
`grid` and `attacks` and every cross-field check.

Why pydantic with `extra="forbid"` and strict types: a misspelt key or a quoted number in a sweep that takes days
must fail in the first second, with one line naming the field path and what is allowed, not after the first
hundred trials. Validators raise `SpecFieldError(path, message)`; `orchestrator.spec.load` (the loader) turns that and
pydantic's own errors into the one-line `UserError`. Trial-level checks are not repeated here: every grid point is
turned into a `TrialConfig` and its own `validate()` speaks, translated to the spec's field path.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from orchestrator.spec.fields import (
    NAME_PATTERN,
    TRAIN_FIELDS,
    SpecFieldError,
    coerce_field,
    config_error_message,
    normalise_attacks,
    normalise_grid,
    short,
    source_attacks,
    unknown_field_message,
)
from orchestrator.spec.track import Track
from pixelreg_core.config import RANGES, TARGETS, ConfigError, TrialConfig, demo_attacks
from pixelreg_core.targets.ranges import inside_th_bounds

# The most trials a spec may expand to unless --max-trials raises it: no real study comes near it (the papers' full
# grid is a few thousand), while a typo such as `seeds: 100000000` would take hours and hundreds of GB to expand.
MAX_TRIALS = 100_000

# A choice of (Th, alpha) is `decided` when the rule picks it in at least this share of the seeds' resamplings
# (orchestrator.analysis.confidence): the spec's `confidence`, `aggregate --confidence`.
DEFAULT_CONFIDENCE = 0.9

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
    """The names pixelreg_core.data can load: its registry, which imports no torch (validate stays fast)."""
    from pixelreg_core.data import registry

    try:
        registry.get(name, field_name, allow_unlabelled=allow_folder)
    except ConfigError as exc:
        raise ValueError(config_error_message(exc)) from None
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
    least `min_clean_ratio` times the unregularized baseline's (the papers' R0/U0 >= A0 rule)."""

    attack: str = Field(default_factory=lambda: next(iter(demo_attacks())))  # the demo set's first attack
    eps: float = Field(default=0.1, ge=0)
    min_clean_ratio: float = Field(default=0.9, gt=0, le=1)


class _Kinded(_Strict):
    """A section with a `type` (a bare string is the type) and fields that belong to one other type only."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    def _is_plain(self, section: str, kinds: tuple[str, str], only_other: tuple[str, ...], fix: str) -> bool:
        """Whether the type is kinds[0], whose sections must not set `only_other`; refuses an unknown type."""
        if self.type not in kinds:
            raise SpecFieldError((section, "type"), f"{self.type!r} is not a {section}; use {kinds[0]} or {kinds[1]}")
        if self.type != kinds[0]:
            return False
        for name in only_other:
            if getattr(self, name) is not None:
                raise SpecFieldError((section, name), f"only for {section} type {kinds[1]}; {fix}")
        return True


class Search(_Kinded):
    """`grid` (exhaustive, the default) or `optuna` (Ray Tune's Optuna searcher over th and alpha ranges)."""

    type: str = "grid"
    trials: int | None = None
    th: list[float] | None = None
    alpha: list[float] | None = None
    objective: Objective | None = None
    pareto: bool | None = None
    start: list[dict[str, float]] | None = None  # known points tried first, e.g. [{th: 0.2, alpha: 4}]

    @model_validator(mode="after")
    def _consistent(self) -> Search:
        if self._is_plain("search", ("grid", "optuna"), ("trials", "th", "alpha", "objective", "pareto", "start"),
                          "remove it or set search.type: optuna"):
            return self
        self.trials = 20 if self.trials is None else self.trials
        if self.trials < 1:
            raise SpecFieldError(("search", "trials"), f"{self.trials} is not a budget; use an integer >= 1")
        self.th = [0.05, 0.95] if self.th is None else self.th
        self.alpha = [0.5, 20.0] if self.alpha is None else self.alpha
        _check_range(("search", "th"), self.th, lo_ok=inside_th_bounds, hi_ok=inside_th_bounds,
                     allowed="[lo, hi] with 0 < lo < hi < 1")
        _check_range(("search", "alpha"), self.alpha, lo_ok=lambda lo: lo >= 0, hi_ok=lambda hi: True,
                     allowed="[lo, hi] with 0 <= lo < hi")
        self.objective = Objective() if self.objective is None else self.objective
        self.pareto = bool(self.pareto)
        self.start = [] if self.start is None else self.start
        for index, point in enumerate(self.start):
            if set(point) != {"th", "alpha"}:
                raise SpecFieldError(("search", "start", index), f"{point} must give th and alpha only, "
                                     "e.g. {th: 0.2, alpha: 4}")
            for name, (lo, hi) in (("th", self.th), ("alpha", self.alpha)):
                if not lo <= point[name] <= hi:
                    raise SpecFieldError(("search", "start", index, name),
                                         f"{point[name]} lies outside search.{name} [{lo}, {hi}]; widen the range "
                                         "or move the point")
        return self


def _check_range(path: tuple[str, ...], values: list[float], *, lo_ok, hi_ok, allowed: str) -> None:
    if len(values) != 2 or not (lo_ok(values[0]) and values[0] < values[1] and hi_ok(values[1])):
        raise SpecFieldError(path, f"{values} is not a range; use {allowed}")


class Scheduler(_Kinded):
    """`fifo` runs every trial to the end; `asha` stops weak trials early on validation accuracy."""

    type: str = "fifo"
    grace_period: int | None = None
    reduction_factor: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Scheduler:
        if self._is_plain("scheduler", ("fifo", "asha"), ("grace_period", "reduction_factor"), "remove it"):
            return self
        self.grace_period = 1 if self.grace_period is None else self.grace_period
        self.reduction_factor = 3.0 if self.reduction_factor is None else self.reduction_factor
        if self.grace_period < 1:
            raise SpecFieldError(("scheduler", "grace_period"), f"{self.grace_period}; use epochs >= 1")
        if self.reduction_factor <= 1:
            raise SpecFieldError(("scheduler", "reduction_factor"), f"{self.reduction_factor}; use a number > 1")
        return self


class Race(_Strict):
    """`seeds: {start: 3, max: 10}`: a race (orchestrator.run.race). Every setting and baseline trains `start` seeds;
    then, one decision after each finished trial, only the settings whose acceptability or rank is still open (and
    the baselines they are compared with) get one more seed, up to `max` seeds each, until every selection of
    `decide` (attack names; default every attack of the spec) is decided at the spec's `confidence`."""

    start: int = 3
    max: int = 10
    decide: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Race:
        if self.start < 2:
            raise SpecFieldError(("seeds", "start"), f"{self.start}; a race starts with at least 2 seeds per "
                                                     "setting (one seed has no spread to judge)")
        if self.max <= self.start:
            raise SpecFieldError(("seeds", "max"), f"{self.max} is not above seeds.start {self.start}; raise it, "
                                                   f"or write seeds: {self.start} for a fixed count")
        if self.decide is not None and not self.decide:
            raise SpecFieldError(("seeds", "decide"), "is empty; name attacks of the spec, or leave it out for all")
        return self


class SweepSpec(_Strict):
    """A whole study: pairs x grid x seeds, plus baselines and source models (see orchestrator.spec.expand)."""

    name: str
    data_root: str = "data"
    download: bool = False
    pairs: list[Pair]
    target: str = "threshold"
    range: str = "all"
    th2: float | None = None
    grid: dict[str, Any] | None = None
    seeds: int | list[int] | Race = 7
    baseline: bool = True
    train: dict[str, Any] = Field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = Field(default_factory=demo_attacks)
    resources: Resources = Field(default_factory=Resources)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    max_failures: int = Field(default=2, ge=0)
    fgsm_source_seed: int = Field(default=1000, ge=0)
    # P(chosen) at or above which a choice of (Th, alpha) counts as decided (best.parquet `decided`)
    confidence: float = Field(default=DEFAULT_CONFIDENCE, gt=0, lt=1)
    track: Track = Field(default_factory=Track)  # experiment trackers (orchestrator.spec.track); off by default

    _source: str = PrivateAttr(default="<spec>")
    _text: str = PrivateAttr(default="")  # the spec that runs, as YAML text (load_spec: the file, or with overrides)

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

    @field_validator("target", "range")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        allowed = TARGETS if info.field_name == "target" else RANGES
        if value not in allowed:
            raise ValueError(f"{value!r} is not a {info.field_name}; use one of {', '.join(allowed)}")
        return value

    @field_validator("th2")
    @classmethod
    def _th2_inside(cls, value: float | None) -> float | None:
        if value is not None and not inside_th_bounds(value):
            raise ValueError(f"{value} is outside (0, 1); use a value between 0 and 1, below every th")
        return value

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if isinstance(value, dict):  # a race: Race checks its own fields
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise ValueError(f"{value} seeds; use a count > 0 (7 in the papers) or a list of seeds")
            return value
        if not isinstance(value, list) or not value:
            raise ValueError(f"got {short(value)}; use a count > 0 or a non-empty list of distinct integers >= 0")
        seen: set[int] = set()  # a set: a long list is checked in linear time
        for i, seed in enumerate(value):
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise SpecFieldError(("seeds", i), f"got {short(seed)}; a seed is an integer >= 0")
            if seed in seen:
                raise SpecFieldError(("seeds", i), f"seed {seed} is listed twice; seeds must be distinct")
            seen.add(seed)
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
            raise ValueError(f"got {short(value)}; use a mapping of trial fields, e.g. {{arch: ResNet18, epochs: 20}}")
        out = {}
        for name, item in value.items():
            if name not in TRAIN_FIELDS:
                raise SpecFieldError(("train", str(name)), unknown_field_message(name, TRAIN_FIELDS, "train"))
            out[name] = coerce_field(("train", name), name, item)
        return out

    @field_validator("attacks", mode="before")
    @classmethod
    def _attacks(cls, value: Any) -> Any:
        return normalise_attacks(value)

    # --- the whole spec ---------------------------------------------------------------------------------------
    @model_validator(mode="after")
    def _whole(self, info: ValidationInfo) -> SweepSpec:
        if self.search.type == "grid" and self.grid is None:
            raise SpecFieldError(("grid",), "is required for search grid; e.g. grid: {th: [0.2, 0.8], alpha: [4, 10]}")
        self._check_size((info.context or {}).get("max_trials", MAX_TRIALS))  # before anything per trial
        if self.search.type == "optuna":
            if self.grid is not None:
                raise SpecFieldError(("grid",), "search optuna draws th and alpha from search.th and search.alpha; "
                                                "remove grid (fixed values go in train) or use search: grid")
            if self.search.objective.attack not in self.attacks:
                raise SpecFieldError(("search", "objective", "attack"),
                                     f"{self.search.objective.attack!r} is not among attacks "
                                     f"({', '.join(self.attacks) or 'none'}); pick one of them")
        transferred = source_attacks(self.attacks)
        if transferred and self.fgsm_source_seed in self.seed_list:
            raise SpecFieldError(("fgsm_source_seed",), f"{self.fgsm_source_seed} is also in seeds; the source "
                                                        f"model of {', '.join(transferred)} must not be a model it "
                                                        "is evaluated on: pick a seed outside seeds")
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
        self._validate_race()
        return self

    def _validate_race(self) -> None:
        race = self.race
        if race is None:
            return
        for i, name in enumerate(race.decide or []):
            if name not in self.attacks:
                raise SpecFieldError(("seeds", "decide", i), f"{name!r} is not among attacks "
                                     f"({', '.join(self.attacks) or 'none'}); name one of them")
        if self.search.type != "grid":
            raise SpecFieldError(("seeds",), "a race (seeds: {start, max}) needs search: grid; give optuna a "
                                             "seed count or list")
        if self.scheduler.type != "fifo":
            raise SpecFieldError(("seeds",), "a race needs scheduler: fifo (a trial ASHA stops has no results "
                                             "to decide with); remove scheduler or give a seed count")
        if self.train.get("pack", 1) > 1:
            raise SpecFieldError(("train", "pack"), "a race adds seeds one at a time; use pack: 1 with "
                                                    "seeds: {start, max}")
    def size(self) -> tuple[int, dict[str, int]]:
        """(at most how many trials the spec expands to, the factors: pairs, grid points, seeds), counted without
        expanding anything: pairs x grid points x seeds, twice with baselines (a baseline per seed may be shared),
        plus optuna's budget."""
        if self.grid:
            axes = [len(v) for k, v in self.grid.items() if k != "points"]
            points = math.prod(axes) * max(1, len(self.grid.get("points") or []))
        else:
            points = 1
        seeds = self.seeds.max if isinstance(self.seeds, Race) else (
            self.seeds if isinstance(self.seeds, int) else len(self.seeds))
        factors = {"pairs": len(self.pairs), "grid": points, "seeds": seeds}
        per_seed = (self.search.trials if self.search.type == "optuna" else points) + (1 if self.baseline else 0)
        return len(self.pairs) * seeds * per_seed + len(self.pairs) * points, factors

    def _check_size(self, limit: int) -> None:
        """Refuse a spec beyond `limit` trials (MAX_TRIALS unless --max-trials says otherwise), naming the field
        with the largest count: a typo such as seeds: 100000000 would otherwise take hours and hundreds of GB just
        to expand (about 80 us and 3 KB per trial)."""
        count, factors = self.size()
        if count <= limit:
            return
        field_name = max(factors, key=lambda k: factors[k])
        what = {"pairs": "pairs", "grid": "grid points", "seeds": "seeds"}
        raise SpecFieldError((field_name,), f"{factors[field_name]:,} {what[field_name]} make up to {count:,} trials "
                                            f"({factors['pairs']:,} pairs x {factors['grid']:,} grid points x "
                                            f"{factors['seeds']:,} seeds), more than the limit of {limit:,}; "
                                            f"lower it, or pass --max-trials {count} if you mean it")

    def _validate_trial(self, pair: Pair, point: dict[str, Any]) -> None:
        """A grid point as a real TrialConfig: its own validate() is the one source of the trainer's rules."""
        try:
            self.trial_config(pair.task, pair.reg_data, self.seed_list[0], point).validate()
        except ConfigError as exc:
            path = self._path_of(exc.field, point)
            where = f" (grid point {short(point)})" if path[0] == "grid" and len(point) > 1 else ""
            raise SpecFieldError(path, config_error_message(exc) + where) from None

    def _path_of(self, field_name: str, point: dict[str, Any]) -> tuple[str, ...]:
        if field_name in point:
            return ("grid", field_name)
        if field_name in self.train:
            return ("train", field_name)
        return (field_name,)

    def _validate_attacks(self) -> None:
        """pixelreg_core.attacks knows the attack names and options (imported here: it pulls in torch)."""
        from pixelreg_core.attacks import check_image_counts, resolve, validate_attacks

        transferred = source_attacks(self.attacks)
        for task in dict.fromkeys(p.task for p in self.pairs):
            pair = next(p for p in self.pairs if p.task == task)
            point = self.grid_points()[0]
            cfg = self.trial_config(task, pair.reg_data, self.seed_list[0], point)
            # a transferred attack's source checkpoint does not exist before launch trains it: its options only
            for name in transferred:
                cfg.attacks.pop(name)
            try:
                validate_attacks(cfg, test_count=cfg.test_images)
                resolved = {name: resolve(name, self.attacks[name]) for name in transferred}
                if cfg.test_images is not None:
                    check_image_counts(resolved, cfg.test_images)
            except ConfigError as exc:
                parts = tuple(exc.field.split("."))
                path = parts if parts[0] == "attacks" else ("attacks", *parts)
                raise SpecFieldError(path, config_error_message(exc)) from None

    # --- what expansion needs ---------------------------------------------------------------------------------
    @property
    def seed_list(self) -> list[int]:
        """Every seed the spec may train (a race: seeds 0 .. max - 1; it trains those it needs, in order)."""
        if isinstance(self.seeds, Race):
            return list(range(self.seeds.max))
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def race(self) -> Race | None:
        return self.seeds if isinstance(self.seeds, Race) else None

    def race_attacks(self) -> list[str]:
        """The attacks whose selections a race must decide (seeds.decide, default every attack)."""
        race = self.race
        return list(self.attacks) if race is None or race.decide is None else list(race.decide)

    @property
    def source(self) -> str:
        """The file this spec was loaded from (for error messages)."""
        return self._source

    @property
    def text(self) -> str:
        """The spec that runs as YAML text, as the sweep folder records it (spec.yaml, specs/)."""
        return self._text

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
