"""One trial end to end: validate, load data, build the target, train, attack, write Parquet.

A trial is a model and its evaluations, each with its own identity (TrialConfig.trial_id, TrialConfig.eval_id).
A model trained now: its checkpoint and epochs, then each evaluation (its spectrum rows, then its robustness rows,
which mark it complete), then the trials row, last: a `trials` row with status "ok" means the model and its
evaluations are complete, and that row is what resume looks for. A failure leaves no partial tables; with
`record_failure` (the orchestrator) it leaves one trials row with status "failed" and the error, so the sweep can
report it and go on.
A model the folder holds already (an ok trials row and its checkpoint) is not trained again: only the evaluations
it lacks run, on its stored best weights (an edited spec with a new attack). Its rows stay as they are; a failed
evaluation removes its own rows only and is named in the model's `error` (status stays ok: the model is fine), and
a rerun runs just the missing ones.

Read from `run_trial` down: the functions follow in the order it calls them. Everything a trial's functions share
(its config, where it writes, its clock) is one `TrialRun`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from typing import Any

import torch

from pixelreg_core import attacks
from pixelreg_core.checkpoint import EpochCheckpoint
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data.bundle import DataBundle, prepare_data
from pixelreg_core.errors import error_line
from pixelreg_core.kernels import kernel_settings
from pixelreg_core.model import build_model, load_checkpoint, save_checkpoint
from pixelreg_core.results import (
    checkpoint_path,
    delete_file,
    eval_key,
    evaluation_files,
    join,
    key_values,
    read_bytes,
    read_trial,
    remove_trial,
    status_row,
    write_table,
)
from pixelreg_core.targets.registry import build_target
from pixelreg_core.train import TrainResult, resolve_device, train


@dataclass
class Clock:
    """When a trial (or a seed pack) started: wall time, and process CPU seconds (all threads). On a shared
    machine wall_s is inflated by other work, cpu_s is not, so cpu_s estimates what the trial would take on a
    quiet core."""

    wall: float
    cpu: float

    @classmethod
    def now(cls) -> Clock:
        return cls(time.perf_counter(), time.process_time())


@dataclass
class TrialRun:
    """One run of one trial: its config, where its rows go and what its trials row says besides the config.

    `defer_source` (the orchestrator's launch, where a transferred attack's source model may still be training):
    a source that is not there yet leaves that evaluation for later instead of failing the trial."""

    cfg: TrialConfig
    out_root: str
    cache_dir: str  # what transferred attacks craft on their source, shared between trials
    record_failure: bool = False
    node: str | None = None
    clock: Clock = field(default_factory=Clock.now)
    defer_source: bool = False

    @classmethod
    def of(cls, cfg: TrialConfig, out_root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
           **rest: Any) -> TrialRun:
        """cache_dir defaults to out_root/fgsm_cache; `node` to this machine's hostname (None where the platform
        gives none)."""
        out_root = str(out_root)
        rest["node"] = rest.get("node") or platform.node() or None
        return cls(cfg, out_root, str(cache_dir) if cache_dir else join(out_root, "fgsm_cache"), **rest)

    @cached_property
    def transferred(self) -> set[str]:
        """The config's transferred attacks (their evaluation ids name the source model)."""
        return set(attacks.source_attacks(self.cfg.attacks))

    def eval_id(self, name: str) -> str:
        return self.cfg.eval_id(name, name in self.transferred)


@dataclass
class Prepared:
    """What a trial trains from: device, data, target (None unregularized), initial model, attack options and a
    transferred attack's source model (None: none, or deferred)."""

    device: torch.device
    data: DataBundle
    target: Any | None
    model: Any
    attack_options: dict[str, dict[str, Any]]
    source: Any


class EvaluationFailed(RuntimeError):
    """An evaluation of a stored model failed: its rows are removed, the model's stay (evaluate_stored)."""


def run_trial(cfg: TrialConfig, out_root: str | os.PathLike, *,
              on_epoch: Callable[[dict[str, Any]], None] | None = None,
              cache_dir: str | os.PathLike | None = None, record_failure: bool = False,
              node: str | None = None, defer_source: bool = False) -> dict[str, Any]:
    """Run one trial and write its rows under `out_root`; returns its trials row.

    `node` names the machine in the trials row: the orchestrator passes the Ray node id of its worker; left out,
    it is this machine's hostname. `defer_source`: see TrialRun."""
    run = TrialRun.of(cfg, out_root, cache_dir, record_failure=record_failure, node=node, defer_source=defer_source)
    device: torch.device | str = cfg.device  # named in a failed row even when resolving it is what failed
    threads_before = torch.get_num_threads()
    try:
        # Checks that can only fail at run time (a missing FGSM source, an absent GPU) are inside the try, so
        # that with `record_failure` they too leave a failed trials row.
        stored = stored_row(run)
        if stored is not None:  # a stored model: only its missing evaluations run; its rows stay as they are
            return evaluate_stored(run, stored)
        device, attack_options = check_trial(cfg)
        with kernel_settings(cfg, device):  # tf32 etc. for all of it: epoch 0, the epochs, every attack
            prepared = prepare_trial(cfg, device, attack_options, load_source=not defer_source)
            resume = EpochCheckpoint.for_trial(run.out_root, cfg)  # kept when the trial fails: a rerun resumes
            train_started = time.perf_counter()
            result = train(cfg, prepared.data, prepared.model, prepared.target, device, on_epoch, checkpoint=resume)
            return finish_trial(run, prepared, result, train_s=time.perf_counter() - train_started)
    except BaseException as exc:
        if not isinstance(exc, EvaluationFailed):  # a stored model's failed evaluation leaves the model as it is
            fail_trial(run, exc, device)
        raise
    finally:
        torch.set_num_threads(threads_before)  # a Ray worker runs many trials: leave its thread count as found


def stored_row(run: TrialRun) -> dict[str, Any] | None:
    """The model's trials row when the folder holds it finished (status ok and a checkpoint that loads), else
    None. A checkpoint that does not load is quarantined with the trials row (results.quarantine): the model
    trains again."""
    from pixelreg_core.model import checkpoint_from_bytes
    from pixelreg_core.results import quarantine

    trial_id = run.cfg.trial_id
    rows = read_trial(run.out_root, "trials", trial_id)
    data = read_bytes(checkpoint_path(run.out_root, trial_id)) if rows and rows[0]["status"] == "ok" else None
    if data is None:
        return None
    try:
        checkpoint_from_bytes(data)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises (pickle, zip, missing keys)
        quarantine(run.out_root, f"checkpoints/{trial_id}.pt", exc, f"the weights of model {trial_id}",
                   "this run trains it again", also=[f"trials/{trial_id}.parquet"])
        return None
    return rows[0]


def check_trial(cfg: TrialConfig) -> tuple[torch.device, dict[str, dict[str, Any]]]:
    """The checks that touch no data: the config, its attacks' options (resolved once, before any data) and its
    device."""
    cfg.validate()
    attack_options = attacks.validate_attacks(cfg, check_source=False)
    return resolve_device(cfg.device), attack_options


def prepare_trial(cfg: TrialConfig, device: torch.device, attack_options: dict[str, dict[str, Any]],
                  load_source: bool = True) -> Prepared:
    """Load and build everything a trial trains from, seeded as every run of it is seeded (a seed pack prepares
    each of its trials with this too, so each model starts from the weights a separate run starts from).
    Sets torch's thread count (`num_threads`); the caller restores it."""
    # a transferred attack's source: read and checked once, now, before any training; not loaded (a deferring
    # launch: the source may still be training) it is loaded just before its evaluations (run_evaluations)
    source = attacks.load_source(cfg, device) if load_source else None
    data = load_data(cfg, attack_options)
    # The target is built from images on the trial's device, so its pairs are drawn there (train.py).
    target = build_target(cfg, data.reg_x.to(device), data.reg_y.to(device)) if cfg.regularized else None
    model = build_model(cfg, data.train_x.shape[1], data.num_classes, data.input_scale,
                        data.input_shift).to(device)
    return Prepared(device, data, target, model, attack_options, source)


def load_data(cfg: TrialConfig, attack_options: dict[str, dict[str, Any]]) -> DataBundle:
    """The trial's data, after setting torch's threads and seed as every run of the trial does; the attacks'
    image counts are checked against its test set before anything trains or attacks."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    attacks.check_image_counts(attack_options, len(data.test_x))
    return data


def finish_trial(run: TrialRun, prepared: Prepared, result: TrainResult, train_s: float) -> dict[str, Any]:
    """Attack the best epoch's model and write the trial's rows, the trials row last; returns that row.
    `train_s`: this run's epochs only, when resumed (a seed pack's: the pack's)."""
    cfg, out_root = run.cfg, run.out_root
    model = prepared.model
    model.load_state_dict(result.best_state)
    model.eval()
    remove_trial(out_root, cfg.trial_id)  # rows of an earlier, unfinished model of this id (its evaluations too)
    ckpt = checkpoint_path(out_root, cfg.trial_id)
    save_checkpoint(model, cfg, ckpt)
    keys = key_values(cfg)
    write_table(out_root, "epochs", cfg.trial_id, [{**keys, **row} for row in result.epochs])
    eval_started = time.perf_counter()
    attack_s: dict[str, float] = {}
    run_evaluations(run, model, prepared.data, prepared.attack_options, prepared.source, list(cfg.attacks), attack_s)
    eval_s = time.perf_counter() - eval_started
    best = result.best
    row = trials_row(run, "ok", None, prepared.device, clean_acc=best["test_acc"], valid_acc=best["valid_acc"],
                     valid_loss=best["valid_loss"], best_epoch=result.best_epoch,
                     valid_images=len(prepared.data.valid_y), layer_weights=model.layer_weights().tolist(),
                     checkpoint=ckpt, resumed_from_epoch=result.resumed_from_epoch, train_s=train_s, eval_s=eval_s,
                     attack_s=json.dumps({name: round(sec, 3) for name, sec in attack_s.items()}))
    write_table(out_root, "trials", cfg.trial_id, [row])  # last: marks the trial complete
    EpochCheckpoint.for_trial(out_root, cfg).remove()
    return row


def run_evaluations(run: TrialRun, model, data: DataBundle, attack_options: dict[str, dict[str, Any]], source,
                    todo: list[str], attack_s: dict[str, float]) -> None:
    """Run `todo`'s attacks on the model, each written as it finishes (its spectrum, then its robustness rows:
    last, they mark it complete); a failure removes the rows of the evaluation it stopped, and only those."""
    cfg, out_root = run.cfg, run.out_root
    transferred = run.transferred
    keys = key_values(cfg)
    name = None
    try:
        for name in todo:
            if run.defer_source and name in transferred and source is None:
                try:
                    source = attacks.load_source(cfg, next(model.parameters()).device)
                except ConfigError:  # not trained yet (or failed): the launch runs this evaluation later
                    continue
            eval_id = run.eval_id(name)
            robustness, spectrum = attacks.evaluate(model, data, cfg, run.cache_dir, {name: attack_options[name]},
                                                    source, seconds=attack_s)
            extra = {**keys, "eval_id": eval_id}
            key = eval_key(cfg.trial_id, eval_id)
            write_table(out_root, "spectrum", key, [{**extra, **r} for r in spectrum])
            write_table(out_root, "robustness", key, [{**extra, **r} for r in robustness])
    except BaseException:
        if name is not None:
            key = eval_key(cfg.trial_id, run.eval_id(name))
            for table in ("robustness", "spectrum"):
                delete_file(join(out_root, table, f"{key}.parquet"))
        raise


def fail_trial(run: TrialRun, exc: BaseException, device: torch.device | str) -> None:
    """Remove whatever the trial wrote (never a half-written trial); with `record_failure`, a failed trials row.
    Its resume checkpoint stays: a rerun resumes from it."""
    cfg = run.cfg
    remove_trial(run.out_root, cfg.trial_id)
    delete_file(checkpoint_path(run.out_root, cfg.trial_id))
    if run.record_failure and not isinstance(exc, KeyboardInterrupt):
        write_table(run.out_root, "trials", cfg.trial_id, [trials_row(run, "failed", error_line(exc), device)])


def evaluate_stored(run: TrialRun, row: dict[str, Any]) -> dict[str, Any]:
    """The evaluations a stored model lacks, on its stored best weights. Its trials row stays as it is, but for
    `error`: set when an evaluation failed (EvaluationFailed, whatever went wrong: the model's rows are never
    removed here), cleared once they all ran."""
    cfg = run.cfg
    todo = missing_evaluations(run)
    try:
        if todo:
            device, attack_options = check_trial(cfg)
            model, _ = load_checkpoint(checkpoint_path(run.out_root, cfg.trial_id), map_location=device)
            model = model.to(device).eval()
            needs_source = run.transferred & set(todo) and not run.defer_source
            source = attacks.load_source(cfg, device) if needs_source else None
            data = load_data(cfg, {name: attack_options[name] for name in todo})
            with kernel_settings(cfg, device):  # as the trial ran its evaluations (tf32)
                run_evaluations(run, model, data, attack_options, source, todo, {})
    except BaseException as exc:
        if run.record_failure and not isinstance(exc, KeyboardInterrupt):
            write_table(run.out_root, "trials", cfg.trial_id, [{**row, "error": f"evaluation: {error_line(exc)}"}])
        if isinstance(exc, Exception):
            raise EvaluationFailed(error_line(exc)) from exc
        raise
    if row.get("error") and not missing_evaluations(run):  # every evaluation is there now
        row = {**row, "error": None}
        write_table(run.out_root, "trials", cfg.trial_id, [row])
    return row


def missing_evaluations(run: TrialRun) -> list[str]:
    """The attacks of the config whose evaluation of this model the folder lacks."""
    done = set(evaluation_files(run.out_root, "robustness", run.cfg.trial_id))
    return [name for name in run.cfg.attacks if run.eval_id(name) not in done]


def trials_row(run: TrialRun, status: str, error: str | None, device: torch.device | str, **columns: Any
               ) -> dict[str, Any]:
    """The trial's trials row: its keys, status and error, where and with what it ran, and its times so far."""
    return status_row(run.cfg, status, error, device=str(device), versions=library_versions(), node=run.node,
                      wall_s=time.perf_counter() - run.clock.wall, cpu_s=time.process_time() - run.clock.cpu,
                      **columns)


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
