"""`orchestrator launch SPEC`: run (or resume) a sweep on Ray Tune.

Order of work, one function each: `make_plan` checks everything a user can get wrong (spec, resources, results
root, every config, the inputs on disk) and computes what to run, writing nothing; `run` then takes the sweep
folder's lock, `claim`s the folder (refusing a different spec's results, wiping them with --fresh) and drops the
stale rows of the trials to run; `run_on_ray` starts Ray and `run_phases` runs the source models (the trials'
transferred attacks read them), then baselines and grid trials (or, with `search: optuna`, baselines and then one
Optuna study per dataset pair). The sweep's state is only its Parquet files, so relaunching the same command resumes.
The Tune runner (run.tune) and the Optuna search (run.search) do the running; this module decides what to run and
says what happened. Ray, Tune and torch are imported inside functions: the CLI imports this module to build its
parser.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.localray import mps
from orchestrator.plan.make import Plan, claim, make_plan
from orchestrator.plan.resources import check_resources, concurrent_slots
from orchestrator.run.progress import print_line
from orchestrator.run.search import run_studies
from orchestrator.run.tune import Runner, asha_max_t, asha_scheduler
from orchestrator.sweepdir.blocked import exit_code, skip_blocked
from orchestrator.sweepdir.lock import sweep_lock
from orchestrator.sweepdir.resume import (
    missing_evaluations,
)
from orchestrator.sweepdir.tables import (
    COMPLETE_STATUSES,
    DEFAULT_ROOT,
    finished_evaluations,
    is_uri,
    trial_statuses,
)
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import disk_full


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The KEY=VALUE overrides after the spec (validate, plan, launch, evaluate): orchestrator.spec.overrides."""
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="change the spec for this run: a dotted key and a YAML value, e.g. seeds=5 "
                             "train.epochs=2 grid.alpha=[1,4] attacks.boundary.images=200; the sweep folder "
                             "records the spec with them applied")


def add_arguments(parser: argparse.ArgumentParser, fresh: bool = True) -> None:
    """launch's arguments; `fresh=False`: without --fresh (evaluate only adds to stored models)."""
    parser.add_argument("spec", help="sweep spec YAML, e.g. sweeps/quickstart.yaml")
    add_overrides(parser)
    parser.add_argument("--results", default=DEFAULT_ROOT, metavar="ROOT",
                        help="output root (default results/); the sweep writes ROOT/<name>/. "
                             "A pyarrow URI such as s3://bucket/prefix works where credentials exist")
    parser.add_argument("--address", default=None,
                        help="join an existing Ray cluster (e.g. auto or HOST:6379; default: RAY_ADDRESS, "
                             "else start a local Ray)")
    if fresh:
        parser.add_argument("--fresh", action="store_true",
                            help="delete this sweep's earlier results under ROOT/<name>/ and start over")
    parser.add_argument("--dashboard-host", default="127.0.0.1",
                        help="interface the local Ray dashboard binds (default 127.0.0.1: this machine only)")
    parser.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
    parser.add_argument("--listen-all", action="store_true",
                        help="let the local Ray listen on every interface (Ray's own default); without it every "
                             "port of the local Ray is bound to 127.0.0.1")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="run at most N trials at once (default: as many as the resources allow)")
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                        help="seconds between progress lines (default 10)")
    parser.add_argument("--mps", action="store_true",
                        help="run a CUDA MPS daemon for the launch, so trials packed on one GPU share it "
                             "(needs nvidia-cuda-mps-control and a local Ray)")


# --------------------------------------------------------------------------------------------------- the plan


# --------------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    try:
        with sweep_lock(plan.sweep_dir) as lock:  # from before the folder's first write to the end of the launch
            done, todo = claim(plan, getattr(args, "fresh", False), print,
                               evaluate_only=getattr(args, "evaluate_only", False))
            return _run(args, plan, done, todo, lock)
    except OSError as exc:
        if not disk_full(exc):
            raise
        raise UserError(f"{exc.filename or args.results}: no space left on device; finished trials are kept whole: "
                        "free space and run the same launch again") from None


def _run(args: argparse.Namespace, plan: Plan, done: list[TrialConfig], todo: list[TrialConfig], lock) -> int:
    log = print_line
    n_total = len(plan.configs) + plan.optuna_units
    log(f"sweep {plan.spec.name}: {n_total} trials ({len(done)} complete from earlier launches, "
        f"{len(todo)}{' + up to ' + str(plan.optuna_units) + ' searched' if plan.optuna_units else ''} "
        f"to run) -> {plan.sweep_dir}")
    if plan.work is not None and (done or plan.work["evaluate"]):
        log("  " + work_line(plan.work))
    if todo or plan.optuna_units:
        with mps.daemon(plan.mps, log):  # before Ray starts its workers; stopped when the launch ends
            run_on_ray(plan, todo, args, n_total, len(done), log, lock)
    failed = count_failed(plan)
    missing = missing_after(plan)
    log(f"finished: {failed} trial(s) failed or blocked" if failed else "finished: every trial ok")
    if missing:
        log(f"  {len(missing)} evaluation(s) of trained models failed, e.g. {missing[0]} (a relaunch runs them)")
    if failed:
        log(f"  see their errors with: orchestrator status {plan.sweep_dir}")
    report_outputs(plan.sweep_dir, log)
    return max(exit_code(trial_statuses(plan.sweep_dir)), 1 if missing else 0)  # 1 after failures


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
        from orchestrator.run.track import tracker_callbacks

        trackers = tuple(tracker_callbacks(plan.spec.track, plan.spec.name))
        log(f"trackers: {', '.join(n for n in ('wandb', 'mlflow') if getattr(plan.spec.track, n))} (one run per "
            "Tune trial, a setting's seeds grouped)")
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


def work_line(todo: dict[str, list]) -> str:
    """`to train: 2 models; to evaluate: 12 (model, attack) on 10 stored models (boundary 10, ...); reused: 8`."""
    from collections import Counter

    evaluations = todo["evaluate"]
    per_attack = Counter(name for _, name in evaluations)
    stored = len({cfg.trial_id for cfg, _ in evaluations})
    attacks = ", ".join(f"{name} {n}" for name, n in per_attack.items())
    return (f"to train: {len(todo['train'])} model(s); to evaluate: {len(evaluations)} (model, attack) on "
            f"{stored} stored model(s){' (' + attacks + ')' if attacks else ''}; reused as they are: "
            f"{len(todo['reused'])} model(s)")


def count_failed(plan: Plan) -> int:
    """Models that failed (or were blocked) plus ok models whose evaluations are still missing."""
    statuses = trial_statuses(plan.sweep_dir)
    failed = sum(1 for status in statuses.values() if status not in COMPLETE_STATUSES)
    return failed + len(missing_after(plan))


def missing_after(plan: Plan) -> list[str]:
    """`<trial_id> <attack>` of the spec's ok models whose evaluation is still missing after the run."""
    statuses = trial_statuses(plan.sweep_dir)
    finished = finished_evaluations(plan.sweep_dir)
    return [f"{c.trial_id} {name}" for c in plan.configs if statuses.get(c.trial_id) == "ok"
            for name in missing_evaluations(plan.sweep_dir, c, finished)]


def report_outputs(sweep_dir: str, log) -> None:
    """Aggregate and say where everything is."""
    if is_uri(sweep_dir):
        log(f"results: {sweep_dir} (tables trials, epochs, robustness, spectrum; "
            f"orchestrator.load(URI) reads them)")
    else:
        log(f"results: {sweep_dir}/{{trials,epochs,robustness,spectrum}}/ (pandas.read_parquet reads each folder)")
    from orchestrator.analysis.aggregate import aggregate_sweep

    try:
        result = aggregate_sweep(sweep_dir)
    except UserError as exc:
        log(f"aggregate skipped: {exc}")
        return
    log(f"summary: {result['summary']}  best settings: {result['best']}")
    if result.get("figures"):
        log(f"figures: {Path(sweep_dir) / 'figures'} ({len(result['figures'])} files)")
    elif is_uri(sweep_dir):
        log(f"figures: not drawn for a URI ({result['skipped_figures']['figures']})")
    for line in result.get("chosen", [])[:10]:
        log(f"  {line}")
