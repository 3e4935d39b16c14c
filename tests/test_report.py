"""Figures, the HTML report, orchestrator.load, analyze-targets and the Chromium screenshot, on hand-made data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_results

import orchestrator
from orchestrator.analysis import aggregate, report
from orchestrator.cli import main
from orchestrator.commands import analyze_targets as analyze_targets
from orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_FIGURES = {"curves_MNIST_MNIST_ResNet18.png", "tradeoff_MNIST_MNIST_ResNet18.png", "boundary.png",
                    "corruptions.png", "layer_weights.png", "spectrum.png"}


def pixels(path: str | Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]


def assert_not_blank(path: str | Path) -> None:
    """A drawn figure has many non-white pixels and real contrast."""
    image = pixels(path)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.05, f"{path} looks blank"
    assert (image.min(axis=-1) < 0.9).mean() > 0.01, f"{path} is nearly all white"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = make_results(tmp_path_factory.mktemp("sweeps") / "toy")
    return root, aggregate.aggregate_sweep(root)


def test_every_figure_written_and_not_blank(sweep: tuple[Path, dict]) -> None:
    root, out = sweep
    assert out["skipped_figures"] == {}
    assert {Path(p).name for p in out["figures"]} == EXPECTED_FIGURES
    for path in out["figures"]:
        assert_not_blank(path)


def test_tradeoff_panel_of_corruptions_names_the_severity(sweep: tuple[Path, dict]) -> None:
    """Robustness rows call the attack "corruptions"; its tradeoff panel says D is a severity."""
    import matplotlib.pyplot as plt

    from orchestrator.analysis import figures

    root, _ = sweep
    summary, best = pd.read_parquet(root / "summary.parquet"), pd.read_parquet(root / "best.parquet")
    assert "corruptions" in set(best["attack"])
    fig, why = figures._tradeoff(summary, best, ("MNIST", "MNIST", "ResNet18"), 0.9)
    titles = [ax.get_title() for ax in fig.axes]
    # every panel draws the 90% intervals on both axes of the settings that have them (D has a single seed: none)
    gaussian = next(ax for ax in fig.axes if ax.get_title().startswith("Gaussian"))
    bars = [c for c in gaussian.containers if c.get_label() == "90% interval"]
    x_bars, y_bars = bars[0].lines[2]
    a = best[(best["attack"] == "gaussian") & (best["th"] == 0.2)].iloc[0]
    assert len(x_bars.get_segments()) == 3 and len(y_bars.get_segments()) == 3
    assert np.ravel(x_bars.get_segments()[0]).tolist() == pytest.approx(
        [a["r0_over_u0_low"], a["rd_over_ud"], a["r0_over_u0_high"], a["rd_over_ud"]])
    plt.close(fig)
    # one panel per attack; only the corruptions panel's D is a severity
    assert len([t for t in titles if t]) == best["attack"].nunique()
    assert len([t for t in titles if "severity D = " in t]) == 1, titles


def test_figures_skip_gracefully_without_data(tmp_path: Path) -> None:
    root = make_results(tmp_path / "bare", failed=False)
    for table in ("spectrum",):
        shutil.rmtree(root / table)
    rob = pd.read_parquet(root / "robustness")
    for path in (root / "robustness").glob("*.parquet"):  # drop boundary and corruption rows
        part = pd.read_parquet(path)
        part = part[part["attack"].isin(["gaussian"])]
        part.to_parquet(path, index=False)
    assert len(rob)
    out = aggregate.aggregate_sweep(root)
    assert set(out["skipped_figures"]) == {"boundary", "corruptions", "spectrum"}
    assert all(out["skipped_figures"].values())
    assert {Path(p).name for p in out["figures"]} == {"curves_MNIST_MNIST_ResNet18.png",
                                                      "tradeoff_MNIST_MNIST_ResNet18.png", "layer_weights.png"}


def test_report_contains_every_figure_and_tables(sweep: tuple[Path, dict], tmp_path: Path) -> None:
    root, out = sweep
    page_path = report.build_report(root, out=tmp_path / "page.html")
    page = Path(page_path).read_text()
    assert page.count('<img src="data:image/png;base64,') == len(EXPECTED_FIGURES)
    for name in EXPECTED_FIGURES:
        assert name in page
    assert "RuntimeError: boom" in page and "1 failed trial" in page
    assert "Best (Th, α)" in page and "summary.parquet" in page
    assert "<th>p_holm</th>" in page and "<th>ci_low</th>" in page and "Holm-Bonferroni" in page
    # how sure: the columns, and the choice in words (D's single seed leaves every selection without p_chosen)
    assert "<th>p_chosen</th>" in page and "<th>decided</th>" in page and "<th>rd_over_ud [90%]</th>" in page
    assert "<li>MNIST / MNIST / gaussian: Th=0.2 alpha=4 (R0/U0=0.990 [" in page
    assert "p_chosen not known: Th=0.6 alpha=4 has 1 seed(s)" in page
    assert "held-out" not in page  # no --confirm-seeds: no confirmation table
    page = Path(report.build_report(root, out=tmp_path / "page2.html", confirm_seeds=1)).read_text()
    assert "Does the choice hold on seeds it never saw?" in page and "<th>confirmed_rd_over_ud</th>" in page
    assert "http://" not in page and "https://" not in page  # opens offline: nothing to fetch


def test_report_aggregates_first_when_needed(tmp_path: Path) -> None:
    root = make_results(tmp_path / "fresh")
    assert report.needs_aggregate(root)
    assert main(["report", str(root)]) == 0
    assert (root / "summary.parquet").exists() and (root / "report.html").exists()
    assert not report.needs_aggregate(root)
    with pytest.raises(UserError, match="no trials/ folder"):
        report.build_report(tmp_path / "missing")


def test_results_load_returns_every_table(sweep: tuple[Path, dict]) -> None:
    root, _ = sweep
    r = orchestrator.load(root)
    assert set(r._fields) == {"trials", "epochs", "robustness", "spectrum", "summary", "best"}
    assert len(r.trials) == 14 and len(r.epochs) == 28 and len(r.spectrum) == 14 * 8
    assert {"attack", "eps", "value"} <= set(r.robustness.columns)
    assert {"mean", "sem", "n"} <= set(r.summary.columns) and r.best["chosen"].sum() == 5
    empty = orchestrator.load(root.parent / "not_yet")
    assert empty.trials.empty and "status" in empty.trials.columns and empty.summary.empty


# --------------------------------------------------------------------------------------------------- targets


def write_inputs(tmp_path: Path, images: np.ndarray, matrix: np.ndarray) -> tuple[Path, Path]:
    np.save(tmp_path / "m.npy", matrix)
    np.save(tmp_path / "x.npy", images)
    return tmp_path / "m.npy", tmp_path / "x.npy"


def known_pixel_similarity(images: np.ndarray) -> np.ndarray:
    """S_pixel by the paper's recipe, written out independently of the code under test."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat = flat - flat.mean(axis=0)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    return flat @ flat.T


def test_analyze_targets_recovers_pixel_similarity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((60, 8, 8)).astype(np.float32)
    s = known_pixel_similarity(images)
    m_path, x_path = write_inputs(tmp_path, images, 0.5 * s + 0.1)  # linear in S: r = 1
    assert main(["analyze-targets", "--matrix", str(m_path), "--images", str(x_path), "--out",
                 str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "Pearson r  = 1.0000" in printed and "1770 pairs" in printed
    numbers = json.loads((tmp_path / "o" / "target_vs_pixel.json").read_text())
    assert numbers["pearson"] == pytest.approx(1.0, abs=1e-5) and numbers["spearman"] == pytest.approx(1.0)
    assert_not_blank(tmp_path / "o" / "target_vs_pixel.png")
    # monotone but not linear: Spearman stays 1, Pearson drops; unrelated noise: r near 0
    np.save(m_path, np.tanh(6 * s) ** 3)
    bent = analyze_targets.analyze_targets(m_path, x_path, tmp_path / "o")
    assert bent["spearman"] == pytest.approx(1.0) and bent["pearson"] < 0.99
    noise = rng.normal(size=s.shape)
    np.save(m_path, (noise + noise.T) / 2)
    assert abs(analyze_targets.analyze_targets(m_path, x_path, tmp_path / "o")["pearson"]) < 0.1


def test_analyze_targets_samples_pairs_for_large_n(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.random((50, 1, 6, 6)).astype(np.float32)
    m_path, x_path = write_inputs(tmp_path, images, known_pixel_similarity(images))
    out = analyze_targets.analyze_targets(m_path, x_path, tmp_path, max_pairs=500, seed=3)
    assert out["pairs"] == 500 and "random sample" in out["pair_selection"]
    assert out["pearson"] == pytest.approx(1.0, abs=1e-5)


def test_analyze_targets_bad_shapes_name_file_and_shapes(tmp_path: Path) -> None:
    images = np.zeros((10, 8, 8), dtype=np.float32)
    m_path, x_path = write_inputs(tmp_path, images, np.eye(12))
    with pytest.raises(UserError) as err:
        analyze_targets.analyze_targets(m_path, x_path, tmp_path)
    assert str(x_path) in str(err.value) and "(10, 8, 8)" in str(err.value) and "(12, 12)" in str(err.value)
    np.save(m_path, np.zeros((10, 9)))
    with pytest.raises(UserError, match=r"square.*\(10, 9\)"):
        analyze_targets.analyze_targets(m_path, x_path, tmp_path)
    with pytest.raises(UserError, match="not found"):
        analyze_targets.analyze_targets(tmp_path / "nope.npy", x_path, tmp_path)


# --------------------------------------------------------------------------------------------------- browser


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium package is not installed")
def test_report_renders_in_headless_chromium(sweep: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = sweep
    page = report.build_report(root, out=tmp_path / "report.html")
    shot = tmp_path / "report.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), page, "--out", str(shot),
                           "--window", "1000,1600"], capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    image = pixels(shot)
    assert image.shape[:2] == (1600, 1000)
    assert_not_blank(shot)
