"""Aggregator tests on a hand-made results set (no training: rows written through the Parquet contract).

`make_results` is also imported by test_report.py; it builds a small but complete sweep: a baseline and four
regularized (Th, alpha) settings of MNIST x MNIST with three seeds (one setting with a single seed), one failed
trial, noise / FGSM / boundary / corruption rows with repeats, spectra, layer weights and epochs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator import aggregate
from orchestrator.errors import UserError
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import key_values, write_table

EPS = [0.0, 0.25, 0.5]
SEEDS = [0, 1, 2]
# name -> (th, alpha, clean accuracy, gaussian accuracy at eps 0.5, fgsm accuracy at eps 0.5, boundary score, seeds)
SETTINGS = {
    "baseline": (0.0, 0.0, 0.98, 0.30, 0.20, 0.010, SEEDS),
    "A": (0.2, 4.0, 0.97, 0.60, 0.35, 0.020, SEEDS),   # the documented winner: RD/UD 2.0, R0/U0 ~0.99
    "B": (0.8, 10.0, 0.80, 0.75, 0.50, 0.030, SEEDS),  # better RD/UD (2.5) but R0/U0 ~0.82 < A0 = 0.9
    "C": (0.4, 1.0, 0.985, 0.25, 0.18, 0.012, SEEDS),  # clean fine, but RD/UD < 1
    "D": (0.6, 4.0, 0.96, 0.50, 0.30, 0.015, [0]),     # acceptable, RD/UD ~1.67, a single seed (SEM NaN)
}
REPEAT_STEP = 0.004  # repeat r adds r * REPEAT_STEP: the per-trial mean over repeats must take it out
CORRUPTIONS = {"gaussian_blur": "low", "contrast": "medium", "shot_noise": "high"}


def config_of(name: str, seed: int, sweep: str = "toy") -> TrialConfig:
    th, alpha = SETTINGS[name][:2]
    if alpha == 0:
        return TrialConfig(sweep=sweep, task="MNIST", reg_data="MNIST", alpha=0.0, seed=seed, width=4)
    return TrialConfig(sweep=sweep, task="MNIST", reg_data="MNIST", th=th, alpha=alpha, seed=seed, width=4)


def accuracy(name: str, attack: str, eps: float, seed: int) -> float:
    """A falling accuracy curve from the clean value to the value at eps 0.5, shifted per seed."""
    _, _, clean, gauss, fgsm = SETTINGS[name][:5]
    floor = {"gaussian": gauss, "fgsm_transfer": fgsm, "uniform": (gauss + clean) / 2}[attack]
    return clean - (clean - floor) * eps / 0.5 + 0.01 * (seed - 1)


def make_results(root: Path, failed: bool = True) -> Path:
    """Write the hand-made sweep under root (= ROOT/<name>) and return root."""
    for name, (_, _, clean, _, _, score, seeds) in SETTINGS.items():
        for seed in seeds:
            write_trial(root, config_of(name, seed), name, clean + 0.01 * (seed - 1), score * (1 + 0.1 * seed))
    if failed:  # a failed seed of the winner, with (stale) robustness rows that must not count
        cfg = config_of("A", 3)
        write_trial(root, cfg, "A", 0.1, 0.5, status="failed")
    return root


def write_trial(root: Path, cfg: TrialConfig, name: str, clean: float, score: float, status: str = "ok") -> None:
    keys = key_values(cfg)
    weights = list(np.roll([0.6, 0.1, 0.1, 0.1, 0.1], int(cfg.th * 5))) if cfg.alpha else None
    write_table(root, "trials", cfg.trial_id, [{
        **keys, "role": cfg.role, "status": status, "error": None if status == "ok" else "RuntimeError: boom",
        "clean_acc": None if status != "ok" else clean, "best_epoch": 1, "epochs": 2, "layer_weights": weights,
        "width": 4, "wall_s": 1.0, "device": "cpu", "config": "{}"}])
    write_table(root, "epochs", cfg.trial_id, [
        {**keys, "epoch": e, "lr": 0.1, "loss_cls": 1.0 / e, "train_acc": 0.5 + 0.2 * e, "test_acc": clean}
        for e in (1, 2)])
    rows = []
    for attack in ("gaussian", "uniform", "fgsm_transfer"):
        for eps in EPS:
            for repeat in (0, 1):
                value = accuracy(name, attack, eps, cfg.seed) + repeat * REPEAT_STEP
                rows.append({**keys, "attack": attack, "variant": "", "group": "", "eps": eps, "repeat": repeat,
                             "metric": "accuracy", "value": value, "images": 100, "failed": 0, "whitebox": False})
    for repeat in (0, 1):
        rows.append({**keys, "attack": "boundary", "variant": "", "group": "", "eps": 0.0, "repeat": repeat,
                     "metric": "boundary_score", "value": score * (1 + 0.2 * repeat), "images": 8, "failed": 1,
                     "whitebox": False})
    for k, (corruption, group) in enumerate(CORRUPTIONS.items()):
        for severity in (1.0, 2.0, 3.0):
            value = clean - 0.05 * severity * (k + 1) * (0.5 if cfg.alpha else 1.0)
            rows.append({**keys, "attack": "corruption", "variant": corruption, "group": group, "eps": severity,
                         "repeat": 0, "metric": "accuracy", "value": value, "images": 100, "failed": 0,
                         "whitebox": False})
    write_table(root, "robustness", cfg.trial_id, rows)
    radius = np.arange(1, 9, dtype=float)
    tilt = 1.5 + cfg.th if cfg.alpha else 1.0
    write_table(root, "spectrum", cfg.trial_id, [
        {**keys, "attack": "boundary", "radius": r, "power": float(10.0 / r**tilt)} for r in radius])


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    return make_results(tmp_path / "toy")


def summary_row(summary: pd.DataFrame, name: str, attack: str, eps: float, metric: str = "accuracy") -> pd.Series:
    th, alpha = SETTINGS[name][:2]
    sel = summary[(summary["th"] == th) & (summary["alpha"] == alpha) & (summary["attack"] == attack)
                  & (summary["eps"] == eps) & (summary["metric"] == metric) & (summary["variant"] == "")]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_mean_and_sem_equal_direct_computation(sweep: Path) -> None:
    out = aggregate.aggregate_sweep(sweep, figures=False)
    summary = pd.read_parquet(out["summary"])
    for name in ("baseline", "A", "B"):
        for eps in EPS:
            per_seed = [np.mean([accuracy(name, "gaussian", eps, s) + r * REPEAT_STEP for r in (0, 1)])
                        for s in SEEDS]
            row = summary_row(summary, name, "gaussian", eps)
            assert row["n"] == 3
            assert row["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
            assert row["sem"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(3), abs=1e-12)
    # boundary score: repeats averaged within a trial first, then across seeds
    score = SETTINGS["A"][5]
    per_seed = [np.mean([score * (1 + 0.1 * s) * (1 + 0.2 * r) for r in (0, 1)]) for s in SEEDS]
    row = summary_row(summary, "A", "boundary", 0.0, metric="boundary_score")
    assert row["mean"] == pytest.approx(np.mean(per_seed))
    assert row["sem"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(3))
    # clean accuracy comes from trials.clean_acc
    row = summary_row(summary, "baseline", "clean", 0.0)
    assert row["mean"] == pytest.approx(np.mean([0.98 + 0.01 * (s - 1) for s in SEEDS]))
    assert row["role"] == "baseline" and row["reg_data"] == "none"
    # corruptions keep their variant and frequency group
    corr = summary[(summary["attack"] == "corruption") & (summary["role"] == "baseline")]
    assert set(corr["variant"]) == set(CORRUPTIONS) and set(corr["group"]) == {"low", "medium", "high"}


def test_single_seed_sem_is_nan_not_zero(sweep: Path) -> None:
    summary = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False)["summary"])
    row = summary_row(summary, "D", "gaussian", 0.5)
    assert row["n"] == 1 and math.isnan(row["sem"])
    assert row["mean"] == pytest.approx(accuracy("D", "gaussian", 0.5, 0) + REPEAT_STEP / 2)


def test_failed_trials_are_excluded_and_counted(sweep: Path) -> None:
    out = aggregate.aggregate_sweep(sweep, figures=False)
    assert out["trials_failed"] == 1 and out["trials_ok"] == 3 * 4 + 1
    assert list(out["failed"].values()) == ["RuntimeError: boom"]
    summary = pd.read_parquet(out["summary"])
    row = summary_row(summary, "A", "gaussian", 0.5)
    assert row["n"] == 3 and row["n_failed"] == 1  # seed 3's value (0.6 + 0.02) would move the mean
    assert row["mean"] == pytest.approx(np.mean([accuracy("A", "gaussian", 0.5, s) for s in SEEDS]) + 0.002)
    assert summary_row(summary, "B", "gaussian", 0.5)["n_failed"] == 0


def test_selection_picks_documented_winner_and_honours_a0(sweep: Path) -> None:
    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False)["best"])
    gauss = best[best["attack"] == "gaussian"].set_index(["th", "alpha"])
    assert len(gauss) == 4  # every regularized (Th, alpha), baselines are not candidates
    chosen = gauss[gauss["chosen"]]
    assert list(chosen.index) == [(0.2, 4.0)]  # A
    b = gauss.loc[(0.8, 10.0)]
    assert b["rd_over_ud"] > chosen["rd_over_ud"].iloc[0] and b["r0_over_u0"] < 0.9 and not b["acceptable"]
    assert not gauss.loc[(0.4, 1.0)]["acceptable"]  # RD/UD < 1
    a = gauss.loc[(0.2, 4.0)]
    assert a["d_used"] == 0.5 and a["d_source"] == "largest eps"  # MNIST default: top of the evaluated range
    u_d = np.mean([accuracy("baseline", "gaussian", 0.5, s) for s in SEEDS]) + REPEAT_STEP / 2
    assert a["UD"] == pytest.approx(u_d) and a["rd_over_ud"] == pytest.approx(a["RD"] / u_d)
    assert a["r0_over_u0"] == pytest.approx(0.97 / 0.98)
    # the AUC ranking: trapezoid area of the seed-mean curve over the baseline's, rank 1 = largest
    def area(name: str) -> float:
        curve = [np.mean([accuracy(name, "gaussian", e, s) for s in SEEDS]) + REPEAT_STEP / 2 for e in EPS]
        return float(np.trapezoid(curve, EPS))

    assert a["auc_ratio"] == pytest.approx(area("A") / area("baseline"))
    ratios = {name: area(name) / area("baseline") for name in ("A", "B", "C")}
    top = max(ratios, key=ratios.get)
    assert gauss.loc[SETTINGS[top][:2]]["auc_rank"] == 1 and gauss.loc[(0.4, 1.0)]["auc_rank"] == 4
    # with A0 lowered to 0.8, B becomes acceptable and wins
    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, a0=0.8, figures=False)["best"])
    gauss = best[best["attack"] == "gaussian"]
    assert gauss.loc[gauss["chosen"], ["th", "alpha"]].values.tolist() == [[0.8, 10.0]]


def test_distortion_override_uses_nearest_eps(sweep: Path) -> None:
    best = aggregate.aggregate_sweep(sweep, distortions={"gaussian": 0.3}, figures=False)
    best = pd.read_parquet(best["best"])
    row = best[(best["attack"] == "gaussian") & (best["th"] == 0.2)].iloc[0]
    assert row["d_requested"] == 0.3 and row["d_used"] == 0.25 and row["d_source"] == "user"
    # boundary: a scalar score, its ratio uses the only eps present
    row = best[(best["attack"] == "boundary") & (best["th"] == 0.2)].iloc[0]
    assert row["metric"] == "boundary_score" and row["rd_over_ud"] == pytest.approx(2.0)


def test_paper_distortion_defaults_on_cifar() -> None:
    assert aggregate.default_distortion("CIFAR10", "gaussian", [0.0, 0.5]) == (0.1, "paper")
    assert aggregate.default_distortion("CIFAR10", "fgsm_transfer", [0.0, 0.5]) == (0.02, "paper")
    assert aggregate.default_distortion("FashionMNIST", "uniform", [0.0, 0.2, 0.4]) == (0.4, "largest eps")


def run_command(module, argv: list[str]) -> int:
    """Parse and run one subcommand the way orchestrator.cli does, without importing the other subcommands."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_cli_aggregate_and_bad_input(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(aggregate, [str(sweep), "--no-figures", "--a0", "0.9", "--distortion", "gaussian=0.5"]) == 0
    out = capsys.readouterr().out
    assert "1 failed" in out and "MNIST / MNIST / gaussian: Th=0.2 alpha=4" in out
    assert (sweep / "summary.parquet").exists() and (sweep / "best.parquet").exists()
    assert not [p for p in sweep.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(UserError, match="no trials/ folder"):
        run_command(aggregate, [str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="gaussian0.3"):
        run_command(aggregate, [str(sweep), "--distortion", "gaussian0.3"])


def test_statistics_columns_and_confirm_seeds_flag(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every best row has the statistics columns; without --confirm-seeds the confirmation columns are empty."""
    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False)["best"])
    assert list(best.columns[-10:]) == ["diff", "ci_low", "ci_high", "p_value", "p_holm", "significant",
                                        "held_out_seeds", "train_chosen", "confirmed_r0_over_u0",
                                        "confirmed_rd_over_ud"]
    a = best[(best["attack"] == "gaussian") & (best["th"] == 0.2)].iloc[0]
    # the seeds of A and of the baseline share the same per-seed shift, so the spread of RD - UD is known
    per_seed = [accuracy("A", "gaussian", 0.5, s) - accuracy("baseline", "gaussian", 0.5, s) for s in SEEDS]
    assert a["diff"] == pytest.approx(np.mean(per_seed)) and a["p_holm"] >= a["p_value"] and a["significant"]
    assert a["ci_low"] < a["diff"] < a["ci_high"]
    assert (best["held_out_seeds"] == "").all() and not best["train_chosen"].any()
    assert best["confirmed_r0_over_u0"].isna().all() and best["confirmed_rd_over_ud"].isna().all()
    # through the command line: seed 2 (the highest finished seed; seed 3 failed) held out
    assert run_command(aggregate, [str(sweep), "--no-figures", "--confirm-seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "confirmed MNIST / MNIST / gaussian: Th=0.2 alpha=4 on held-out seeds 2:" in out
    with pytest.raises(UserError, match="--confirm-seeds 3: .*3 finished seed"):
        run_command(aggregate, [str(sweep), "--no-figures", "--confirm-seeds", "3"])
