"""The sweep directory as the only state of a sweep: the specs it ran, what is done, what is left.

Nothing lives in the driver. A model is complete when its `trials` Parquet row says so (run_trial writes that row
last, atomically), an evaluation when its robustness file is there (written last), so a driver killed with SIGKILL
loses only the work that was running; a relaunch reads the files again and runs the rest. A folder holds a study
that grows: a relaunch of an edited spec (more seeds, points, pairs, attacks) trains only the models the folder
lacks and runs only the evaluations it lacks; every spec version is kept in `specs/`. Works for local paths and
pyarrow URIs (s3://...) alike (orchestrator.sweepdir.tables).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator.analysis.selection import SPECS_DIR, spec_versions
from orchestrator.errors import UserError
from orchestrator.spec.schema import SweepSpec
from orchestrator.sweepdir.lock import LOCK_FILE
from orchestrator.sweepdir.tables import (
    FINGERPRINT_FILE,
    LAYOUT,
    LAYOUT_FILE,
    SPEC_FILE,
    filesystem,
    finished_evaluations,
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
# `confidence` only says how sure a finished choice must be to count as decided; a folder keeps its fingerprint.
NON_FINGERPRINT_KEYS = ("data_root", "download", "resources", "max_failures", "confidence", "track")


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


def legacy_layout(sweep_dir: str) -> bool:
    """Whether the folder was written before models and evaluations were separate (one file per trial, the
    attacks part of the id): it has a trials/ folder and no `layout` file."""
    fs, base = filesystem(sweep_dir)
    if fs.get_file_info(f"{base}/trials").type != pafs.FileType.Directory:
        return False
    return fs.get_file_info(f"{base}/{LAYOUT_FILE}").type == pafs.FileType.NotFound  # there, even damaged: new


def refuse_legacy(sweep_dir: str) -> None:
    if legacy_layout(sweep_dir):
        raise UserError(f"{sweep_dir} was written before models and evaluations were separate (no {LAYOUT_FILE} "
                        f"file); convert it in place with `orchestrator migrate {sweep_dir}` (cheap: renames and "
                        "splits the Parquet files, trains nothing), or start over with --fresh")


def prepare_sweep_dir(sweep_dir: str, spec_text: str, fingerprint: str, fresh: bool, log=print) -> None:
    """Claim ROOT/<name> for this spec: wipe earlier results only when --fresh says so; an edited spec grows the
    study (its version is kept in specs/); a folder of the old layout is refused with how to convert it."""
    fs, base = filesystem(sweep_dir)
    held = saved_fingerprint(sweep_dir)
    if not fresh:
        refuse_legacy(sweep_dir)
    if fresh and fs.get_file_info(base).type == pafs.FileType.Directory:
        log(f"--fresh: deleting the earlier results in {sweep_dir}")
        for info in fs.get_file_info(pafs.FileSelector(base)):
            if info.base_name == LOCK_FILE:  # this launch's own lock stays
                continue
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
        held = None
    elif held is not None and held != fingerprint:
        log(f"{sweep_dir}: the spec changed since the last launch (was {held[:12]}, now {fingerprint[:12]}): "
            "training only the models the folder lacks, running only the evaluations it lacks")
    fs.create_dir(base, recursive=True)
    versions = spec_versions(sweep_dir)
    if not versions or not versions[-1].removesuffix(".yaml").endswith(fingerprint):
        write_text(sweep_dir, f"{SPECS_DIR}/{len(versions) + 1}-{fingerprint}.yaml", spec_text)
    write_text(sweep_dir, SPEC_FILE, spec_text)
    write_text(sweep_dir, FINGERPRINT_FILE, fingerprint + "\n")
    write_text(sweep_dir, LAYOUT_FILE, LAYOUT + "\n")


def check_files(sweep_dir: str) -> None:
    """Read every table once, and open the checkpoint of every finished model, before deciding what is done: a
    damaged file is quarantined now (pixelreg_core.results.read_files), so what it held counts as missing and
    this launch redoes it. A checkpoint is checked as a whole archive (torch.save writes a zip file: its
    directory, read from the file's end, shows truncation and overwritten bytes) without reading the weights; a
    checkpoint damaged inside is found when its model is next used (pixelreg_core.trial.stored_row)."""
    import zipfile

    from pixelreg_core.results import quarantine, read_table

    for table in ("epochs", "robustness", "spectrum", "trials"):  # trials last: the files above may move rows of it
        read_table(sweep_dir, table)
    fs, base = filesystem(sweep_dir)
    for trial_id, status in trial_statuses(sweep_dir).items():
        path = f"{base}/checkpoints/{trial_id}.pt"
        if status != "ok" or fs.get_file_info(path).type != pafs.FileType.File:
            continue  # a finished model without a checkpoint trains again (split_done)
        try:
            with fs.open_input_file(path) as stream:
                zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            quarantine(sweep_dir, f"checkpoints/{trial_id}.pt", exc, f"the weights of model {trial_id}",
                       "this launch trains it again", also=[f"trials/{trial_id}.parquet"])


def split_done(configs: Iterable[TrialConfig], sweep_dir: str) -> tuple[list[TrialConfig], list[TrialConfig]]:
    """(complete, to run). Complete: the model's row is ok (or `stopped` by ASHA, which has no evaluations) and
    every evaluation of its attacks is there. To run: a model to train (its stale rows removed first, so a rerun
    never adds a second row) or a stored model with evaluations missing (its rows stay)."""
    statuses = trial_statuses(sweep_dir)
    finished = finished_evaluations(sweep_dir)  # one listing for every config
    done, todo = [], []
    for cfg in configs:
        status = statuses.get(cfg.trial_id)
        if status == "stopped" or (status == "ok" and not missing_evaluations(sweep_dir, cfg, finished)):
            done.append(cfg)
            continue
        if status != "ok" and (cfg.trial_id in statuses or has_rows(sweep_dir, cfg.trial_id)):
            remove_trial(sweep_dir, cfg.trial_id)
        todo.append(cfg)
    return done, todo


def missing_evaluations(sweep_dir: str, cfg: TrialConfig, finished: dict[str, set[str]] | None = None) -> list[str]:
    """The attacks of cfg whose evaluation of its model the folder lacks (`finished`: finished_evaluations, to
    list the folder once for many configs)."""
    from pixelreg_core.attacks import source_attacks

    finished = finished_evaluations(sweep_dir) if finished is None else finished
    done = finished.get(cfg.trial_id, set())
    transferred = set(source_attacks(cfg.attacks))
    return [name for name in cfg.attacks if cfg.eval_id(name, name in transferred) not in done]


def work(configs: list[TrialConfig], sweep_dir: str) -> dict[str, list]:
    """What a launch of these configs will do: models to train, (model, attack) evaluations to run on stored
    models, models reused whole. For `plan` and the launch's first line."""
    statuses = trial_statuses(sweep_dir)
    finished = finished_evaluations(sweep_dir)
    out: dict[str, list] = {"train": [], "evaluate": [], "reused": []}
    for cfg in configs:
        status = statuses.get(cfg.trial_id)
        if status == "stopped":
            out["reused"].append(cfg)
        elif status != "ok":
            out["train"].append(cfg)
        else:
            missing = missing_evaluations(sweep_dir, cfg, finished)
            out["evaluate"] += [(cfg, name) for name in missing]
            if not missing:
                out["reused"].append(cfg)
    return out
