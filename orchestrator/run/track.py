"""The experiment trackers of a launch (the spec's `track` section, orchestrator.spec.track) as Ray Tune's own logger
callbacks: `WandbLoggerCallback` and `MLflowLoggerCallback`, not clients of our own.

What they get is what Tune gets: each Tune trial's config (the trial's real fields, run.tune.tune_params) as the
run's config / params, each epoch's `tune.report` as a step of metrics, and the trial's last report (its clean
accuracy and robustness figures, run.trainable.train_one) as the last values, which W&B keeps as the run's
summary. The one addition is grouping: every seed of one setting (run.tune's `setting`) lands in one W&B group and
carries one MLflow `setting` tag, so each tracker's UI shows a setting's seeds together. With seed packs a tracker
run is a Tune trial, that is a pack: its members' epochs come tagged `pack_member`.

Imports Ray's integrations at module import: only run.phases.make_runner imports this module, when a tracker is on.
The classes sit at module level because Tune pickles its callbacks with the experiment's state.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pyarrow.fs
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from orchestrator.run.tune import SETTING
from orchestrator.spec.track import Track
from pixelreg_core.results import absolute


@contextlib.contextmanager
def _swapped(obj, name: str, value):
    """obj.name = value for the duration (Tune calls a callback's hooks one at a time, in the driver)."""
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)


@contextlib.contextmanager
def _environ(name: str, value: str | None):
    """The environment variable `name` set to `value` for the duration (untouched when value is None)."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class FlushedWandbActor(_WandbLoggingActor):
    """Tune's W&B logging actor (one per trial), whose `run` returns only once W&B has written the run."""

    def __init__(self, logdir: str, *args, **kwargs):
        # the folder the run is written to (WandbBySetting's `dir`) is also the one the run's config names
        # (`trial_log_path`), not the staging folder in Ray's session directory
        super().__init__(kwargs.get("dir") or logdir, *args, **kwargs)

    def run(self):
        super().run()
        # wandb.finish() returns before W&B's service, a child process of this actor, has written the run (an
        # offline run's .wandb file still held its 7-byte header); Tune kills the actor, and the service with it, as
        # soon as `run` returns. teardown() waits for the service to write everything and exit.
        self._wandb.teardown()


class WandbBySetting(WandbLoggerCallback):
    """Tune's W&B callback with the W&B group set per trial to its setting (Tune's default: one group per
    experiment, that is per launch phase)."""

    _logger_actor_cls = FlushedWandbActor
    # Tune's trial id is neither logged nor put in the run's config, where it would write over `trial_id` (the
    # pixelreg trial id); W&B's run id is Tune's trial id already
    _exclude_results = [*WandbLoggerCallback._exclude_results, "trial_id"]
    AUTO_CONFIG_KEYS = [key for key in WandbLoggerCallback.AUTO_CONFIG_KEYS if key != "trial_id"]

    def setup(self, *args, **kwargs):
        # Tune asks for an API key unless the WANDB_MODE variable says offline; the spec's mode says it too, and an
        # offline or disabled run needs no key
        mode = self.kwargs.get("mode")
        with _environ("WANDB_MODE", mode if mode in ("offline", "disabled") else None):
            super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        setting = trial.config.get(SETTING)
        kwargs = self.kwargs
        if isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            # W&B writes its run into the trial's folder under the sweep's tune/ itself. Tune's default is the
            # trial's staging folder in Ray's session directory, which Tune copies over when the experiment ends:
            # before the logging actors have written their runs (seen: the last trials' runs empty or missing).
            Path(trial.path).mkdir(parents=True, exist_ok=True)
            kwargs = {**kwargs, "dir": trial.path}
        with _swapped(self, "group", setting or self.group), _swapped(self, "kwargs", kwargs):
            super().log_trial_start(trial)


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
        if uri is not None and "://" not in uri:
            uri = absolute(uri)  # a folder store (allowed: spec.track), relative to where the launch started
        out.append(MlflowBySetting(tracking_uri=uri, experiment_name=track.mlflow.experiment_name or sweep,
                                   tags={"sweep": sweep}))
    return out


def trackers_line(callbacks: list) -> str:
    """`trackers: wandb, mlflow (...)`: the launch's line saying where each tracker's runs go."""
    names, where = [], []
    for callback in callbacks:
        if isinstance(callback, WandbBySetting):
            mode = callback.kwargs.get("mode", "online")
            place = "each trial's folder under tune/" if mode == "offline" else mode
            names.append("wandb")
            where.append(f"W&B project {callback.project} ({place})")
        elif isinstance(callback, MlflowBySetting):
            uri = callback.tracking_uri or "MLflow's default tracking URI"
            names.append("mlflow")
            where.append(f"MLflow experiment {callback.experiment_name} at {uri}")
    return f"trackers: {', '.join(names)}: one run per Tune trial, a setting's seeds grouped; {'; '.join(where)}"
