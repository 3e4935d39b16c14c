"""The sweep directory as the only state of a sweep: what is done, what is left, which spec it belongs to.

Nothing lives in the driver. A trial is complete when its `trials` Parquet row says so (run_trial writes that row
last, atomically), so a driver killed with SIGKILL loses only the trials that were running; a relaunch reads the
rows again and runs the rest. Works for local paths and pyarrow URIs (s3://...) alike.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from pixelreg_core.config import TrialConfig
from pixelreg_core.results import TABLES, _filesystem, is_uri, join, read_table, remove_trial

from .errors import UserError
from .lock import LOCK_FILE

SPEC_FILE = "spec.yaml"
FINGERPRINT_FILE = "fingerprint"
# "stopped": ended early on purpose by the ASHA scheduler; rerunning it would only be stopped again.
COMPLETE_STATUSES = ("ok", "stopped")


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a pyarrow URI (pixelreg_core.results' one helper)."""
    fs, base, _ = _filesystem(path)
    return fs, base


def sweep_dir_for(root: str | os.PathLike, name: str) -> str:
    """ROOT/<name>, absolute for a local root (Tune's workers do not share our working directory); a URI keeps
    its query (s3://bucket/prefix/<name>?endpoint_override=...)."""
    if is_uri(root):
        return join(root, name)
    return str(Path(str(root).removeprefix("file://")).resolve() / name)


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
    path = Path(str(root).removeprefix("file://")).resolve()
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


def _read_text(fs: pafs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def saved_fingerprint(sweep_dir: str) -> str | None:
    fs, base = filesystem(sweep_dir)
    text = _read_text(fs, f"{base}/{FINGERPRINT_FILE}")
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
    _write_text(fs, f"{base}/{SPEC_FILE}", spec_text)
    _write_text(fs, f"{base}/{FINGERPRINT_FILE}", fingerprint + "\n")


def trial_statuses(sweep_dir: str) -> dict[str, str]:
    """trial_id -> status of its trials row, for every trial that has one."""
    trials = read_table(sweep_dir, "trials")
    return dict(zip(trials["trial_id"], trials["status"], strict=True))


def split_done(configs: Iterable[TrialConfig], sweep_dir: str) -> tuple[list[TrialConfig], list[TrialConfig]]:
    """(complete, to run). Trials to run lose their stale rows first, so a rerun never adds a second row."""
    statuses = trial_statuses(sweep_dir)
    done, todo = [], []
    for cfg in configs:
        if statuses.get(cfg.trial_id) in COMPLETE_STATUSES:
            done.append(cfg)
        else:
            if cfg.trial_id in statuses or _has_rows(sweep_dir, cfg.trial_id):
                remove_trial(sweep_dir, cfg.trial_id)
            todo.append(cfg)
    return done, todo


def _has_rows(sweep_dir: str, trial_id: str) -> bool:
    fs, base = filesystem(sweep_dir)
    return any(fs.get_file_info(f"{base}/{table}/{trial_id}.parquet").type == pafs.FileType.File
               for table in TABLES)
