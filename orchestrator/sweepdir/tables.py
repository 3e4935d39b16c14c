"""A sweep folder and its results: the one API every orchestrator module (and a notebook) reads them through.

The layout of `ROOT/<name>/` (a local folder or a pyarrow URI such as s3://bucket/prefix/<name>?endpoint_override=...)
and what a reader can rely on: docs/results.md.

The file layout and the Parquet contract are pixelreg_core.results (the trainer writes them without Ray); this
module adds what only the service needs: the sweep folder, trial statuses, the `failed`/`stopped` rows the
orchestrator itself writes, the accuracies the search reads back, and `load()` for notebooks:

    import orchestrator
    r = orchestrator.load("results/mnist_grid")
    r.best[r.best.chosen]                                   # the chosen (Th, alpha) per task/reg_data/attack
    r.summary.query("attack == 'gaussian' and role == 'baseline'")
    r.robustness.merge(r.trials[["trial_id", "role"]], on="trial_id")

Every table is a DataFrame, empty (with the right columns for the per-trial tables) when nothing is written yet;
summary and best exist after `orchestrator aggregate` (or pass aggregate=True).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pyarrow.fs as pafs

from orchestrator.analysis.curves import nearest
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import (  # noqa: F401 - re-exported: the orchestrator reads results through here
    LAYOUT,
    LAYOUT_FILE,
    TABLES,
    absolute,
    checkpoint_path,
    delete_file,
    eval_key,
    evaluation_files,
    filesystem,
    finished_evaluations,
    is_uri,
    join,
    local_path,
    quarantined,
    read_bytes,
    read_table,
    read_text,
    read_trial,
    remove_trial,
    status_row,
    write_bytes,
    write_table,
)

DEFAULT_ROOT = "results"
SPEC_FILE = "spec.yaml"
FINGERPRINT_FILE = "fingerprint"
# "stopped": ended early on purpose by the ASHA scheduler; rerunning it would only be stopped again.
COMPLETE_STATUSES = ("ok", "stopped")


def sweep_dir_for(root: str | os.PathLike, name: str) -> str:
    """ROOT/<name>, absolute for a local root (Tune's workers do not share our working directory); a URI keeps
    its query (s3://bucket/prefix/<name>?endpoint_override=...)."""
    return join(root, name) if is_uri(root) else str(Path(local_path(root)) / name)


def write_text(sweep_dir: str, name: str, text: str) -> None:
    write_bytes(join(sweep_dir, name), text.encode())


def trial_values(trials, column: str) -> dict:
    """trial_id -> one column of a trials table (a DataFrame from read_table)."""
    return dict(zip(trials["trial_id"], trials[column], strict=True))


def trial_statuses(sweep_dir: str) -> dict[str, str]:
    """trial_id -> status of its trials row, for every trial that has one."""
    return trial_values(read_table(sweep_dir, "trials"), "status")


def has_rows(sweep_dir: str, trial_id: str) -> bool:
    """Whether any table holds a file of this model or of one of its evaluations (a trial that died half-way
    leaves some)."""
    fs, base = filesystem(sweep_dir)
    return any(fs.get_file_info(f"{base}/{table}/{trial_id}.parquet").type == pafs.FileType.File
               or evaluation_files(sweep_dir, table, trial_id) for table in TABLES)


def record_status(sweep_dir: str, cfg: TrialConfig, status: str, error: str, **columns) -> None:
    """Write the trials row of a trial the orchestrator ended: `stopped` (ASHA), `failed` after its retries or
    `blocked` (not run: its source model failed; orchestrator.sweepdir.blocked)."""
    write_table(sweep_dir, "trials", cfg.trial_id, [status_row(cfg, status, error, **columns)])


def record_failure(sweep_dir: str, cfg: TrialConfig, error: str) -> None:
    """A trial that failed every attempt: keep the failed row run_trial wrote (device, wall time) with `error`
    saying how many attempts there were; a trial that failed before run_trial could write one (e.g. its source
    model's checkpoint is unreadable) gets one here, so the sweep still counts and reports it as failed."""
    rows = read_trial(sweep_dir, "trials", cfg.trial_id)
    if rows:
        write_table(sweep_dir, "trials", cfg.trial_id, [{**rows[0], "error": error}])
    else:
        record_status(sweep_dir, cfg, "failed", error)


def clean_accuracy(sweep_dir: str, trial_id: str) -> float:
    """The trial's clean test accuracy (trials.clean_acc)."""
    rows = read_trial(sweep_dir, "trials", trial_id)
    if not rows:
        raise ValueError(f"trial {trial_id} has no trials row")
    return float(rows[0]["clean_acc"])


def accuracy_at(sweep_dir: str, trial_id: str, attack: str, eps: float) -> float:
    """Mean accuracy over repeats at the evaluated eps nearest to `eps` (eps grids are per dataset), chosen as
    best.parquet chooses its D (curves.nearest)."""
    rows = [r for r in read_trial(sweep_dir, "robustness", trial_id) or []
            if r["attack"] == attack and r["metric"] == "accuracy"]
    if not rows:
        raise ValueError(f"trial {trial_id} has no {attack} accuracy rows; add {attack} to the spec's attacks")
    used = nearest(sorted({r["eps"] for r in rows}), eps)
    values = [r["value"] for r in rows if r["eps"] == used]
    return sum(values) / len(values)


class SweepResults(NamedTuple):
    """The tables of one sweep (columns: pixelreg_core.results.SCHEMAS and orchestrator.analysis.aggregate)."""

    trials: object
    epochs: object
    robustness: object
    spectrum: object
    summary: object
    best: object


def load(sweep_dir: str | os.PathLike, aggregate: bool = False, confirm_seeds: int | None = None,
         everything: bool = False) -> SweepResults:
    """Read every table of a sweep folder (a local path or a pyarrow URI such as s3://bucket/prefix/<name>): the
    rows of its current spec's models and evaluations, or every row it holds with everything=True.
    aggregate=True (re)writes summary and best first; confirm_seeds=K (with aggregate=True) chooses (Th, alpha) on
    all but the K highest seeds and fills best's confirmed_* columns from those K."""
    import pandas as pd

    if aggregate:
        from orchestrator.analysis.aggregate import aggregate_sweep

        aggregate_sweep(sweep_dir, figures=False, confirm_seeds=confirm_seeds, everything=everything)
    elif confirm_seeds is not None:
        from orchestrator.errors import UserError

        raise UserError("orchestrator.load(confirm_seeds=K) re-aggregates: pass aggregate=True as well")
    from orchestrator.analysis.selection import current, restrict

    selection = None if everything else current(str(sweep_dir))
    per_trial = {table: restrict(read_table(sweep_dir, table), selection, table) for table in TABLES}
    from orchestrator.analysis.aggregate import read_derived

    derived = {}
    for name in ("summary", "best"):
        frame = read_derived(sweep_dir, f"{name}.parquet")
        derived[name] = frame if frame is not None else pd.DataFrame()
    return SweepResults(**per_trial, **derived)
