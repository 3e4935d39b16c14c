"""Statistics on top of the paper's selection rule: is a setting really better than the baseline, and does the
choice of (Th, alpha) hold on seeds it never saw?

Why these tests. The papers show mean +/- SEM bands and pick the largest RD/UD among a grid of (Th, alpha); with a
handful of seeds and a dozen grid points the winner is partly chosen by noise. So for every setting x attack we
test RD - UD with Welch's t-test (seeds of a setting and seeds of the baseline are independent models with possibly
different spreads, so no pooled variance and no pairing by seed), correct for the many settings compared within one
selection with Holm-Bonferroni, and optionally re-run the selection on all but the K highest seeds and report the
chosen setting's ratios on those K held-out seeds.

Conventions, in one place:
- the unit is one trial (one seed): repeats within a trial are averaged first (aggregate.per_trial_values);
- fewer than two values on either side, or no spread at all on both sides, gives NaN for the interval and the
  p-value (never 0 or inf): no variance estimate, no test;
- Holm counts only the finite p-values of a family; a NaN p-value stays NaN and is never significant.

Pandas and scipy are imported inside functions: the CLI imports aggregate (and so this module) to build its parser.
"""

from __future__ import annotations

import math

from orchestrator.analysis.curves import CLEAN, GROUP_KEYS, SELECTION_KEYS, SETTING_KEYS, per_trial_values
from orchestrator.errors import UserError

LEVEL = 0.95  # two-sided confidence level of ci_low / ci_high
ALPHA_SIGNIFICANT = 0.05  # p_holm below this is `significant`; also the curve markers' threshold
STAT_COLUMNS = ["diff", "ci_low", "ci_high", "p_value", "p_holm", "significant"]
CONFIDENCE_COLUMNS = ["r0_over_u0_low", "r0_over_u0_high", "rd_over_ud_low", "rd_over_ud_high", "p_acceptable",
                      "p_chosen", "confidence", "decided"]
CONFIRM_COLUMNS = ["held_out_seeds", "train_chosen", "confirmed_r0_over_u0", "confirmed_rd_over_ud"]


# --------------------------------------------------------------------------------------------------- tests


def welch_from_moments(mean_a, var_a, n_a, mean_b, var_b, n_b, level: float = LEVEL):
    """Welch's two-sided t-test and t-interval of mean_a - mean_b from the sample means, the sample variances
    (ddof=1) and the counts. Vectorized over numpy arrays.

    Returns (diff, ci_low, ci_high, p_value, df). df is the Welch-Satterthwaite degrees of freedom. Where either
    n < 2, or both variances are 0, everything but diff is NaN.
    """
    import numpy as np
    from scipy import stats as sps

    mean_a, var_a, n_a, mean_b, var_b, n_b = (np.asarray(x, dtype=float)
                                              for x in (mean_a, var_a, n_a, mean_b, var_b, n_b))
    diff = mean_a - mean_b
    usable = (n_a >= 2) & (n_b >= 2) & np.isfinite(var_a) & np.isfinite(var_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        sa = np.where(usable, var_a / n_a, np.nan)
        sb = np.where(usable, var_b / n_b, np.nan)
        se2 = sa + sb
        usable &= se2 > 0
        se = np.where(usable, np.sqrt(se2), np.nan)
        df = np.where(usable, se2**2 / (sa**2 / (n_a - 1) + sb**2 / (n_b - 1)), np.nan)
        t = diff / se
        p = np.where(usable, 2 * sps.t.sf(np.abs(t), df), np.nan)
        half = sps.t.ppf(0.5 + level / 2, df) * se
    return diff, diff - half, diff + half, p, df


def welch(a, b, level: float = LEVEL) -> dict[str, float]:
    """Welch's test of mean(a) - mean(b) on two samples (one value per seed): diff, ci_low, ci_high, p_value, df."""
    import numpy as np

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    mean_a = a.mean() if len(a) else math.nan
    mean_b = b.mean() if len(b) else math.nan
    var_a = a.var(ddof=1) if len(a) >= 2 else math.nan
    var_b = b.var(ddof=1) if len(b) >= 2 else math.nan
    diff, low, high, p, df = welch_from_moments(mean_a, var_a, len(a), mean_b, var_b, len(b), level)
    return {"diff": float(diff), "ci_low": float(low), "ci_high": float(high), "p_value": float(p), "df": float(df)}


def holm(p_values):
    """Holm-Bonferroni adjusted p-values, same order as the input. NaN stays NaN and is not counted in m.

    Sorted ascending, the i-th smallest (1-based) becomes max over j <= i of min(1, (m - j + 1) * p_(j)): never
    below the raw p-value, never above 1, and monotone in the raw p-values.
    """
    import numpy as np

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if not m:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# --------------------------------------------------------------------------------------------------- best.parquet


def per_seed_values(ok_trials, robustness):
    """One value per trial x attack x eps x metric: repeats averaged (per_trial_values), then, for attacks
    evaluated per variant (corruptions), the mean over variants, the same reduction curves_for_selection makes."""
    values = per_trial_values(ok_trials, robustness)
    keys = GROUP_KEYS + ["trial_id", "seed", "attack", "eps", "metric"]
    return values.groupby(keys, dropna=False, sort=False)["value"].mean().reset_index()


def _key(values) -> tuple:
    """A hashable lookup key in which every kind of null is the same None (NaN != NaN in dict lookups)."""
    import pandas as pd

    return tuple(None if pd.isna(v) else v for v in values)


# The group of a setting's seeds and of its baseline's, each with the curve point (eps last).
_SETTING_COLS = ["sweep", "task", "reg_data", "arch"] + SETTING_KEYS + ["attack", "metric", "eps"]
_BASE_COLS = ["sweep", "task", "arch", "attack", "metric", "eps"]


def add_statistics(best, values):
    """best.parquet plus diff, ci_low, ci_high, p_value, p_holm, significant at each row's d_used.

    The setting's per-seed values are tested against the per-seed values of its task's baseline (same sweep, task,
    arch) at the same attack, metric and eps; Holm runs over the settings of one selection (SELECTION_KEYS: sweep,
    task, reg_data, arch, attack, metric).
    """
    import numpy as np

    best = best.copy()
    samples: dict[tuple, list[float]] = {}
    setting_cols, base_cols = _SETTING_COLS, _BASE_COLS
    for role, cols in (("trial", setting_cols), ("baseline", base_cols)):
        part = values[values["role"] == role]
        for key, group in part.groupby(cols, dropna=False, sort=False):
            samples[(role,) + _key(key)] = group["value"].tolist()
    stats = []
    for row in best.itertuples(index=False):
        r = row._asdict()
        if r["attack"] == CLEAN or not math.isfinite(r["d_used"]):
            stats.append(welch([], []))
            continue
        mine = samples.get(("trial",) + _key(r[c] if c != "eps" else r["d_used"] for c in setting_cols), [])
        base = samples.get(("baseline",) + _key(r[c] if c != "eps" else r["d_used"] for c in base_cols), [])
        stats.append(welch(mine, base))
    for column in ("diff", "ci_low", "ci_high", "p_value"):
        best[column] = np.array([s[column] for s in stats], dtype=float)
    best["p_holm"] = np.nan
    for _, idx in best.groupby(SELECTION_KEYS, dropna=False).groups.items():
        best.loc[idx, "p_holm"] = holm(best.loc[idx, "p_value"].to_numpy())
    best["significant"] = (best["p_holm"] < ALPHA_SIGNIFICANT).astype(bool)
    return best


def seed_pairs(values) -> dict[tuple, object]:
    """{(role, *group key, attack, metric, eps): (n, 2) array}: per trial of the group, its clean accuracy and its
    value at that attack, metric and eps; only trials that have both; in seed order. The group key is the one
    add_statistics uses (a setting: sweep, task, reg_data, arch, target, range, th, alpha; the baseline: sweep,
    task, arch)."""
    import numpy as np

    clean = values[values["attack"] == CLEAN].drop_duplicates("trial_id").set_index("trial_id")["value"]
    attacked = values[values["attack"] != CLEAN].sort_values("seed", kind="stable")  # not the files' order
    pairs: dict[tuple, object] = {}
    for role, cols in (("trial", _SETTING_COLS), ("baseline", _BASE_COLS)):
        part = attacked[attacked["role"] == role]
        for key, group in part.groupby(cols, dropna=False, sort=False):
            both = np.column_stack([clean.reindex(group["trial_id"]).to_numpy(dtype=float),
                                    group["value"].to_numpy(dtype=float)])
            pairs[(role,) + _key(key)] = both[np.isfinite(both).all(axis=1)]
    return pairs


def add_confidence(best, values, confidence: float):
    """best.parquet plus CONFIDENCE_COLUMNS: per setting the 90% intervals of R0/U0 and RD/UD, P(acceptable) and
    P(chosen) from orchestrator.analysis.confidence, the `confidence` asked for, and `decided` (the same on every
    row of a selection): the chosen setting's p_chosen >= confidence, or where nothing is chosen, P(no setting
    acceptable) >= confidence. A selection with a setting or baseline of fewer than 2 seeds is never decided."""
    import numpy as np

    from orchestrator.analysis.confidence import choice_confidence

    best = best.copy()
    for column in CONFIDENCE_COLUMNS[:6]:
        best[column] = np.nan
    best["confidence"] = float(confidence)
    best["decided"] = False
    pairs = seed_pairs(values)
    empty = np.empty((0, 2))
    for _, idx in best.groupby(SELECTION_KEYS, dropna=False, sort=False).groups.items():
        # select_best's last tie-breaks: smaller alpha, then smaller Th (then best's own order)
        part = best.loc[idx].sort_values(["alpha", "th"], kind="stable")
        d_used = part["d_used"].unique()
        if part["attack"].iloc[0] == CLEAN or len(d_used) != 1:
            continue  # settings at different D (eps grids of several spec versions) share no one baseline value
        settings = [pairs.get(("trial",) + _key([row[c] for c in _SETTING_COLS[:-1]] + [d_used[0]]), empty)
                    for row in part.to_dict("records")]
        first = part.iloc[0]
        baseline = pairs.get(("baseline",) + _key([first[c] for c in _BASE_COLS[:-1]] + [d_used[0]]), empty)
        c = choice_confidence(settings, baseline, a0=float(part["a0"].iloc[0]))
        for column, got in zip(CONFIDENCE_COLUMNS[:6], (c.r0u0_low, c.r0u0_high, c.rdud_low, c.rdud_high,
                                                        c.p_acceptable, c.p_chosen), strict=True):
            best.loc[part.index, column] = got
        chosen = part["chosen"].to_numpy()
        sure = c.p_chosen[chosen][0] if chosen.any() else c.p_none
        best.loc[part.index, "decided"] = bool(sure >= confidence)  # NaN: not decided
    return best


# --------------------------------------------------------------------------------------------------- confirm seeds


def held_out_seeds(ok_trials, k: int) -> tuple[list[int], list[int]]:
    """(training seeds, held-out seeds): the K highest seed ids among the finished trials are held out. Only the
    seeds of regularized trials and baselines count: the source model of transferred attacks has a seed of its own
    (e.g. 1000) that is not one of the study's seeds."""
    studied = ok_trials[ok_trials["role"].isin(["trial", "baseline"])]
    seeds = sorted({int(s) for s in studied["seed"].dropna()})
    if int(k) != k or k < 1 or k >= len(seeds):
        raise UserError(f"--confirm-seeds {k}: hold out at least 1 seed and keep at least 1 for choosing; "
                        f"this sweep has {len(seeds)} finished seed(s) ({', '.join(map(str, seeds)) or 'none'})")
    return seeds[:-k], seeds[-k:]


def confirm_selection(best, ok_trials, k: int | None, choose):
    """best.parquet plus held_out_seeds, train_chosen, confirmed_r0_over_u0, confirmed_rd_over_ud.

    With k: the paper's rule is re-run on the trials of the training seeds only (baselines included) to give
    `train_chosen`, and the ratios of every setting are recomputed on the K held-out seeds alone (against the
    held-out baselines' mean). Without k the columns are there but empty ("", False, NaN), so the schema of
    best.parquet never depends on a flag. `choose(trials)` is the paper's rule on a subset of the finished trials
    (aggregate passes it in, so this module does not import aggregate).
    """
    import numpy as np

    best = best.copy()
    best["held_out_seeds"] = ""
    best["train_chosen"] = False
    best["confirmed_r0_over_u0"] = np.nan
    best["confirmed_rd_over_ud"] = np.nan
    columns = list(best.columns)
    if k is None:
        return best
    train, held = held_out_seeds(ok_trials, k)
    keys = SELECTION_KEYS + SETTING_KEYS

    def rerun(seeds):  # the source model's trial plays no part in the selection, whichever side its seed falls on
        return choose(ok_trials[ok_trials["seed"].isin(seeds)])

    on_train = rerun(train)[keys + ["chosen"]].rename(columns={"chosen": "train_chosen"})
    on_held = rerun(held)[keys + ["r0_over_u0", "rd_over_ud"]].rename(
        columns={"r0_over_u0": "confirmed_r0_over_u0", "rd_over_ud": "confirmed_rd_over_ud"})
    best = best.drop(columns=CONFIRM_COLUMNS[1:])
    best = best.merge(on_train, on=keys, how="left").merge(on_held, on=keys, how="left")
    best["train_chosen"] = best["train_chosen"].fillna(False).astype(bool)
    best = best.astype({"confirmed_r0_over_u0": "float64", "confirmed_rd_over_ud": "float64"})  # empty merge: object
    best["held_out_seeds"] = ",".join(map(str, held))
    return best[columns]


def describe_confirmation(best) -> list[str]:
    """One line per selection: the setting chosen on the training seeds and its ratios on the held-out seeds."""
    lines: list[str] = []
    if not len(best) or not best["held_out_seeds"].astype(bool).any():
        return lines
    for key, part in best.groupby(SELECTION_KEYS, dropna=False):
        _, task, reg_data, _arch, attack, _metric = key
        where = f"{task} / {reg_data} / {attack}"
        chosen = part[part["train_chosen"]]
        if not len(chosen):
            lines.append(f"{where}: no acceptable setting on the training seeds")
            continue
        c = chosen.iloc[0]
        head = f"{where}: Th={c['th']:g} alpha={c['alpha']:g} on held-out seeds {c['held_out_seeds']}: "
        r0u0, rdud = c["confirmed_r0_over_u0"], c["confirmed_rd_over_ud"]
        if not (math.isfinite(r0u0) and math.isfinite(rdud)):
            lines.append(head + "not measured (no finished trial of this setting or of its baseline there)")
            continue
        holds = bool(r0u0 >= c["a0"] and rdud > 1)
        lines.append(head + f"R0/U0={r0u0:.3f}, RD/UD={rdud:.3f} ({'holds' if holds else 'does not hold'})")
    return lines


# --------------------------------------------------------------------------------------------------- curves


def curve_significance(setting_rows, baseline_rows) -> dict[float, float]:
    """{eps: Holm-adjusted Welch p-value} for one curve of one setting against the baseline's curve.

    Both arguments are summary rows of one attack and metric (mean, std, n per eps across seeds; the summary's std
    is the sample std of the per-trial values, so the test equals the test on the per-seed values). Holm runs over
    the eps of this curve. Eps without a finite p-value are left out.
    """
    columns = ["eps", "mean", "std", "n"]
    both = setting_rows[columns].merge(baseline_rows[columns], on="eps", suffixes=("_r", "_u")).sort_values("eps")
    if not len(both):
        return {}
    _, _, _, p, _ = welch_from_moments(both["mean_r"], both["std_r"] ** 2, both["n_r"],
                                       both["mean_u"], both["std_u"] ** 2, both["n_u"])
    adjusted = holm(p)
    return {float(eps): float(q) for eps, q in zip(both["eps"], adjusted, strict=True) if math.isfinite(q)}


def significant_eps(setting_rows, baseline_rows) -> list[float]:
    """The eps at which the setting's curve differs from the baseline's (Holm-adjusted Welch p < 0.05)."""
    return [eps for eps, q in curve_significance(setting_rows, baseline_rows).items() if q < ALPHA_SIGNIFICANT]

