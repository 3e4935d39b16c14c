"""The one loop of the curve attacks (foolbox 3's shape: the base owns the loop, an attack supplies its step).

An attack of the loop (`Attack(..., loop=Loop(select, measure))`) writes one robustness row per eps x repeat:
`select` picks the images it attacks once (a seeded subset, the source's signs, ...); `measure` perturbs them at
one `Point` (eps, its index, the repeat, the trial seed) and measures the model there. The loop takes the eps
list from the options and the task's rule (options.eps_list), the repeats from `repeats` (1 without that option),
builds every row in one place (common.row) and, with the option `spectrum`, the spectrum rows of the
perturbations `measure` returns. An attack without an eps axis (`eps=False`, the Boundary Attack) gets one row
per repeat, its eps null.

`clean(selected) -> (x, y)`, if an attack gives it, says that at eps 0 its images are exactly the clean ones (x
plus noise times 0, x plus signs times 0 clamped to [0, 1]): the loop then takes the accuracy at eps 0 from
`AttackContext.clean_accuracy`, which classifies those images once for every curve of the evaluation (the same
value `measure` would compute, batch for batch). `clean` returns None where eps 0 would change the images.

Options reach `select` and `measure` as arguments, never through the context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.common import AttackContext, row
from pixelreg_core.attacks.options import Attack, eps_list
from pixelreg_core.attacks.spectrum import spectrum_rows


@dataclass(frozen=True)
class Point:
    """Where `measure` is called: eps (None without an eps axis), its index in the eps list, the repeat, and the
    trial seed (attacks derive their streams from these: common.derive_seed)."""

    eps: float | None
    index: int
    repeat: int
    seed: int


@dataclass(frozen=True)
class Measured:
    """What `measure` found at one point: the row's value, the images it counts, those that failed, and (for the
    spectrum) the perturbations adv - x of the successful images, or None."""

    value: float
    images: int
    failed: int = 0
    perturbations: torch.Tensor | None = None


@dataclass(frozen=True)
class Loop:
    """The eps x repeat loop of an attack: `select(model, x_all, y_all, ctx, opts)` once, then
    `measure(model, selected, point, opts) -> Measured` per point. `metric` names the rows' value."""

    select: Callable[[nn.Module, torch.Tensor, torch.Tensor, AttackContext, dict[str, Any]], Any]
    measure: Callable[[nn.Module, Any, Point, dict[str, Any]], Measured]
    metric: str = "accuracy"
    eps: bool = True
    clean: Callable[[Any], tuple[torch.Tensor, torch.Tensor] | None] | None = None

    def run(self, attack: Attack, model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
            opts: dict[str, Any]) -> list[dict[str, Any]]:
        selected = self.select(model, x_all, y_all, ctx, opts)
        eps_values: list[float | None] = list(eps_list(attack, opts, ctx.cfg.task)) if self.eps else [None]
        clean = self.clean(selected) if self.clean is not None and 0.0 in eps_values else None
        rows, perturbations = [], []
        for index, eps in enumerate(eps_values):
            for repeat in range(opts.get("repeats", 1)):
                if eps == 0 and clean is not None:
                    x, y = clean
                    found = Measured(ctx.clean_accuracy(model, x, y, opts["batch_size"]), len(y))
                else:
                    found = self.measure(model, selected, Point(eps, index, repeat, ctx.seed), opts)
                rows.append(row(attack.name, found.value, found.images, eps=eps, metric=self.metric, repeat=repeat,
                                failed=found.failed))
                if found.perturbations is not None:
                    perturbations.append(found.perturbations)
        if opts.get("spectrum") and perturbations:
            ctx.spectrum += spectrum_rows(torch.cat(perturbations), attack.name)
        return rows
