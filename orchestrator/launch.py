"""`orchestrator launch SPEC`: run (or resume) a sweep on Ray Tune.

Order of work: check everything a user can get wrong (spec, resources, results root, a different spec already in
the results folder) before Ray starts or anything is written; then the FGSM source models, which the trials'
transferred-FGSM attack reads; then baselines and grid trials (or, with `search: optuna`, baselines and then one
Optuna study per dataset pair). The sweep's state is only its Parquet files, so relaunching the same command resumes.
The Tune runner (tune_runner) and the Optuna search (optuna_search) do the running; this module decides what to
run and says what happened. Ray, Tune and torch are imported inside functions: the CLI imports this module to build
its parser.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.localray import mps
from orchestrator.run.preflight import preflight
from orchestrator.run.resources import check_resources, concurrent_slots
from orchestrator.run.search import run_studies
from orchestrator.run.tune import Runner, asha_max_t, asha_scheduler
from orchestrator.spec.expand import expand
from orchestrator.spec.load import load_spec
from orchestrator.spec.schema import SweepSpec
from orchestrator.sweepdir.blocked import exit_code, skip_blocked
from orchestrator.sweepdir.lock import sweep_lock
from orchestrator.sweepdir.resume import check_writable, prepare_sweep_dir, spec_fingerprint, split_done
from orchestrator.sweepdir.tables import COMPLETE_STATUSES, DEFAULT_ROOT, is_uri, sweep_dir_for, trial_statuses
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.results import clean_temp, disk_full


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML, e.g. sweeps/quickstart.yaml")
    parser.add_argument("--results", default=DEFAULT_ROOT, metavar="ROOT",
                        help="output root (default results/); the sweep writes ROOT/<name>/. "
                             "A pyarrow URI such as s3://bucket/prefix works where credentials exist")
    parser.add_argument("--address", default=None,
                        help="join an existing Ray cluster (e.g. auto or HOST:6379; default: RAY_ADDRESS, "
                             "else start a local Ray)")
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


@dataclass
class Plan:
    """Everything decided before Ray starts."""

    spec: SweepSpec
    spec_path: Path
    sweep_dir: str
    configs: list[TrialConfig]              # all expanded configs (grid: the whole sweep; optuna: sources+baselines)
    todo: list[TrialConfig]
    done: list[TrialConfig]
    optuna_units: int = 0                   # run_trial calls the optuna studies will make at most
    lock: Any = None                        # the sweep folder's lock.SweepLock while launch holds it
    mps: str | None = None                  # nvidia-cuda-mps-control to start (--mps), see mps.py


def _absolute(path: str) -> str:
    return path if is_uri(path) else str(Path(path.removeprefix("file://")).resolve())


def localize(cfg: TrialConfig) -> TrialConfig:
    """Absolute data paths: Tune workers may run in another working directory (or on another machine with the
    same shared layout). Only non-identity fields change, so trial ids stay the same."""
    changes: dict[str, Any] = {}
    if cfg.data_root:
        changes["data_root"] = _absolute(cfg.data_root)
    if cfg.fgsm_source:
        changes["fgsm_source"] = _absolute(cfg.fgsm_source)
    return cfg.replace(**changes) if changes else cfg


def validate_configs(configs: list[TrialConfig], spec_path: Path) -> None:
    """Every config checked before anything runs: a bad value is a spec mistake, reported as one line."""
    from pixelreg_core import attacks

    for cfg in configs:
        try:
            cfg.validate()
            attacks.validate_attacks(cfg, check_source=False)  # sources are trained in the first phase
        except ConfigError as exc:
            raise UserError(f"{spec_path}: trial {cfg.trial_id} ({cfg.role} {cfg.task}/{cfg.reg_data}): {exc}") \
                from None


def on_cluster(args: argparse.Namespace) -> bool:
    return bool(args.address or os.environ.get("RAY_ADDRESS"))


def make_plan(args: argparse.Namespace, log=print, hold=None) -> Plan:
    """`hold(sweep_dir)`, when given, takes the sweep folder's lock before anything in it is written."""
    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    if not on_cluster(args):
        check_resources(spec)  # this machine's GPUs, before Ray starts; run_on_ray checks Ray's once it runs
    check_writable(args.results)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError(f"--max-concurrent {args.max_concurrent}: must be >= 1")
    mps_control = mps.check(getattr(args, "mps", False), address=args.address, gpu_per_trial=spec.resources.gpu)
    sweep_dir = sweep_dir_for(args.results, spec.name)
    configs = [localize(c) for c in expand(spec, sweep_dir)]
    validate_configs(configs, spec_path)
    preflight(configs, spec_path)  # datasets, matrices, checkpoints, GPUs: present before Ray starts
    lock = hold(sweep_dir) if hold else None
    prepare_sweep_dir(sweep_dir, spec_path.read_text(), spec_fingerprint(spec), args.fresh, log=log)
    clean_temp(sweep_dir)  # what a writer killed mid-write left in .tmp/ (we hold the lock: nobody writes now)
    done, todo = split_done(configs, sweep_dir)
    plan = Plan(spec=spec, spec_path=spec_path, sweep_dir=sweep_dir, configs=configs, todo=todo, done=done,
                lock=lock, mps=mps_control)
    if spec.search.type == "optuna":
        plan.optuna_units = spec.search.trials * len(spec.pairs) * len(spec.seed_list)
    return plan


# --------------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    try:
        with contextlib.ExitStack() as held:  # the sweep folder's lock, from before its first write to the end
            return _run(args, make_plan(args, hold=lambda sweep_dir: held.enter_context(sweep_lock(sweep_dir))))
    except OSError as exc:
        if not disk_full(exc):
            raise
        raise UserError(f"{exc.filename or args.results}: no space left on device; finished trials are kept whole: "
                        "free space and run the same launch again") from None


def _run(args: argparse.Namespace, plan: Plan) -> int:
    log = print
    n_total = len(plan.configs) + plan.optuna_units
    log(f"sweep {plan.spec.name}: {n_total} trials ({len(plan.done)} complete from earlier launches, "
        f"{len(plan.todo)}{' + up to ' + str(plan.optuna_units) + ' searched' if plan.optuna_units else ''} "
        f"to run) -> {plan.sweep_dir}")
    if plan.todo or plan.optuna_units:
        with mps.daemon(plan.mps, log):  # before Ray starts its workers; stopped when the launch ends
            run_on_ray(plan, args, n_total, log)
    failed = count_failed(plan)
    log(f"finished: {failed} trial(s) failed or blocked" if failed else "finished: every trial ok")
    if failed:
        log(f"  see their errors with: orchestrator status {plan.sweep_dir}")
    report_outputs(plan.sweep_dir, log)
    return exit_code(trial_statuses(plan.sweep_dir))  # 1 after failed or blocked trials


def run_on_ray(plan: Plan, args: argparse.Namespace, n_total: int, log) -> None:
    import logging

    from orchestrator.localray.start import start_ray, stop_ray
    from orchestrator.run.progress import Progress

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # the final report has no epoch metrics
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy output is silent at verbose=0; ours is progress.py
    # Tune logs every trial failure as a multi-page traceback; ours is one line per failure (progress.py), and the
    # error itself is in the trial's trials row and in Tune's error.txt.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C ends the launch at once (trials resume)
    session = start_ray(args.address, args.dashboard_host, not args.no_dashboard, log=log,
                        listen_all=getattr(args, "listen_all", False))
    if session.started_here and plan.lock is not None:
        plan.lock.track_ray()  # recorded, so that whoever ends this launch can stop all of it
    resources = plan.spec.resources
    storage = (tempfile.mkdtemp(prefix="pixelreg-tune-") if is_uri(plan.sweep_dir)
               else str(Path(plan.sweep_dir, "tune")))
    try:
        # Against the Ray the trials run on, local too: a GPU trial Ray cannot place would wait for it forever.
        check_resources(plan.spec, available_gpus=session.gpus, where="in Ray")
        slots = max(1, concurrent_slots(session.cpus, session.gpus, resources.cpu, resources.gpu,
                                        args.max_concurrent))
        progress = Progress(total=n_total, already_done=len(plan.done), slots=slots, log=log)
        log(f"{slots} trial(s) at a time ({resources.cpu:g} CPU, {resources.gpu:g} GPU each); "
            f"Tune logs and TensorBoard files: {storage}")
        runner = Runner(sweep_dir=plan.sweep_dir, storage=storage,
                        stamp=dt.datetime.now().strftime("%Y%m%d-%H%M%S"), cpu=resources.cpu, gpu=resources.gpu,
                        retries=plan.spec.max_failures, slots=slots, progress=progress,
                        max_concurrent=args.max_concurrent, progress_every=args.progress_every)
        sources = [c for c in plan.todo if c.role == "fgsm_source"]
        baselines = [c for c in plan.todo if c.role == "baseline"]
        trials = [c for c in plan.todo if c.role not in ("fgsm_source", "baseline")]
        runner.grid_phase("fgsm_sources", sources)
        baselines, trials = skip_blocked(plan.sweep_dir, baselines, trials, log=progress.log)  # source failed
        scheduler = asha_scheduler(plan.spec.scheduler, asha_max_t(trials or plan.configs))
        if scheduler is None:
            runner.grid_phase("trials", baselines + trials)
        else:  # baselines are never stopped early: every ratio is taken against them
            runner.grid_phase("baselines", baselines)
            runner.grid_phase("trials", trials, scheduler=scheduler)
        if plan.spec.search.type == "optuna":
            run_studies(runner, plan.spec, plan.configs)
        log(progress.line())
    finally:
        stop_ray(session)


def count_failed(plan: Plan) -> int:
    statuses = trial_statuses(plan.sweep_dir)
    return sum(1 for status in statuses.values() if status not in COMPLETE_STATUSES)


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
