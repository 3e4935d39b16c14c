"""The race's decision (`seeds: {start, max}`): from the per-seed values a sweep folder holds, is each selection's
choice decided, and which settings and baselines should get one more seed?

Pure numpy on plain arrays: the launch (orchestrator.run.race) asks it after every finished trial, and
benchmarks/bench_race.py replays it offline on a finished study's per-seed results. The probabilities come from
orchestrator.analysis.confidence (the one place that says how sure a choice is); this module only decides where
seeds go.

One arm is one setting of a selection (a regularized (Th, alpha) of one pair) or the selection's baseline; its
values are an (n_seeds, 2) array: each seed's clean accuracy and its accuracy at the selection's distortion D.

The add-a-seed rule (tuned on the replay of benchmarks/results/race_study, docs/performance.md):
- a selection whose chosen setting (the paper's rule on the means) has p_chosen >= confidence is decided and asks
  for nothing; so is "no acceptable setting" when its probability is >= confidence;
- otherwise the contenders are the settings with p_chosen >= EPSILON (a setting the resampling almost never
  chooses is clearly out and gets no more seeds);
- each contender and the baseline is scored by what one more seed would do to the decision: the arm's values are
  given one more seed at their own mean (the spread shrinks as it would with one more seed) and the leader's
  p_chosen is computed again; the gain over today's is the arm's value. The arms whose value is at least SHARE of
  the best arm's value grow. So the baseline grows only when its spread is what keeps the choice open (the
  ordering of RD/UD between settings does not depend on the baseline at all: only acceptability does).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from orchestrator.analysis import confidence

BASELINE = "baseline"  # the key of a selection's baseline arm among its settings' keys
EPSILON = 0.02  # below this p_chosen a setting is clearly out: no more seeds
SHARE = 0.5  # an arm grows when one more seed of it would gain at least this share of the best arm's gain
NONE = None  # the "no acceptable setting" outcome of a selection


@dataclass
class Verdict:
    """One selection's state: the paper's choice on the means, how sure it is, and which arms to grow."""

    chosen: Hashable | None                 # the setting the paper's rule chooses on the means (None: no setting)
    p_chosen: dict[Hashable, float]         # per setting; p_chosen[None] = P(no acceptable setting)
    decided: bool
    grow: list[Hashable] = field(default_factory=list)  # setting keys and/or BASELINE
    values: dict[Hashable, float] = field(default_factory=dict)  # what one more seed of each arm would gain

    @property
    def confidence_of_choice(self) -> float:
        return self.p_chosen.get(self.chosen, 0.0)


def paper_choice(settings: dict[Hashable, np.ndarray], baseline: np.ndarray, a0: float) -> Hashable | None:
    """The paper's rule on the seed means (aggregate's _mark_choice): the largest RD/UD among the settings with
    R0/U0 >= a0 and RD/UD > 1; ties: larger R0/U0, then the first key (keys come sorted by alpha, th)."""
    u0, ud = np.nanmean(baseline, axis=0)
    best, best_key = None, None
    for key, arm in settings.items():
        r0, rd = np.nanmean(arm, axis=0)
        r0u0, rdud = _ratio(r0, u0), _ratio(rd, ud)
        if not (r0u0 >= a0 and rdud > 1):
            continue
        if best is None or (rdud, r0u0) > best:
            best, best_key = (rdud, r0u0), key
    return best_key


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def choice_probabilities(settings: dict[Hashable, np.ndarray], baseline: np.ndarray, a0: float) -> dict:
    """{setting: p_chosen, None: P(no acceptable setting)} from orchestrator.analysis.confidence; {} when an arm
    has fewer than 2 seeds (no spread, no probability)."""
    answer = confidence.choice_confidence(list(settings.values()), baseline, a0)
    if answer.note:
        return {}
    out = {key: float(p) for key, p in zip(settings, answer.p_chosen, strict=True)}
    out[NONE] = float(answer.p_none)
    return out


def judge(settings: dict[Hashable, np.ndarray], baseline: np.ndarray, a0: float, level: float) -> Verdict:
    """Whether the selection is decided: its chosen setting's p_chosen (or P(no setting)) >= level."""
    chosen = paper_choice(settings, baseline, a0)
    p = choice_probabilities(settings, baseline, a0)
    return Verdict(chosen=chosen, p_chosen=p, decided=bool(p.get(chosen, 0.0) >= level))


def one_more_seed(arm: np.ndarray) -> np.ndarray:
    """The arm with one more seed at its own mean: the same mean, the spread one more seed would leave."""
    return np.vstack([arm, np.nanmean(arm, axis=0, keepdims=True)])


def decide(settings: dict[Hashable, np.ndarray], baseline: np.ndarray, a0: float, level: float,
           can_grow: set[Hashable] | None = None, epsilon: float = EPSILON, share: float = SHARE) -> Verdict:
    """judge() plus the arms to grow (see the module docstring). `can_grow`: the arms that may get a seed now
    (below `max` and with no seed already running); None: every arm."""
    verdict = judge(settings, baseline, a0, level)
    if verdict.decided:
        return verdict
    if not verdict.p_chosen:  # an arm with fewer than 2 seeds (its others failed): those arms first
        short = [k for k, arm in [*settings.items(), (BASELINE, baseline)] if len(arm) < 2]
        verdict.grow = [k for k in short if can_grow is None or k in can_grow]
        return verdict
    contenders = [k for k in settings if verdict.p_chosen.get(k, 0.0) >= epsilon]
    if verdict.chosen is not None and verdict.chosen not in contenders:
        contenders.append(verdict.chosen)
    candidates = [k for k in contenders + [BASELINE] if can_grow is None or k in can_grow]
    if not candidates:
        return verdict
    leader = max(verdict.p_chosen, key=lambda k: verdict.p_chosen[k])  # the outcome the seeds lean to
    now = verdict.p_chosen[leader]
    for key in candidates:
        if key == BASELINE:
            p = choice_probabilities(settings, one_more_seed(baseline), a0)
        else:
            p = choice_probabilities({**settings, key: one_more_seed(settings[key])}, baseline, a0)
        verdict.values[key] = max(0.0, p.get(leader, 0.0) - now)
    top = max(verdict.values.values())
    if top <= 0:  # no arm moves the leader (e.g. Monte Carlo noise only): grow every contender and the baseline
        verdict.grow = candidates
    else:
        verdict.grow = [k for k in candidates if verdict.values[k] >= share * top]
    return verdict


# ------------------------------------------------------------------------------------------- the folder's values


@dataclass
class Selection:
    """One selection's per-seed values, as arms: {arm: {seed: (clean, robust at D)}} for its settings and its
    baseline. An arm is a GROUP_KEYS tuple (orchestrator.analysis.curves), the same for a trial row and a config."""

    key: tuple                                          # SELECTION_KEYS values
    settings: dict[tuple, dict[int, tuple[float, float]]]
    baseline_arm: tuple
    baseline: dict[int, tuple[float, float]]

    def arrays(self, seeds: dict[tuple, list[int]] | None = None) -> tuple[dict[tuple, np.ndarray], np.ndarray]:
        """(settings, baseline) as (n, 2) arrays, in seed order; `seeds`: only those seeds of each arm."""
        def array(arm, values):
            keep = sorted(values) if seeds is None else [s for s in seeds.get(arm, []) if s in values]
            return np.array([values[s] for s in keep], dtype=float).reshape(-1, 2)
        return ({arm: array(arm, v) for arm, v in self.settings.items()},
                array(self.baseline_arm, self.baseline))


def arm_of(row) -> tuple:
    """The arm of a trials row or a TrialConfig: its GROUP_KEYS values (every key but seed and trial_id)."""
    from orchestrator.analysis.curves import GROUP_KEYS

    get = row.get if isinstance(row, dict) else (lambda k: getattr(row, k))
    return tuple(None if _missing(get(k)) else get(k) for k in GROUP_KEYS)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def selections(ok_trials, robustness, a0: float, attacks: list[str] | None = None) -> list[Selection]:
    """The selections of a folder's finished trials (those of `attacks`; None: every attack), with each arm's
    per-seed (clean, robust at D) values. D is best.parquet's d_used: the same selection aggregate makes."""
    from orchestrator.analysis.aggregate import select_best, summarize
    from orchestrator.analysis.curves import CLEAN, GROUP_KEYS, SELECTION_KEYS
    from orchestrator.analysis.stats import per_seed_values

    if not len(ok_trials):
        return []
    best = select_best(summarize(ok_trials, robustness, ok_trials.iloc[0:0]), a0=a0)
    if attacks is not None:
        best = best[best["attack"].isin(attacks)]
    values = per_seed_values(ok_trials, robustness)
    values = values[values["role"].isin(["trial", "baseline"])]
    per_arm: dict[tuple, dict[tuple, dict[int, float]]] = {}  # arm -> (attack, metric, eps) -> seed -> value
    for row in values.itertuples(index=False):
        r = row._asdict()
        point = (r["attack"], r["metric"], float(r["eps"]))
        per_arm.setdefault(arm_of(r), {}).setdefault(point, {})[int(r["seed"])] = float(r["value"])
    out = []
    for key, part in best.groupby(SELECTION_KEYS, dropna=False, sort=True):
        _, _task, _reg, _arch, attack, metric = key
        d_used = float(part["d_used"].iloc[0])
        if not math.isfinite(d_used):
            continue
        settings = {}
        for row in part.sort_values(["alpha", "th"]).itertuples(index=False):
            r = {**row._asdict(), "role": "trial"}
            arm = arm_of(r)
            settings[arm] = _pairs(per_arm.get(arm, {}), attack, metric, d_used, CLEAN)
        first = next(iter(settings))
        base_arm = _baseline_arm(per_arm, first, GROUP_KEYS)
        out.append(Selection(key=_plain(key), settings=settings, baseline_arm=base_arm,
                             baseline=_pairs(per_arm.get(base_arm, {}), attack, metric, d_used, CLEAN)))
    return out


def _pairs(points: dict[tuple, dict[int, float]], attack: str, metric: str, eps: float, clean: str):
    clean_values = points.get((clean, "accuracy", 0.0), {})
    robust = points.get((attack, metric, eps), {})
    return {s: (clean_values[s], robust[s]) for s in sorted(set(clean_values) & set(robust))}


def _baseline_arm(per_arm: dict[tuple, dict], setting_arm: tuple, group_keys: list[str]) -> tuple:
    """The baseline arm of a setting: same sweep, task and arch, role baseline (aggregate's pairing)."""
    want = dict(zip(group_keys, setting_arm, strict=True))
    for arm in per_arm:
        have = dict(zip(group_keys, arm, strict=True))
        if have["role"] == "baseline" and all(have[k] == want[k] for k in ("sweep", "task", "arch")):
            return arm
    return ("baseline-missing",) + setting_arm


def _plain(key: tuple) -> tuple:
    return tuple(None if _missing(v) else v for v in key)


# --------------------------------------------------------------------------------------------------- one round


DECIDED = "decided"  # why a race stopped: every selection it decides is decided ...
AT_MAX = "max reached"  # ... or the arms that would decide the rest have `max` seeds


@dataclass
class Round:
    """What the race does next: the arms that get one more seed, each selection's verdict, and, when nothing
    more will run, why it stopped."""

    grow: list[tuple]
    verdicts: dict[tuple, Verdict]
    stopped: str | None = None


def next_round(sels: list[Selection], tried: dict[tuple, int], busy: set[tuple], max_seeds: int, a0: float,
               level: float, epsilon: float = EPSILON, share: float = SHARE,
               seeds: dict[tuple, list[int]] | None = None) -> Round:
    """Decide every selection on the finished seeds and say which arms grow by one seed.

    `tried`: seeds started per arm (finished, failed or running); an arm with `max_seeds` of them, or one in
    `busy` (a seed of it still running), does not grow now. `seeds`: which seeds of each arm count (the replay's
    seed orders); None: all the finished ones. `stopped` is set once nothing grows and nothing is busy."""
    grow: list[tuple] = []
    verdicts = {}
    for sel in sels:
        settings, baseline = sel.arrays(seeds)
        may = {arm for arm in [*settings, sel.baseline_arm] if tried.get(arm, 0) < max_seeds and arm not in busy}
        can_grow = {arm for arm in settings if arm in may} | ({BASELINE} if sel.baseline_arm in may else set())
        verdict = decide(settings, baseline, a0, level, can_grow, epsilon, share)
        verdicts[sel.key] = verdict
        for key in verdict.grow:
            arm = sel.baseline_arm if key == BASELINE else key
            if arm not in grow:
                grow.append(arm)
    stopped = None
    if not grow and not busy:
        stopped = DECIDED if all(v.decided for v in verdicts.values()) else AT_MAX
    return Round(grow=grow, verdicts=verdicts, stopped=stopped)


def label(arm: tuple) -> str:
    """A readable name of an arm: `mnist5k/mnist5k Th 0.2 alpha 4` or `mnist5k baseline`."""
    from orchestrator.analysis.curves import GROUP_KEYS

    a = dict(zip(GROUP_KEYS, arm, strict=True))
    if a["role"] == "baseline":
        return f"{a['task']} baseline"
    return f"{a['task']}/{a['reg_data']} Th {a['th']:g} alpha {a['alpha']:g}"


def selection_label(key: tuple) -> str:
    """`mnist5k / mnist5k / gaussian` (SELECTION_KEYS: sweep, task, reg_data, arch, attack, metric)."""
    _, task, reg_data, _arch, attack, metric = key
    return f"{task} / {reg_data} / {attack}" + ("" if metric == "accuracy" else f" ({metric})")


def verdict_record(verdict: Verdict) -> dict:
    """A verdict as JSON for the race's record: the chosen setting, its p_chosen, decided, and the arms grown."""
    chosen = "none" if verdict.chosen is None else label(verdict.chosen)
    return {"chosen": chosen, "p_chosen": round(verdict.confidence_of_choice, 4), "decided": verdict.decided,
            "grow": [a if a == BASELINE else label(a) for a in verdict.grow]}
