"""Sweep spec -> the list of trials to run, in the order they must start.

Three roles (TrialConfig.role):
- `fgsm_source`: one unregularized model per task (and per combination of non-regularizer grid fields such as
  width), seed `fgsm_source_seed`, trained only to craft the examples of the transferred attacks (those whose
  record names a source: `pixelreg_core.attacks.source_attacks`). It comes first because every trial with such an
  attack loads its checkpoint. The role keeps the name of the first transferred attack: it is part of trial ids.
- `baseline`: one unregularized model per task x seed. Regularizer fields are neutral for alpha 0, so every pair
  of a task maps to the same trial id: the baseline is shared, never duplicated.
- `trial`: pairs x grid points x seeds, the regularized models.

Trial ids are TrialConfig.trial_id (a hash of the identity fields), so the same spec always expands to the same
ids, and moving the data (data_root) or the results (the fgsm_source path) keeps them.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

from orchestrator.errors import UserError
from orchestrator.spec.fields import GRID_FIELDS, source_attacks
from orchestrator.spec.schema import SweepSpec
from pixelreg_core.config import REGULARIZER_FIELDS, ROLES, ConfigError, TrialConfig
from pixelreg_core.results import checkpoint_path

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrialConfig) if f.default is not dataclasses.MISSING}


def expand(spec: SweepSpec, sweep_dir: str | os.PathLike) -> list[TrialConfig]:
    """Every trial of the spec, ordered source models, baselines, regularized trials; deduplicated by trial id.

    `sweep_dir` is `<results root>/<name>` (a path or a pyarrow URI): trials with a transferred attack get
    `fgsm_source = <sweep_dir>/checkpoints/<source trial_id>.pt`. For search optuna only the sources and baselines
    (always, whatever `baseline` says: the objective needs them); the launcher adds the searched trials
    (`trial_from_params`).
    """
    sources: list[TrialConfig] = []
    baselines: list[TrialConfig] = []
    regularized: list[TrialConfig] = []
    searched = spec.search.type == "optuna"
    for pair in spec.pairs:
        for point in spec.grid_points():
            if source_attacks(spec.attacks):
                sources.append(source_trial(spec, pair.task, point))
            for seed in spec.seed_list:
                if spec.baseline or searched:  # the optuna objective divides by the baseline's accuracy
                    baselines.append(unregularized(spec, pair.task, seed, point))
                if searched:
                    continue
                if point["alpha"] == 0:  # an alpha-0 grid value is the baseline itself
                    baselines.append(unregularized(spec, pair.task, seed, point))
                else:
                    regularized.append(spec.trial_config(pair.task, pair.reg_data, seed, point))
    trials = _unique(sources + baselines + regularized)
    return [attach_source(spec, cfg, sweep_dir) for cfg in trials]


def unregularized(spec: SweepSpec, task: str, seed: int, point: dict[str, Any], role: str = "baseline") -> TrialConfig:
    """The alpha-0 model of a task x seed with the point's non-regularizer fields (e.g. width) kept."""
    keep = {k: v for k, v in point.items() if k not in REGULARIZER_FIELDS}
    cfg = spec.trial_config(task, "none", seed, {**keep, "alpha": 0.0})
    # the regularizer fields' defaults, then BASELINE_NEUTRAL's values on top (TrialConfig.unregularized)
    return cfg.replace(**{name: _DEFAULTS[name] for name in REGULARIZER_FIELDS}).unregularized(role)


def source_trial(spec: SweepSpec, task: str, point: dict[str, Any]) -> TrialConfig:
    """The unregularized model the transferred attacks craft their examples on; none of them runs on it (it
    would be its own source)."""
    cfg = unregularized(spec, task, spec.fgsm_source_seed, point, role="fgsm_source")
    transferred = source_attacks(cfg.attacks)
    return cfg.replace(attacks={k: v for k, v in cfg.attacks.items() if k not in transferred})


def source_of(spec: SweepSpec, cfg: TrialConfig) -> TrialConfig | None:
    """The source trial a trial depends on (same task and non-regularizer grid fields), or None when it needs
    none (it is a source itself, or has no transferred attack)."""
    if cfg.role == "fgsm_source" or not source_attacks(cfg.attacks):
        return None
    return source_trial(spec, cfg.task, {name: getattr(cfg, name) for name in spec.grid_field_names()})


def attach_source(spec: SweepSpec, cfg: TrialConfig, sweep_dir: str | os.PathLike | None) -> TrialConfig:
    """Point a trial with a transferred attack at its source's checkpoint. fgsm_source is not part of the
    trial id, so this never changes an id."""
    source = source_of(spec, cfg) if sweep_dir is not None else None
    return cfg if source is None else cfg.replace(fgsm_source=checkpoint_path(sweep_dir, source.trial_id))


def trial_from_params(spec: SweepSpec, task: str, reg_data: str, seed: int, params: dict[str, Any],
                      sweep_dir: str | os.PathLike | None = None) -> TrialConfig:
    """A searched trial (search optuna): the spec's trial for one pair x seed with `params` (th, alpha, ...) set.

    Give `sweep_dir` so the trial finds its source model; a bad parameter raises UserError.
    """
    if not any(p.task == task and p.reg_data == reg_data for p in spec.pairs):
        raise UserError(f"{spec.source}: pairs: {task} x {reg_data} is not a pair of this spec")
    unknown = sorted(set(params) - set(GRID_FIELDS))
    if unknown:
        raise UserError(f"{spec.source}: search: {unknown[0]!r} is not a trial field that can be searched")
    cfg = spec.trial_config(task, reg_data, seed, dict(params))
    if cfg.alpha == 0:
        cfg = unregularized(spec, task, seed, dict(params))
    try:
        cfg.validate()
    except ConfigError as exc:
        raise UserError(f"{spec.source}: search: {exc}") from None
    return attach_source(spec, cfg, sweep_dir)


def searched_runs(spec: SweepSpec) -> int:
    """The trials the Optuna studies add at most (search optuna; 0 otherwise): its budget of points per pair, each
    trained for every seed. They are not in `expand`: the launcher makes them as the studies sample."""
    return spec.search.trials * len(spec.pairs) * len(spec.seed_list) if spec.search.type == "optuna" else 0


def role_counts(trials: list[TrialConfig]) -> dict[str, int]:
    """Trials per role in the order sources, baselines, trials (roles with none are left out)."""
    counts = Counter(cfg.role for cfg in trials)
    return {role: counts[role] for role in ("fgsm_source", "baseline", "trial") if role in ROLES and counts[role]}


def _unique(trials: list[TrialConfig]) -> list[TrialConfig]:
    seen: dict[str, TrialConfig] = {}
    for cfg in trials:
        seen.setdefault(cfg.trial_id, cfg)
    return list(seen.values())


def race_start(spec: SweepSpec, configs: list[TrialConfig]) -> list[TrialConfig]:
    """A race's first round (seeds: {start, max}): the source models and the first `start` seeds of every setting
    and baseline; every config for a spec without a race. The race adds the rest only where it decides."""
    race = spec.race
    if race is None:
        return list(configs)
    first = set(spec.seed_list[:race.start])
    return [c for c in configs if c.role == "fgsm_source" or c.seed in first]


def race_line(spec: SweepSpec, configs: list[TrialConfig]) -> str:
    """`a race: 7 to 15 trials (seeds 2 at the start, up to 5 per setting; decides gaussian at confidence 0.9)`;
    "" without a race."""
    race = spec.race
    if race is None:
        return ""
    return (f"a race: {len(race_start(spec, configs))} to {len(configs)} trials ({race.start} seeds per setting "
            f"and baseline at the start, up to {race.max}; decides {', '.join(spec.race_attacks())} at "
            f"confidence {spec.confidence:g})")
