"""One trial end to end: validate, load data, build the target, train, attack, write Parquet.

A trial is a model and its evaluations, each with its own identity (TrialConfig.trial_id, TrialConfig.eval_id):
1. the model: trained unless the folder holds it already (its `trials` row ok and its checkpoint), then its
   checkpoint, its epochs and its `trials` row, last: a `trials` row with status "ok" means the model is complete.
   A training failure leaves no partial tables; with `record_failure` (the orchestrator) it leaves one trials row
   with status "failed" and the error, so the sweep can report it and go on.
2. each evaluation the folder lacks, on the stored best weights: its spectrum rows, then its robustness rows, last
   (that file marks the evaluation complete). A failed evaluation removes its own rows only; the model stays, its
   trials row keeps status ok and says which evaluation failed in `error`; a rerun runs just the missing ones.
The trials row is rewritten after the evaluations with their seconds (eval_s, attack_s).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch

from pixelreg_core import attacks
from pixelreg_core.checkpoint import EpochCheckpoint
from pixelreg_core.config import TrialConfig
from pixelreg_core.data.bundle import prepare_data
from pixelreg_core.model import build_model, load_checkpoint, save_checkpoint
from pixelreg_core.results import (
    checkpoint_path,
    delete_file,
    eval_key,
    evaluation_files,
    join,
    key_values,
    read_trial,
    remove_trial,
    status_row,
    write_table,
)
from pixelreg_core.targets.registry import build_target
from pixelreg_core.train import resolve_device, train


def library_versions() -> str:
    """The versions a trial ran with, read from the installed packages' metadata: importing foolbox just for its
    version would load it (and GitPython) in every trial, also where no attack of the trial needs it."""
    return json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                       **{name: _installed(name) for name in ("torchvision", "foolbox", "pyarrow")}})


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _row(cfg: TrialConfig, status: str, error: str | None, device: str, started: float, cpu_started: float,
         **columns) -> dict[str, Any]:
    return status_row(cfg, status, error, device=device, versions=library_versions(),
                      wall_s=time.perf_counter() - started, cpu_s=time.process_time() - cpu_started, **columns)


def run_trial(cfg: TrialConfig, out_root: str | os.PathLike, *,
              on_epoch: Callable[[dict[str, Any]], None] | None = None,
              cache_dir: str | os.PathLike | None = None, record_failure: bool = False,
              node: str | None = None, before_source: Callable[[TrialConfig], None] | None = None) -> dict[str, Any]:
    """Train the model unless `out_root` holds it, run the evaluations it lacks; returns its trials row.

    `node` names the machine in the trials row: the orchestrator passes the Ray node id of its worker; left out,
    it is this machine's hostname (None where the platform gives none). `before_source(cfg)`, when given, is
    called before a transferred attack's source model is read: the orchestrator waits there for a source that
    is still training (its evaluations need it, its training does not)."""
    started = time.perf_counter()
    # Process CPU seconds (all threads): on a shared machine wall_s is inflated by other work, cpu_s is not, so
    # cpu_s estimates what the trial would take on a quiet core.
    cpu_started = time.process_time()
    out_root = str(out_root)
    node = node or platform.node() or None
    device: torch.device | str = cfg.device  # named in a failed row even when resolving it is what failed
    threads_before = torch.get_num_threads()
    row: dict[str, Any] | None = None  # the stored model's trials row (None: trained in this run)
    try:
        # Checks that can only fail at run time (an absent GPU, a missing source) are inside the try, so that
        # with `record_failure` they too leave a failed trials row.
        cfg.validate()
        attack_options = attacks.validate_attacks(cfg, check_source=False)  # resolved once, before any data
        device = resolve_device(cfg.device)
        # a transferred attack's source: read and checked once, before training, unless the orchestrator says
        # it may still be training (before_source): then it is read just before it is needed
        source = attacks.load_source(cfg, device) if before_source is None else None
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        data = prepare_data(cfg)
        attacks.check_image_counts(attack_options, len(data.test_x))  # before any training
        model, row = stored_model(cfg, out_root, device)
        if row is not None:  # a stored model: only its missing evaluations run; its rows stay as they are
            return _evaluate_stored(cfg, out_root, model, data, attack_options, cache_dir, row, source,
                                    before_source, record_failure)
        remove_trial(out_root, cfg.trial_id)  # evaluations of an earlier, failed model of this id go too
        model, resume, columns = _train(cfg, out_root, data, device, on_epoch)
        eval_started = time.perf_counter()
        attack_s: dict[str, float] = {}
        _run_evaluations(cfg, out_root, model, data, attack_options, cache_dir, source, before_source,
                         list(cfg.attacks), attack_s)
        row = _row(cfg, "ok", None, str(device), started, cpu_started, node=node,
                   eval_s=time.perf_counter() - eval_started,
                   attack_s=json.dumps({name: round(sec, 3) for name, sec in attack_s.items()}), **columns)
        write_table(out_root, "trials", cfg.trial_id, [row])  # last: marks the model and its evaluations complete
        resume.remove()
        return row
    except BaseException as exc:
        if row is None:  # a model of this run: never leave half of it behind
            remove_trial(out_root, cfg.trial_id)
            delete_file(checkpoint_path(out_root, cfg.trial_id))
            if record_failure and not isinstance(exc, KeyboardInterrupt):
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
                write_table(out_root, "trials", cfg.trial_id,
                            [_row(cfg, "failed", error, str(device), started, cpu_started, node=node)])
        raise
    finally:
        torch.set_num_threads(threads_before)  # a Ray worker runs many trials: leave its thread count as found


def stored_model(cfg: TrialConfig, out_root: str, device) -> tuple[Any, dict[str, Any] | None]:
    """(model on `device` in eval mode, its trials row) when `out_root` holds this model finished, else
    (None, None)."""
    rows = read_trial(out_root, "trials", cfg.trial_id)
    if not rows or rows[0]["status"] != "ok":
        return None, None
    try:
        model, _ = load_checkpoint(checkpoint_path(out_root, cfg.trial_id), map_location=device)
    except FileNotFoundError:
        return None, None  # its row without its weights: trained again
    return model.to(device).eval(), rows[0]


def _train(cfg: TrialConfig, out_root: str, data, device, on_epoch) -> tuple[Any, EpochCheckpoint, dict[str, Any]]:
    """Train the model and write its checkpoint and epochs; returns (model, its resume file, trials columns)."""
    # The target is built from images on the trial's device, so its pairs are drawn there (train.py).
    target = build_target(cfg, data.reg_x.to(device), data.reg_y.to(device)) if cfg.regularized else None
    model = build_model(cfg, data.train_x.shape[1], data.num_classes, data.input_scale,
                        data.input_shift).to(device)
    resume = EpochCheckpoint.for_trial(out_root, cfg)  # kept when the trial fails: a rerun resumes from it
    train_started = time.perf_counter()
    result = train(cfg, data, model, target, device, on_epoch, checkpoint=resume)
    train_s = time.perf_counter() - train_started  # this run's epochs only, when resumed
    model.load_state_dict(result.best_state)
    model.eval()
    keys = key_values(cfg)
    ckpt = checkpoint_path(out_root, cfg.trial_id)
    save_checkpoint(model, cfg, ckpt)
    write_table(out_root, "epochs", cfg.trial_id, [{**keys, **row} for row in result.epochs])
    best = result.best
    return model, resume, dict(clean_acc=best["test_acc"], valid_acc=best["valid_acc"],
                               valid_loss=best["valid_loss"], best_epoch=result.best_epoch,
                               valid_images=len(data.valid_y), layer_weights=model.layer_weights().tolist(),
                               checkpoint=ckpt, resumed_from_epoch=result.resumed_from_epoch, train_s=train_s)


def missing_evaluations(cfg: TrialConfig, out_root: str | os.PathLike) -> list[str]:
    """The attacks of cfg whose evaluation of this model `out_root` lacks."""
    done = set(evaluation_files(out_root, "robustness", cfg.trial_id))
    transferred = set(attacks.source_attacks(cfg.attacks))
    return [name for name in cfg.attacks if cfg.eval_id(name, name in transferred) not in done]


def _run_evaluations(cfg: TrialConfig, out_root: str, model, data, attack_options: dict[str, dict[str, Any]],
                     cache_dir, source, before_source, todo: list[str], attack_s: dict[str, float]) -> None:
    """Run `todo`'s attacks on the model, each written as it finishes (its spectrum, then its robustness rows);
    a failure removes the rows of the evaluation it stopped, and only those."""
    transferred = set(attacks.source_attacks(cfg.attacks))
    keys = key_values(cfg)
    name = None
    try:
        for name in todo:
            if name in transferred and source is None:
                if before_source is not None:
                    before_source(cfg)
                source = attacks.load_source(cfg, next(model.parameters()).device)
            eval_id = cfg.eval_id(name, name in transferred)
            robustness, spectrum = attacks.evaluate(model, data, cfg, cache_dir or join(out_root, "fgsm_cache"),
                                                 {name: attack_options[name]}, source, seconds=attack_s)
            extra = {**keys, "eval_id": eval_id}
            key = eval_key(cfg.trial_id, eval_id)
            write_table(out_root, "spectrum", key, [{**extra, **r} for r in spectrum])
            write_table(out_root, "robustness", key, [{**extra, **r} for r in robustness])  # last: complete
    except BaseException:
        if name is not None:
            key = eval_key(cfg.trial_id, cfg.eval_id(name, name in transferred))
            for table in ("robustness", "spectrum"):
                delete_file(join(out_root, table, f"{key}.parquet"))
        raise


def _evaluate_stored(cfg: TrialConfig, out_root: str, model, data, attack_options, cache_dir, row: dict[str, Any],
                     source, before_source, record_failure: bool) -> dict[str, Any]:
    """The evaluations a stored model lacks. Its trials row stays as it is, but for `error`: set when an
    evaluation failed (status stays ok: the model is fine; a relaunch runs the missing evaluation), cleared when
    they all ran."""
    try:
        _run_evaluations(cfg, out_root, model, data, attack_options, cache_dir, source, before_source,
                         missing_evaluations(cfg, out_root), {})
    except BaseException as exc:
        if record_failure and not isinstance(exc, KeyboardInterrupt):
            error = f"evaluation: {type(exc).__name__}: {exc}".splitlines()[0][:2000]
            write_table(out_root, "trials", cfg.trial_id, [{**row, "error": error}])
        raise
    if row.get("error"):
        row = {**row, "error": None}
        write_table(out_root, "trials", cfg.trial_id, [row])
    return row
