"""`orchestrator launch SPEC`: run (or resume) a sweep on Ray Tune.

Order of work: check everything a user can get wrong (spec, resources, results root, a different spec already in
the results folder) before Ray starts or anything is written; then the FGSM source models, which the trials'
transferred-FGSM attack reads; then baselines and grid trials (or, with `search: optuna`, baselines and then one
Optuna study per dataset pair). The sweep's state is only its Parquet files, so relaunching the same command resumes.
Ray, Tune and torch are imported inside functions: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelreg_core.config import ConfigError, TrialConfig

from . import mps
from .errors import UserError
from .resume import COMPLETE_STATUSES, is_uri, prepare_sweep_dir, split_done, sweep_dir_for, trial_statuses

DEFAULT_RESULTS = "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML, e.g. sweeps/quickstart.yaml")
    parser.add_argument("--results", default=DEFAULT_RESULTS, metavar="ROOT",
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

    spec: Any
    spec_path: Path
    sweep_dir: str
    configs: list[TrialConfig]              # all expanded configs (grid: the whole sweep; optuna: sources+baselines)
    todo: list[TrialConfig]
    done: list[TrialConfig]
    cpu: float
    gpu: float
    search: str                             # grid | optuna
    optuna_units: int = 0                   # run_trial calls the optuna studies will make at most
    mps: str | None = None                  # nvidia-cuda-mps-control to start (--mps), see mps.py
    notes: list[str] = field(default_factory=list)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Attribute or mapping access: spec sections may be pydantic models or plain dicts."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def search_type(spec: Any) -> str:
    search = _get(spec, "search", "grid")
    return search if isinstance(search, str) else str(_get(search, "type", "grid"))


def seed_list(spec: Any) -> list[int]:
    seeds = _get(spec, "seeds", 1)
    return list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]


def localize(cfg: TrialConfig) -> TrialConfig:
    """Absolute data paths: Tune workers may run in another working directory (or on another machine with the
    same shared layout). Only non-identity fields change, so trial ids stay the same."""
    changes: dict[str, Any] = {}
    if cfg.data_root and "://" not in cfg.data_root:
        changes["data_root"] = str(Path(cfg.data_root).resolve())
    if cfg.fgsm_source and "://" not in cfg.fgsm_source:
        changes["fgsm_source"] = str(Path(cfg.fgsm_source).resolve())
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


def make_plan(args: argparse.Namespace, log=print) -> Plan:
    from .expand import expand
    from .resume import check_writable
    from .spec import check_resources, load_spec, spec_fingerprint

    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        check_resources(spec)  # on a cluster, run_on_ray checks against the cluster's GPUs instead
    check_writable(args.results)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError(f"--max-concurrent {args.max_concurrent}: must be >= 1")
    resources = _get(spec, "resources")
    mps_control = mps.check(getattr(args, "mps", False), address=args.address,
                            gpu_per_trial=float(_get(resources, "gpu", 0) or 0))
    sweep_dir = sweep_dir_for(args.results, spec.name)
    configs = [localize(c) for c in expand(spec, sweep_dir)]
    validate_configs(configs, spec_path)
    prepare_sweep_dir(sweep_dir, spec_path.read_text(), spec_fingerprint(spec), args.fresh, log=log)
    done, todo = split_done(configs, sweep_dir)
    plan = Plan(spec=spec, spec_path=spec_path, sweep_dir=sweep_dir, configs=configs, todo=todo, done=done,
                cpu=float(_get(resources, "cpu", 1) or 1), gpu=float(_get(resources, "gpu", 0) or 0),
                search=search_type(spec), mps=mps_control)
    if plan.search == "optuna":
        search = _get(spec, "search")
        plan.optuna_units = int(_get(search, "trials", 0)) * len(_get(spec, "pairs", [])) * len(seed_list(spec))
    return plan


# --------------------------------------------------------------------------------------------------- Tune


def concurrent_slots(cpus: float, gpus: float, cpu: float, gpu: float, cap: int | None) -> int:
    """How many trials fit at once: the scarcer of CPUs and GPUs decides."""
    slots = int(cpus // cpu) if cpu > 0 else 10**6
    if gpu > 0:
        slots = min(slots, int(gpus // gpu + 1e-9))
    if cap:
        slots = min(slots, cap)
    return max(1, slots)


def asha_scheduler(spec: Any, reports: int | None = None):
    """ASHA on validation accuracy (maximised), or None. Time is Tune's training_iteration = reports so far.

    `reports` is how many results one Tune trial reports in all (epochs, x seeds for a searched point, + the final
    one): ASHA stops a trial that reaches max_t, so max_t must lie past the last epoch or no trial would get to
    write its results."""
    scheduler = _get(spec, "scheduler")
    kind = scheduler if isinstance(scheduler, str) else _get(scheduler, "type", "fifo")
    if kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    train = _get(spec, "train")
    max_t = reports or int(_get(train, "epochs", 20) or 20) + 1
    return ASHAScheduler(time_attr="training_iteration", metric="valid_acc", mode="max", max_t=max_t,
                         grace_period=int(_get(scheduler, "grace_period", 1) or 1),
                         reduction_factor=float(_get(scheduler, "reduction_factor", 3) or 3))


@dataclass
class Runner:
    """The parts every Tune phase of one launch shares."""

    plan: Plan
    storage: str
    stamp: str
    slots: int
    progress: Any
    max_concurrent: int | None
    progress_every: float = 10.0

    def _run_config(self, name: str, units=lambda trial: 1, extra_callbacks=()):
        from ray import tune

        from .progress import ProgressCallback

        return tune.RunConfig(
            name=f"{self.stamp}_{name}", storage_path=self.storage, verbose=0,
            failure_config=tune.FailureConfig(max_failures=self.retries, fail_fast=False),
            callbacks=[ProgressCallback(self.progress, units=units, interval=self.progress_every),
                       *extra_callbacks])

    def _resources(self, trainable):
        from ray import tune

        return tune.with_resources(trainable, {"cpu": self.plan.cpu, "gpu": self.plan.gpu})

    @property
    def retries(self) -> int:
        return int(_get(self.plan.spec, "max_failures", 1) or 0)

    @property
    def threads(self) -> int:
        return max(1, int(self.plan.cpu))

    def grid_phase(self, name: str, configs: list[TrialConfig], scheduler=None) -> None:
        """One Tuner over a fixed list of trials, in order."""
        if not configs:
            return
        from ray import tune

        from .progress import StoppedRecorder
        from .tune_trainable import train_one

        by_id = {c.trial_id: c.to_dict() for c in configs}
        trainable = tune.with_parameters(train_one, configs=by_id, sweep_dir=self.plan.sweep_dir,
                                         threads=self.threads, retries=self.retries)
        roles = {c.trial_id: c.role for c in configs}
        tuner = tune.Tuner(
            self._resources(trainable),
            param_space={"trial_id": tune.grid_search(list(by_id))},
            tune_config=tune.TuneConfig(
                reuse_actors=True, scheduler=scheduler, max_concurrent_trials=self.max_concurrent,
                trial_name_creator=lambda t: f"{roles[t.config['trial_id']]}_{t.config['trial_id']}",
                trial_dirname_creator=lambda t: f"{t.config['trial_id']}_{t.trial_id}"),
            run_config=self._run_config(name, extra_callbacks=[StoppedRecorder(by_id, self.plan.sweep_dir)]
                                        if scheduler is not None else []))
        tuner.fit()

    def optuna_phase(self, task: str, reg_data: str, baselines: dict[int, str]) -> None:
        """One Optuna study for one dataset pair; points finished by an earlier launch are fed back, not rerun."""
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        from .tune_trainable import train_point

        spec, search = self.plan.spec, _get(self.plan.spec, "search")
        seeds = seed_list(spec)
        objective = objective_of(spec)
        pareto = bool(_get(search, "pareto", False))
        metric, mode = (["clean_acc", "robust_acc"], ["max", "max"]) if pareto else ("objective", "max")
        space, optuna_space = search_space(search)
        points, rewards = finished_points(self.plan, task, reg_data, seeds, baselines, objective, pareto)
        budget = int(_get(search, "trials", 0)) - len(points)
        if budget <= 0:
            return
        searcher = OptunaSearch(space=optuna_space if points else None, metric=metric, mode=mode, seed=0,
                                points_to_evaluate=points or None, evaluated_rewards=rewards or None)
        if "://" not in spec.data_root:  # workers run in Tune's trial folders: no relative paths
            spec = spec.model_copy(update={"data_root": str(Path(spec.data_root).resolve())})
        trainable = tune.with_parameters(train_point, spec=spec, task=task, reg_data=reg_data, seeds=seeds,
                                         baselines=baselines, sweep_dir=self.plan.sweep_dir, threads=self.threads,
                                         objective=objective, retries=self.retries)
        per_point = len(seeds)
        tuner = tune.Tuner(
            self._resources(trainable),
            param_space={} if points else space,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=budget, reuse_actors=True,
                                        scheduler=asha_scheduler(spec, reports=epochs_of(spec) * len(seeds) + 1),
                                        max_concurrent_trials=self.max_concurrent or self.slots),
            run_config=self._run_config(f"optuna_{safe(task)}_{safe(reg_data)}", units=lambda t: per_point))
        tuner.fit()


def epochs_of(spec: Any) -> int:
    return int(_get(_get(spec, "train"), "epochs", 20) or 20)


def safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


def objective_of(spec: Any):
    from .tune_trainable import Objective

    search = _get(spec, "search")
    obj = _get(search, "objective")
    return Objective(attack=str(_get(obj, "attack", "gaussian")), eps=float(_get(obj, "eps", 0.3)),
                     min_clean_ratio=float(_get(obj, "min_clean_ratio", 0.9)))


def _bounds(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    if value is None:
        return default
    if isinstance(value, dict):
        return float(value.get("low", value.get("min"))), float(value.get("high", value.get("max")))
    if hasattr(value, "low"):
        return float(value.low), float(value.high)
    low, high = value
    return float(low), float(high)


def search_space(search: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Tune space, the same as optuna distributions). Alpha is searched on a log scale: its useful values
    (1, 4, 10 in the papers) span a decade."""
    import optuna
    from ray import tune

    th_low, th_high = _bounds(_get(search, "th"), (0.1, 0.9))
    a_low, a_high = _bounds(_get(search, "alpha"), (1.0, 10.0))
    log = a_low > 0  # a log scale cannot start at alpha 0
    tune_space = {"th": tune.uniform(th_low, th_high),
                  "alpha": tune.loguniform(a_low, a_high) if log else tune.uniform(a_low, a_high)}
    optuna_space = {"th": optuna.distributions.FloatDistribution(th_low, th_high),
                    "alpha": optuna.distributions.FloatDistribution(a_low, a_high, log=log)}
    return tune_space, optuna_space


def finished_points(plan: Plan, task: str, reg_data: str, seeds: list[int], baselines: dict[int, str],
                    objective: Any, pareto: bool) -> tuple[list[dict[str, float]], list[Any]]:
    """(Th, alpha) points of this pair whose every seed finished ok in an earlier launch, with their rewards."""
    from pixelreg_core.results import read_table

    from .tune_trainable import _ratio, accuracy_at, score

    trials = read_table(plan.sweep_dir, "trials")
    mine = trials[(trials["role"] == "trial") & (trials["task"] == task) & (trials["reg_data"] == reg_data)
                  & (trials["status"] == "ok")]
    points, rewards = [], []
    base_clean = dict(zip(trials["trial_id"], trials["clean_acc"], strict=True))
    for (th, alpha), group in mine.groupby(["th", "alpha"]):
        if sorted(group["seed"]) != sorted(seeds):
            continue
        clean_r, robust_r, clean, robust = [], [], [], []
        for row in group.itertuples():
            base = baselines[int(row.seed)]
            rd = accuracy_at(plan.sweep_dir, row.trial_id, objective.attack, objective.eps)
            ud = accuracy_at(plan.sweep_dir, base, objective.attack, objective.eps)
            clean_r.append(_ratio(row.clean_acc, base_clean[base]))
            robust_r.append(_ratio(rd, ud))
            clean.append(row.clean_acc)
            robust.append(rd)
        n = len(seeds)
        points.append({"th": float(th), "alpha": float(alpha)})
        rewards.append([sum(clean) / n, sum(robust) / n] if pareto
                       else score(sum(clean_r) / n, sum(robust_r) / n, objective.min_clean_ratio))
    return points, rewards


# --------------------------------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    log = print
    n_total = len(plan.configs) + plan.optuna_units
    log(f"sweep {plan.spec.name}: {n_total} trials ({len(plan.done)} complete from earlier launches, "
        f"{len(plan.todo)}{' + up to ' + str(plan.optuna_units) + ' searched' if plan.optuna_units else ''} "
        f"to run) -> {plan.sweep_dir}")
    if plan.todo or plan.optuna_units:
        with mps.daemon(plan.mps, log):  # before Ray starts its workers; stopped when the launch ends
            run_on_ray(plan, args, n_total, log)
    failed = count_failed(plan)
    log(f"finished: {failed} trial(s) failed" if failed else "finished: every trial ok")
    if failed:
        log(f"  see their errors with: orchestrator status {plan.sweep_dir}")
    report_outputs(plan.sweep_dir, log)
    return 0


def run_on_ray(plan: Plan, args: argparse.Namespace, n_total: int, log) -> None:
    import logging

    from .dashboard import start_ray, stop_ray
    from .progress import Progress

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # the final report has no epoch metrics
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy output is silent at verbose=0; ours is progress.py
    # Tune logs every trial failure as a multi-page traceback; ours is one line per failure (progress.py), and the
    # error itself is in the trial's trials row and in Tune's error.txt.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    session = start_ray(args.address, args.dashboard_host, not args.no_dashboard, log=log)
    storage = (tempfile.mkdtemp(prefix="pixelreg-tune-") if is_uri(plan.sweep_dir)
               else str(Path(plan.sweep_dir, "tune")))
    try:
        if args.address or os.environ.get("RAY_ADDRESS"):
            from .spec import check_resources

            check_resources(plan.spec, available_gpus=session.gpus)
        slots = concurrent_slots(session.cpus, session.gpus, plan.cpu, plan.gpu, args.max_concurrent)
        progress = Progress(total=n_total, already_done=len(plan.done), slots=slots, log=log)
        log(f"{slots} trial(s) at a time ({plan.cpu:g} CPU, {plan.gpu:g} GPU each); "
            f"Tune logs and TensorBoard files: {storage}")
        runner = Runner(plan=plan, storage=storage, stamp=dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
                        slots=slots, progress=progress, max_concurrent=args.max_concurrent,
                        progress_every=args.progress_every)
        sources = [c for c in plan.todo if c.role == "fgsm_source"]
        baselines = [c for c in plan.todo if c.role == "baseline"]
        trials = [c for c in plan.todo if c.role not in ("fgsm_source", "baseline")]
        runner.grid_phase("fgsm_sources", sources)
        scheduler = asha_scheduler(plan.spec, reports=epochs_of(plan.spec) + 1)
        if scheduler is None:
            runner.grid_phase("trials", baselines + trials)
        else:  # baselines are never stopped early: every ratio is taken against them
            runner.grid_phase("baselines", baselines)
            runner.grid_phase("trials", trials, scheduler=scheduler)
        if plan.search == "optuna":
            run_studies(plan, runner)
        log(progress.line())
    finally:
        stop_ray(session)


def run_studies(plan: Plan, runner: Runner) -> None:
    statuses = trial_statuses(plan.sweep_dir)
    ok_baselines = {(c.task, c.seed): c.trial_id for c in plan.configs
                    if c.role == "baseline" and statuses.get(c.trial_id) == "ok"}
    for pair in _get(plan.spec, "pairs", []):
        task, reg_data = str(_get(pair, "task")), str(_get(pair, "reg_data"))
        seeds = seed_list(plan.spec)
        missing = [s for s in seeds if (task, s) not in ok_baselines]
        if missing:
            runner.progress.log(f"skipping the search for {task} x {reg_data}: its baseline(s) for seed(s) "
                                f"{missing} failed, and every objective is a ratio to them")
            continue
        runner.optuna_phase(task, reg_data, {s: ok_baselines[(task, s)] for s in seeds})


def count_failed(plan: Plan) -> int:
    statuses = trial_statuses(plan.sweep_dir)
    return sum(1 for status in statuses.values() if status not in COMPLETE_STATUSES)


def report_outputs(sweep_dir: str, log) -> None:
    """Aggregate where the aggregator exists (it is optional for a launch) and say where everything is."""
    if is_uri(sweep_dir):
        log(f"results: {sweep_dir} (tables trials, epochs, robustness, spectrum; "
            f"orchestrator.results.load(URI) reads them)")
    else:
        log(f"results: {sweep_dir}/{{trials,epochs,robustness,spectrum}}/ (pandas.read_parquet reads each folder)")
    try:
        from .aggregate import aggregate_sweep
    except ImportError:
        log(f"aggregate later with: orchestrator aggregate {sweep_dir}")
        return
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
