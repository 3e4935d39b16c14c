"""Per-epoch checkpoints: a trial that crashes after epoch 2 and is run again resumes at epoch 3 and ends with
exactly the numbers of an uninterrupted run (CPU), in every table but the timing columns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny

from pixelreg_core.checkpoint import running_path
from pixelreg_core.hooks import faults
from pixelreg_core.results import TIMING_COLUMNS
from pixelreg_core.trial import run_trial

# regularized with augmentation-free digits, pairs sampled every step, noise attack: every RNG consumer is used
CHANGES = dict(epochs=3, train_images=192, test_images=64, reg_images=100, alpha=2.0, th=0.3,
               attacks={"gaussian": {"images": 32, "num_eps": 2}})
TIMING = {*TIMING_COLUMNS["trials"], *TIMING_COLUMNS["epochs"], "resumed_from_epoch"}


def tables(root: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for table in ("trials", "epochs", "robustness"):
        frame = pd.read_parquet(root / table)
        out[table] = frame.drop(columns=[c for c in frame.columns if c in TIMING | {"checkpoint"}])
    return out


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_crash_after_epoch_two_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny(**CHANGES)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run_trial(cfg, straight)

    plan = {"dir": str(tmp_path / "marks"), "faults": [{"trial": cfg.trial_id, "epoch": 2, "kind": "raise"}]}
    monkeypatch.setenv(faults.ENV, json.dumps(plan))
    with pytest.raises(faults.InjectedFault):
        run_trial(cfg, crashed)
    assert Path(running_path(crashed, cfg.trial_id)).is_file()   # epoch 2's checkpoint survived the crash
    assert not (crashed / "trials").exists()                    # and no half trial was written
    first_seconds = torch.load(running_path(crashed, cfg.trial_id), weights_only=True)["rows"][0]["seconds"]

    row = run_trial(cfg, crashed)                                # the marker stops the fault firing again
    assert row["resumed_from_epoch"] == 2
    resumed = tables(crashed)
    for name, expected in tables(straight).items():
        pd.testing.assert_frame_equal(resumed[name], expected, check_exact=True)
    epochs = pd.read_parquet(crashed / "epochs")
    assert epochs["seconds"].iloc[0] == first_seconds            # epochs 1-2 came from the checkpoint, not a rerun
    assert not Path(running_path(crashed, cfg.trial_id)).exists()  # finished: the resume file is gone
    assert (crashed / "checkpoints" / f"{cfg.trial_id}.pt").is_file()  # the selected model stays
    assert pd.read_parquet(straight / "trials")["resumed_from_epoch"].tolist() == [0]


def test_a_damaged_checkpoint_is_ignored(tmp_path):
    cfg = tiny(**{**CHANGES, "epochs": 1})
    path = Path(running_path(tmp_path, cfg.trial_id))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    assert run_trial(cfg, tmp_path)["resumed_from_epoch"] == 0
    assert not path.exists()


def test_fault_plan_is_repeatable_and_fires_once(tmp_path, monkeypatch):
    plan = {"dir": str(tmp_path), "rates": {"raise": 0.5}, "seed": 3}
    picks = [faults.due(plan, f"t{i}", 1) for i in range(200)]
    assert picks == [faults.due(plan, f"t{i}", 1) for i in range(200)]
    assert 60 < sum(bool(p) for p in picks) < 140
    monkeypatch.setenv(faults.ENV, json.dumps({"dir": str(tmp_path), "faults": [{"epoch": 1, "kind": "raise"}]}))
    with pytest.raises(faults.InjectedFault):
        faults.after_epoch("x", 1, None)
    faults.after_epoch("x", 1, None)  # fired once already
    faults.after_epoch("x", 2, None)  # not planned for epoch 2


@pytest.mark.parametrize("marked", [True, False], ids=["device-recorded", "older-file"])
def test_a_checkpoint_from_another_device_is_dropped_with_one_line_and_the_trial_runs_from_epoch_one(
        tmp_path, monkeypatch, capfd, marked):
    # A trial stopped on a GPU and relaunched on a CPU: its checkpoint holds a CUDA generator's 16-byte state,
    # which a CPU generator (5,056 bytes) cannot take. Simulated by rewriting a CPU checkpoint's generator state.
    cfg = tiny(**{**CHANGES, "epochs": 2})
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run_trial(cfg, straight)
    plan = {"dir": str(tmp_path / "marks"), "faults": [{"trial": cfg.trial_id, "epoch": 1, "kind": "raise"}]}
    monkeypatch.setenv(faults.ENV, json.dumps(plan))
    with pytest.raises(faults.InjectedFault):
        run_trial(cfg, crashed)
    path = Path(running_path(crashed, cfg.trial_id))
    state = torch.load(path, weights_only=True)
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's (seed, offset)
    if marked:
        state["generator_device"] = "cuda"
    else:
        state.pop("generator_device", None)
    torch.save(state, path)
    capfd.readouterr()

    row = run_trial(cfg, crashed)
    assert row["status"] == "ok" and row["resumed_from_epoch"] == 0
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("checkpoint ")]
    assert len(err) == 1 and "starts again from epoch 1" in err[0]
    for name, expected in tables(straight).items():  # the new device's run from the start: the same numbers here
        pd.testing.assert_frame_equal(tables(crashed)[name], expected, check_exact=True)
    assert not path.exists()
