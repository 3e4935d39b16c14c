"""Resume: the sweep's state is its Parquet files, so a driver killed with SIGKILL loses nothing finished.

The pieces, without Ray: what counts as done and what a relaunch clears, and the rows the orchestrator writes
itself. The real SIGKILL and relaunch is tests/test_local_ray.py (slow tier): finished trials are not rerun, the
interrupted one goes on from its last epoch, nothing is duplicated.
"""

from __future__ import annotations

import json

import pytest
from conftest import write_spec

from orchestrator import cli
from orchestrator.sweepdir.resume import split_done
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import eval_key, key_values, read_table, write_table


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
    from orchestrator.run.objective import clean_accuracy
    from orchestrator.sweepdir.tables import record_failure, record_status, trial_statuses

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

