"""Transferred PGD: iterated signed-gradient steps on the unregularized source model, projected to the L-inf eps
ball around each image and to [0, 1]; accuracy of the evaluated model on the result.

x_0 = x (or x + U(-eps, eps) with `random_start`), x_{k+1} = clip_[0,1](proj_eps(x_k + a * sign grad_x
CE(source(x_k), y))) for `steps` steps of size a = `rel_stepsize` * eps: foolbox's LinfPGD (Madry et al. 2018)
run on the source, so every step climbs the source's loss and none looks at the evaluated model. The paper preset
is foolbox's (and Madry et al.'s MNIST) setting, 40 steps of eps / 30 from a random start; the demo takes 10
steps of eps / 4 from x itself. The eps range is the task's default rule (`Dataset.eps_top`).

The adversarials depend on the source, the images, eps, the options and the random start's seed (trial seed, eps
index, repeat), not on the evaluated model: they go to the per-source cache (`source.cached_input`, float32, one
entry per eps), which every trial of the task with that seed reuses.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.accuracy import accuracy, model_device
from pixelreg_core.attacks.base import UNREGULARIZED_SOURCE, Attack, AttackContext, Measured, Point, Selected
from pixelreg_core.attacks.foolbox_support import import_foolbox
from pixelreg_core.attacks.options import Option, eps_options
from pixelreg_core.attacks.seeds import derive_seed, seeded_subset, seeded_torch
from pixelreg_core.attacks.source import Source, cached_input

NAME = "pgd_transfer"


def adversarials(source: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int,
                 rel_stepsize: float, random_start: bool, seed: int, batch_size: int = 500) -> torch.Tensor:
    """PGD adversarials of (x, y) on the source, in the eps ball around x and in [0, 1], on x's device."""
    fb = import_foolbox()
    device = model_device(source)
    fmodel = fb.PyTorchModel(source.eval(), bounds=(0.0, 1.0), device=device)
    attack = fb.attacks.LinfPGD(rel_stepsize=rel_stepsize, steps=steps, random_start=random_start)
    out = []
    with seeded_torch(seed, device):  # the random start draws from torch's global RNG (through eagerpy)
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            out.append(attack.run(fmodel, xb, fb.criteria.Misclassification(yb), epsilon=eps).detach())
    return torch.cat(out).to(x.device) if out else x.clone()


@dataclass(frozen=True)
class OnSource(Selected):
    """The images, the source, and what the cache key needs: the test set's hash, the subset's, the cache dir."""

    source: Source
    test_sha: str
    subset: str
    cache_dir: str | os.PathLike | None


def select(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
           opts: dict[str, Any]) -> OnSource:
    idx = seeded_subset(len(y_all), opts["images"], ctx.seed, NAME)
    subset = hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16]
    return OnSource(x_all[idx], y_all[idx], ctx.source, ctx.test_sha256(x_all, y_all), subset, ctx.cache_dir)


def measure(model: nn.Module, selected: OnSource, point: Point, opts: dict[str, Any]) -> Measured:
    x, y, source, subset = selected.x, selected.y, selected.source, selected.subset
    seed = derive_seed(point.seed, NAME, point.index, point.repeat)
    keys = ("steps", "rel_stepsize", "random_start")
    params = "/".join([repr(float(point.eps)), subset, str(seed), *(f"{k}={opts[k]!r}" for k in keys)])
    adv = cached_input(source, NAME, selected.test_sha, selected.cache_dir, lambda: adversarials(
        source.model, x, y, point.eps, steps=opts["steps"], rel_stepsize=opts["rel_stepsize"],
        random_start=opts["random_start"], seed=seed, batch_size=opts["batch_size"]), tuple(x.shape), params)
    return Measured(accuracy(model, adv.to(x.device), y, opts["batch_size"]), len(y))


ATTACKS = [Attack(NAME, "Transferred PGD", {
    **eps_options(),
    "images": Option(500, None, "count_or_all", "test images attacked (null: all)"),
    "steps": Option(10, 40, "count", "PGD steps on the source (foolbox and Madry et al.: 40)"),
    "rel_stepsize": Option(0.25, 0.01 / 0.3, "pos", "step size / eps (foolbox and Madry et al.: 0.01 / 0.3)"),
    "random_start": Option(False, True, "bool", "start from a uniform point in the eps ball, not from x"),
    "repeats": Option(1, 1, "count", "runs per eps (independent random starts)"),
}, select, measure, source=UNREGULARIZED_SOURCE)]
