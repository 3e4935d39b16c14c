"""Aggregator tests on a hand-made results set (no training: rows written through the Parquet contract).

The hand-made sweep (tests/conftest.py, also used by test_report.py) is small but complete: a baseline and four
regularized (Th, alpha) settings of MNIST x MNIST with three seeds (one setting with a single seed), one failed
trial, noise / FGSM / boundary / corruption rows with repeats, spectra, layer weights and epochs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CORRUPTIONS, EPS, REPEAT_STEP, SEEDS, SETTINGS, accuracy, config_of, write_trial

from orchestrator.analysis import aggregate, stats
from orchestrator.analysis.confidence import choice_confidence
from orchestrator.cli import main
from orchestrator.run.objective import FLOOR, evaluate_point
from orchestrator.spec.schema import Objective


@pytest.fixture()
def sweep(toy_sweep: Path) -> Path:
    return toy_sweep


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
    corr = summary[(summary["attack"] == "corruptions") & (summary["role"] == "baseline")]
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


def test_cli_aggregate_and_bad_input(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aggregate", str(sweep), "--no-figures", "--a0", "0.9", "--distortion", "gaussian=0.5"]) == 0
    out = capsys.readouterr().out
    assert "1 failed" in out and "MNIST / MNIST / gaussian: Th=0.2 alpha=4" in out
    assert (sweep / "summary.parquet").exists() and (sweep / "best.parquet").exists()
    assert not [p for p in sweep.rglob("*") if p.is_file() and ".tmp" in p.name]  # no temp file left anywhere
    assert main(["aggregate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no trials/ folder" in err and len(err.strip().splitlines()) == 1
    assert main(["aggregate", str(sweep), "--distortion", "gaussian0.3"]) == 2
    assert "gaussian0.3" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the search objective


def test_search_objective_is_the_ratio_best_parquet_reports(sweep: Path) -> None:
    """The Optuna objective of a point equals best.parquet's ratios for it at D = objective.eps (seed-averaged
    baselines, not the mean of per-seed ratios: the two differ here because accuracies shift per seed)."""
    objective = Objective(attack="gaussian", eps=0.3, min_clean_ratio=0.9)
    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, distortions={"gaussian": 0.3}, figures=False)["best"])
    for name in ("A", "B", "C"):
        point = evaluate_point(str(sweep), [config_of(name, s).trial_id for s in SEEDS],
                               [config_of("baseline", s).trial_id for s in SEEDS], objective)
        th, alpha = SETTINGS[name][:2]
        row = best[(best["th"] == th) & (best["alpha"] == alpha) & (best["attack"] == "gaussian")].iloc[0]
        assert point["clean_ratio"] == pytest.approx(row["r0_over_u0"], rel=1e-12)
        assert point["robust_ratio"] == pytest.approx(row["rd_over_ud"], rel=1e-12)
        feasible = row["r0_over_u0"] >= 0.9
        assert point["objective"] == (pytest.approx(row["rd_over_ud"]) if feasible
                                      else pytest.approx(row["r0_over_u0"] - 0.9))


def test_search_objective_at_a_zero_baseline_is_the_floor_like_nan_in_best(tmp_path: Path) -> None:
    """A baseline with accuracy 0 under the attack: best.parquet says NaN (never chosen); the search must not
    see inf (the best possible score) but the floor, below every other point."""
    root = tmp_path / "zero"
    setting, base = config_of("A", 0), config_of("baseline", 0)
    write_trial(root, setting, "A", 0.97, 0.02)
    write_trial(root, base, "baseline", 0.98, 0.01)
    rows = pd.read_parquet(root / "robustness" / f"{base.trial_id}.parquet")
    rows.loc[rows["attack"] == "gaussian", "value"] = 0.0
    rows.to_parquet(root / "robustness" / f"{base.trial_id}.parquet", index=False)
    best = pd.read_parquet(aggregate.aggregate_sweep(root, distortions={"gaussian": 0.5}, figures=False)["best"])
    assert math.isnan(best.loc[best["attack"] == "gaussian", "rd_over_ud"].iloc[0])
    point = evaluate_point(str(root), [setting.trial_id], [base.trial_id], Objective(attack="gaussian", eps=0.5))
    assert math.isnan(point["robust_ratio"]) and point["objective"] == FLOOR


def test_statistics_columns_and_confirm_seeds_flag(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every best row has the statistics columns; without --confirm-seeds the confirmation columns are empty."""
    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False)["best"])
    assert list(best.columns[-18:]) == ["diff", "ci_low", "ci_high", "p_value", "p_holm", "significant",
                                        "held_out_seeds", "train_chosen", "confirmed_r0_over_u0",
                                        "confirmed_rd_over_ud", *stats.CONFIDENCE_COLUMNS]
    a = best[(best["attack"] == "gaussian") & (best["th"] == 0.2)].iloc[0]
    # the seeds of A and of the baseline share the same per-seed shift, so the spread of RD - UD is known
    per_seed = [accuracy("A", "gaussian", 0.5, s) - accuracy("baseline", "gaussian", 0.5, s) for s in SEEDS]
    assert a["diff"] == pytest.approx(np.mean(per_seed)) and a["p_holm"] >= a["p_value"] and a["significant"]
    assert a["ci_low"] < a["diff"] < a["ci_high"]
    assert (best["held_out_seeds"] == "").all() and not best["train_chosen"].any()
    assert best["confirmed_r0_over_u0"].isna().all() and best["confirmed_rd_over_ud"].isna().all()
    # through the command line: seed 2 (the highest finished seed; seed 3 failed) held out
    assert main(["aggregate", str(sweep), "--no-figures", "--confirm-seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "confirmed MNIST / MNIST / gaussian: Th=0.2 alpha=4 on held-out seeds 2:" in out
    assert main(["aggregate", str(sweep), "--no-figures", "--confirm-seeds", "3"]) == 2
    err = capsys.readouterr().err
    assert "--confirm-seeds 3: " in err and "3 finished seed" in err and len(err.strip().splitlines()) == 1


def test_confidence_columns(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """best.parquet's intervals and probabilities are choice_confidence's on the per-seed values (repeats averaged;
    settings in select_best's tie order: smaller alpha, then smaller Th); D's single seed leaves the selection
    without p_chosen; `confidence` comes from the flag, else the folder's spec, else 0.9."""
    import yaml
    from conftest import tiny_spec

    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False)["best"])
    gauss = best[best["attack"] == "gaussian"].set_index(["th", "alpha"])
    assert gauss["p_chosen"].isna().all() and not gauss["decided"].any()  # D has one seed
    assert gauss.loc[(0.2, 4.0), "rd_over_ud_low"] < gauss.loc[(0.2, 4.0), "rd_over_ud"] \
        < gauss.loc[(0.2, 4.0), "rd_over_ud_high"]
    assert math.isnan(gauss.loc[(0.6, 4.0), "rd_over_ud_low"])

    for seed in (1, 2):  # D gets the other two seeds: now every group has three
        write_trial(sweep, config_of("D", seed), "D", SETTINGS["D"][2] + 0.01 * (seed - 1), 0.015)
    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False)["best"])
    gauss = best[best["attack"] == "gaussian"].set_index(["th", "alpha"])

    def pairs(name):
        clean = SETTINGS[name][2]
        return [[clean + 0.01 * (s - 1), accuracy(name, "gaussian", 0.5, s) + REPEAT_STEP / 2] for s in SEEDS]

    order = [(0.4, 1.0), (0.2, 4.0), (0.6, 4.0), (0.8, 10.0)]  # C, A, D, B
    expected = choice_confidence([pairs(n) for n in "CADB"], pairs("baseline"), a0=0.9)
    assert gauss.loc[order, "p_chosen"].to_numpy() == pytest.approx(expected.p_chosen)
    assert gauss.loc[order, "rd_over_ud_high"].to_numpy() == pytest.approx(expected.rdud_high)
    assert gauss.loc[(0.2, 4.0), "chosen"] and gauss.loc[(0.2, 4.0), "p_chosen"] > 0.99
    assert gauss["decided"].all() and (best["confidence"] == 0.9).all()
    # said where people look: aggregate's lines (also the launch's closing lines) and status, read from best.parquet;
    # at A0 0.985 A's R0/U0 (0.990) sits inside its interval's reach of the cut: undecided, "none" a contender
    assert main(["aggregate", str(sweep), "--no-figures", "--a0", "0.985"]) == 0
    out = capsys.readouterr().out
    g = pd.read_parquet(sweep / "best.parquet").query("attack == 'gaussian'").set_index(["th", "alpha"])
    a, d, none = g.loc[(0.2, 4.0)], g.loc[(0.6, 4.0)], 1 - g["p_chosen"].sum()
    assert 0.1 < a["p_chosen"] < 0.9 and d["p_chosen"] >= 0.02 and none >= 0.02 and not g["decided"].any()
    assert (f"chosen MNIST / MNIST / gaussian: Th=0.2 alpha=4 (R0/U0=0.990 [{a['r0_over_u0_low']:.3f}, "
            f"{a['r0_over_u0_high']:.3f}], RD/UD={a['rd_over_ud']:.3f} [{a['rd_over_ud_low']:.3f}, "
            f"{a['rd_over_ud_high']:.3f}] at eps 0.5); p_chosen {a['p_chosen']:.2f}: undecided (below 0.9; the "
            f"resamplings also choose Th=0.6 alpha=4 {d['p_chosen']:.2f}, none {none:.2f}; more seeds of these and "
            "of the baseline would decide it)") in out
    assert main(["status", str(sweep)]) == 0
    status = capsys.readouterr().out
    assert "chosen, as of the last aggregate" in status and f"p_chosen {a['p_chosen']:.2f}: undecided" in status
    assert main(["aggregate", str(sweep), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"gaussian: Th=0\.2 alpha=4 .*; p_chosen (0\.9\d|1\.00): decided \(at confidence 0\.9\)", out)

    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False, confidence=0.9999)["best"])
    assert not best.loc[best["attack"] == "gaussian", "decided"].any() and (best["confidence"] == 0.9999).all()
    (sweep / "spec.yaml").write_text(yaml.safe_dump(tiny_spec("toy", confidence=0.8)))
    best = pd.read_parquet(aggregate.aggregate_sweep(sweep, figures=False, everything=True)["best"])
    assert (best["confidence"] == 0.8).all()
    assert main(["aggregate", str(sweep), "--no-figures", "--confidence", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--confidence 1.5: " in err and len(err.strip().splitlines()) == 1


def test_a_group_whose_seeds_chose_far_apart_epochs_is_flagged(sweep: Path, capsys: pytest.CaptureFixture[str]):
    """Baseline seed 0 reported at epoch 1 of 5 while seeds 1 and 2 chose epoch 5 (on 80 validation images):
    summary.parquet flags the baseline group and `aggregate` prints a warning; the other groups stay unflagged."""
    from pixelreg_core.results import read_trial, write_table

    for seed, epoch in zip(SEEDS, (1, 5, 5), strict=True):
        cfg = config_of("baseline", seed)
        row = read_trial(sweep, "trials", cfg.trial_id)[0]
        write_table(sweep, "trials", cfg.trial_id, [{**row, "best_epoch": epoch, "epochs": 5, "valid_images": 80}])
    assert main(["aggregate", str(sweep), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "warning: MNIST / none / baseline: the seeds' chosen epochs range from 1 to 5 of 5 on 80 validation" in out
    summary = pd.read_parquet(sweep / "summary.parquet")
    flagged = summary.groupby("role")["epoch_spread"].any()
    assert flagged["baseline"] and not flagged["trial"]
    base = summary[summary["role"] == "baseline"].iloc[0]
    assert (base["best_epoch_min"], base["best_epoch_max"], base["valid_images_min"]) == (1, 5, 80)
    from orchestrator.analysis.report import build_report

    assert "Chosen epochs spread widely" in Path(build_report(sweep)).read_text()
