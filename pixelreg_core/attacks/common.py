"""What every attack shares: the `AttackContext` its `run` gets, the one batched accuracy loop, the foolbox
starting-point search, batched prediction, the fixed image subsets, per-image clamping, row building.

All attacks work on [0, 1] pixel tensors [n, C, H, W] on the model's device (`evaluate` puts the test set there
once): on a GPU the images, the noise and the FGSM signs stay on it, and counts are read back once per accuracy,
not once per batch. Random numbers are drawn on that device, so a CPU run gives exactly the CPU numbers and a
GPU run draws its own (equally distributed) noise.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.source import Source, test_set_sha256
from pixelreg_core.config import TrialConfig
from pixelreg_core.model import eval_logits

INIT_STEPS = 50  # blending steps of the starting-point search (foolbox's own fallback uses 50)


def import_foolbox() -> Any:
    """foolbox, for the attacks that use it (boundary, the minimal attacks, the starting-point search), imported
    when one of them runs: a trial with noise attacks only never loads it, nor a machine without it.

    foolbox imports GitPython (its model zoo), which fails at import where no `git` executable exists unless
    GIT_PYTHON_REFRESH=quiet; `requests` (the zoo's downloads), which a machine may lack (the GPU image does):
    nothing here uses the zoo, so an absent `requests` is a stand-in module that fails only if called; and
    `scipy.ndimage.filters` (gone in SciPy 2.0), which is given scipy.ndimage's own namespace where it no longer
    exists. foolbox's deprecation warnings at import are silenced."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import scipy.ndimage.filters  # noqa: F401 - present before SciPy 2.0
        except ImportError:
            import scipy.ndimage

            sys.modules["scipy.ndimage.filters"] = scipy.ndimage
        try:
            import requests  # noqa: F401 - foolbox's model zoo only
        except ImportError:
            sys.modules["requests"] = _AbsentModule("requests", "foolbox's model zoo (unused by pixelreg)")
        import foolbox
    return foolbox


class _AbsentModule(types.ModuleType):
    """A module that is not installed, standing in so that importing a package that names it succeeds; any use
    of it raises ImportError naming the module."""

    def __init__(self, name: str, used_by: str):
        super().__init__(name)
        self.__used_by = used_by

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__} is not installed (needed by {self.__used_by} only)")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def derive_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed per (trial seed, attack, eps index, repeat, ...): streams never overlap or shift when
    another attack is added, and Python's randomised str hash is avoided."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


@contextlib.contextmanager
def seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (foolbox draws from it through eagerpy) and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (CPU int64) for images on any device, in batches."""
    device = model_device(model)
    out = [eval_logits(model, x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             perturb: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> float:
    """Accuracy on (x, y), batch by batch in order; `perturb(batch, start)` turns each batch into the images the
    model sees (noise, FGSM). The one batched accuracy loop every accuracy attack uses. NaN for no images."""
    if len(y) == 0:
        return math.nan
    device = model_device(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device, read once
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size]
        if perturb is not None:
            xb = perturb(xb, start)
        correct += (eval_logits(model, xb.to(device)).argmax(1) == y[start:start + batch_size].to(device)).sum()
    return int(correct) / len(y)  # exact ratio, like every attack row


INIT_DIRECTIONS = 1000  # random draws of the starting-point search (foolbox's default)


@torch.no_grad()
def blended_uniform_starts(fmodel: Any, x: torch.Tensor, y: torch.Tensor, steps: int = INIT_STEPS,
                           directions: int = INIT_DIRECTIONS) -> torch.Tensor:
    """foolbox's LinearSearchBlendedUniformNoiseAttack(directions, steps).run(fmodel, x, Misclassification(y)),
    the same points, without classifying images already decided.

    foolbox draws up to `directions` uniform-noise images for the whole batch until every image has an adversarial
    one, and classifies all of them at every draw; on a trained model the images of the class that noise is read
    as never get one, so the quickstart classified 100 images 1,000 times for a few of them (boundary was a quarter
    of a trial, 29 s of 124). Here every draw is still made for the whole batch (the same random numbers in the
    same order) and the blends are formed the same way, but only the undecided images are classified: an image's
    logits do not depend on the other images of its batch in eval mode, so the points are foolbox's
    (tests/test_attacks.py compares them). Draws from torch's global RNG: call inside `seeded_torch`.
    """
    import eagerpy as ep
    import numpy as np
    from foolbox.devutils import atleast_kd

    x0 = ep.astensor(x)
    min_, max_ = fmodel.bounds
    n = len(x)

    def adversarial(images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        idx = which.nonzero().squeeze(1)
        out = torch.zeros(n, dtype=torch.bool, device=x.device)
        if len(idx):
            out[idx] = fmodel(images[idx]).argmax(-1) != y[idx]
        return out

    is_adv = torch.zeros(n, dtype=torch.bool, device=x.device)
    random = None
    for j in range(directions):
        random_ = ep.uniform(x0, x0.shape, min_, max_).raw
        undecided = ~is_adv
        found = adversarial(random_, undecided)
        random = random_ if j == 0 else torch.where(undecided.view(-1, *[1] * (x.dim() - 1)), random_, random)
        is_adv |= found
        if bool(is_adv.all()):
            break
    random_ep = ep.astensor(random)
    best = ep.ones(x0, (n,))
    for epsilon in np.linspace(0, 1, num=steps + 1, dtype=np.float32):
        blend = ((1 - epsilon) * x0 + epsilon * random_ep).raw
        hit = adversarial(blend, best.raw >= 1)
        best = ep.minimum(ep.where(ep.astensor(hit), epsilon.item(), 1.0), best)
        if bool((best < 1).all().raw):
            break
    best = atleast_kd(best, x0.ndim)
    return ((1 - best) * x0 + best * random_ep).raw


def attack_from_starts(fmodel: Any, model: nn.Module, attack: Any, x: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a foolbox attack that needs adversarial starting points: (adversarials, which are adversarial).

    Starting points come from LinearSearchBlendedUniformNoiseAttack's search (`blended_uniform_starts`), run here
    rather than inside the attack: foolbox raises for the whole batch if any image gets no starting point, while
    here such images keep x and count as failed, and the rest are attacked. Draws from torch's global RNG: call
    inside `seeded_torch`.
    """
    fb = import_foolbox()

    starts = blended_uniform_starts(fmodel, x, y)
    ok = predict(model, starts).to(x.device) != y
    adv = x.clone()
    if bool(ok.any()):
        adv[ok] = attack.run(fmodel, x[ok], fb.criteria.Misclassification(y[ok]), starting_points=starts[ok])
    return adv, ok & (predict(model, adv).to(x.device) != y)


def seeded_subset(n_total: int, n: int | None, seed: int, name: str) -> torch.Tensor:
    """The first `n` indices of a seeded permutation (all, in order, when n is None): the same images for every
    trial with this seed, whatever the model."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    generator = torch.Generator().manual_seed(derive_seed(seed, "subset", name))
    return torch.randperm(n_total, generator=generator)[:n].sort().values


def correct_subset(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int, seed: int, name: str,
                   batch_size: int = 500) -> torch.Tensor:
    """Indices of up to `n` correctly classified test images, in a seeded random order.

    The minimal-perturbation attacks measure how far a correct decision is from the boundary; a misclassified
    image is already adversarial and has distance 0, so the papers attack correctly classified images only.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "correct", name))
    order = torch.randperm(len(y), generator=generator)
    correct = predict(model, x[order], batch_size) == y[order].cpu()
    return order[correct][:n]


def clamp_per_image(noisy: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Clamp each image to its own [min, max] (docs/method.md, "Evaluation"): noise cannot widen an image's
    intensity range."""
    lo = original.amin(dim=(1, 2, 3), keepdim=True)
    hi = original.amax(dim=(1, 2, 3), keepdim=True)
    return torch.maximum(torch.minimum(noisy, hi), lo)


def row(attack: str, value: float, images: int, *, eps: float | None = None, metric: str = "accuracy",
        variant: str = "", group: str = "", repeat: int = 0, failed: int = 0,
        whitebox: bool = False) -> dict[str, Any]:
    """One robustness row without the key columns (the trainer adds them)."""
    return {"attack": attack, "variant": variant, "group": group, "eps": None if eps is None else float(eps),
            "repeat": int(repeat), "metric": metric, "value": float(value), "images": int(images),
            "failed": int(failed), "whitebox": bool(whitebox)}


@dataclass
class AttackContext:
    """What every attack's `run(model, x, y, ctx)` gets beside the model and the test set.

    The attack's resolved options are an argument of its own (never set here). `cache_dir` holds inputs shared
    between trials (what transferred attacks craft on their source); `source` is the checked source model when an
    attack of the evaluation needs one (`Attack.source`); `spectrum` collects spectrum-table rows; `shared`
    memoises inputs that several attacks of one evaluation could use (`shared_input`).
    """

    cfg: TrialConfig
    cache_dir: str | os.PathLike | None = None
    source: Source | None = None
    spectrum: list[dict[str, Any]] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def test_sha256(self, x: torch.Tensor, y: torch.Tensor) -> str:
        """sha256 of the whole test set (a cache key of source inputs), hashed once per evaluation."""
        return self.shared_input("test_sha256", lambda: test_set_sha256(x, y))

    def shared_input(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def clean_accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
        """`accuracy(model, x, y, batch_size)`, computed once per evaluation for the same images and batch size.

        Every eps curve starts at eps 0, where the perturbation is exactly zero (noise times 0, FGSM signs times
        0; the clamps then return the image itself), so the four curves of the quickstart would classify the same
        clean images four times. Keyed by the images' and labels' bytes and the batch size, the value is the one
        each curve would compute itself, batch for batch (base.Loop uses it for attacks with `clean`)."""
        key = ("clean_accuracy", test_set_sha256(x, y), batch_size)
        return self.shared_input(key, lambda: accuracy(model, x, y, batch_size))
