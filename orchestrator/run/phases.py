"""A launch's run on Ray, once the plan is made and the folder claimed (orchestrator.commands.launch): start (or
join) Ray, size the Tune runner to it, run the phases in their order, stop Ray.

The order of work (`run_phases`): the source models (the trials' transferred attacks read them), then baselines
and grid trials (or, with `search: optuna`, baselines and then one Optuna study per dataset pair), then the
evaluations left for later. The Tune runner (run.tune) and the Optuna search (run.search) do the running. Ray,
Tune and torch are imported inside functions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path

from orchestrator.plan.make import Plan
from orchestrator.plan.resources import check_resources, concurrent_slots
from orchestrator.run.search import run_studies
from orchestrator.run.tune import Runner, asha_max_t, asha_scheduler
from orchestrator.sweepdir.blocked import skip_blocked
from orchestrator.sweepdir.resume import missing_evaluations
from orchestrator.sweepdir.tables import finished_evaluations, is_uri, trial_statuses
from pixelreg_core.config import TrialConfig


def run_on_ray(plan: Plan, todo: list[TrialConfig], args: argparse.Namespace, n_total: int, n_done: int, log,
               lock=None) -> None:
    """Start (or join) Ray, run the trials to run in their phases, stop Ray."""
    from orchestrator.localray.start import stop_ray

    quiet_tune()
    session = start_session(args, lock, log)
    try:
        # Against the Ray the trials run on, local too: a GPU trial Ray cannot place would wait for it forever.
        check_resources(plan.spec, available_gpus=session.gpus, where="in Ray")
        runner, progress = make_runner(plan, args, session, n_total, n_done, log)
        run_phases(runner, plan, todo, progress.log)
        log(progress.line())
    finally:
        stop_ray(session)


def quiet_tune() -> None:
    """Tune's settings for a launch: our own progress lines (progress.py) instead of Tune's output."""
    import logging

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # the final report has no epoch metrics
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy output is silent at verbose=0; ours is progress.py
    # Tune logs every trial failure as a multi-page traceback; ours is one line per failure (progress.py), and the
    # error itself is in the trial's trials row and in Tune's error.txt.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C ends the launch at once (trials resume)


def start_session(args: argparse.Namespace, lock, log):
    """Join the cluster or start a local Ray; a local one is recorded in the lock, so that whoever ends this
    launch can stop all of it."""
    from orchestrator.localray.start import start_ray

    session = start_ray(args.address, args.dashboard_host, not args.no_dashboard, log=log,
                        listen_all=getattr(args, "listen_all", False))
    if session.started_here and lock is not None:
        lock.track_ray()
    return session


def make_runner(plan: Plan, args: argparse.Namespace, session, n_total: int, n_done: int, log):
    """The Tune runner and the progress lines, sized to the session's CPUs and GPUs."""
    from orchestrator.run.progress import Progress

    resources = plan.spec.resources
    storage = (tempfile.mkdtemp(prefix="pixelreg-tune-") if is_uri(plan.sweep_dir)
               else str(Path(plan.sweep_dir, "tune")))
    slots = max(1, concurrent_slots(session.cpus, session.gpus, resources.cpu, resources.gpu, args.max_concurrent))
    progress = Progress(total=n_total, already_done=n_done, slots=slots, log=log)
    log(f"{slots} trial(s) at a time ({resources.cpu:g} CPU, {resources.gpu:g} GPU each); "
        f"Tune logs and TensorBoard files: {storage}")
    trackers: tuple = ()
    if plan.spec.track.any:
        from orchestrator.run.track import tracker_callbacks, trackers_line

        trackers = tuple(tracker_callbacks(plan.spec.track, plan.spec.name))
        log(trackers_line(trackers))
    runner = Runner(sweep_dir=plan.sweep_dir, storage=storage, stamp=dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
                    cpu=resources.cpu, gpu=resources.gpu, retries=plan.spec.max_failures, slots=slots,
                    progress=progress, max_concurrent=args.max_concurrent, progress_every=args.progress_every,
                    trackers=trackers)
    return runner, progress


def run_phases(runner: Runner, plan: Plan, todo: list[TrialConfig], log) -> None:
    """The order of work. With fifo and no seed packs: one phase, the FGSM source models first in line and every
    other model training alongside (no slot idles while a source trains); a model whose source is not ready when
    its own training ends leaves its transferred evaluations for the `evaluations` phase at the end (the
    dependency is the evaluation's, not the training's). With ASHA or seed packs (a pack reads its source when it
    starts): the sources first, then baselines and grid trials (baselines never stopped early by ASHA: every ratio
    is taken against them). Then the Optuna studies, then the evaluations left for later."""
    if plan.race is not None:  # seeds: {start, max}: one Tuner the race keeps fed (run.race)
        from orchestrator.run.race import run_race

        run_race(runner, plan.race)
        runner.grid_phase("evaluations", deferred_evaluations(plan, log), counted=False)
        return
    sources = [c for c in todo if c.role == "fgsm_source"]
    baselines = [c for c in todo if c.role == "baseline"]
    trials = [c for c in todo if c.role not in ("fgsm_source", "baseline")]
    scheduler = asha_scheduler(plan.spec.scheduler, asha_max_t(trials or plan.configs))
    packed = any(c.pack > 1 for c in todo)
    if scheduler is None and not packed:
        runner.grid_phase("trials", sources + baselines + trials)
    else:
        runner.grid_phase("fgsm_sources", sources)
        baselines, trials = skip_blocked(plan.sweep_dir, baselines, trials, log=log)  # their source failed
        if scheduler is None:
            runner.grid_phase("trials", baselines + trials)
        else:
            runner.grid_phase("baselines", baselines)
            runner.grid_phase("trials", trials, scheduler=scheduler)
    if plan.spec.search.type == "optuna":
        run_studies(runner, plan.spec, plan.configs)
    runner.grid_phase("evaluations", deferred_evaluations(plan, log), counted=False)


def deferred_evaluations(plan: Plan, log) -> list[TrialConfig]:
    """Stored models of the spec still missing evaluations whose source model is ok now (run as evaluations of
    stored models); those whose source failed are named in their model's `error` and not run."""
    from orchestrator.sweepdir.tables import read_trial, write_table

    statuses = trial_statuses(plan.sweep_dir)
    finished = finished_evaluations(plan.sweep_dir)
    ready, blocked = [], 0
    for cfg in plan.configs:
        if statuses.get(cfg.trial_id) != "ok" or not missing_evaluations(plan.sweep_dir, cfg, finished):
            continue
        source = cfg.source_model
        if source is None or statuses.get(source) == "ok":
            ready.append(cfg)
            continue
        rows = read_trial(plan.sweep_dir, "trials", cfg.trial_id)
        if rows:
            error = (rows[0].get("error") or "").split(" | ")[0]
            note = f"transferred evaluation not run: its FGSM source {source} is {statuses.get(source, 'missing')}"
            write_table(plan.sweep_dir, "trials", cfg.trial_id,
                        [{**rows[0], "error": " | ".join(e for e in (error, note) if e)[:2000]}])
        blocked += 1
    if blocked:
        log(f"{blocked} model(s) without their transferred evaluation: their FGSM source failed "
            "(orchestrator status lists why; a relaunch trains the source again and runs them)")
    return ready
