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
from pixelreg_core.results import eval_key, key_values, read_table, write_table


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
    for attack in ok.attacks:  # ok: its model and every evaluation of it are there
        write_table(tmp_path, "robustness", eval_key(ok.trial_id, ok.eval_id(attack)), [])
    assert split_done([ok], str(tmp_path))[0] == [ok]
    (tmp_path / "robustness" / f"{eval_key(ok.trial_id, ok.eval_id('uniform'))}.parquet").unlink()
    done, todo = split_done([ok], str(tmp_path))  # one evaluation missing: run again, its model's rows kept
    assert (done, todo) == ([], [ok]) and (tmp_path / "trials" / f"{ok.trial_id}.parquet").is_file()
    write_table(tmp_path, "robustness", eval_key(ok.trial_id, ok.eval_id("uniform")), [])
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


def test_a_folder_of_the_old_layout_is_refused_in_one_line_and_migrate_converts_it(tmp_path, capsys):
    """A sweep folder as it was written before models and evaluations were separate: the trial id included the
    attacks, one file per trial per table, no `layout` file. Launch refuses it (exit 2, one line, nothing
    written); `orchestrator migrate` converts it without training; the relaunch then has nothing to do."""
    import hashlib

    from orchestrator.spec.expand import expand
    from orchestrator.spec.load import load_spec
    from orchestrator.sweepdir.resume import spec_fingerprint

    spec_path = write_spec(tmp_path, name="old", seeds=[0], baseline=False,
                           attacks={"gaussian": {"images": 20, "num_eps": 2}, "uniform": {"images": 20, "num_eps": 2}})
    root = tmp_path / "results"
    sweep = root / "old"
    spec = load_spec(spec_path)
    (cfg,) = expand(spec, str(sweep))
    blob = json.dumps({**cfg.identity(), "attacks": cfg.attacks}, sort_keys=True, separators=(",", ":"), default=str)
    old_id = hashlib.sha256(blob.encode()).hexdigest()[:16]  # the old trial id: the attacks were part of it
    keys = {**key_values(cfg), "trial_id": old_id}
    write_table(sweep, "trials", old_id, [{**keys, "role": "trial", "status": "ok", "clean_acc": 0.9,
                                           "config": json.dumps(cfg.to_dict(), sort_keys=True),
                                           "checkpoint": str(sweep / "checkpoints" / f"{old_id}.pt")}])
    write_table(sweep, "epochs", old_id, [{**keys, "epoch": 1, "valid_loss": 0.5}])
    write_table(sweep, "robustness", old_id, [{**keys, "attack": a, "eps": e, "repeat": 0, "metric": "accuracy",
                                               "value": 0.5} for a in ("gaussian", "uniform") for e in (0.0, 0.5)])
    write_table(sweep, "spectrum", old_id, [])
    (sweep / "checkpoints").mkdir()
    (sweep / "checkpoints" / f"{old_id}.pt").write_bytes(b"weights")
    (sweep / "spec.yaml").write_text(spec_path.read_text())
    (sweep / "fingerprint").write_text(spec_fingerprint(spec) + "\n")
    before = sorted(str(p.relative_to(sweep)) for p in sweep.rglob("*"))

    assert cli.main(["launch", str(spec_path), "--results", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "orchestrator migrate" in err and "--fresh" in err
    assert sorted(str(p.relative_to(sweep)) for p in sweep.rglob("*")) == before  # nothing written

    assert cli.main(["migrate", str(sweep)]) == 0
    assert "migrated 1 model(s) and 2 evaluation(s)" in capsys.readouterr().out
    assert (sweep / "layout").read_text().strip() == "2"
    trials = read_table(sweep, "trials")
    assert trials["trial_id"].tolist() == [cfg.trial_id] and trials["clean_acc"].tolist() == [0.9]
    assert (sweep / "checkpoints" / f"{cfg.trial_id}.pt").read_bytes() == b"weights"
    assert not list(sweep.rglob(f"{old_id}*"))
    robustness = read_table(sweep, "robustness")
    assert len(robustness) == 4 and set(robustness["trial_id"]) == {cfg.trial_id}
    assert set(robustness["eval_id"]) == {cfg.eval_id("gaussian"), cfg.eval_id("uniform")}
    assert split_done([cfg], str(sweep)) == ([cfg], [])  # nothing to train or evaluate again
    assert cli.main(["migrate", str(sweep)]) == 0 and "already" in capsys.readouterr().out


@pytest.mark.slow
def test_a_driver_sigkill_while_a_study_grows_loses_nothing_and_repeats_nothing(ray_address, tmp_path):
    """A finished sweep; its spec with two more seeds and one more attack is launched and the driver SIGKILLed
    once a new model is finished; the relaunch completes: old models untouched, every model has both attacks'
    rows, no row twice."""
    root = tmp_path / "results"
    sweep = root / "grows"
    gaussian = {"images": 20, "num_eps": 2}
    first = write_spec(tmp_path, name="grows", seeds=[0], baseline=False, max_failures=0,
                       attacks={"gaussian": gaussian})
    assert cli.main(["launch", str(first), "--results", str(root), "--address", ray_address]) == 0
    old = {p.name: p.stat().st_mtime_ns for folder in ("trials", "epochs", "checkpoints", "robustness")
           for p in (sweep / folder).glob("*") if p.is_file()}
    grown = write_spec(tmp_path, name="grows", seeds=[0, 1, 2], baseline=False, max_failures=0,
                       attacks={"gaussian": gaussian, "uniform": gaussian})
    args = ["launch", str(grown), "--results", str(root), "--address", ray_address, "--max-concurrent", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while len(list((sweep / "trials").glob("*.parquet"))) < 2:
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no new model finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert cli.main(args[:-2]) == 0

    trials = read_table(sweep, "trials")
    assert len(trials) == 3 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    now = {p.name: p.stat().st_mtime_ns for folder in ("trials", "epochs", "checkpoints", "robustness")
           for p in (sweep / folder).glob("*") if p.is_file()}
    assert {name: now[name] for name in old} == old  # the old model and its evaluation: untouched
    epochs = read_table(sweep, "epochs")
    assert len(epochs) == 3 and not epochs.duplicated(["trial_id", "epoch"]).any()
    robustness = read_table(sweep, "robustness")
    assert not robustness.duplicated(["trial_id", "attack", "eps", "repeat", "metric"]).any()
    assert robustness.groupby("trial_id")["attack"].nunique().tolist() == [2, 2, 2]
