"""`search: optuna`: one Optuna study per dataset pair over (Th, alpha), each sampled point trained for every seed.

The objective (orchestrator.run.objective) is the ratio best.parquet reports. Points every seed of which finished in
an earlier launch are fed back to Optuna with their rewards, not retrained.

The study lasts: for a local sweep folder it is Optuna's RDB storage in `<sweep>/optuna.db` (SQLite), one study per
pair named `<sweep>/<task>/<reg_data>`, reopened by every relaunch and readable with `optuna.load_study` or
`optuna-dashboard sqlite:///<sweep>/optuna.db` (docs/spec.md). SQLite cannot live on an object store, so for a
URI sweep folder the study is kept in memory and rebuilt each launch from the trials table (the Parquet rows stay
the record either way). `search.start` points are enqueued first, each once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.run.objective import evaluate_point
from orchestrator.run.tune import Runner, asha_max_t, asha_scheduler, safe
from orchestrator.spec.schema import Search, SweepSpec
from orchestrator.sweepdir.tables import absolute, is_uri, read_table, trial_statuses
from pixelreg_core.config import TrialConfig


def search_space(search: Search) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Tune space, the same as optuna distributions). Alpha is searched on a log scale: its useful values
    (1, 4, 10 in the papers) span a decade."""
    import optuna
    from ray import tune

    (th_low, th_high), (a_low, a_high) = search.th, search.alpha
    log = a_low > 0  # a log scale cannot start at alpha 0
    tune_space = {"th": tune.uniform(th_low, th_high),
                  "alpha": tune.loguniform(a_low, a_high) if log else tune.uniform(a_low, a_high)}
    optuna_space = {"th": optuna.distributions.FloatDistribution(th_low, th_high),
                    "alpha": optuna.distributions.FloatDistribution(a_low, a_high, log=log)}
    return tune_space, optuna_space


def finished_points(sweep_dir: str, task: str, reg_data: str, seeds: list[int], baselines: dict[int, str],
                    search: Search) -> tuple[list[dict[str, float]], list[Any]]:
    """(Th, alpha) points of this pair whose every seed finished ok in an earlier launch, with their rewards."""
    trials = read_table(sweep_dir, "trials")
    mine = trials[(trials["role"] == "trial") & (trials["task"] == task) & (trials["reg_data"] == reg_data)
                  & (trials["status"] == "ok")]
    points, rewards = [], []
    for (th, alpha), group in mine.groupby(["th", "alpha"]):
        if sorted(group["seed"]) != sorted(seeds):
            continue
        point = evaluate_point(sweep_dir, list(group["trial_id"]), [baselines[s] for s in seeds], search.objective)
        points.append({"th": float(th), "alpha": float(alpha)})
        rewards.append([point["clean_acc"], point["robust_acc"]] if search.pareto else point["objective"])
    return points, rewards


STUDY_FILE = "optuna.db"


def study_name(sweep: str, task: str, reg_data: str) -> str:
    return f"{sweep}/{task}/{reg_data}"


def study_storage(sweep_dir: str):
    """SQLite in the sweep folder for a local one; in memory for a URI (see the module docstring)."""
    import optuna

    if is_uri(sweep_dir):
        return optuna.storages.InMemoryStorage()
    return optuna.storages.RDBStorage(f"sqlite:///{Path(sweep_dir, STUDY_FILE)}")


def _key(params: dict[str, Any]) -> tuple[float, float]:
    return round(float(params["th"]), 12), round(float(params["alpha"]), 12)


def open_study(storage, name: str, pareto: bool, optuna_space: dict[str, Any], points: list[dict[str, float]],
               rewards: list[Any], start: list[dict[str, float]]):
    """The pair's study, brought up to date with the trials table before the search asks for a point.

    Trials a killed launch left RUNNING are marked failed (this launch holds the sweep lock: nobody else runs
    them); finished points the study lacks are added with their rewards; `start` points are enqueued unless the
    study already has them."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                directions=["maximize", "maximize"] if pareto else ["maximize"])
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if trial.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    known = {_key(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    for point, reward in zip(points, rewards, strict=True):
        if _key(point) not in known:
            study.add_trial(optuna.trial.create_trial(params=point, distributions=optuna_space,
                                                      values=list(reward) if pareto else [reward]))
    for point in start:
        study.enqueue_trial({"th": float(point["th"]), "alpha": float(point["alpha"])}, skip_if_exists=True)
    return study


def run_study(runner: Runner, spec: SweepSpec, task: str, reg_data: str, baselines: dict[int, str],
              max_t: int) -> None:
    """One Optuna study for one dataset pair."""
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.run.trainable import train_point

    search, seeds = spec.search, spec.seed_list
    metric, mode = (["clean_acc", "robust_acc"], ["max", "max"]) if search.pareto else ("objective", "max")
    _, optuna_space = search_space(search)
    points, rewards = finished_points(runner.sweep_dir, task, reg_data, seeds, baselines, search)
    storage, name = study_storage(runner.sweep_dir), study_name(spec.name, task, reg_data)
    study = open_study(storage, name, search.pareto, optuna_space, points, rewards, search.start)
    budget = search.trials - len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if budget <= 0:
        return
    searcher = OptunaSearch(space=optuna_space, metric=metric, mode=mode, seed=0, storage=storage,
                            study_name=name)
    # workers run in Tune's trial folders: no relative paths
    spec = spec.model_copy(update={"data_root": absolute(spec.data_root)})
    trainable = tune.with_parameters(train_point, spec=spec, task=task, reg_data=reg_data, seeds=seeds,
                                     baselines=baselines, sweep_dir=runner.sweep_dir, threads=runner.threads,
                                     objective=search.objective, retries=runner.retries)
    per_point = len(seeds)
    tuner = tune.Tuner(
        runner.with_resources(trainable),
        param_space={},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=budget, reuse_actors=True,
                                    scheduler=asha_scheduler(spec.scheduler, max_t),
                                    max_concurrent_trials=runner.max_concurrent or runner.slots),
        run_config=runner.run_config(f"optuna_{safe(task)}_{safe(reg_data)}", units=lambda t: per_point))
    tuner.fit()
    runner.check_disk()


def run_studies(runner: Runner, spec: SweepSpec, configs: list[TrialConfig]) -> None:
    """A study per pair, against the pair's ok baselines (a pair whose baseline failed for a seed is skipped)."""
    statuses = trial_statuses(runner.sweep_dir)
    ok_baselines = {(c.task, c.seed): c.trial_id for c in configs
                    if c.role == "baseline" and statuses.get(c.trial_id) == "ok"}
    seeds = spec.seed_list
    # a searched trial trains what a baseline trains (train.epochs; optuna has no grid), once per seed
    max_t = asha_max_t(configs, seeds_per_trial=len(seeds))
    for pair in spec.pairs:
        missing = [s for s in seeds if (pair.task, s) not in ok_baselines]
        if missing:
            runner.progress.log(f"skipping the search for {pair.task} x {pair.reg_data}: its baseline(s) for "
                                f"seed(s) {missing} failed, and every objective is a ratio to them")
            continue
        run_study(runner, spec, pair.task, pair.reg_data, {s: ok_baselines[(pair.task, s)] for s in seeds}, max_t)
