"""Statistics of best.parquet and the curves (orchestrator.analysis.stats), checked against scipy on constructed sweeps.

The sweeps are written through the real Parquet contract (no training): every per-seed value is known, so the
Welch test, its interval and the Holm adjustment can be recomputed here independently of the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from orchestrator.analysis import aggregate, stats
from orchestrator.errors import UserError
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import key_values, write_table

EPS = [0.0, 0.25, 0.5]
REPEAT_STEP = 0.006  # repeat r adds (r - 0.5) * REPEAT_STEP: the per-seed value is the mean over the two repeats


def write_sweep(root: Path, settings: dict[tuple[float, float], dict[int, tuple[float, list[float]]]]) -> Path:
    """settings: (th, alpha) -> {seed: (clean accuracy, [gaussian accuracy per eps in EPS])}; alpha 0 = baseline;
    th = -1 with alpha 0 is the FGSM source model (role fgsm_source, its own seed, as a launch writes it).

    Each eps is written as two repeats around the given value, so a test reading the per-seed value straight from
    `settings` also checks that repeats are averaged before the test across seeds.
    """
    for (th, alpha), seeds in settings.items():
        for seed, (clean, curve) in seeds.items():
            cfg = TrialConfig(sweep="st", task="MNIST", reg_data="MNIST", seed=seed, width=4)
            # alpha 0: a baseline or the source model, as the expansion makes them
            cfg = cfg.replace(th=th, alpha=alpha) if alpha else cfg.unregularized("fgsm_source" if th < 0 else
                                                                                  "baseline")
            keys = key_values(cfg)
            write_table(root, "trials", cfg.trial_id, [{**keys, "role": cfg.role, "status": "ok", "clean_acc": clean,
                                                        "best_epoch": 1, "epochs": 1, "width": 4, "config": "{}"}])
            write_table(root, "robustness", cfg.trial_id, [
                {**keys, "attack": "gaussian", "variant": "", "group": "", "eps": eps, "repeat": r,
                 "metric": "accuracy", "value": value + (r - 0.5) * REPEAT_STEP, "images": 100, "failed": 0,
                 "whitebox": False}
                for eps, value in zip(EPS, curve, strict=True) for r in (0, 1)])
    return root


def random_settings(rng: np.random.Generator) -> dict:
    """A baseline with 5 seeds and three settings with 3, 4 and 1 seeds, each with its own spread."""
    def curves(clean, top, spread, seeds):
        return {s: (clean + rng.normal(0, 0.005), [clean - (clean - top) * e / 0.5 + rng.normal(0, spread * (1 + e))
                                                   for e in EPS]) for s in seeds}

    return {(0.0, 0.0): curves(0.98, 0.30, 0.01, range(5)),
            (0.2, 4.0): curves(0.97, 0.40, 0.04, range(3)),      # wide spread, a modest gain
            (0.8, 10.0): curves(0.95, 0.34, 0.002, range(4)),    # narrow spread, a small gain
            (0.4, 1.0): curves(0.97, 0.45, 0.01, [0])}            # one seed: no test


def per_seed(settings, th_alpha, eps_index: int) -> np.ndarray:
    return np.array([curve[eps_index] for _, curve in settings[th_alpha].values()])


@pytest.fixture()
def table(tmp_path: Path):
    settings = random_settings(np.random.default_rng(7))
    root = write_sweep(tmp_path / "st", settings)
    out = aggregate.aggregate_sweep(root, figures=False)
    return settings, root, pd.read_parquet(out["best"]), pd.read_parquet(out["summary"])


def test_welch_columns_agree_with_scipy(table) -> None:
    settings, _, best, _ = table
    best = best[best["attack"] == "gaussian"].set_index(["th", "alpha"])
    base = per_seed(settings, (0.0, 0.0), EPS.index(0.5))
    for th_alpha in [(0.2, 4.0), (0.8, 10.0)]:
        row = best.loc[th_alpha]
        assert row["d_used"] == 0.5
        mine = per_seed(settings, th_alpha, EPS.index(0.5))
        ref = sps.ttest_ind(mine, base, equal_var=False)
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        # the t-interval with Welch-Satterthwaite df, written out by hand ...
        va, vb = mine.var(ddof=1) / len(mine), base.var(ddof=1) / len(base)
        df = (va + vb) ** 2 / (va**2 / (len(mine) - 1) + vb**2 / (len(base) - 1))
        half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
        diff = mine.mean() - base.mean()
        assert row["diff"] == pytest.approx(diff, abs=1e-12)
        assert row["diff"] == pytest.approx(row["RD"] - row["UD"], abs=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((diff - half, diff + half), rel=1e-9)
        # ... and scipy's own interval of the same test
        ci = ref.confidence_interval(0.95)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # the two settings differ in spread, so the Welch df is not the pooled n_a + n_b - 2: a pooled test differs
    narrow = per_seed(settings, (0.8, 10.0), EPS.index(0.5))
    pooled = sps.ttest_ind(narrow, base, equal_var=True).pvalue
    assert best.loc[(0.8, 10.0)]["p_value"] != pytest.approx(pooled, rel=1e-3)


def test_single_seed_gives_nan_never_zero_or_inf(table) -> None:
    _, _, best, _ = table
    row = best[(best["attack"] == "gaussian") & (best["th"] == 0.4)].iloc[0]
    assert row["n"] == 1 and math.isfinite(row["diff"])
    for column in ("ci_low", "ci_high", "p_value", "p_holm"):
        assert math.isnan(row[column]), column
    assert not row["significant"]
    # the sample-level function: one value, or no spread on either side, is no test
    for a, b in (([0.5], [0.1, 0.2, 0.3]), ([0.5, 0.6], [0.1]), ([0.5, 0.5, 0.5], [0.1, 0.1]), ([], [])):
        out = stats.welch(a, b)
        assert all(math.isnan(out[k]) for k in ("ci_low", "ci_high", "p_value", "df")), (a, b, out)


def test_p_holm_is_holm_over_each_selection(table) -> None:
    _, _, best, _ = table
    for _, part in best.groupby(aggregate.SELECTION_KEYS):
        raw = part["p_value"].to_numpy()
        finite = np.isfinite(raw)
        m = finite.sum()
        # Holm written out: the k-th smallest of m p-values times (m - k + 1), running max, capped at 1
        expect = np.full(len(raw), np.nan)
        order = np.argsort(np.where(finite, raw, np.inf))[:m]
        running = 0.0
        for k, i in enumerate(order):
            running = max(running, min(1.0, (m - k) * raw[i]))
            expect[i] = running
        np.testing.assert_allclose(part["p_holm"].to_numpy(), expect, rtol=1e-12, equal_nan=True)
        assert (part["significant"] == (part["p_holm"] < 0.05)).all()


def test_holm_hand_worked_example_and_never_lowers() -> None:
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, max(0.06, 1*0.04) = 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN is not a hypothesis: m = 2 here, and the NaN stays NaN
    np.testing.assert_allclose(stats.holm([0.01, math.nan, 0.04]), [0.02, math.nan, 0.04], equal_nan=True)
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert stats.holm([]).shape == (0,)
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 12, 40):
        p = rng.uniform(0, 1, size) ** 3
        adjusted = stats.holm(p)
        assert (adjusted >= p).all() and (adjusted <= 1).all()
        order = np.argsort(p)
        assert (np.diff(adjusted[order]) >= 0).all()  # the order of the raw p-values is kept


def test_curve_significance_equals_per_seed_tests(table) -> None:
    settings, _, best, summary = table
    gauss = summary[(summary["attack"] == "gaussian") & (summary["variant"] == "")]
    base_rows = gauss[gauss["role"] == "baseline"]
    mine_rows = gauss[(gauss["th"] == 0.8) & (gauss["alpha"] == 10.0)]
    got = stats.curve_significance(mine_rows, base_rows)
    raw = [sps.ttest_ind(per_seed(settings, (0.8, 10.0), i), per_seed(settings, (0.0, 0.0), i),
                         equal_var=False).pvalue for i in range(len(EPS))]
    assert list(got) == EPS
    np.testing.assert_allclose(list(got.values()), stats.holm(raw), rtol=1e-9)
    assert stats.significant_eps(mine_rows, base_rows) == [e for e, q in got.items() if q < 0.05]
    # a single-seed curve has no test at any eps
    assert stats.curve_significance(gauss[gauss["th"] == 0.4], base_rows) == {}


# --------------------------------------------------------------------------------------------------- confirm seeds


def confirm_settings() -> dict:
    """Seeds 0-3. On seeds 0-2 setting A (Th 0.2) beats B (Th 0.8) at D; seed 3 of B is so strong that B wins on
    the mean over all four seeds, and A's seed 3 falls below the baseline's. Both keep R0/U0 >= 0.9."""
    def seeds(clean, tops):
        return {s: (clean + 0.001 * s, [clean, (clean + top) / 2, top]) for s, top in enumerate(tops)}

    return {(-1.0, 0.0): {1000: (0.99, [0.99, 0.5, 0.1])},  # the FGSM source: seed 1000 is not a study seed
            (0.0, 0.0): seeds(0.98, [0.30, 0.32, 0.31, 0.40]),
            (0.2, 4.0): seeds(0.97, [0.60, 0.61, 0.62, 0.38]),
            (0.8, 10.0): seeds(0.95, [0.50, 0.51, 0.52, 0.95])}


def test_confirm_seeds_chooses_on_training_seeds_only(tmp_path: Path) -> None:
    settings = confirm_settings()
    root = write_sweep(tmp_path / "st", settings)
    best = pd.read_parquet(aggregate.aggregate_sweep(root, figures=False, confirm_seeds=1)["best"])
    best = best[best["attack"] == "gaussian"].set_index(["th", "alpha"])
    # on all seeds B wins; on seeds 0-2 (seed 3, the highest, held out) A wins
    assert best.loc[(0.8, 10.0), "chosen"] and not best.loc[(0.2, 4.0), "chosen"]
    assert best.loc[(0.2, 4.0), "train_chosen"] and not best.loc[(0.8, 10.0), "train_chosen"]
    assert set(best["held_out_seeds"]) == {"3"}  # not the FGSM source's seed 1000
    assert best["confirmed_rd_over_ud"].dtype == "float64"
    # the confirmed ratios are seed 3's alone, against seed 3's baseline
    for th_alpha in [(0.2, 4.0), (0.8, 10.0)]:
        clean, curve = settings[th_alpha][3]
        base_clean, base_curve = settings[(0.0, 0.0)][3]
        assert best.loc[th_alpha, "confirmed_r0_over_u0"] == pytest.approx(clean / base_clean)
        assert best.loc[th_alpha, "confirmed_rd_over_ud"] == pytest.approx(curve[-1] / base_curve[-1])
    # A, chosen on seeds 0-2, does not hold on seed 3 (0.38 against the baseline's 0.40), and the CLI says so
    assert best.loc[(0.2, 4.0), "confirmed_rd_over_ud"] == pytest.approx(0.38 / 0.40)
    assert stats.describe_confirmation(best.reset_index()) == [
        "MNIST / MNIST / gaussian: Th=0.2 alpha=4 on held-out seeds 3: R0/U0=0.990, RD/UD=0.950 (does not hold)"]
    # the choice equals a plain aggregate of a sweep that never had seed 3
    without = {k: {s: v for s, v in seeds.items() if s not in (3, 1000)} for k, seeds in settings.items()}
    plain = pd.read_parquet(aggregate.aggregate_sweep(write_sweep(tmp_path / "no3", without), figures=False)["best"])
    plain = plain[(plain["attack"] == "gaussian") & plain["chosen"]]
    assert plain[["th", "alpha"]].values.tolist() == [[0.2, 4.0]]
    # K = 2 holds out seeds 2 and 3
    best2 = pd.read_parquet(aggregate.aggregate_sweep(root, figures=False, confirm_seeds=2)["best"])
    assert set(best2["held_out_seeds"]) == {"2,3"}


def test_confirm_seeds_bad_k_writes_nothing(tmp_path: Path) -> None:
    root = write_sweep(tmp_path / "st", confirm_settings())
    for k in (0, 4, -1):
        with pytest.raises(UserError, match=rf"--confirm-seeds {k}: .*4 finished seed\(s\) \(0, 1, 2, 3\)"):
            aggregate.aggregate_sweep(root, figures=False, confirm_seeds=k)
    assert not (root / "best.parquet").exists() and not (root / "summary.parquet").exists()


def test_confirm_seeds_choice_without_held_out_trials_is_not_measured(tmp_path: Path) -> None:
    settings = confirm_settings()
    settings[(0.2, 4.0)].pop(3)  # A, the training seeds' choice, never ran seed 3
    root = write_sweep(tmp_path / "st", settings)
    best = pd.read_parquet(aggregate.aggregate_sweep(root, figures=False, confirm_seeds=1)["best"])
    a = best[(best["attack"] == "gaussian") & (best["th"] == 0.2)].iloc[0]
    assert a["train_chosen"] and math.isnan(a["confirmed_rd_over_ud"])
    line = [x for x in stats.describe_confirmation(best) if "gaussian" in x]
    assert line == ["MNIST / MNIST / gaussian: Th=0.2 alpha=4 on held-out seeds 3: not measured "
                    "(no finished trial of this setting or of its baseline there)"]
