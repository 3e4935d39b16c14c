"""foolbox for the attacks that use it (boundary, the minimal attacks): its import, and the starting-point search
that replaces foolbox's own (the same points, fewer forward passes)."""

from __future__ import annotations

import os
import sys
import types
import warnings
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.accuracy import predict

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
