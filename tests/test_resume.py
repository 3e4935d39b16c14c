"""Resume: the sweep's state is its Parquet files, so a driver killed with SIGKILL loses nothing finished.

The killed driver joins this module's Ray (via --address) instead of starting its own: same code path as a cluster,
and one Ray start less on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import write_spec

from orchestrator import cli
from orchestrator.sweepdir.resume import split_done
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import key_values, read_table, write_table


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow
def test_relaunch_after_sigkill_skips_finished_trials_and_duplicates_nothing(ray_address, tmp_path):
    spec = write_spec(tmp_path, name="killed", seeds=[0, 1, 2], max_failures=0)
    root = tmp_path / "results"
    trials_dir = root / "killed" / "trials"
    args = ["launch", str(spec), "--results", str(root), "--address", ray_address, "--max-concurrent", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (trials_dir.is_dir() and any(p.suffix == ".parquet" for p in trials_dir.iterdir())):
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in trials_dir.glob("*.parquet")}
    before = read_table(root / "killed", "trials")
    assert 1 <= len(finished) < 6, "the kill must land mid-sweep"

    assert cli.main(args[:-2]) == 0

    after = read_table(root / "killed", "trials")
    assert len(after) == 6 and set(after["status"]) == {"ok"}
    assert after["trial_id"].is_unique
    for name, mtime in finished.items():  # not rerun: same file, same finish time
        assert (trials_dir / name).stat().st_mtime_ns == mtime
    same = after.set_index("trial_id").loc[before["trial_id"], "finished_at"]
    assert same.tolist() == before["finished_at"].tolist()
    epochs = pd.read_parquet(root / "killed" / "epochs")
    assert len(epochs) == 6 and not epochs.duplicated(["trial_id", "epoch"]).any()
    robustness = pd.read_parquet(root / "killed" / "robustness")
    assert not robustness.duplicated(["trial_id", "attack", "eps", "repeat", "metric"]).any()


def test_split_done_keeps_ok_trials_and_clears_stale_rows_of_the_rest(tmp_path):
    ok, failed, partial, fresh = (TrialConfig(task="digits", seed=s, alpha=1.0) for s in range(4))
    for cfg, status in ((ok, "ok"), (failed, "failed")):
        write_table(tmp_path, "trials", cfg.trial_id, [{**key_values(cfg), "status": status}])
    for cfg in (ok, partial):  # partial: epochs written, no trials row (killed before its end)
        write_table(tmp_path, "epochs", cfg.trial_id, [{**key_values(cfg), "epoch": 1}])
    done, todo = split_done([ok, failed, partial, fresh], str(tmp_path))
    assert [c.trial_id for c in done] == [ok.trial_id]
    assert [c.trial_id for c in todo] == [failed.trial_id, partial.trial_id, fresh.trial_id]
    assert set(read_table(tmp_path, "trials")["trial_id"]) == {ok.trial_id}
    assert set(read_table(tmp_path, "epochs")["trial_id"]) == {ok.trial_id}
    assert json.dumps(sorted(p.name for p in (tmp_path / "trials").iterdir())) == json.dumps([f"{ok.trial_id}.parquet"])


def test_orchestrator_rows_for_failed_and_stopped_trials(tmp_path):
    """The rows the orchestrator writes itself (retries used up, ASHA stop) have the keys and config a resume and
    `status` need, and a failed row run_trial wrote keeps its details with the attempt count added."""
    from orchestrator.sweepdir.tables import clean_accuracy, record_failure, record_status, trial_statuses

    never_ran, ran, stopped = (TrialConfig(task="digits", seed=s, alpha=1.0, sim_layer=2) for s in range(3))
    record_failure(str(tmp_path), never_ran, "OSError: no source (failed 3 attempt(s))")
    write_table(tmp_path, "trials", ran.trial_id, [{**key_values(ran), "status": "failed", "device": "cpu",
                                                     "error": "RuntimeError: boom"}])
    record_failure(str(tmp_path), ran, "RuntimeError: boom (failed 3 attempt(s))")
    record_status(str(tmp_path), stopped, "stopped", "stopped early by ASHA after 2 epoch(s) (valid_acc)", epochs=2)
    rows = read_table(tmp_path, "trials").set_index("trial_id")
    assert trial_statuses(str(tmp_path)) == {never_ran.trial_id: "failed", ran.trial_id: "failed",
                                             stopped.trial_id: "stopped"}
    first = rows.loc[never_ran.trial_id]
    assert first["error"].endswith("(failed 3 attempt(s))") and first["sim_layer"] == 2
    assert TrialConfig.from_dict(json.loads(first["config"])).trial_id == never_ran.trial_id
    assert rows.loc[ran.trial_id, "device"] == "cpu" and rows.loc[ran.trial_id, "error"].endswith("attempt(s))")
    assert rows.loc[stopped.trial_id, "epochs"] == 2 and rows.loc[stopped.trial_id, "role"] == "trial"
    with pytest.raises(ValueError, match="no trials row"):
        clean_accuracy(str(tmp_path), "0" * 16)
