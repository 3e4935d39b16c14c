"""The experiment trackers of a launch (the spec's `track` section, orchestrator.spec.track) as Ray Tune's own logger
callbacks: `WandbLoggerCallback` and `MLflowLoggerCallback`, not clients of our own.

What they get is what Tune gets: each Tune trial's config (the trial's real fields, run.tune.tune_params) as the
run's config / params, each epoch's `tune.report` as a step of metrics, and the trial's last report (its clean
accuracy and robustness figures, run.trainable.final_report) as the last values, which W&B keeps as the run's
summary. The one addition is grouping: every seed of one setting (run.tune's `setting`) lands in one W&B group and
carries one MLflow `setting` tag, so each tracker's UI shows a setting's seeds together. With seed packs a tracker
run is a Tune trial, that is a pack: its members' epochs come tagged `pack_member`.

Imports Ray's integrations at module import: only launch.make_runner imports this module, when a tracker is on.
The classes sit at module level because Tune pickles its callbacks with the experiment's state.
"""

from __future__ import annotations

import contextlib
import os

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

from orchestrator.run.tune import SETTING
from orchestrator.spec.track import Track
from pixelreg_core.results import absolute, is_uri


@contextlib.contextmanager
def _swapped(obj, name: str, value):
    """obj.name = value for the duration (Tune calls a callback's hooks one at a time, in the driver)."""
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)


class WandbBySetting(WandbLoggerCallback):
    """Tune's W&B callback with the W&B group set per trial to its setting (Tune's default: one group per
    experiment, that is per launch phase)."""

    # Tune's trial id is neither logged nor put in the run's config, where it would write over `trial_id` (the
    # pixelreg trial id); W&B's run id is Tune's trial id already
    _exclude_results = [*WandbLoggerCallback._exclude_results, "trial_id"]
    AUTO_CONFIG_KEYS = [key for key in WandbLoggerCallback.AUTO_CONFIG_KEYS if key != "trial_id"]

    def log_trial_start(self, trial):
        setting = trial.config.get(SETTING)
        with _swapped(self, "group", setting or self.group):
            super().log_trial_start(trial)


    def on_experiment_end(self, trials, **info):
        # every run still open is told to end before Tune's callback waits for them to finish writing (seen: the
        # run of the launch's last trial was left with no records)
        for trial in list(self._trial_queues):
            self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)


class MlflowBySetting(MLflowLoggerCallback):
    """Tune's MLflow callback with a `setting` tag per run (Tune's: the same tags on every run)."""

    def log_trial_start(self, trial):
        setting = trial.config.get(SETTING)
        tags = {**(self.tags or {}), **({SETTING: setting} if setting else {})}
        with _swapped(self, "tags", tags):
            super().log_trial_start(trial)


def tracker_callbacks(track: Track, sweep: str) -> list:
    """The Tune callbacks of the spec's trackers, none when `track` names none. `sweep`: the sweep's name, the
    default W&B project and MLflow experiment."""
    out: list = []
    if track.wandb is not None:
        extra = {"entity": track.wandb.entity} if track.wandb.entity else {}
        # no api_key here: W&B reads WANDB_API_KEY or its login file itself, so no credential is held (or pickled
        # with the experiment's state) by the callback
        out.append(WandbBySetting(project=track.wandb.project or sweep, mode=track.wandb.mode, **extra))
    if track.mlflow is not None:
        uri = track.mlflow.tracking_uri
        if uri is not None and "://" not in uri and not is_uri(uri):
            uri = absolute(uri)  # a local store, relative to where the launch started
            # MLflow 3 keeps its folder store in maintenance and refuses it unless told; a spec that names a folder
            # has asked for it (sqlite:///mlflow.db is the store MLflow recommends instead)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        out.append(MlflowBySetting(tracking_uri=uri, experiment_name=track.mlflow.experiment_name or sweep,
                                   tags={"sweep": sweep}))
    return out
