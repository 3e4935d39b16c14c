"""`orchestrator launch SPEC`: run (or resume) a sweep on Ray Tune.

The command in three steps: `make_plan` (the plan room) checks everything a user can get wrong (spec, resources,
results root, every config, the inputs on disk) and computes what to run, writing nothing; `run` then takes the
sweep folder's lock and `claim`s the folder (refusing a different spec's results, wiping them with --fresh), and
`run_on_ray` (the run stage, orchestrator.run.phases) runs the phases on Ray; last, this module says what happened
and aggregates. The sweep's state is only its Parquet files, so relaunching the same command resumes. Ray, Tune
and torch are imported inside functions: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.analysis import racelog
from orchestrator.commands.arguments import add_max_trials, add_overrides
from orchestrator.errors import UserError
from orchestrator.localray import mps
from orchestrator.plan.make import Plan, claim, make_plan
from orchestrator.plan.work import work_line
from orchestrator.run.phases import run_on_ray
from orchestrator.run.progress import print_line
from orchestrator.spec.expand import race_line
from orchestrator.sweepdir.blocked import exit_code
from orchestrator.sweepdir.lock import sweep_lock
from orchestrator.sweepdir.resume import missing_evaluations
from orchestrator.sweepdir.tables import (
    COMPLETE_STATUSES,
    DEFAULT_ROOT,
    finished_evaluations,
    is_uri,
    trial_statuses,
)
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import disk_full


def add_arguments(parser: argparse.ArgumentParser, fresh: bool = True) -> None:
    """launch's arguments; `fresh=False`: without --fresh (evaluate only adds to stored models)."""
    parser.add_argument("spec", help="sweep spec YAML, e.g. sweeps/quickstart.yaml")
    add_overrides(parser)
    add_max_trials(parser)
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
    parser.add_argument("--no-figures", action="store_true",
                        help="aggregate without drawing the figures (seconds per launch; `orchestrator aggregate` "
                             "or `report` draws them later)")
    parser.add_argument("--mps", action="store_true",
                        help="run a CUDA MPS daemon for the launch, so trials packed on one GPU share it "
                             "(needs nvidia-cuda-mps-control and a local Ray)")


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
    if plan.spec.race is None:
        log(f"sweep {plan.spec.name}: {n_total} trials ({len(done)} complete from earlier launches, "
            f"{len(todo)}{' + up to ' + str(plan.optuna_units) + ' searched' if plan.optuna_units else ''} "
            f"to run) -> {plan.sweep_dir}")
    else:  # how many a race runs is its decisions' to say
        log(f"sweep {plan.spec.name}: a race of up to {n_total} trials ({len(done)} complete from earlier "
            f"launches) -> {plan.sweep_dir}")
    if plan.work is not None and (done or plan.work["evaluate"]) and plan.spec.race is None:
        log("  " + work_line(plan.work))
    if plan.spec.race is not None:
        todo = start_race(plan, todo, log)
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
    report_outputs(plan.sweep_dir, log, figures=not getattr(args, "no_figures", False))
    for line in racelog.describe(racelog.read(plan.sweep_dir)):
        log(line)
    return max(exit_code(trial_statuses(plan.sweep_dir)), 1 if missing else 0)  # 1 after failures


def start_race(plan: Plan, todo: list[TrialConfig], log) -> list[TrialConfig]:
    """A race's state (plan.race) and the trials it asks for now: what its recorded rounds asked for and did not
    finish, or, when all of them finished, what a new decision asks for; none once it has stopped."""
    from orchestrator.run.race import Race

    log(f"  {race_line(plan.spec, plan.configs)}")
    plan.race = Race(plan.spec, plan.configs, plan.sweep_dir, todo, log)
    if plan.race.done():
        log(f"race: stopped ({plan.race.stopped}); nothing more to train")
        return []
    return list(plan.race.queue)


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


def report_outputs(sweep_dir: str, log, figures: bool = True) -> None:
    """Aggregate (with the figures unless figures=False) and say where everything is."""
    if is_uri(sweep_dir):
        log(f"results: {sweep_dir} (tables trials, epochs, robustness, spectrum; "
            f"orchestrator.load(URI) reads them)")
    else:
        log(f"results: {sweep_dir}/{{trials,epochs,robustness,spectrum}}/ (pandas.read_parquet reads each folder)")
    from orchestrator.analysis.aggregate import aggregate_sweep

    try:
        result = aggregate_sweep(sweep_dir, figures=figures)
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
