"""Minimal-perturbation robustness as Li et al. (2019) report it: white-box, so rows carry whitebox=True.

Both attacks look for the smallest adversarial perturbation of each image of one fixed seeded subset of correctly
classified test images, searching over step sizes (and repeats) and keeping each image's smallest distance, as
Li et al. do; the metric is the median over images of that smallest distance ([0, 1] pixel scale).

- min_l2: foolbox's L2BrendelBethgeAttack (the gradient-based boundary attack of Li et al.), started from
  `foolbox_support.attack_from_starts` points; or foolbox's L2FMNAttack (`method: fmn`), which needs no numba
  compilation (Brendel-Bethge compiles for ~35 s once per process on a CPU).
- min_linf: foolbox's LinfPGD inside a per-image bisection over eps: an image's eps is lowered where any searched
  (step size, iteration count, random start) finds an adversarial and raised where none does. foolbox's PGD
  accepts a per-image epsilon tensor, so all images of a batch bisect together.

Images never fooled (no starting point, or not adversarial at eps_max) are counted in `failed`, not dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.accuracy import model_device, predict
from pixelreg_core.attacks.base import Attack, AttackContext, Measured, Point, Selected
from pixelreg_core.attacks.foolbox_support import attack_from_starts, import_foolbox
from pixelreg_core.attacks.options import Option
from pixelreg_core.attacks.seeds import correct_subset, derive_seed, seeded_torch

DEFAULT_LRS = {"brendel_bethge": [1e-3], "fmn": [1.0]}  # foolbox's own defaults


def _l2_once(fmodel: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, lr: float,
             steps: int) -> torch.Tensor:
    """L2 distance of each image's adversarial, inf where the attack failed."""
    fb = import_foolbox()

    if method == "fmn":
        adv = fb.attacks.L2FMNAttack(steps=steps, max_stepsize=lr).run(fmodel, x, fb.criteria.Misclassification(y))
        ok = predict(model, adv).to(x.device) != y
    else:
        adv, ok = attack_from_starts(fmodel, model, fb.attacks.L2BrendelBethgeAttack(steps=steps, lr=lr), x, y)
    dist = (adv - x).flatten(1).norm(dim=1)
    return torch.where(ok, dist, torch.full_like(dist, float("inf"))).cpu()


def minimal_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: dict[str, Any], seed: int) -> torch.Tensor:
    """Smallest L2 adversarial distance per image over step sizes and repeats (inf: never fooled)."""
    fb = import_foolbox()

    device = model_device(model)
    fmodel = fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=device)
    lrs = opts["lrs"] or DEFAULT_LRS[opts["method"]]
    best = torch.full((len(y),), float("inf"))
    for start in range(0, len(y), opts["batch_size"]):
        xb = x[start:start + opts["batch_size"]].to(device)
        yb = y[start:start + opts["batch_size"]].to(device)
        for i, lr in enumerate(lrs):
            for r in range(opts["repeats"]):
                with seeded_torch(derive_seed(seed, "min_l2", start, i, r), device):
                    dist = _l2_once(fmodel, model, xb, yb, opts["method"], lr, opts["steps"])
                best[start:start + len(yb)] = torch.minimum(best[start:start + len(yb)], dist)
    return best


def _pgd_fools(fmodel: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
               opts: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(whether any searched PGD setting finds an adversarial within each image's own L-inf eps, the adversarials
    found; x where none was)."""
    fb = import_foolbox()

    fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    found = x.clone()
    for rel in opts["rel_stepsizes"]:
        for steps in opts["pgd_steps"]:
            for _ in range(opts["repeats"]):
                todo = ~fooled
                if not bool(todo.any()):
                    return fooled, found
                attack = fb.attacks.LinfPGD(rel_stepsize=rel, steps=steps, random_start=True)
                eps_b = eps[todo].view(-1, *([1] * (x.dim() - 1)))
                adv = attack.run(fmodel, x[todo], fb.criteria.Misclassification(y[todo]), epsilon=eps_b)
                hit = predict(model, adv).to(x.device) != y[todo]
                found[todo.nonzero().squeeze(1)[hit]] = adv[hit]
                fooled[todo] = hit
    return fooled, found


def minimal_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: dict[str, Any],
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(smallest L-inf eps per image at which PGD fools the model, the upper end of the bisection, inf: never;
    the adversarial found at that eps, on the CPU, x where never fooled)."""
    fb = import_foolbox()

    device = model_device(model)
    fmodel = fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=device)
    result = torch.full((len(y),), float("inf"))
    adversarials = x.detach().cpu().clone()
    for start in range(0, len(y), opts["batch_size"]):
        xb = x[start:start + opts["batch_size"]].to(device)
        yb = y[start:start + opts["batch_size"]].to(device)
        with seeded_torch(derive_seed(seed, "min_linf", start), device):
            hi = torch.full((len(yb),), float(opts["eps_max"]), device=device)
            lo = torch.zeros_like(hi)
            reachable, adv_hi = _pgd_fools(fmodel, model, xb, yb, hi, opts)
            for _ in range(opts["search_steps"]):
                mid = (lo + hi) / 2
                fooled, adv = _pgd_fools(fmodel, model, xb, yb, mid, opts)
                hi = torch.where(fooled, mid, hi)
                lo = torch.where(fooled, lo, mid)
                adv_hi[fooled] = adv[fooled]
                reachable |= fooled
        result[start:start + len(yb)] = torch.where(reachable, hi, torch.full_like(hi, float("inf"))).cpu()
        adversarials[start:start + len(yb)] = adv_hi.cpu()
    return result, adversarials


def select(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
           opts: dict[str, Any]) -> Selected:
    """The seeded correctly classified images (the same subset for L2 and L-inf)."""
    idx = correct_subset(model, x_all, y_all, opts["images"], ctx.seed, "minimal")
    return Selected(x_all[idx], y_all[idx])


def median_distance(distances: torch.Tensor) -> Measured:
    """The one row's value: the median over the images fooled (finite distance); the others count as failed."""
    ok = torch.isfinite(distances)
    value = float(distances[ok].median()) if bool(ok.any()) else float("nan")
    return Measured(value, int(ok.sum()), failed=int((~ok).sum()))


def measure_l2(model: nn.Module, images: Selected, point: Point, opts: dict[str, Any]) -> Measured:
    return median_distance(minimal_l2(model, images.x, images.y, opts, point.seed))


def measure_linf(model: nn.Module, images: Selected, point: Point, opts: dict[str, Any]) -> Measured:
    return median_distance(minimal_linf(model, images.x, images.y, opts, point.seed)[0])


# One row each (no eps axis); `repeats` is the search's own, inside measure, not the loop's.
ONE_ROW = {"eps": False, "repeat_axis": False, "whitebox": True}


ATTACKS = [
    Attack("minimal_l2", "Minimal L2 (white-box)", {
        "images": Option(16, 1000, "count", "correctly classified test images attacked"),
        "method": Option("brendel_bethge", "brendel_bethge", "choice", "brendel_bethge | fmn",
                         choices=("brendel_bethge", "fmn")),
        "steps": Option(100, 1000, "count", "attack steps"),
        "lrs": Option(None, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "pos_list_or_none",
                      "step sizes searched: Brendel-Bethge lr, FMN max_stepsize (null: the method's default)"),
        "repeats": Option(1, 5, "count", "runs per step size; the smallest distance per image counts"),
        "batch_size": Option(64, 100, "count", "images attacked together"),
    }, select, measure_l2, metric="min_l2", **ONE_ROW),
    Attack("minimal_linf", "Minimal L-inf (white-box)", {
        "images": Option(16, 1000, "count", "correctly classified test images attacked"),
        "rel_stepsizes": Option([0.1, 0.3], [0.01, 0.03, 0.1, 0.3, 1.0], "pos_list", "PGD step / eps searched"),
        "pgd_steps": Option([20], [10, 30, 50, 100, 200], "count_list", "PGD iteration counts searched"),
        "search_steps": Option(8, 10, "count", "bisection steps over eps per image"),
        "eps_max": Option(1.0, 1.0, "pos", "largest L-inf eps tried (images not fooled there count as failed)"),
        "repeats": Option(1, 5, "count", "random starts per setting"),
        "batch_size": Option(64, 100, "count", "images attacked together"),
    }, select, measure_linf, metric="min_linf", **ONE_ROW),
]
