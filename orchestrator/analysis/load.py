"""`orchestrator.load`: a sweep folder's tables as DataFrames, for notebooks.

    import orchestrator
    r = orchestrator.load("results/mnist_grid")
    r.best[r.best.chosen]                                   # the chosen (Th, alpha) per task/reg_data/attack
    r.summary.query("attack == 'gaussian' and role == 'baseline'")
    r.robustness.merge(r.trials[["trial_id", "role"]], on="trial_id")

Every table is a DataFrame, empty (with the right columns for the per-trial tables) when nothing is written yet;
summary and best exist after `orchestrator aggregate` (or pass aggregate=True). It sits above the analysis it
may run (aggregate) and the selection of the current spec's rows it applies.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from orchestrator.sweepdir.tables import TABLES, read_table


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
    from orchestrator.analysis.aggregate import read_derived
    from orchestrator.analysis.selection import current, restrict

    selection = None if everything else current(str(sweep_dir))
    per_trial = {table: restrict(read_table(sweep_dir, table), selection, table) for table in TABLES}
    derived = {}
    for name in ("summary", "best"):
        frame = read_derived(sweep_dir, f"{name}.parquet")
        derived[name] = frame if frame is not None else pd.DataFrame()
    return SweepResults(**per_trial, **derived)
