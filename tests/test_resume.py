"""Resume: the sweep's state is its Parquet files, so a driver killed with SIGKILL loses nothing finished.

The pieces, without Ray: what counts as done and what a relaunch clears, and the rows the orchestrator writes
itself. The real SIGKILL and relaunch is tests/test_local_ray.py (slow tier): finished trials are not rerun, the
interrupted one goes on from its last epoch, nothing is duplicated.
"""

from __future__ import annotations

import json

import pytest

from orchestrator.sweepdir.resume import split_done
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import key_values, read_table, write_table


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
