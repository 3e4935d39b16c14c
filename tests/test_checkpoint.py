"""Per-epoch checkpoints: a trial that crashes after epoch 2 and is run again resumes at epoch 3 and ends with
exactly the numbers of an uninterrupted run (CPU), in every table but the timing columns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny

from pixelreg_core.checkpoint import EpochCheckpoint, running_path
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


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def straight_and_crashed(cfg, tmp_path: Path, monkeypatch, epoch: int) -> tuple[Path, Path]:
    """The trial run uninterrupted into tmp_path/straight, and into tmp_path/crashed up to an injected fault after
    `epoch` (its marker stops the fault firing again on a rerun)."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run_trial(cfg, straight)
    plan = {"dir": str(tmp_path / "marks"), "faults": [{"trial": cfg.trial_id, "epoch": epoch, "kind": "raise"}]}
    monkeypatch.setenv(faults.ENV, json.dumps(plan))
    with pytest.raises(faults.InjectedFault):
        run_trial(cfg, crashed)
    return straight, crashed


def test_crash_after_epoch_two_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny(**CHANGES)
    straight, crashed = straight_and_crashed(cfg, tmp_path, monkeypatch, epoch=2)
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
    straight, crashed = straight_and_crashed(cfg, tmp_path, monkeypatch, epoch=1)
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


def test_the_best_state_is_written_only_when_it_changes_and_a_crash_between_the_files_is_harmless(tmp_path):
    from pixelreg_core.checkpoint import EpochCheckpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    ckpt = EpochCheckpoint(running_path(tmp_path, "t1"), "t1", epochs=4)

    def save(epoch: int, best_epoch: int) -> None:
        with torch.no_grad():
            model.weight.fill_(epoch)
        ckpt.save(epochs_done=epoch, model=model, optimizer=optimizer, generator=generator, rows=[{}] * epoch,
                  best_state={k: v.clone() for k, v in model.state_dict().items()}, best_epoch=best_epoch,
                  best_valid=1.0 / best_epoch)

    save(1, 1)
    best_1 = Path(ckpt.best_path(1))
    written = best_1.stat().st_mtime_ns
    save(2, 1)  # no better epoch: the best file is not written again
    assert best_1.stat().st_mtime_ns == written
    # a crash after the next best file was written and before its epoch file: the old pair still loads
    Path(ckpt.best_path(3)).write_bytes(b"whatever a crash left")
    state = EpochCheckpoint(ckpt.path, "t1", epochs=4).load()
    assert state["epochs_done"] == 2 and state["best_epoch"] == 1 and state["best_state"]["weight"].eq(1).all()
    save(3, 3)
    assert not best_1.exists()  # replaced once the epoch file named its successor
    state = EpochCheckpoint(ckpt.path, "t1", epochs=4).load()
    assert state["best_epoch"] == 3 and state["best_state"]["weight"].eq(3).all()
    Path(ckpt.best_path(3)).unlink()  # an epoch file without its best file is not used
    assert EpochCheckpoint(ckpt.path, "t1", epochs=4).load() is None
    ckpt.remove()
    assert not list(Path(ckpt.path).parent.iterdir())


def test_the_best_file_of_a_uri_keeps_the_query_last():
    """On an object store the checkpoint path ends with pyarrow's ?query (endpoint, region): the best file's name
    changes before it (appended after it, the region read `us-east-1.best-3.pt` and every S3 trial failed)."""
    uri = "s3://bucket/runs/sweep/checkpoints/running/abc.pt?endpoint_override=127.0.0.1:9000&region=us-east-1"
    assert EpochCheckpoint(uri, "abc", 2).best_path(3) == (
        "s3://bucket/runs/sweep/checkpoints/running/abc.best-3.pt?endpoint_override=127.0.0.1:9000&region=us-east-1")
    local = EpochCheckpoint("/r/checkpoints/running/abc.pt", "abc", 2)
    assert local.best_path(3) == "/r/checkpoints/running/abc.best-3.pt"
