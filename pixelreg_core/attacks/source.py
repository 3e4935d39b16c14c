"""The source model of a transferred attack (`Attack.source`): its checks, its one read per trial, and the
per-source cache of the inputs crafted on it.

A transferred attack crafts its examples on another model than the evaluated one: an unregularized model of the
same task (base.UNREGULARIZED_SOURCE), named by the trial field `fgsm_source` (a checkpoint path or pyarrow
URI; the sweep's expansion sets it). The field keeps the name of the first such attack; every transferred attack
reads it.

Why one read: the checkpoint file is read once per trial (`load`), and its bytes give both the model and the
sha256 that keys the cache; the trainer loads it before training (a bad source fails the trial early) and hands
it to `evaluate`.

Why a cache: what an attack crafts on the source (FGSM's gradient signs, PGD's adversarials) depends only on the
source, the test set and the attack's own parameters, not on the evaluated model. `cached_input` computes it once
per (sha256 of the source file, sha256 of the test set, parameters), stores it as .npy under
`cache_dir/<kind>/`, and every trial of the task reuses it. Paths may be pyarrow URIs (s3://...) as well as local
paths.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.model import checkpoint_from_bytes
from pixelreg_core.results import join, quarantine, read_bytes, write_bytes

FIELD = "fgsm_source"


@dataclass(frozen=True)
class Source:
    """A source model read once: its checkpoint path, the file's sha256 (the cache key) and the model."""

    path: str
    sha256: str
    model: nn.Module


def require(cfg: TrialConfig, names: Iterable[str]) -> None:
    """A trial with transferred attacks (`names`) must name their source."""
    if cfg.fgsm_source is None:
        listed = ", ".join(names)
        raise ConfigError(FIELD, f"attack {listed} needs the checkpoint of an unregularized source model of the "
                                 f"same task; set {FIELD} or drop the attack")


def load(cfg: TrialConfig, map_location: torch.device | str = "cpu") -> Source:
    """Read cfg.fgsm_source once and check it: a pixelreg checkpoint of an unregularized model of the same task,
    not the evaluated trial itself (that would be a white-box attack)."""
    path = str(cfg.fgsm_source)
    data = read_bytes(path)
    if data is None:
        raise ConfigError(FIELD, f"{path} does not exist; point it at the checkpoint (.pt) of an unregularized "
                                 "model of the same task")
    try:
        model, source_cfg = checkpoint_from_bytes(data, map_location)
    except Exception as exc:  # a file that is not a checkpoint is the user's to fix
        raise ConfigError(FIELD, f"{path} is not a pixelreg checkpoint ({type(exc).__name__}); use a "
                                 "checkpoints/<trial_id>.pt file") from exc
    # The attack set is part of a trial's id but not of its model: compare the ids with equal attack sets.
    if source_cfg.replace(attacks=cfg.attacks).trial_id == cfg.trial_id:
        raise ConfigError(FIELD, "is the evaluated model's own checkpoint; a transferred attack needs a different "
                                 "(unregularized) source model of the same task")
    if source_cfg.regularized:
        raise ConfigError(FIELD, f"was trained with alpha {source_cfg.alpha}; a transferred attack needs an "
                                 "unregularized (alpha 0) source model of the same task")
    if source_cfg.task != cfg.task:
        raise ConfigError(FIELD, f"was trained on {source_cfg.task!r}, not on the task {cfg.task!r}; use a "
                                 "source model of the same task")
    return Source(path, hashlib.sha256(data).hexdigest(), model)


def refuse_own_weights(source: Source, evaluated: nn.Module) -> None:
    """The trial-id check of `load` misses the same training run saved under another config (e.g. another sweep
    name): a source whose weights equal the evaluated model's is refused too."""
    if same_weights(source.model, evaluated):
        raise ConfigError(FIELD, f"{source.path} holds the evaluated model's own weights; a transferred attack "
                                 "needs a different (unregularized) source model of the same task")


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """True when two models hold identical tensors: the same model, whatever its config says."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].detach().cpu(), sb[k].detach().cpu()) for k in sa)


def test_set_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(str(tuple(x.shape)).encode())
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_input(source: Source, kind: str, test_sha: str, cache_dir: str | os.PathLike | None,
                 compute: Callable[[], torch.Tensor], shape: tuple[int, ...], params: str = "") -> torch.Tensor:
    """What `compute()` crafts on the source, from `cache_dir/<kind>/` when there, computed and stored
    (atomically) on a miss. `params` names the attack's parameters the input depends on (empty: none); an entry
    of another `shape` is recomputed. None as cache_dir: computed, not stored."""
    if cache_dir is None:
        return compute()
    key = f"{source.sha256[:20]}-{test_sha[:20]}" + (f"-{hashlib.sha256(params.encode()).hexdigest()[:12]}"
                                                     if params else "")
    path = join(cache_dir, kind, f"{key}.npy")
    data = read_bytes(path)
    if data is not None:
        try:
            cached = torch.from_numpy(np.load(io.BytesIO(data)))
        except (ValueError, EOFError, OSError) as exc:  # a damaged file: set aside with one line, crafted again
            parent, _, folder = str(cache_dir).rstrip("/").rpartition("/")
            quarantine(parent or ".", f"{folder}/{kind}/{key}.npy", exc, f"the {kind} crafted on source "
                       f"{source.sha256[:12]}", "computed again now")
            cached = None
        if cached is not None and tuple(cached.shape) == tuple(shape):
            return cached
    value = compute()
    buffer = io.BytesIO()
    np.save(buffer, value.cpu().numpy())
    write_bytes(path, buffer.getvalue())  # atomic: concurrent trials may race; either complete file wins
    return value
