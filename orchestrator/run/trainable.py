"""The functions Ray Tune runs: one TrialConfig (grid) or one searched (Th, alpha) point over seeds (optuna).

They run inside Ray workers. Torch and the trainer are imported on first use, once per worker process: with
`reuse_actors` the same worker runs trial after trial and pays the import only once. Each epoch's metrics go to
`tune.report` (dashboard, TensorBoard via Tune's default TBX logger); the Parquet rows are written by run_trial
itself, which is what makes a sweep resumable without Tune's own state.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ray import tune

from orchestrator.run.objective import FLOOR, evaluate_point
from orchestrator.spec.expand import trial_from_params
from orchestrator.spec.schema import Objective, SweepSpec
from orchestrator.sweepdir.tables import join, read_trial, record_failure, trial_statuses
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.errors import error_line
from pixelreg_core.failures import forget_frames, release_memory, sticky_cuda_error
from pixelreg_core.pack.key import packs
from pixelreg_core.results import disk_full


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """Only finite numbers: Tune's loggers and schedulers choke on None / NaN."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def _run(cfg: TrialConfig, sweep_dir: str, threads: int, retries: int,
         extra: dict[str, float] | None = None) -> dict[str, Any]:
    """run_trial with Tune reporting, retried in this worker up to `retries` times; returns its trials row.

    Exceptions are retried here rather than by Tune: in Ray 2.60 a trial that raises with reuse_actors on
    loses its actor and Tune never replaces it, so one failure would cost the sweep a slot for good (seen here:
    after one error, every later trial ran in a single actor). Tune's FailureConfig still restarts trials whose
    worker process dies. A trial that fails every attempt has a `failed` trials row (written by run_trial).
    """
    from pixelreg_core.trial import run_trial

    cfg = with_gpu_share(cfg.replace(num_threads=threads))  # run_trial sets torch's threads from it: one place
    extra = extra or {}
    node = worker_node()
    for attempt in range(retries + 1):
        release_memory()  # what an earlier attempt or trial of this worker left (cycles, CUDA's cached blocks)
        try:
            # defer_source: the FGSM source may train alongside (launch.run_phases); its evaluations wait
            return run_trial(cfg, sweep_dir, defer_source=True,
                             on_epoch=lambda row: tune.report({**numeric(row), **extra}),
                             cache_dir=join(sweep_dir, "fgsm_cache"), record_failure=True, node=node)
        except Exception as exc:  # noqa: BLE001 - any failure of one trial must not stop the sweep, but a full disk
            forget_frames(exc)  # the attempt's model, optimizer and graph go before the retry starts
            if sticky_cuda_error(exc):
                end_poisoned_worker(cfg, exc)
            if disk_full(exc):  # every retry and every other trial would fail too: the launch stops (DiskFull)
                raise DiskFull(error_line(exc)) from None
            if isinstance(exc, ConfigError):  # a value the user must change fails the same way every time
                error = error_line(exc) + " (not retried: a config error)"
                break
            error = error_line(exc)
            if attempt < retries:
                print(f"trial {cfg.trial_id} failed ({error}); retry {attempt + 1} of {retries}", flush=True)
            else:
                error = f"{error} (failed {retries + 1} attempt(s))"
    record_failure(sweep_dir, cfg, error)
    return {"trial_id": cfg.trial_id, "status": "failed", "error": error}


POISONED_EXIT = 75  # the exit status of a worker ended after a sticky CUDA error


def end_poisoned_worker(cfg: TrialConfig, exc: BaseException) -> None:
    """End this worker process after a sticky CUDA error (pixelreg_core/failures.py): its CUDA context is
    unusable, so a retry here, or any later trial of this reused actor, would fail the same way. A worker that
    dies is what Tune replaces: FailureConfig starts the trial again in a new actor, from its checkpoint (a trial
    that raises would instead lose its actor for good, see _run)."""
    print(f"trial {cfg.trial_id}: {error_line(exc)}; this worker's CUDA context is unusable: ending the worker so "
          "that Tune starts the trial again in a new one", flush=True)
    os._exit(POISONED_EXIT)


def with_gpu_share(cfg: TrialConfig) -> TrialConfig:
    """`device: auto` in a Ray worker that holds no GPU share is the CPU.

    Ray 2.60 no longer hides the GPUs from a task that asked for none (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO is off by
    default), so torch in a CPU trial sees every GPU of the machine and `auto` would put the trial on cuda:0: a CPU
    sweep (`resources.gpu: 0`) on a GPU machine would open one CUDA context per CPU slot, none of it known to Ray.
    A trial that asked for a GPU share (or names its device) is left as it is."""
    import ray

    if cfg.device == "auto" and ray.is_initialized() and not ray.get_gpu_ids():
        return cfg.replace(device="cpu")
    return cfg


def worker_node() -> str | None:
    """The Ray node id of the node this worker runs on (`ray list nodes` and the dashboard map it to a machine):
    on a cluster the trials table says where each trial ran. None outside a Ray worker."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class TrialFailed(RuntimeError):
    """A searched point whose trials failed: Tune records it as errored (its rows say why)."""


class DiskFull(RuntimeError):
    """A write failed for want of space: the trial is not recorded (nothing can be written) and the launch stops
    (the driver's DiskFullStopper sees the `disk_full` report); a relaunch reruns the trial."""


DISK_FULL = "disk_full"  # the report key the driver's stopper looks for
# The trials row's figures of the kept model in a trial's last report (beside robustness_figures)
FINAL_FIELDS = ("clean_acc", "valid_acc", "best_epoch")


def train_one(config: dict[str, Any], *, configs: dict[str, dict[str, Any]], sweep_dir: str, threads: int,
              retries: int) -> None:
    """Grid search: the Tune trial `config["trial_id"]` is exactly that TrialConfig."""
    cfg = TrialConfig.from_dict(configs[config["trial_id"]])
    try:
        row = _run(cfg, sweep_dir, threads, retries)
    except DiskFull as exc:
        tune.report({DISK_FULL: 1.0, "ok": 0.0, "error": str(exc)[:300]})
        return
    ok = row.get("status") == "ok"
    # the last report: the kept model's figures (TensorBoard's HParams takes its metric columns from it)
    tune.report({**numeric({name: row.get(name) for name in FINAL_FIELDS}),
                 **(robustness_figures(sweep_dir, cfg.trial_id) if ok else {}),
                 "ok": float(ok), **({} if ok else {"error": row["error"][:300]})})


def robustness_figures(sweep_dir: str, trial_id: str) -> dict[str, float]:
    """The trial's robustness at a glance for its last report (TensorBoard, the trackers' summaries):
    `robust/<attack>/<metric>`, the mean over repeats (and corruption variants) at the attack's largest eps or
    severity; an attack without eps (boundary) gives the mean of its rows."""

    def eps(row) -> float:
        return -1.0 if row["eps"] is None or math.isnan(row["eps"]) else row["eps"]

    rows = [r for r in read_trial(sweep_dir, "robustness", trial_id) or [] if r.get("value") is not None]
    largest: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row["attack"], row["metric"])
        largest[key] = max(largest.get(key, eps(row)), eps(row))
    values: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if eps(row) == largest[(row["attack"], row["metric"])]:
            values.setdefault((row["attack"], row["metric"]), []).append(float(row["value"]))
    return numeric({f"robust/{attack}/{metric}": sum(v) / len(v) for (attack, metric), v in values.items()})


def train_unit(config: dict[str, Any], *, units: dict[str, list[dict[str, Any]]], sweep_dir: str, threads: int,
               retries: int) -> None:
    """Grid search with seed packs (`pack` > 1): the Tune trial `config["trial_id"]` is the unit of that name, one
    trial (train_one's path) or a pack of trials trained as one grouped network (pixelreg_core.pack)."""
    members = units[config["trial_id"]]
    if len(members) == 1:
        train_one(config, configs={config["trial_id"]: members[0]}, sweep_dir=sweep_dir, threads=threads,
                  retries=retries)
        return
    try:
        rows = _run_pack([TrialConfig.from_dict(m) for m in members], sweep_dir, threads, retries)
    except DiskFull as exc:
        tune.report({DISK_FULL: 1.0, "ok": 0.0, "error": str(exc)[:300]})
        return
    failed = [row for row in rows if row.get("status") != "ok"]
    tune.report({"ok": float(not failed), "failed_units": float(len(failed)),
                 **({"error": f"{len(failed)} of {len(rows)}: {failed[0]['error']}"[:300]} if failed else {})})


def _run_pack(cfgs: list[TrialConfig], sweep_dir: str, threads: int, retries: int,
              extras: list[dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """run_pack with Tune reporting (every member's epochs, tagged `pack_member` or with that member's `extras`);
    returns each trial's row.

    A member that fails with a config error is recorded as _run records it; one that fails otherwise gets its
    remaining retries as a separate trial (_run), from its checkpoint. A worker that dies takes the whole pack
    with it: Tune's FailureConfig restarts the pack, and every member resumes from its checkpoint."""
    from pixelreg_core.pack.trial import run_pack

    cfgs = [with_gpu_share(cfg.replace(num_threads=threads)) for cfg in cfgs]  # prepare_trial sets the threads
    extras = extras or [{"pack_member": float(i)} for i in range(len(cfgs))]
    by_id = {cfg.trial_id: extra for cfg, extra in zip(cfgs, extras, strict=True)}
    outcomes = run_pack(cfgs, sweep_dir, cache_dir=join(sweep_dir, "fgsm_cache"), record_failure=True,
                        node=worker_node(),
                        on_epoch=lambda cfg, row: tune.report({**numeric(row), **by_id[cfg.trial_id]}))
    rows = []
    for outcome, extra in zip(outcomes, extras, strict=True):
        exc = outcome.error
        if exc is not None and sticky_cuda_error(exc):
            end_poisoned_worker(outcome.cfg, exc)
        if exc is None:
            rows.append(outcome.row)
        elif disk_full(exc):
            raise DiskFull(error_line(exc)) from None
        elif isinstance(exc, ConfigError) or retries == 0:
            suffix = " (not retried: a config error)" if isinstance(exc, ConfigError) else " (failed 1 attempt(s))"
            error = error_line(exc) + suffix
            record_failure(sweep_dir, outcome.cfg, error)
            rows.append({"trial_id": outcome.cfg.trial_id, "status": "failed", "error": error})
        else:
            print(f"trial {outcome.cfg.trial_id} failed in its seed pack ({outcome.row['error']}); retried alone",
                  flush=True)
            rows.append(_run(outcome.cfg, sweep_dir, threads, retries - 1, extra=extra))
    return rows


# ----------------------------------------------------------------------------------------------- optuna


def train_point(config: dict[str, Any], *, spec: SweepSpec, task: str, reg_data: str, seeds: list[int],
                baselines: dict[int, str], sweep_dir: str, threads: int, objective: Objective,
                retries: int) -> None:
    """Optuna: one sampled (Th, alpha) for one pair, trained for every seed; reports the seed-mean objective.

    Seeds finished by an earlier launch are read back, not retrained. The objective is the one best.parquet
    reports (orchestrator.run.objective): seed means over the seed-averaged baseline. `objective` is the spec's
    search.objective.
    """
    params = {"th": float(config["th"]), "alpha": float(config["alpha"])}
    statuses = trial_statuses(sweep_dir)
    cfgs = [trial_from_params(spec, task, reg_data, seed, params, sweep_dir) for seed in seeds]
    trial_ids = [cfg.trial_id for cfg in cfgs]
    # OptunaSearch reads its metric from every intermediate result; the objective only exists at the end, so
    # epochs carry its floor (the lowest score() can give) as a neutral placeholder.
    extra = {cfg.trial_id: {"seed_index": index, "objective": FLOOR, **params} for index, cfg in enumerate(cfgs)}
    todo = [cfg for cfg in cfgs if statuses.get(cfg.trial_id) != "ok"]
    for group in packs(todo):  # the point's seeds as seed packs (`pack` > 1), else one by one
        try:
            if len(group) > 1:
                rows = _run_pack(group, sweep_dir, threads, retries, [extra[c.trial_id] for c in group])
            else:
                rows = [_run(group[0], sweep_dir, threads, retries, extra=extra[group[0].trial_id])]
        except DiskFull as exc:
            tune.report({DISK_FULL: 1.0, "ok": 0.0, "objective": FLOOR, "error": str(exc)[:300]})
            return
        for cfg, row in zip(group, rows, strict=True):
            if row.get("status") != "ok":
                raise TrialFailed(f"trial {cfg.trial_id} (seed {cfg.seed}): {row['error']}")
    point = evaluate_point(sweep_dir, trial_ids, [baselines[seed] for seed in seeds], objective)
    tune.report({**numeric(point), "objective": point["objective"], "ok": 1.0})
