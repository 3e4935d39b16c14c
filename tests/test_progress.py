"""orchestrator/run/progress.py: the launch's progress log and its ETA."""

from __future__ import annotations

import pytest

from orchestrator.run.progress import Progress


def test_the_progress_log_pickles_after_print_is_replaced(monkeypatch):
    """Tune pickles its callbacks, and so the progress log, with every Tuner; after a node loss Ray has replaced
    builtins.print in the driver, and a launch's last phase (deferred evaluations) failed to start."""
    import builtins
    import pickle

    progress = Progress(total=3, already_done=0, slots=1)
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    assert pickle.loads(pickle.dumps(progress)).total == 3


def test_progress_eta_is_mean_time_times_remaining_over_slots():
    lines = []
    progress = Progress(total=10, already_done=2, slots=2, log=lines.append)
    assert progress.eta() is None and progress.pending == 8
    progress.done, progress.running, progress.unit_seconds = 2, 2, [10.0, 30.0]
    assert progress.pending == 4
    assert progress.eta() == pytest.approx(20.0 * 6 / 2)
    assert "done 4/10" in progress.line() and "failed 0" in progress.line()


def test_progress_eta_counts_the_time_running_trials_have_run():
    """Between completions the ETA falls with the running trials' elapsed time instead of freezing."""
    progress = Progress(total=4, already_done=0, slots=2, log=lambda _: None)
    progress.done, progress.running, progress.unit_seconds = 1, 2, [100.0]
    progress.running_since = {"a": (0.0, 1), "b": (30.0, 1)}
    # pending 1: work left (100 - 40) + (100 - 10) + 100 over 2 slots
    assert progress.eta(now=40.0) == pytest.approx((60 + 90 + 100) / 2)
    assert progress.eta(now=70.0) == pytest.approx((30 + 60 + 100) / 2)
    assert progress.eta(now=70.0) < progress.eta(now=40.0)
    # a trial past the mean has nothing left; the longest running trial bounds the ETA from below
    progress.running_since = {"a": (0.0, 1), "b": (30.0, 3)}
    progress.running = 4
    progress.total = 5
    assert progress.eta(now=130.0) == pytest.approx(max((0 + 200 + 0) / 2, 200.0))
