"""A sweep folder and its results: the one API every orchestrator module reads them through.

The layout of `ROOT/<name>/` (a local folder or a pyarrow URI such as s3://bucket/prefix/<name>?endpoint_override=...)
and what a reader can rely on: docs/results.md.

The file layout and the Parquet contract are pixelreg_core.results (the trainer writes them without Ray); this
module adds what only the service needs: the sweep folder's path, trial statuses, and the `failed`/`stopped` rows
the orchestrator itself writes. A notebook reads a whole sweep with `orchestrator.load` (analysis/load.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

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
