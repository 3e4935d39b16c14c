"""Running a fixed list of trials on Ray Tune: one `Tuner` per phase, progress lines, the ASHA scheduler.

Ray and Tune are imported inside the methods: the CLI imports `launch` (and with it this module) to build its
parser, and `plan` must not pay for Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UserError
from orchestrator.spec.schema import Scheduler
from orchestrator.sweepdir.tables import trial_statuses
from pixelreg_core.config import TrialConfig
from pixelreg_core.pack.key import packs


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
    stopper: Any = None      # DiskFullStopper, made on first use (it needs Ray)
    trackers: tuple = ()     # the spec's experiment trackers as Tune callbacks (run.track), on every phase

    @property
    def threads(self) -> int:
        return max(1, int(self.cpu))

    def run_config(self, name: str, units=lambda trial: 1, extra_callbacks=()):
        from ray import tune

        from orchestrator.run.callbacks import ProgressCallback, TensorBoardHparams

        if self.stopper is None:
            self.stopper = disk_full_stopper()
        return tune.RunConfig(
            name=f"{self.stamp}_{name}", storage_path=self.storage, verbose=0, stop=self.stopper,
            failure_config=tune.FailureConfig(max_failures=self.retries, fail_fast=False),
            callbacks=[ProgressCallback(self.progress, units=units, interval=self.progress_every),
                       TensorBoardHparams(), *extra_callbacks, *self.trackers])

    def check_disk(self) -> None:
        """After a Tuner: a full disk ends the launch with one line naming the folder."""
        if self.stopper is not None and self.stopper.full:
            raise UserError(f"{self.sweep_dir}: no space left on device ({self.stopper.full}); the launch stopped. "
                            "Finished trials are kept whole and nothing partial is in the tables: free space and "
                            "run the same launch again to finish the rest")

    def with_resources(self, trainable):
        from ray import tune

        return tune.with_resources(trainable, {"cpu": self.cpu, "gpu": self.gpu})

    def grid_phase(self, name: str, configs: list[TrialConfig], scheduler=None, counted: bool = True) -> None:
        """One Tuner over a fixed list of trials, in order. `counted=False`: the progress lines do not count
        them as trials done (the launch's last phase: evaluations of models already counted).

        Each Tune trial's config holds the trial's real fields (tune_params), not a hash, so the dashboard's trial
        table, TensorBoard's HParams, Tune's params.json and ResultGrid.get_dataframe() show task, th, alpha,
        seed and every grid field. Tune has no zipped grid (grid_search over several keys is their product), so
        the trials are Tune's `points_to_evaluate`: one preset config per trial, nothing sampled."""
        if not configs:
            return
        from ray import tune
        from ray.tune.search.basic_variant import BasicVariantGenerator

        from orchestrator.run.callbacks import StoppedRecorder
        from orchestrator.run.trainable import train_one

        by_id = {c.trial_id: c.to_dict() for c in configs}
        points = tune_params(configs)
        names = {p["trial_id"]: trial_name(p, varying(configs)) for p in points}
        trainable = tune.with_parameters(train_one, configs=by_id, sweep_dir=self.sweep_dir,
                                         threads=self.threads, retries=self.retries)
        def units(trial) -> int:  # run_trial units per Tune trial (progress counts)
            return 1

        groups = []
        if scheduler is None:  # ASHA stops trials one by one: never packed
            # a stored model only runs its missing evaluations (run_trial): only models to train are packed
            stored = {k for k, v in trial_statuses(self.sweep_dir).items() if v == "ok"}
            groups = (packs([c for c in configs if c.trial_id not in stored])
                      + [[c] for c in configs if c.trial_id in stored])
        if any(len(group) > 1 for group in groups):
            # Seed packs: one Tune trial per pack, named after its first trial (+ _packN); each member still
            # writes its own rows under its own trial id.
            from orchestrator.run.trainable import train_unit

            members = {g[0].trial_id: [c.to_dict() for c in g] for g in groups}
            points = [p for p in points if p["trial_id"] in members]
            names = {tid: name + (f"_pack{len(members[tid])}" if len(members[tid]) > 1 else "")
                     for tid, name in names.items() if tid in members}
            trainable = tune.with_parameters(train_unit, units=members, sweep_dir=self.sweep_dir,
                                             threads=self.threads, retries=self.retries)

            def units(trial) -> int:
                return len(members[trial.config["trial_id"]])
        # every key must be in the param space for Tune to accept a preset value; the domains list exactly
        # the preset values, so Tune never samples anything of its own
        space = {key: tune.choice(_distinct(p[key] for p in points)) for key in points[0]}
        # --max-concurrent goes to the generator itself: Tune ignores TuneConfig.max_concurrent_trials (with only
        # a log warning) when search_alg is a BasicVariantGenerator, and runs as many trials as resources allow
        generator = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=self.max_concurrent or 0)
        tuner = tune.Tuner(
            self.with_resources(trainable),
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=generator, num_samples=len(points), reuse_actors=True, scheduler=scheduler,
                trial_name_creator=lambda t: names[t.config["trial_id"]],
                trial_dirname_creator=lambda t: f"{names[t.config['trial_id']]}_{t.config['trial_id']}"),
            run_config=self.run_config(name, units=units if counted else (lambda trial: 0),
                                       extra_callbacks=[StoppedRecorder(by_id, self.sweep_dir)]
                                       if scheduler is not None else []))
        tuner.fit()
        self.check_disk()


def disk_full_stopper():
    """A Tune Stopper that ends the whole experiment when a trial reports a full disk (trainable.DISK_FULL):
    every other trial would fail the same way, and nothing can be recorded until space is back."""
    from ray import tune

    from orchestrator.run.trainable import DISK_FULL

    class DiskFullStopper(tune.Stopper):
        def __init__(self):
            self.full: str | None = None

        def __call__(self, trial_id, result) -> bool:
            if result.get(DISK_FULL):
                self.full = str(result.get("error") or "ENOSPC")
            return bool(self.full)

        def stop_all(self) -> bool:
            return bool(self.full)

    return DiskFullStopper()


# The fields every Tune trial shows, in this order; fields a phase varies (a grid over width, lr, ...) follow.
SHOWN_FIELDS = ("role", "task", "reg_data", "target", "range", "th", "alpha", "seed")
SETTING = "setting"  # the Tune config key of a trial's setting: its name without the seed (tune_params)
# Short names in readable trial names (trial_mnist-mnist_th0.2_a4_s3); other varying fields use their own name.
SHORT = {"alpha": "a", "seed": "s"}


def varying(configs: list[TrialConfig]) -> list[str]:
    """Scalar identity fields (beyond SHOWN_FIELDS) whose value differs between the configs: the grid fields."""
    identities = [c.identity() for c in configs]
    keys = [k for k, v in identities[0].items() if k not in SHOWN_FIELDS and not isinstance(v, dict | list)]
    return [k for k in keys if len({repr(i[k]) for i in identities}) > 1]


def tune_params(configs: list[TrialConfig]) -> list[dict[str, Any]]:
    """One flat Tune config per trial: trial_id (what train_one runs), SHOWN_FIELDS, the varying fields, and the
    trial's `setting` (its name without the seed: what groups a setting's seeds in the trackers, run.track)."""
    extra = varying(configs)
    out = []
    for c in configs:
        params = {"trial_id": c.trial_id, **{k: getattr(c, k) for k in (*SHOWN_FIELDS, *extra)}}
        out.append({**params, SETTING: trial_name(params, extra, seed=False)})
    return out


def trial_name(params: dict[str, Any], extra: list[str], seed: bool = True) -> str:
    """trial_mnist-mnist_th0.2_a4_s3, baseline_mnist_s3, fgsm_source_mnist_s1000 (+ _width8 for a width grid);
    `seed=False`: the setting's name, the same for all its seeds (trial_mnist-mnist_th0.2_a4)."""
    parts = [params["role"]]
    if params["alpha"] > 0:
        parts += [f"{safe(params['task'])}-{safe(params['reg_data'])}", f"th{params['th']:g}",
                  f"a{params['alpha']:g}"]
    else:
        parts.append(safe(params["task"]))
    if seed:
        parts.append(f"s{params['seed']}")
    parts += [f"{SHORT.get(k, k)}{safe(str(params[k]))}" for k in extra]
    return "_".join(parts)


def _distinct(values) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out
