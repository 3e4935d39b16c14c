"""The Tune callbacks of a launch: the progress line's counters (run/progress.py), the rows of trials ASHA ended, and
TensorBoard's files with the trial's fields in its HParams view.

Imports Ray Tune at module import: only run/tune.py imports this module, inside the functions that start Tune.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from orchestrator.run.progress import Progress


def last_error_line(trial) -> str:
    """The last line of the trial's error.txt (Tune writes the traceback there), or a pointer to it."""
    try:
        lines = open(trial.error_file).read().strip().splitlines()  # noqa: SIM115 - tiny file, read once
        return lines[-1] if lines else "(empty error file)"
    except (OSError, TypeError):
        return "details in the trial's trials row (orchestrator status)"


class ProgressCallback(Callback):
    """Feeds `Progress` from Tune's trial events and prints its line every `interval` seconds."""

    def __init__(self, progress: Progress, units: Callable[[object], int] = lambda trial: 1,
                 interval: float = 10.0):
        self.progress = progress
        self.units = units
        self.interval = interval
        self._last_print = 0.0

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_print >= self.interval:
            self._last_print = now
            self.progress.log(self.progress.line())

    def on_step_end(self, iteration, trials, **info):
        self._maybe_print()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.progress.running_since.setdefault(trial.trial_id, (time.monotonic(), self.units(trial)))
        self.progress.running += self.units(trial)

    def _finish(self, trial, failed: bool, failed_units: int | None = None) -> None:
        """`failed_units`: how many of the trial's units failed when only some did (a seed pack)."""
        n = self.units(trial)
        self.progress.running = max(0, self.progress.running - n)
        started = self.progress.running_since.pop(trial.trial_id, None)
        if started is not None and n:  # n 0: a Tune trial that is no trial of the count (deferred evaluations)
            self.progress.unit_seconds.extend([(time.monotonic() - started[0]) / n] * n)
        bad = n if failed else min(n, max(0, failed_units or 0))
        self.progress.failed += bad
        self.progress.done += n - bad

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        failed = result.get("ok") == 0.0  # the trainable retried it in-process and gave up (run.trainable._run)
        # a seed pack reports ok 0 when any member failed, and how many did
        self._finish(trial, failed=failed and "failed_units" not in result,
                     failed_units=int(result.get("failed_units", 0)))
        if failed:
            self.progress.log(f"failed {trial} (retries used up): {result.get('error', '?')}"[:300])

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True)
        self.progress.log(f"failed {trial} (retries used up): {last_error_line(trial)}"[:300])

    def on_trial_recover(self, iteration, trials, trial, **info):
        # a retry: Tune starts the trial again, and on_trial_start counts it again
        self.progress.running = max(0, self.progress.running - self.units(trial))
        self.progress.running_since.pop(trial.trial_id, None)
        self.progress.log(f"retrying {trial} after a failure: {last_error_line(trial)}"[:300])

    def on_experiment_end(self, trials, **info):
        self._maybe_print(force=True)


class StoppedRecorder(Callback):
    """With ASHA: a grid trial the scheduler ended early has no results; give it a trials row with status
    "stopped" so a relaunch counts it as decided instead of training it again only to stop it again."""

    def __init__(self, configs: dict[str, dict], sweep_dir: str):
        self.configs = configs
        self.sweep_dir = sweep_dir

    def on_trial_complete(self, iteration, trials, trial, **info):
        from orchestrator.sweepdir.tables import record_status, trial_statuses
        from pixelreg_core.config import TrialConfig

        trial_id = trial.config.get("trial_id")
        if trial_id not in self.configs or trial_statuses(self.sweep_dir).get(trial_id) == "ok":
            return
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        record_status(self.sweep_dir, TrialConfig.from_dict(self.configs[trial_id]), "stopped",
                      f"stopped early by ASHA after {epochs} epoch(s) (valid_acc)", epochs=epochs)


class TensorBoardHparams(TBXLoggerCallback):
    """Tune's TensorBoard logger (which writes `events.out.tfevents*` in each trial's folder) with the trial's fields
    as HParams. Tune writes a trial's HParams, when it ends, from the values its searcher sampled: none here, every
    trial's fields come preset (run.tune, points_to_evaluate), so TensorBoard's HPARAMS view listed no trial. The
    fields are the trial's Tune config. Tune adds no logger of its own where one of this class is given."""

    def log_trial_end(self, trial, failed: bool = False):
        sampled = trial.evaluated_params
        trial.evaluated_params = sampled or dict(trial.config)
        try:
            super().log_trial_end(trial, failed)
        finally:
            trial.evaluated_params = sampled
