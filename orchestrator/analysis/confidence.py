"""How sure is a choice of (Th, alpha)? Intervals for R0/U0 and RD/UD, P(acceptable) and P(chosen), from seeds.

One selection (one pair x attack x metric) at a time: per seed, the clean accuracy and the value at D of every
regularized setting and of the baseline they are all compared with. The paper's rule (aggregate.select_best) turns
the seed means into one choice; this module says how far the seeds leave that choice open.

The method. The unknown quantity is each group's true mean (over infinitely many seeds) of the two per-seed values.
For one ratio R/U of a setting's mean over the baseline's, the classical small-sample answer is Welch's t: the two
sides are independent models with their own spreads, the linearised ratio (R - rho U) / U has the standard error
sqrt(s_R^2 / n_R + rho^2 s_U^2 / n_U) and the Welch-Satterthwaite df. Its 90% interval covers at 3 seeds (a
bootstrap of 3 values cannot: its spread is about 0.8 of the true one, with no t tail; and independent
reference-prior t posteriors of the two means, mean + s / sqrt(n) * t_{n-1} each, over-cover, 95-96% at 3 seeds, as
the sum of two t's has heavier tails than the difference needs). A draw here makes every ratio follow its own
Welch t: the seed means plus normal deviations (a group's two values together, with their sample covariance / n,
so a seed good clean and good at D moves both; the baseline's deviation the same for every setting, since
select_best compares them all with one baseline) times sqrt(df / chi2_df) per ratio, the chi2 of one draw nested
so that the ratios' scales move together (_draw_ratios). Then, in each draw:

- R0/U0 and RD/UD are the ratios of the drawn means; the interval is the central `level` quantiles over draws;
- a setting is acceptable when drawn R0/U0 >= a0 and RD/UD > 1, as select_best says; `p_acceptable` is the share;
- the rule picks the largest drawn RD/UD among the acceptable (ties: larger R0/U0, then the order given, which the
  caller makes select_best's: smaller alpha, then smaller Th); `p_chosen` is the share of draws that pick it, and
  1 - sum(p_chosen) the share in which nothing is acceptable.

Why this is honest at 3 seeds is checked by simulation in tests/test_confidence.py (coverage of the ratio intervals
at 3 and 7 seeds; calibration of p_chosen) and argued in docs/results.md ("How sure is the choice?").

Edge cases: a group with fewer than 2 seeds has no spread, so no posterior: every number that needs it is NaN and
`note` says which group. A drawn baseline mean <= 0 (possible in a t tail when the baseline's accuracy at D is
near 0) makes the ratio undefined: as `curves.ratio` does for a zero baseline, such a draw is not acceptable and
counts as +inf in the interval (the ratio is unbounded there, so the interval's top may be inf).

Pure numpy, no I/O, no Ray: the aggregate fills best.parquet with it, and a launch may ask it where more seeds
would decide a selection. Deterministic: a seeded generator, the same input gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.90  # central probability of every interval
DRAWS = 4000  # p_chosen's Monte Carlo error is at most 0.5 / sqrt(DRAWS) = 0.008 (one standard error)
SEED = 0


@dataclass(frozen=True)
class ChoiceConfidence:
    """The answer for one selection; arrays are per setting, in the order given.

    r0u0_low/high, rdud_low/high: central `level` intervals of R0/U0 and RD/UD; p_acceptable: P(R0/U0 >= a0 and
    RD/UD > 1); p_chosen: P(the rule picks this setting); p_none: P(no setting is acceptable). NaN everywhere when
    `note` is not empty (it names the group with fewer than 2 seeds); the intervals of a setting with enough seeds
    are still given when only another setting lacks them.
    """

    r0u0_low: np.ndarray
    r0u0_high: np.ndarray
    rdud_low: np.ndarray
    rdud_high: np.ndarray
    p_acceptable: np.ndarray
    p_chosen: np.ndarray
    p_none: float
    note: str = ""


def choice_confidence(settings, baseline, a0: float, level: float = LEVEL, draws: int = DRAWS,
                      seed: int = SEED) -> ChoiceConfidence:
    """The confidence of one selection.

    settings: a sequence, one item per regularized setting (in select_best's tie order), each an (n, 2) array-like:
    per seed the clean accuracy and the value at D (only seeds that have both). baseline: the same for the baseline.
    a0: the acceptability cut of R0/U0. level: the intervals' central probability. draws: posterior draws.
    The numbers are a function of the input as given, order included: pass seeds in seed order and settings in a
    fixed order, so that the same study always gives the same numbers however its rows were read.
    """
    groups = [_as_seeds(v, f"setting {i}") for i, v in enumerate(settings)]
    base = _as_seeds(baseline, "baseline")
    k = len(groups)
    nan = np.full(k, np.nan)
    rng = np.random.default_rng(seed)
    if len(base) < 2:
        return ChoiceConfidence(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy(), np.nan,
                                note=f"the baseline has {len(base)} seed(s); 2 or more give an interval")
    short = [i for i, g in enumerate(groups) if len(g) < 2]
    full = [i for i in range(k) if i not in short]
    r0u0 = np.full((draws, k), np.nan)
    rdud = np.full((draws, k), np.nan)
    if full:
        r0u0[:, full], rdud[:, full] = _draw_ratios([groups[i] for i in full], base, draws, rng)
    low, high = (1 - level) / 2, (1 + level) / 2
    r0_low, r0_high = _quantiles(r0u0, low, high)
    rd_low, rd_high = _quantiles(rdud, low, high)
    if short:
        note = "; ".join(f"setting {i} has {len(groups[i])} seed(s)" for i in short) + ": 2 or more give an interval"
        return ChoiceConfidence(r0_low, r0_high, rd_low, rd_high, nan.copy(), nan.copy(), np.nan, note=note)
    acceptable = (r0u0 >= a0) & (rdud > 1)  # NaN (undefined ratio) compares False: never acceptable
    picked = _apply_rule(acceptable, rdud, r0u0)
    p_chosen = np.array([(picked == i).mean() for i in range(k)])
    return ChoiceConfidence(r0_low, r0_high, rd_low, rd_high, acceptable.mean(axis=0), p_chosen,
                            float((picked < 0).mean()))


def _as_seeds(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1, 2) if np.size(values) else np.empty((0, 2))
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: per-seed values must be finite (leave out a seed that lacks one)")
    return array


def _draw_ratios(groups: list[np.ndarray], base: np.ndarray, draws: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(draws, k) draws of every setting's R0/U0 and of its RD/UD.

    Each ratio R/U gets Welch's t: its linearisation (R - rho U) / U, rho = R/U at the seed means, has the standard
    error sqrt(a + b), a = s_R^2 / n_R and b = rho^2 s_U^2 / n_U, and the Welch-Satterthwaite df (a + b)^2 /
    (a^2 / (n_R - 1) + b^2 / (n_U - 1)). A draw of the two means is the seed means plus normal deviations (each
    group's two values together, with the sample covariance / n; the baseline's deviation is the same for every
    setting) times sqrt(df / chi2_df): in the linear regime exactly that t. The chi2 of every ratio of one draw are
    nested sums of one chain of gamma increments (the smallest df first), so the ratios' scales move together.
    """
    k = len(groups)
    deviation_u = _normal_deviations(base, draws, rng)  # (draws, 2)
    deviations = [_normal_deviations(g, draws, rng) for g in groups]
    mean_u = base.mean(axis=0)
    df = np.array([[_welch_df(g[:, j], base[:, j]) for j in (0, 1)] for g in groups])  # (k, 2)
    scale = _t_scales(df.ravel(), draws, rng).reshape(draws, k, 2)
    ratios = np.empty((2, draws, k))
    for i, g in enumerate(groups):
        mean_r = g.mean(axis=0)
        r = mean_r + deviations[i] * scale[:, i, :]
        u = mean_u + deviation_u * scale[:, i, :]
        ratios[0, :, i], ratios[1, :, i] = _ratio(r[:, 0], u[:, 0]), _ratio(r[:, 1], u[:, 1])
    return ratios[0], ratios[1]


def _normal_deviations(seeds: np.ndarray, draws: int, rng) -> np.ndarray:
    """(draws, 2) normal draws with covariance S / n (S the sample covariance of the seeds' two values): g @ centred
    has covariance (n - 1) S, so dividing by sqrt(n (n - 1)) gives S / n. No Cholesky, so a rank-deficient S (a
    constant column, 2 seeds) is fine: that direction does not move."""
    n = len(seeds)
    centred = seeds - seeds.mean(axis=0)
    return (rng.standard_normal((draws, n)) @ centred) / np.sqrt(n * (n - 1))


def _welch_df(r: np.ndarray, u: np.ndarray) -> float:
    """Welch-Satterthwaite df of the linearised ratio mean(r) / mean(u); inf when neither side varies."""
    rho = r.mean() / u.mean() if u.mean() > 0 else 1.0
    a = r.var(ddof=1) / len(r)
    b = rho**2 * u.var(ddof=1) / len(u)
    if a + b <= 0:
        return np.inf
    return (a + b) ** 2 / (a**2 / (len(r) - 1) + b**2 / (len(u) - 1))


def _t_scales(df: np.ndarray, draws: int, rng) -> np.ndarray:
    """(draws, len(df)): sqrt(df / chi2_df) per column, 1 for an infinite df. The chi2 of one draw are nested:
    sorted by df, each is the previous one plus 2 * Gamma((its df - previous df) / 2), exactly chi2_df each."""
    finite = np.isfinite(df)
    out = np.ones((draws, len(df)))
    if finite.any():
        order = np.argsort(df[finite], kind="stable")
        sorted_df = df[finite][order]
        increments = np.diff(sorted_df, prepend=0.0) / 2
        chi2 = 2 * np.cumsum(rng.standard_gamma(increments, size=(draws, len(sorted_df))), axis=1)
        scales = np.empty_like(chi2)
        scales[:, order] = np.sqrt(sorted_df / chi2)
        out[:, finite] = scales
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / b, np.nan)


def _quantiles(ratios: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the low and high quantiles; an undefined ratio (NaN) ranks as +inf, a column of only NaN (a
    group without a posterior) gives NaN. No interpolation, so an inf end stays inf."""
    if not ratios.shape[1]:
        return np.empty(0), np.empty(0)
    ranked = np.where(np.isnan(ratios), np.inf, ratios)
    lo, hi = np.quantile(ranked, [low, high], axis=0, method="inverted_cdf")
    missing = np.isnan(ratios).all(axis=0)
    return np.where(missing, np.nan, lo), np.where(missing, np.nan, hi)


def _apply_rule(acceptable: np.ndarray, rdud: np.ndarray, r0u0: np.ndarray) -> np.ndarray:
    """Per draw, the index of the setting the paper's rule picks, -1 when none is acceptable: the largest RD/UD
    among the acceptable; among equal RD/UD the larger R0/U0; then the first in order (argmax takes the first)."""
    key = np.where(acceptable, rdud, -np.inf)
    top = key.max(axis=1, initial=-np.inf)
    tied = acceptable & (key == top[:, None])
    picked = np.argmax(np.where(tied, r0u0, -np.inf), axis=1)
    return np.where(acceptable.any(axis=1), picked, -1)
