"""The sweep directory as the only state of a sweep: which spec it belongs to, what is done, what is left.

Nothing lives in the driver. A trial is complete when its `trials` Parquet row says so (run_trial writes that row
last, atomically), so a driver killed with SIGKILL loses only the trials that were running; a relaunch reads the
rows again and runs the rest. Works for local paths and pyarrow URIs (s3://...) alike (orchestrator.sweepdir.tables).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator.errors import UserError
from orchestrator.spec.schema import SweepSpec
from orchestrator.sweepdir.lock import LOCK_FILE
from orchestrator.sweepdir.tables import (
    COMPLETE_STATUSES,
    FINGERPRINT_FILE,
    SPEC_FILE,
    filesystem,
    has_rows,
    is_uri,
    local_path,
    read_text,
    remove_trial,
    trial_statuses,
    write_text,
)
from pixelreg_core.config import NON_IDENTITY_FIELDS, TrialConfig

# Fields that are not part of what a sweep computes: left out of the fingerprint, like NON_IDENTITY_FIELDS for ids.
NON_FINGERPRINT_KEYS = ("data_root", "download", "resources", "max_failures")


def spec_fingerprint(spec: SweepSpec) -> str:
    """Stable hash of what the spec computes. Leaves out where data lives, the resources and the retry count
    (moving data or changing the machine does not change the results), and the form seeds are written in."""
    data = spec.model_dump()
    for key in NON_FINGERPRINT_KEYS:
        data.pop(key, None)
    data["seeds"] = spec.seed_list
    if not data["search"].get("start"):  # added later: a spec without known start points keeps its fingerprint
        data["search"].pop("start", None)
    data["train"] = {k: v for k, v in data["train"].items() if k not in NON_IDENTITY_FIELDS}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_writable(root: str | os.PathLike) -> None:
    """Raise UserError, writing nothing, unless ROOT exists as a writable folder or can be created as one."""
    if is_uri(root):
        try:
            fs, base = filesystem(root)
            probe = f"{base.rstrip('/')}/.pixelreg-probe-{uuid.uuid4().hex}"
            with fs.open_output_stream(probe) as stream:
                stream.write(b"")
            fs.delete_file(probe)
        except Exception as exc:  # noqa: BLE001 - any storage error is the same user-facing problem
            raise UserError(f"--results {root}: cannot write there ({type(exc).__name__}: {exc}); "
                            "check the URI and its credentials, or pick another --results") from None
        return
    path = Path(local_path(root))
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--results {root}: {existing} is a file, not a folder; pick another --results")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--results {root}: {existing} is not writable; pick another --results")
    if existing == path:  # it exists: prove it with a real write (read-only mounts pass os.access as root)
        probe = path / f".pixelreg-probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"--results {root}: cannot write there ({exc.strerror}); pick another --results") \
                from None


def saved_fingerprint(sweep_dir: str) -> str | None:
    text = read_text(sweep_dir, FINGERPRINT_FILE)
    return text.strip() if text else None


def prepare_sweep_dir(sweep_dir: str, spec_text: str, fingerprint: str, fresh: bool, log=print) -> None:
    """Claim ROOT/<name> for this spec: refuse another spec's results, wipe them only when --fresh says so."""
    fs, base = filesystem(sweep_dir)
    held = saved_fingerprint(sweep_dir)
    if fresh and fs.get_file_info(base).type == pafs.FileType.Directory:
        log(f"--fresh: deleting the earlier results in {sweep_dir}")
        for info in fs.get_file_info(pafs.FileSelector(base)):
            if info.base_name == LOCK_FILE:  # this launch's own lock stays
                continue
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
    elif held is not None and held != fingerprint:
        raise UserError(f"{sweep_dir} holds sweep spec {held[:12]} (its {SPEC_FILE} is there), not this spec "
                        f"({fingerprint[:12]}); use --fresh to start over or a different --results")
    fs.create_dir(base, recursive=True)
    write_text(sweep_dir, SPEC_FILE, spec_text)
    write_text(sweep_dir, FINGERPRINT_FILE, fingerprint + "\n")


def split_done(configs: Iterable[TrialConfig], sweep_dir: str) -> tuple[list[TrialConfig], list[TrialConfig]]:
    """(complete, to run). Trials to run lose their stale rows first, so a rerun never adds a second row."""
    statuses = trial_statuses(sweep_dir)
    done, todo = [], []
    for cfg in configs:
        if statuses.get(cfg.trial_id) in COMPLETE_STATUSES:
            done.append(cfg)
        else:
            if cfg.trial_id in statuses or has_rows(sweep_dir, cfg.trial_id):
                remove_trial(sweep_dir, cfg.trial_id)
            todo.append(cfg)
    return done, todo
