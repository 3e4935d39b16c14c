"""The Parquet results contract between trainer, aggregator and users (docs/results.md, with every column).

`<root>/<table>/<trial_id>.parquet`: one file per trial per table, written to a temp file in `<root>/.tmp/` (beside
the tables, never inside one) and renamed in, so every reader of a table folder (pandas, pyarrow, polars'
scan_parquet, DuckDB's read_parquet('<table>/**')) sees whole files only, at any moment and after a crash mid-write;
a rewritten trial replaces its rows instead of adding to them. The next launch empties `.tmp/` (clean_temp). Every
table has an explicit schema so files written by different trials always concatenate, even where a column is null
in one of them.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pixelreg_core.config import TrialConfig

# Every column of the per-trial tables, once: (name, type, what it holds). The schemas below are built from these
# and docs/results.md's column tables are generated from them (scripts/gen_docs.py).
KEY_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("trial_id", pa.string(), "the model's id: a hash of what trains it (TrialConfig.trial_id)"),
    ("sweep", pa.string(), "the sweep's name"),
    ("task", pa.string(), "the classification dataset"),
    ("reg_data", pa.string(), "the regularization dataset; \"none\" for an unregularized model"),
    ("target", pa.string(), "the similarity target; \"none\" unregularized"),
    ("range", pa.string(), "which pairs are regularized; \"none\" unregularized"),
    ("th", pa.float64(), "the threshold Th; 0 unregularized"),
    ("alpha", pa.float64(), "the regularization strength; 0 unregularized"),
    ("seed", pa.int64(), "the trial's seed"),
    ("arch", pa.string(), "ResNet18 or ResNet34"),
]
COLUMNS: dict[str, list[tuple[str, pa.DataType, str]]] = {
    # one row per model
    "trials": [
        ("role", pa.string(), "trial, baseline or fgsm_source (a transferred attack's source model)"),
        ("status", pa.string(), "ok; failed; stopped (ended early by ASHA); blocked (not run: its FGSM source "
                                "failed)"),
        ("error", pa.string(), "one line, null when ok; for an ok model an evaluation that failed or was not run"),
        ("clean_acc", pa.float64(), "test accuracy of the selected epoch"),
        ("valid_acc", pa.float64(), "validation accuracy of the selected epoch"),
        ("valid_loss", pa.float64(), "validation loss of the selected epoch"),
        ("best_epoch", pa.int64(), "the epoch `select` chose: 1..epochs, 0 = the untrained model"),
        ("valid_images", pa.int64(), "size of the validation set that chose it"),
        ("epochs", pa.int64(), "epochs configured"),
        ("layer_weights", pa.list_(pa.float64()), "softmax(gamma) of the selected epoch, stem first"),
        ("sim_layer", pa.int64(), "the one layer compared; null: learned weights"),
        ("width", pa.int64(), "base channels"),
        ("wall_s", pa.float64(), "the whole trial: data, training, attacks, writes"),
        ("cpu_s", pa.float64(), "process CPU seconds over wall_s (on a shared machine wall_s grows, cpu_s does "
                                "not)"),
        ("train_s", pa.float64(), "training (this run's epochs, when resumed); null for a failed trial"),
        ("eval_s", pa.float64(), "every attack, spectrum included; null for a failed trial"),
        ("attack_s", pa.string(), "JSON: seconds per attack, e.g. {\"gaussian\": 1.2}; null for a failed trial"),
        ("device", pa.string(), "the device it trained on"),
        ("node", pa.string(), "Ray node id of the worker; the hostname without Ray; null for a trial ASHA stopped"),
        ("versions", pa.string(), "JSON: python, torch, torchvision, foolbox, pyarrow"),
        ("config", pa.string(), "JSON of the full TrialConfig"),
        ("checkpoint", pa.string(), "path of the selected model's state_dict"),
        ("finished_at", pa.string(), "ISO 8601 UTC"),
        ("resumed_from_epoch", pa.int64(), "epochs restored from a per-epoch checkpoint (0: trained from the "
                                           "start)"),
    ],
    # one row per epoch
    "epochs": [
        ("epoch", pa.int64(), "1-based"),
        ("lr", pa.float64(), "the epoch's learning rate"),
        ("loss_cls", pa.float64(), "mean cross-entropy over the epoch's steps"),
        ("loss_sim", pa.float64(), "mean L_sim (before alpha); null when unregularized"),
        ("sim_corr", pa.float64(), "Pearson r of S_cnn vs target over the epoch's pairs"),
        ("train_acc", pa.float64(), "accuracy on the epoch's training batches"),
        ("valid_loss", pa.float64(), "validation loss after the epoch"),
        ("valid_acc", pa.float64(), "validation accuracy after the epoch"),
        ("test_acc", pa.float64(), "test accuracy after the epoch"),
        ("seconds", pa.float64(), "the epoch's wall seconds"),
    ],
    # one row per (attack, variant, eps or severity, repeat, metric)
    "robustness": [
        ("attack", pa.string(), "the attack's name (docs/attacks.md)"),
        ("eval_id", pa.string(), "the evaluation: `<attack>-<hash>` of model, options and source "
                                 "(TrialConfig.eval_id)"),
        ("variant", pa.string(), "corruption name; \"\" otherwise"),
        ("group", pa.string(), "corruption frequency group low, medium or high; \"\" otherwise"),
        ("eps", pa.float64(), "eps, or corruption severity; null for an attack without an eps axis"),
        ("repeat", pa.int64(), "the repeat, from 0"),
        ("metric", pa.string(), "accuracy, boundary_score, min_l2 or min_linf (skipped: a corruption that could "
                                "not run)"),
        ("value", pa.float64(), "the metric's value"),
        ("images", pa.int64(), "images the value is computed on"),
        ("failed", pa.int64(), "images where the attack found no adversarial"),
        ("whitebox", pa.bool_(), "true only for the minimal-perturbation attacks"),
    ],
    # Fourier radial profile of the mean boundary perturbation, one row per radius bin
    "spectrum": [
        ("attack", pa.string(), "the attack whose perturbations these are"),
        ("eval_id", pa.string(), "the evaluation (as in robustness)"),
        ("radius", pa.float64(), "the radius bin"),
        ("power", pa.float64(), "radial Fourier power of the mean perturbation"),
    ],
}
ROW_IS = {"trials": "model", "epochs": "epoch", "robustness": "(model, attack) x variant x eps x repeat x metric",
          "spectrum": "(model, attack) x radius bin"}
KEY_FIELDS: list[pa.Field] = [pa.field(name, kind) for name, kind, _ in KEY_COLUMNS]
SCHEMAS: dict[str, pa.Schema] = {table: pa.schema(KEY_FIELDS + [pa.field(name, kind) for name, kind, _ in columns])
                                 for table, columns in COLUMNS.items()}
TABLES = tuple(SCHEMAS)
# Columns that measure how long things took (or when, or where): they differ between two runs of the same trial,
# every other column is deterministic on CPU. Tests that compare two runs drop these.
TIMING_COLUMNS: dict[str, tuple[str, ...]] = {
    "trials": ("wall_s", "cpu_s", "train_s", "eval_s", "attack_s", "finished_at", "node"),
    "epochs": ("seconds",),
}


def key_values(cfg: TrialConfig) -> dict[str, Any]:
    """The key columns every row of a trial carries."""
    return {"trial_id": cfg.trial_id, "sweep": cfg.sweep, "task": cfg.task, "reg_data": cfg.reg_data,
            "target": cfg.target, "range": cfg.range, "th": float(cfg.th), "alpha": float(cfg.alpha),
            "seed": int(cfg.seed), "arch": cfg.arch}


def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a Table of the table's schema. A missing column is null; an unknown column is a bug."""
    schema = SCHEMAS[table]
    extra = set().union(*(r.keys() for r in rows)) - set(schema.names) if rows else set()
    if extra:
        raise KeyError(f"columns not in the {table} schema: {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=schema)


TMP_DIR = ".tmp"  # <root>/.tmp/: the temp files of table writes, outside every table folder


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", tmp_dir: str | os.PathLike | None = None
                ) -> Iterator[str]:
    """A temp path, renamed over `path` when the block succeeds and removed when it fails.

    Readers see the old file or the new one, never half of one (a rename within one filesystem is atomic). The
    temp file is hidden beside `path`, or in `tmp_dir` (same filesystem) where no file but whole ones may appear in
    `path`'s folder (the tables). `suffix` keeps writers that choose the format by extension (np.save, savefig)
    happy. Every write goes through faults.check_write (a no-op unless PIXELREG_FAULTS injects a full disk).
    """
    from pixelreg_core.hooks import faults

    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if tmp_dir is None:
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp{suffix}")
    else:
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = os.path.join(tmp_dir, f"{os.path.basename(folder)}-{name}.{uuid.uuid4().hex}.tmp{suffix}")
    try:
        yield tmp
        faults.check_write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def disk_full(exc: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from or during) is a full disk: errno ENOSPC, or pyarrow's
    OSError whose message says so."""
    import errno

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left on device" in str(exc)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def clean_temp(root: str | os.PathLike) -> int:
    """Remove the temp files a killed writer left: `<root>/.tmp/*` and, from folders written before .tmp/ existed,
    hidden `.*.tmp` files inside the table folders. Only while nobody writes (launch holds the sweep lock).
    Returns how many were removed."""
    fs, base, local = _filesystem(root)
    if not local:  # an object store PUT leaves no temp file
        return 0
    removed = 0
    stale = list(Path(base, TMP_DIR).glob("*")) + [p for t in TABLES for p in Path(base, t).glob(".*.tmp*")]
    for path in stale:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def is_uri(path: str | os.PathLike) -> bool:
    """True for a pyarrow URI such as s3://bucket/prefix (file:// counts as a local path)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    """A local location (a plain path or file://...) as an absolute path: the one place that resolves one."""
    return str(Path(str(path).removeprefix("file://")).resolve())


def absolute(path: str | os.PathLike) -> str:
    """A URI as it is, a local path absolute (`local_path`): Tune's workers do not share our working directory."""
    return str(path) if is_uri(path) else local_path(path)


def join(root: str | os.PathLike, *parts: str) -> str:
    """ROOT/part/...: for a URI the query (`?endpoint_override=...&scheme=http`) stays at the end, where pyarrow
    reads it."""
    text, sep, query = str(root).partition("?") if is_uri(root) else (str(root), "", "")
    return "/".join([text.rstrip("/"), *parts]) + sep + query


def _filesystem(root: str | os.PathLike) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, path, is_local). Accepts a plain path or a pyarrow URI such as s3://bucket/prefix. The one
    place that turns a results location into a filesystem (`filesystem` below; orchestrator.sweepdir.tables
    re-exports it)."""
    if is_uri(root):
        fs, path = pafs.FileSystem.from_uri(str(root))
        return fs, path, False
    return pafs.LocalFileSystem(), local_path(root), True


def filesystem(root: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a pyarrow URI: the public face of `_filesystem`."""
    fs, path, _ = _filesystem(root)
    return fs, path


def checkpoint_path(root: str | os.PathLike, trial_id: str) -> str:
    """Where a trial's selected state_dict lives: ROOT/checkpoints/<trial_id>.pt (a URI keeps its ?query last)."""
    return join(root, "checkpoints", f"{trial_id}.pt")


def status_row(cfg: TrialConfig, status: str, error: str | None, **columns: Any) -> dict[str, Any]:
    """The trials row of a trial: keys, what it was asked to do, and how it ended. The one builder of the rows of
    trials that did not finish ok (`failed` by run_trial or the orchestrator's retries, `stopped` by ASHA,
    `blocked` by a failed FGSM source);
    `columns` adds or overrides (device, wall_s, the epochs actually trained, the results of an ok trial)."""
    import datetime as dt
    import json

    return {**key_values(cfg), "role": cfg.role, "sim_layer": cfg.sim_layer, "width": cfg.width,
            "epochs": cfg.epochs, "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "status": status, "error": error, **columns}


def read_trial(root: str | os.PathLike, table: str, trial_id: str) -> list[dict[str, Any]] | None:
    """One model's rows of one table as dicts (nulls as None), every evaluation's for robustness and spectrum,
    or None when that model has no readable file there."""
    fs, base, _ = _filesystem(root)
    names = [f"{trial_id}.parquet", *(f"{eval_key(trial_id, e)}.parquet"
                                      for e in sorted(evaluation_files(root, table, trial_id)))]
    names = [n for n in names if fs.get_file_info(f"{base}/{table}/{n}").type == pafs.FileType.File]
    data, read = read_files(root, table, names)
    return data.to_pylist() if read else None


def read_bytes(path: str | os.PathLike) -> bytes | None:
    """A file's content (local path or URI), or None when it does not exist."""
    fs, p, _ = _filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as stream:
        return stream.read()


def read_text(root: str | os.PathLike, name: str) -> str | None:
    """A small text file of a sweep folder (spec.yaml, fingerprint, layout, specs/<n>-<fingerprint>.yaml), or None
    when it is not there or is not text (damaged: then it is quarantined; the next launch writes it again)."""
    data = read_bytes(join(root, name))
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        quarantine(root, name, exc, f"the folder's {name}", "the next launch writes it again")
        return None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file all at once: atomically (temp file + rename) locally; an object store PUT already is."""
    fs, p, local = _filesystem(path)
    if local:
        with atomic_path(p) as tmp, open(tmp, "wb") as f:
            f.write(data)
        return
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as stream:
        stream.write(data)


def delete_file(path: str | os.PathLike) -> None:
    """Remove a file (local path or URI) if it exists."""
    fs, p, _ = _filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def write_table(root: str | os.PathLike, table: str, trial_id: str, rows: list[dict[str, Any]]) -> str:
    """Write one trial's rows of one table, replacing any earlier file of that trial. Returns the file path."""
    return _write_parquet(root, table, f"{trial_id}.parquet", to_arrow(table, rows))


def _write_parquet(root: str | os.PathLike, folder: str, name: str, data: pa.Table) -> str:
    """ROOT/folder/name whole: a local temp file in ROOT/.tmp/ renamed in; one PUT on an object store."""
    fs, base, local = _filesystem(root)
    directory = f"{base}/{folder}"
    final = f"{directory}/{name}"
    fs.create_dir(directory, recursive=True)
    if not local:  # an object store PUT is already all-or-nothing
        pq.write_table(data, final, filesystem=fs)
        return final
    with atomic_path(final, tmp_dir=f"{base}/{TMP_DIR}") as tmp:
        pq.write_table(data, tmp)
    return final


COMPACT_DIR = "compact"  # ROOT/compact/<table>.parquet: every table in one file, written by `aggregate`


def compact_tables(root: str | os.PathLike) -> dict[str, str]:
    """Write each table as one file, ROOT/compact/<table>.parquet (one GET on an object store instead of one per
    trial); a snapshot as of the call, rewritten by the next `aggregate`. Returns table -> path."""
    fs, base, _ = _filesystem(root)
    out = {}
    for table in TABLES:
        data, _ = read_files(root, table, own_files(root, table))
        out[table] = _write_parquet(root, COMPACT_DIR, f"{table}.parquet", data)
    return out


def read_table(root: str | os.PathLike, table: str):
    """A table as a pandas DataFrame with the schema's columns; empty (not an error) when nothing is written.
    Only the table's own files (`own_files`); a damaged one is quarantined and left out (`read_files`)."""
    data, _ = read_files(root, table, own_files(root, table))
    return data.to_pandas()


# ------------------------------------------------------------------------- the one reader of a table's files
# A sweep folder is read by people, copied between machines and synced from clusters: a table folder may hold a
# file that is not ours (notes.txt, a sync tool's leftovers) and one of ours may be damaged (random bytes, zero
# length). Every reader of a table goes through `own_files` and `read_files`: only the names the trainer writes
# are read, and a file that does not parse is moved to ROOT/quarantine/ (never deleted), named in one line with
# what it held, and counted as missing, so the next launch or evaluate redoes exactly that (docs/reliability.md).
QUARANTINE_DIR = "quarantine"
# <trial_id>.parquet (a model's rows) or <trial_id>.<eval_id>.parquet (an evaluation's): TrialConfig's ids
OWN_FILE = re.compile(r"[0-9a-f]{16}(\.[A-Za-z0-9_]+-[0-9a-f]{8})?\.parquet")
# what a damaged file's content errors look like; an OSError (a network error on an object store, a permission)
# says nothing about the file and is raised as it is: a good file must never be moved aside for it
DAMAGED = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, pa.ArrowKeyError)


def own_files(root: str | os.PathLike, table: str) -> list[str]:
    """The names of the files in ROOT/<table>/ that the trainer writes (OWN_FILE), sorted; [] without the
    folder."""
    fs, base, _ = _filesystem(root)
    directory = f"{base}/{table}"
    if fs.get_file_info(directory).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(directory))
                  if i.type == pafs.FileType.File and OWN_FILE.fullmatch(i.base_name))


def read_files(root: str | os.PathLike, table: str, names: list[str]) -> tuple[pa.Table, list[str]]:
    """(the rows of ROOT/<table>/<name> for these names as one Table of the schema, the names read). All at once
    first (the usual case); when that fails on a damaged file, one at a time: each damaged one is quarantined
    and left out. A file removed meanwhile (a rerun replacing its model's rows) is left out too."""
    fs, base, _ = _filesystem(root)
    schema = SCHEMAS[table]
    if not names:
        return schema.empty_table(), []
    try:
        return pq.ParquetDataset([f"{base}/{table}/{n}" for n in names], filesystem=fs, schema=schema).read(), names
    except (*DAMAGED, FileNotFoundError):
        # the failed scan's reader threads must be joined now, while Arrow is alive: left to the interpreter's exit
        # they abort the process ("terminate called without an active exception", apache/arrow#34314), about 1
        # run in 10 that met a damaged file here
        gc.collect()
    parts, read = [], []
    for name in names:
        try:
            parts.append(pq.read_table(f"{base}/{table}/{name}", filesystem=fs, schema=schema))
            read.append(name)
        except FileNotFoundError:
            continue
        except DAMAGED as exc:
            quarantine_table_file(root, table, name, exc)
    return (pa.concat_tables(parts) if parts else schema.empty_table()), read


def quarantine_table_file(root: str | os.PathLike, table: str, name: str, error: BaseException) -> None:
    """Quarantine a damaged table file with the file that marks its unit complete, so the unit counts as missing:
    a model is complete by its trials row (an epochs file goes with it: the model trains again), an evaluation by
    its robustness file (a spectrum file goes with it: the evaluation runs again)."""
    stem = name.removesuffix(".parquet")
    model, _, eval_id = stem.partition(".")
    if eval_id:
        held, redo = f"evaluation {eval_id} of model {model}", "the next launch or evaluate runs it again"
    else:
        held, redo = f"model {model}", "the next launch trains it again"
    marker = {"epochs": "trials", "spectrum": "robustness"}.get(table)
    also = [f"{marker}/{name}"] if marker and file_exists(join(root, marker, name)) else []
    quarantine(root, f"{table}/{name}", error, f"the {table} rows of {held}", redo, also)


def quarantine(root: str | os.PathLike, relative: str, error: BaseException | str, held: str, redo: str,
               also: list[str] | tuple[str, ...] = ()) -> None:
    """Move ROOT/<relative> (and the files `also` names) into ROOT/quarantine/ under the same relative path
    (`.1`, `.2`, ... when that name is taken) and say so in one line on stderr: the file, why it cannot be read,
    what it held, and what redoes it. Never deletes; on a folder that cannot be written the file stays where it
    is (the line says so) and is still counted as missing."""
    moved = [_move_aside(root, path) for path in (relative, *also)]
    reason = " ".join(str(error).split())[:160] or type(error).__name__
    where = f"moved to {moved[0]}" if moved[0].startswith(QUARANTINE_DIR) else moved[0]
    if also:
        where += f" (with {', '.join(moved[1:])}, so that it counts as missing)"
    print(f"{relative}: unreadable ({reason}); it held {held}; {where}; {redo}", file=sys.stderr, flush=True)


def _move_aside(root: str | os.PathLike, relative: str) -> str:
    fs, base, _ = _filesystem(root)
    target, n = f"{QUARANTINE_DIR}/{relative}", 0
    while fs.get_file_info(f"{base}/{target}").type != pafs.FileType.NotFound:
        n += 1
        target = f"{QUARANTINE_DIR}/{relative}.{n}"
    try:
        fs.create_dir(f"{base}/{target}".rsplit("/", 1)[0], recursive=True)
        fs.move(f"{base}/{relative}", f"{base}/{target}")
    except OSError as exc:
        return f"left in place (cannot move it: {exc})"
    return target


def quarantined(root: str | os.PathLike) -> list[str]:
    """The files in ROOT/quarantine/, relative to it, sorted: what `status` lists."""
    fs, base, _ = _filesystem(root)
    folder = f"{base}/{QUARANTINE_DIR}"
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return sorted(i.path[len(folder) + 1:] for i in infos if i.type == pafs.FileType.File)


def file_exists(path: str | os.PathLike) -> bool:
    fs, p, _ = _filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def remove_trial(root: str | os.PathLike, trial_id: str, tables: tuple[str, ...] = TABLES) -> None:
    """Delete a model's files from `tables` (its evaluations' files too): the stale rows of a model about to
    train again (orchestrator.sweepdir.resume), and a failed training's half-written rows."""
    fs, base, _ = _filesystem(root)
    for table in tables:
        for path in [f"{base}/{table}/{trial_id}.parquet",
                     *(f"{base}/{table}/{trial_id}.{e}.parquet" for e in evaluation_files(root, table, trial_id))]:
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                fs.delete_file(path)


# ------------------------------------------------------------------------------------- models and evaluations
# A model's rows: trials/<trial_id>.parquet (one row), epochs/<trial_id>.parquet, checkpoints/<trial_id>.pt.
# An evaluation's rows: spectrum/<trial_id>.<eval_id>.parquet, then robustness/<trial_id>.<eval_id>.parquet, last:
# the robustness file of an evaluation marks it complete (resume looks for it).
LAYOUT_FILE = "layout"  # "2": models and evaluations apart; absent in a folder written before (one file a trial)
LAYOUT = "2"


def eval_key(trial_id: str, eval_id: str) -> str:
    return f"{trial_id}.{eval_id}"


def evaluation_files(root: str | os.PathLike, table: str, trial_id: str | None = None) -> list[str]:
    """The eval ids with a file in `table` (of one model, or `<trial_id>.<eval_id>` of all)."""
    fs, base, _ = _filesystem(root)
    directory = f"{base}/{table}"
    if fs.get_file_info(directory).type != pafs.FileType.Directory:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(directory)):
        stem = info.base_name.removesuffix(".parquet")
        if info.type != pafs.FileType.File or "." not in stem or not OWN_FILE.fullmatch(info.base_name):
            continue
        model, _, eval_id = stem.partition(".")
        if trial_id is None:
            out.append(stem)
        elif model == trial_id:
            out.append(eval_id)
    return out


def finished_evaluations(root: str | os.PathLike) -> dict[str, set[str]]:
    """trial_id -> the eval ids whose rows are complete (their robustness file exists); one listing."""
    out: dict[str, set[str]] = {}
    for stem in evaluation_files(root, "robustness"):
        model, _, eval_id = stem.partition(".")
        out.setdefault(model, set()).add(eval_id)
    return out
