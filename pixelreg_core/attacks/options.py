"""Attack option records and their checks: what an attack accepts, its cheap default, its paper value.

Why declared options: `cfg.attacks` is user input (JSON on the CLI, YAML in a sweep), so every option an attack
reads is declared once, in its attack's record (`Attack.options`, next to the attack's code), with its demo default
and its paper value. `{"preset": "paper"}` on an attack swaps in the paper column; explicit keys still win, e.g.
`{"preset": "paper", "images": 200}`.

Eps lists: `eps` (an explicit list) or `eps_max` + `num_eps` (evenly spaced, 0 included). Left empty, the top of
the range comes from the task's record in pixelreg_core.data.registry (`Dataset.eps_top`: the papers' distortion D
where the record gives one for the attack, else the record's `eps_max`); an attack may override that rule with its
own (`Attack.eps_max`, e.g. salt-and-pepper's cap).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pixelreg_core.data import registry as datasets
from pixelreg_core.errors import ConfigError

NUM_EPS = 10
# The source of a transferred attack: the unregularized model of the same task and the same non-regularizer grid
# point (e.g. width), trained at the spec's `fgsm_source_seed` (trial role "fgsm_source"), never one of the
# evaluated models. The field and role keep their first attack's name: renaming them would move trial ids.
UNREGULARIZED_SOURCE = "unregularized"
SOURCES = (UNREGULARIZED_SOURCE,)


@dataclass(frozen=True)
class Option:
    """One option: demo default, paper value, and the kind of value it must be (see `_check_value`)."""

    default: Any
    paper: Any
    kind: str
    help: str
    choices: tuple[str, ...] = ()  # kinds "choice" and "names": the allowed values


@dataclass(frozen=True)
class Attack:
    """One attack of the registry (pixelreg_core.attacks.ATTACKS): everything the trainer, the sweep spec and the
    figures need to know about it.

    `loop`: a curve attack's `base.Loop` (its image selection and its per-eps perturbation; the base owns the
    eps x repeat loop and the rows). Otherwise `run(model, x, y, ctx, opts)` gets the whole test set (x in [0, 1]
    on the model's device), an `AttackContext` (seed, task, cache dir, source, shared inputs) and the resolved
    options, and returns robustness rows without the key columns. `evaluate` calls whichever is given.
    `check(opts, cfg, check_source)`, if given, does the checks that need more than the options (files).
    `on_test_images(opts)`: whether `images` counts test images (False: the attack reads its own images).
    `presets`: named option sets beyond "demo" and "paper" (e.g. boundary's "minimal"), each applied over the
    paper values.
    `source`: which model a transferred attack crafts its examples on (None: it needs no other model). The one
    kind is `UNREGULARIZED_SOURCE`. This flag is all the sweep side reads: expansion trains the source trial first
    and points the trial's `fgsm_source` field at its checkpoint, the spec checks keep its seed out of `seeds`, and
    the source is checked and loaded by pixelreg_core.attacks.source.
    `eps_max(dataset record)`: the top of the default eps range, when the attack's differs from the record's rule
    (`Dataset.eps_top`). `eps_name`: what its rows' eps column holds (figures label it), e.g. "severity".
    """

    name: str
    title: str
    options: dict[str, Option]
    run: Callable[..., list[dict[str, Any]]] | None = None
    loop: Any = None  # a base.Loop (typed loosely: base imports this module)
    check: Callable[..., None] | None = None
    on_test_images: Callable[[dict[str, Any]], bool] = lambda opts: True
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    source: str | None = None
    eps_max: Callable[[datasets.Dataset], float] | None = None
    eps_name: str = "eps"

    def resolve(self, raw: Any) -> dict[str, Any]:
        return resolve_options(self.name, self.options, raw, self.presets)

    def evaluate(self, model: Any, x: Any, y: Any, ctx: Any, opts: dict[str, Any]) -> list[dict[str, Any]]:
        """The attack's rows: through the base's loop (`loop`), or its own `run(model, x, y, ctx, opts)`."""
        if self.loop is not None:
            return self.loop.run(self, model, x, y, ctx, opts)
        return self.run(model, x, y, ctx, opts)


def eps_options() -> dict[str, Option]:
    """Options of an eps-curve attack (the noises, transferred FGSM)."""
    return {
        "eps": Option(None, None, "eps_list", "explicit eps list (null: the task's range)"),
        "eps_max": Option(None, None, "nonneg_or_none", "top of the eps range (null: the task's value)"),
        "num_eps": Option(NUM_EPS, NUM_EPS, "count", "how many evenly spaced eps in [0, eps_max]"),
        "images": Option(None, None, "count_or_all", "test images used (null: all)"),
        "batch_size": Option(500, 500, "count", "images per forward pass"),
    }


def default_eps_max(attack: Attack, task: str) -> float:
    """The top of an eps attack's default range on a task: the attack's own rule, else the dataset record's."""
    record = datasets.get(task)
    return attack.eps_max(record) if attack.eps_max is not None else record.eps_top(attack.name)


def eps_list(attack: Attack, opts: dict[str, Any], task: str) -> list[float]:
    """The eps values an eps-curve attack runs, from explicit `eps`, else `eps_max`/`num_eps`, else the task's
    range (`default_eps_max`)."""
    if opts.get("eps") is not None:
        return [float(e) for e in opts["eps"]]
    top = opts.get("eps_max")
    if top is None:
        top = default_eps_max(attack, task)
    n = int(opts["num_eps"])
    return [top * i / (n - 1) for i in range(n)] if n > 1 else [float(top)]


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
