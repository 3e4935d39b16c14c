"""The functions Ray Tune runs: one TrialConfig (grid) or one searched (Th, alpha) point over seeds (optuna).

They run inside Ray workers. Torch and the trainer are imported on first use, once per worker process: with
`reuse_actors` the same worker runs trial after trial and pays the import only once. Each epoch's metrics go to
`tune.report` (dashboard, TensorBoard via Tune's default TBX logger); the Parquet rows are written by run_trial
itself, which is what makes a sweep resumable without Tune's own state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from pixelreg_core.config import TrialConfig
from pixelreg_core.results import join


@dataclass(frozen=True)
class Objective:
    """Search objective: robust accuracy ratio RD/UD under `attack` at eps `eps`, subject to R0/U0 >= min_clean."""

    attack: str
    eps: float
    min_clean_ratio: float


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
    import torch

    from pixelreg_core.trial import run_trial

    torch.set_num_threads(threads)
    cfg = cfg.replace(num_threads=threads)
    extra = extra or {}
    node = worker_node()
    for attempt in range(retries + 1):
        try:
            return run_trial(cfg, sweep_dir, on_epoch=lambda row: tune.report({**numeric(row), **extra}),
                             cache_dir=join(sweep_dir, "fgsm_cache"), record_failure=True, node=node)
        except Exception as exc:  # noqa: BLE001 - any failure of one trial must not stop the sweep
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if attempt < retries:
                print(f"trial {cfg.trial_id} failed ({error}); retry {attempt + 1} of {retries}", flush=True)
    error = f"{error} (failed {retries + 1} attempt(s))"
    _amend_error(sweep_dir, cfg, error)
    return {"trial_id": cfg.trial_id, "status": "failed", "error": error}


def worker_node() -> str | None:
    """The Ray node id of the node this worker runs on (`ray list nodes` and the dashboard map it to a machine):
    on a cluster the trials table says where each trial ran. None outside a Ray worker."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _amend_error(sweep_dir: str, cfg: TrialConfig, error: str) -> None:
    """Say in the failed trials row how many attempts were made (run_trial wrote it without knowing). A trial
    that failed before run_trial could write a row (e.g. its FGSM source checkpoint is unreadable) gets one here,
    so the sweep still counts and reports it as failed."""
    import json

    import pyarrow.parquet as pq

    from pixelreg_core.results import key_values, write_table

    from .resume import filesystem

    fs, base = filesystem(sweep_dir)
    path = f"{base}/trials/{cfg.trial_id}.parquet"
    if fs.get_file_info(path).type == pafs.FileType.File:
        row = pq.read_table(path, filesystem=fs).to_pylist()[0]  # keeps nulls as None
    else:
        row = {**key_values(cfg), "role": cfg.role, "status": "failed", "width": cfg.width, "epochs": cfg.epochs,
               "node": worker_node(), "config": json.dumps(cfg.to_dict(), sort_keys=True)}
    write_table(sweep_dir, "trials", cfg.trial_id, [{**row, "error": error}])


class TrialFailed(RuntimeError):
    """A searched point whose trials failed: Tune records it as errored (its rows say why)."""


def train_one(config: dict[str, Any], *, configs: dict[str, dict[str, Any]], sweep_dir: str, threads: int,
              retries: int) -> None:
    """Grid search: the Tune trial `config["trial_id"]` is exactly that TrialConfig."""
    cfg = TrialConfig.from_dict(configs[config["trial_id"]])
    row = _run(cfg, sweep_dir, threads, retries)
    ok = row.get("status") == "ok"
    tune.report({**numeric({"clean_acc": row.get("clean_acc"), "valid_acc": row.get("valid_acc")}),
                 "ok": float(ok), **({} if ok else {"error": row["error"][:300]})})


# ----------------------------------------------------------------------------------------------- optuna


def accuracy_at(sweep_dir: str, trial_id: str, attack: str, eps: float) -> float:
    """Mean accuracy over repeats at the evaluated eps nearest to `eps` (eps grids are per dataset)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .resume import filesystem

    fs, base = filesystem(sweep_dir)
    table = pq.read_table(f"{base}/robustness/{trial_id}.parquet", filesystem=fs)
    mask = pc.and_(pc.equal(table["attack"], attack), pc.equal(table["metric"], "accuracy"))
    rows = table.filter(mask).to_pylist()
    if not rows:
        raise ValueError(f"trial {trial_id} has no {attack} accuracy rows; add {attack} to the spec's attacks")
    nearest = min({r["eps"] for r in rows}, key=lambda e: abs(e - eps))
    values = [r["value"] for r in rows if r["eps"] == nearest]
    return sum(values) / len(values)


def clean_accuracy(sweep_dir: str, trial_id: str) -> float:
    import pyarrow.parquet as pq

    from .resume import filesystem

    fs, base = filesystem(sweep_dir)
    return float(pq.read_table(f"{base}/trials/{trial_id}.parquet", filesystem=fs)["clean_acc"][0].as_py())


def score(clean_ratio: float, robust_ratio: float, min_clean_ratio: float) -> float:
    """Feasible (R0/U0 >= A0): RD/UD. Infeasible: R0/U0 - A0 < 0, below every feasible score, and graded so the
    sampler still learns which way is better."""
    if clean_ratio >= min_clean_ratio:
        return robust_ratio
    return clean_ratio - min_clean_ratio


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a == b else math.inf)


def train_point(config: dict[str, Any], *, spec: Any, task: str, reg_data: str, seeds: list[int],
                baselines: dict[int, str], sweep_dir: str, threads: int, objective: Objective,
                retries: int) -> None:
    """Optuna: one sampled (Th, alpha) for one pair, trained for every seed; reports the seed-mean objective.

    Seeds finished by an earlier launch are read back, not retrained. Ratios are taken per seed against the
    baseline of the same task and seed, then averaged, so seed-to-seed variation does not leak into the ratio.
    """
    from .expand import trial_from_params
    from .resume import trial_statuses

    params = {"th": float(config["th"]), "alpha": float(config["alpha"])}
    statuses = trial_statuses(sweep_dir)
    clean, robust, clean_ratios, robust_ratios = [], [], [], []
    for index, seed in enumerate(seeds):
        cfg = trial_from_params(spec, task, reg_data, seed, params, sweep_dir)
        if statuses.get(cfg.trial_id) != "ok":
            # OptunaSearch reads its metric from every intermediate result; the objective only exists at the
            # end, so epochs carry its floor (-1: the lowest score() can give) as a neutral placeholder.
            row = _run(cfg, sweep_dir, threads, retries, extra={"seed_index": index, "objective": -1.0, **params})
            if row.get("status") != "ok":
                raise TrialFailed(f"trial {cfg.trial_id} (seed {seed}): {row['error']}")
        base = baselines[seed]
        r0, u0 = clean_accuracy(sweep_dir, cfg.trial_id), clean_accuracy(sweep_dir, base)
        rd = accuracy_at(sweep_dir, cfg.trial_id, objective.attack, objective.eps)
        ud = accuracy_at(sweep_dir, base, objective.attack, objective.eps)
        clean.append(r0)
        robust.append(rd)
        clean_ratios.append(_ratio(r0, u0))
        robust_ratios.append(_ratio(rd, ud))
    n = len(seeds)
    clean_ratio, robust_ratio = sum(clean_ratios) / n, sum(robust_ratios) / n
    tune.report({"objective": score(clean_ratio, robust_ratio, objective.min_clean_ratio),
                 "clean_ratio": clean_ratio, "robust_ratio": robust_ratio,
                 "clean_acc": sum(clean) / n, "robust_acc": sum(robust) / n, "ok": 1.0})
