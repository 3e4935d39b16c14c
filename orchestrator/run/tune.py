"""Running a fixed list of trials on Ray Tune: one `Tuner` per phase, progress lines, the ASHA scheduler.

Ray and Tune are imported inside the methods: the CLI imports `launch` (and with it this module) to build its
parser, and `plan` must not pay for Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.spec.schema import Scheduler
from pixelreg_core.config import TrialConfig


def asha_max_t(configs: list[TrialConfig], seeds_per_trial: int = 1) -> int:
    """ASHA's max_t: how many results the longest Tune trial reports (its epochs, x seeds for a searched point,
    + the final report). ASHA stops a trial that reaches max_t, so it must lie past the last epoch of the longest
    trial, or that trial is cut short and recorded `stopped` (a grid may vary `epochs`)."""
    return max(cfg.epochs for cfg in configs) * seeds_per_trial + 1


def asha_scheduler(scheduler: Scheduler, max_t: int):
    """ASHA on validation accuracy (maximised), or None for fifo. Time is Tune's training_iteration = reports."""
    if scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", metric="valid_acc", mode="max", max_t=max_t,
                         grace_period=scheduler.grace_period, reduction_factor=scheduler.reduction_factor)


def safe(text: str) -> str:
    """A dataset name as part of a folder name (idx:/data/x -> idx--data-x)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


@dataclass
class Runner:
    """The parts every Tune phase of one launch shares."""

    sweep_dir: str
    storage: str             # Tune's own logs (a local folder)
    stamp: str               # makes each launch's Tune experiment names unique
    cpu: float               # per trial
    gpu: float
    retries: int             # spec.max_failures
    slots: int
    progress: Any            # progress.Progress
    max_concurrent: int | None
    progress_every: float = 10.0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpu))

    def run_config(self, name: str, units=lambda trial: 1, extra_callbacks=()):
        from ray import tune

        from orchestrator.run.progress import ProgressCallback

        return tune.RunConfig(
            name=f"{self.stamp}_{name}", storage_path=self.storage, verbose=0,
            failure_config=tune.FailureConfig(max_failures=self.retries, fail_fast=False),
            callbacks=[ProgressCallback(self.progress, units=units, interval=self.progress_every),
                       *extra_callbacks])

    def with_resources(self, trainable):
        from ray import tune

        return tune.with_resources(trainable, {"cpu": self.cpu, "gpu": self.gpu})

    def grid_phase(self, name: str, configs: list[TrialConfig], scheduler=None) -> None:
        """One Tuner over a fixed list of trials, in order."""
        if not configs:
            return
        from ray import tune

        from orchestrator.run.progress import StoppedRecorder
        from orchestrator.run.trainable import train_one

        by_id = {c.trial_id: c.to_dict() for c in configs}
        trainable = tune.with_parameters(train_one, configs=by_id, sweep_dir=self.sweep_dir,
                                         threads=self.threads, retries=self.retries)
        roles = {c.trial_id: c.role for c in configs}
        tuner = tune.Tuner(
            self.with_resources(trainable),
            param_space={"trial_id": tune.grid_search(list(by_id))},
            tune_config=tune.TuneConfig(
                reuse_actors=True, scheduler=scheduler, max_concurrent_trials=self.max_concurrent,
                trial_name_creator=lambda t: f"{roles[t.config['trial_id']]}_{t.config['trial_id']}",
                trial_dirname_creator=lambda t: f"{t.config['trial_id']}_{t.trial_id}"),
            run_config=self.run_config(name, extra_callbacks=[StoppedRecorder(by_id, self.sweep_dir)]
                                       if scheduler is not None else []))
        tuner.fit()
