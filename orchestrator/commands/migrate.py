"""`orchestrator migrate DIR`: convert a sweep folder written before models and evaluations were separate.

In that layout a trial's id included its attacks and each table held one file per trial. Conversion is cheap and
trains nothing: each trial's config (the `config` column of its trials row) gives its model id; the trials,
epochs and checkpoint files are renamed to it (the id columns rewritten), and its robustness and spectrum rows are
split by attack into one file per evaluation (`<model>.<eval_id>.parquet`). Trials that did not finish ok are
dropped (a relaunch trains them), as are per-epoch resume files (their ids changed). The `layout` file is written
after every new file and before any old one is deleted, so a migration killed half-way is run again from the start.
"""

from __future__ import annotations

import argparse
import json

from orchestrator.errors import UserError
from orchestrator.sweepdir.lock import sweep_lock
from orchestrator.sweepdir.resume import legacy_layout
from orchestrator.sweepdir.tables import (
    LAYOUT,
    LAYOUT_FILE,
    checkpoint_path,
    delete_file,
    eval_key,
    filesystem,
    read_bytes,
    read_trial,
    write_bytes,
    write_table,
    write_text,
)
from pixelreg_core.config import TrialConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", help="a sweep folder such as results/quickstart (a local path or a URI)")


def run(args: argparse.Namespace) -> int:
    sweep_dir = args.sweep_dir
    if not legacy_layout(sweep_dir):
        fs, base = filesystem(sweep_dir)
        if fs.get_file_info(f"{base}/trials").type.name == "NotFound":
            raise UserError(f"{sweep_dir}: no trials/ folder here; pass a sweep's results folder")
        print(f"{sweep_dir}: already in the current layout; nothing to do")
        return 0
    with sweep_lock(sweep_dir):
        counts = migrate(sweep_dir)
    print(f"{sweep_dir}: migrated {counts['models']} model(s) and {counts['evaluations']} evaluation(s); "
          f"dropped {counts['dropped']} unfinished trial(s) (a relaunch trains them)")
    return 0


def _old_files(sweep_dir: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, base = filesystem(sweep_dir)
    out = []
    for folder in ("trials", "epochs", "robustness", "spectrum", "checkpoints/running"):
        if fs.get_file_info(f"{base}/{folder}").type == pafs.FileType.Directory:
            out += [i.path for i in fs.get_file_info(pafs.FileSelector(f"{base}/{folder}"))
                    if i.type == pafs.FileType.File]
    return out


def migrate(sweep_dir: str) -> dict[str, int]:
    from pixelreg_core.attacks import source_attacks
    from pixelreg_core.results import read_table

    fs, base = filesystem(sweep_dir)
    old = _old_files(sweep_dir)
    ids = list(read_table(sweep_dir, "trials")["trial_id"])
    rows = [(read_trial(sweep_dir, "trials", i) or [None])[0] for i in ids]  # dicts with None for nulls
    rows = [r for r in rows if r is not None]
    configs = {r["trial_id"]: TrialConfig.from_dict(json.loads(r["config"])) for r in rows}
    new_id = {old_id: cfg.trial_id for old_id, cfg in configs.items()}
    written: set[str] = set()
    counts = {"models": 0, "evaluations": 0, "dropped": 0}
    for row in rows:
        old_id, cfg = row["trial_id"], configs[row["trial_id"]]
        if row["status"] not in ("ok", "stopped"):
            counts["dropped"] += 1
            continue
        if cfg.fgsm_source:  # the source's checkpoint is renamed to its model id as well
            stem = cfg.source_model
            cfg = cfg.replace(fgsm_source=cfg.fgsm_source.replace(f"{stem}.pt", f"{new_id.get(stem, stem)}.pt"))
        model = cfg.trial_id
        ckpt = checkpoint_path(sweep_dir, model)
        data = read_bytes(checkpoint_path(sweep_dir, old_id))
        if data is not None:
            write_bytes(ckpt, data)
            written.add(filesystem(ckpt)[1])
        write_table(sweep_dir, "trials", model, [{**row, "trial_id": model, "checkpoint": ckpt if data else None,
                                                  "config": json.dumps(cfg.to_dict(), sort_keys=True)}])
        epochs = read_trial(sweep_dir, "epochs", old_id) or []
        write_table(sweep_dir, "epochs", model, [{**r, "trial_id": model} for r in epochs])
        written |= {f"{base}/trials/{model}.parquet", f"{base}/epochs/{model}.parquet"}
        counts["models"] += 1
        if row["status"] != "ok":
            continue
        transferred = set(source_attacks(cfg.attacks))
        robustness = read_trial(sweep_dir, "robustness", old_id) or []
        spectrum = read_trial(sweep_dir, "spectrum", old_id) or []
        for attack in cfg.attacks:
            eval_id = cfg.eval_id(attack, attack in transferred)
            key = eval_key(model, eval_id)
            for table, rows in (("spectrum", spectrum), ("robustness", robustness)):
                write_table(sweep_dir, table, key, [{**r, "trial_id": model, "eval_id": eval_id}
                                                    for r in rows if r["attack"] == attack])
                written.add(f"{base}/{table}/{key}.parquet")
            counts["evaluations"] += 1
    write_text(sweep_dir, LAYOUT_FILE, LAYOUT + "\n")  # the folder is now the new layout; then the old files go
    for path in old:
        if path not in written:
            fs.delete_file(path)
    for old_id in new_id:
        if filesystem(checkpoint_path(sweep_dir, old_id))[1] not in written:
            delete_file(checkpoint_path(sweep_dir, old_id))
    return counts
