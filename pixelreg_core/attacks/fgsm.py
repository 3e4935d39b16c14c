"""Transferred FGSM: perturbations from an unregularized source model, accuracy of the evaluated model.

x_adv = clamp(x + eps * (pixel range) * sign(grad_x CE(source(x), y)), 0, 1). Images are in [0, 1], so the pixel
range is 1 and eps is in pixel units, whatever input scaling the models apply inside.

Why a cache: the signs depend only on the source model and the test set, not on eps or on the evaluated model.
The reference code recomputed one gradient per image for every eps and every trial; here the signs are computed
once per (sha256 of the source checkpoint file, sha256 of the test set), batched, stored as int8 under
`cache_dir/fgsm_signs/`, and every trial of the task and every eps reuse them. Paths may be pyarrow URIs
(s3://...?endpoint_override=...) as well as local paths: a sweep with `--results s3://...` keeps its source
checkpoints and this cache there.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixelreg_core.attacks.common import AttackContext, accuracy, model_device, row, seeded_subset
from pixelreg_core.attacks.options import Attack, eps_options
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.model import load_checkpoint
from pixelreg_core.results import join, read_bytes, write_bytes


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (local path or URI)."""
    data = read_bytes(path)
    if data is None:
        raise FileNotFoundError(str(path))
    return hashlib.sha256(data).hexdigest()


def test_set_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(str(tuple(x.shape)).encode())
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_source(path: str, cfg: TrialConfig, map_location: torch.device | str = "cpu") -> nn.Module:
    """The source model, refusing the evaluated model itself (that would be a white-box attack)."""
    try:
        source, source_cfg = load_checkpoint(path, map_location=map_location)
    except FileNotFoundError:
        raise ConfigError("fgsm_source", f"{path} does not exist; point it at the checkpoint (.pt) of an "
                                         "unregularized model of the same task") from None
    except Exception as exc:  # a file that is not a checkpoint is the user's to fix
        raise ConfigError("fgsm_source", f"{path} is not a pixelreg checkpoint ({type(exc).__name__}); "
                                         "use a checkpoints/<trial_id>.pt file") from exc
    # The attack set is part of a trial's id but not of its model: compare the ids with equal attack sets.
    if source_cfg.replace(attacks=cfg.attacks).trial_id == cfg.trial_id:
        raise ConfigError("fgsm_source", "is the evaluated model's own checkpoint; transferred FGSM needs a "
                                         "different (unregularized) source model of the same task")
    if source_cfg.regularized:
        raise ConfigError("fgsm_source", f"was trained with alpha {source_cfg.alpha}; transferred FGSM needs an "
                                         "unregularized (alpha 0) source model of the same task")
    if source_cfg.task != cfg.task:
        raise ConfigError("fgsm_source", f"was trained on {source_cfg.task!r}, not on the task {cfg.task!r}; use a "
                                         "source model of the same task")
    return source


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """True when two models hold identical tensors: the same model, whatever its config says."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].detach().cpu(), sb[k].detach().cpu()) for k in sa)


def gradient_signs(source: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """sign(grad_x CE(source(x), y)) for every image, as int8 on the source's device, one backward pass per
    batch."""
    source.eval()
    device = model_device(source)
    signs = []
    for i in range(0, len(y), batch_size):
        xb = x[i:i + batch_size].to(device).requires_grad_(True)
        loss = F.cross_entropy(source(xb), y[i:i + batch_size].to(device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        signs.append(grad.sign().to(torch.int8))
    return torch.cat(signs)


def cached_signs(source_path: str, cfg: TrialConfig, x: torch.Tensor, y: torch.Tensor,
                 cache_dir: str | os.PathLike | None, device: torch.device, batch_size: int = 500, *,
                 evaluated: nn.Module | None = None) -> torch.Tensor:
    """The signs of the whole test set from the disk cache, computed and stored (atomically) on a miss.

    With `evaluated`, a source whose weights equal the evaluated model's is refused too: the trial-id check of
    `load_source` misses the same training run saved under another config (e.g. another sweep name).
    """
    source = load_source(source_path, cfg, map_location=device)  # also refuses self-attack on a cache hit
    if evaluated is not None and same_weights(source, evaluated):
        raise ConfigError("fgsm_source", f"{source_path} holds the evaluated model's own weights; transferred "
                                         "FGSM needs a different (unregularized) source model of the same task")
    if cache_dir is None:
        return gradient_signs(source, x, y, batch_size)
    key = f"{file_sha256(source_path)[:20]}-{test_set_sha256(x, y)[:20]}"
    path = join(cache_dir, "fgsm_signs", f"{key}.npy")
    data = read_bytes(path)
    if data is not None:
        cached = torch.from_numpy(np.load(io.BytesIO(data)))
        if cached.shape == x.shape:
            return cached.to(device)  # once per trial, then every eps reads them on the device
    signs = gradient_signs(source, x, y, batch_size)
    buffer = io.BytesIO()
    np.save(buffer, signs.cpu().numpy())
    write_bytes(path, buffer.getvalue())  # atomic: concurrent trials may race; either complete file wins
    return signs


def transfer_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, signs: torch.Tensor, eps: float,
                      batch_size: int = 500) -> float:
    """Accuracy of `model` on clamp(x + eps * sign, 0, 1)."""
    device = model_device(model)

    def perturb(xb: torch.Tensor, start: int) -> torch.Tensor:
        xb = xb.to(device)
        return (xb + eps * signs[start:start + batch_size].to(device, xb.dtype)).clamp(0.0, 1.0)

    return accuracy(model, x, y, batch_size, perturb)


def check(opts: dict[str, Any], cfg: TrialConfig, check_source: bool) -> None:
    """A source is required; with `check_source` it is loaded to see that it exists and is not the evaluated
    trial itself (skipped for a sweep planned before its source model is trained)."""
    if cfg.fgsm_source is None:
        raise ConfigError("fgsm_source", "attack fgsm_transfer needs the checkpoint of an unregularized "
                                         "source model of the same task; set fgsm_source or drop the attack")
    if check_source:
        load_source(cfg.fgsm_source, cfg)


def run(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext) -> list[dict[str, Any]]:
    """One accuracy row per eps; signs cover the whole test set so every trial shares one cache entry."""
    cfg, opts = ctx.cfg, ctx.opts
    check(opts, cfg, check_source=False)  # the source itself is loaded and checked by cached_signs
    signs = ctx.shared_input("fgsm_signs", lambda: cached_signs(
        cfg.fgsm_source, cfg, x_all, y_all, ctx.cache_dir, model_device(model), opts["batch_size"], evaluated=model))
    subset = seeded_subset(len(y_all), opts["images"], ctx.seed, "fgsm_transfer")
    x, y, s = x_all[subset], y_all[subset], signs[subset]
    # At eps 0 the images are the clean ones (x + 0 * sign, clamped to [0, 1], is x for images in [0, 1]): the
    # accuracy is shared with the noise curves.
    clean = bool(((x >= 0) & (x <= 1)).all())
    return [row("fgsm_transfer", ctx.clean_accuracy(model, subset, x, y, opts["batch_size"]) if eps == 0 and clean
                else transfer_accuracy(model, x, y, s, eps, opts["batch_size"]), len(y), eps=eps)
            for eps in ctx.eps_values("fgsm_transfer")]


ATTACK = Attack("fgsm_transfer", "Transferred FGSM", eps_options(), run, check=check)
