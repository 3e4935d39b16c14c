"""The attack record and its one call shape (foolbox 3's: the base owns the loop, an attack supplies its step).

Every attack is an `Attack(name, title, options, select, measure, ...)` and writes its robustness rows through
`Attack.evaluate`: `select(model, x_all, y_all, ctx, opts) -> Selected` picks the images it measures once (a
seeded subset, the source's signs, ...); `measure(model, selected, point, opts) -> Measured` perturbs them at one
`Point` and measures the model there. The points are the attack's axes, each of one value where it has none:
- variant: `variants(opts)`, e.g. the corruptions' names (none: "");
- eps: the eps list (`eps_list`: the options, else the task's rule), `eps_axis(opts)` where the attack's own
  options give it (the corruptions' severities), or `eps=False` (one point, eps null: the Boundary Attack, the
  minimal-perturbation attacks);
- repeat: `repeats` when the attack says its `repeats` option is the loop's (`repeat_axis`, the default; the
  minimal attacks keep their repeats inside `measure`).
`evaluate` builds every row in one place (`row`) and, with the option `spectrum`, the spectrum rows of the
perturbations `measure` returns.

`clean(selected) -> (x, y)`, if an attack gives it, says that at eps 0 its images are exactly the clean ones (x
plus noise times 0, x plus signs times 0 clamped to [0, 1]): the loop then takes the accuracy at eps 0 from
`AttackContext.clean_accuracy`, which classifies those images once for every curve of the evaluation (the same
value `measure` would compute, batch for batch). `clean` returns None where eps 0 would change the images.

Options reach `select` and `measure` as arguments, never through the context.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks.accuracy import accuracy
from pixelreg_core.attacks.options import Option, resolve_options
from pixelreg_core.attacks.source import Source, test_set_sha256
from pixelreg_core.attacks.spectrum import spectrum_rows
from pixelreg_core.config import TrialConfig
from pixelreg_core.data import registry as datasets

# The source of a transferred attack: the unregularized model of the same task and the same non-regularizer grid
# point (e.g. width), trained at the spec's `fgsm_source_seed` (trial role "fgsm_source"), never one of the
# evaluated models. The field and role keep their first attack's name: renaming them would move trial ids.
UNREGULARIZED_SOURCE = "unregularized"
SOURCES = (UNREGULARIZED_SOURCE,)


@dataclass(frozen=True)
class Point:
    """Where `measure` is called: eps (None without an eps axis), its index in the eps list, the repeat, the
    trial seed (attacks derive their streams from these: seeds.derive_seed) and the variant ("" without one)."""

    eps: float | None
    index: int
    repeat: int
    seed: int
    variant: str = ""


@dataclass(frozen=True)
class Selected:
    """What `select` picked: the images and labels every point measures. An attack that hands `measure` more
    (signs, a cache key) subclasses it with those fields."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Measured:
    """What `measure` found at one point: the row's value, the images it counts, those that failed, (for the
    spectrum) the perturbations adv - x of the successful images or None, the row's frequency `group`, and a
    `metric` that replaces the attack's for this row (a corruption that could not run: "skipped")."""

    value: float
    images: int
    failed: int = 0
    perturbations: torch.Tensor | None = None
    group: str = ""
    metric: str | None = None


@dataclass
class AttackContext:
    """What every attack's `select` gets beside the model, the test set and its options.

    `cache_dir` holds inputs shared between trials (what transferred attacks craft on their source); `source` is
    the checked source model when an attack of the evaluation needs one (`Attack.source`); `spectrum` collects
    spectrum-table rows; `shared` memoises inputs that several attacks of one evaluation could use
    (`shared_input`).
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
        each curve would compute itself, batch for batch (`Attack.evaluate` uses it for attacks with `clean`)."""
        key = ("clean_accuracy", test_set_sha256(x, y), batch_size)
        return self.shared_input(key, lambda: accuracy(model, x, y, batch_size))


@dataclass(frozen=True)
class Attack:
    """One attack of the registry (pixelreg_core.attacks.ATTACKS): everything the trainer, the sweep spec and the
    figures need to know about it, and its `select` and `measure` (module docstring).

    `metric` names the rows' value; `eps`, `eps_axis`, `variants` and `repeat_axis` its axes (module docstring);
    `whitebox`: its rows attack the evaluated model's own gradients.
    `check(opts, cfg, check_source)`, if given, does the checks that need more than the options (files).
    `on_test_images(opts)`: whether `images` counts test images (False: the attack reads its own images).
    `presets`: named option sets beyond "demo" and "paper" (e.g. boundary's "minimal"), each applied over the
    paper values.
    `source`: which model a transferred attack crafts its examples on (None: it needs no other model). The one
    kind is `UNREGULARIZED_SOURCE`. This flag is all the sweep side reads: expansion trains the source trial first
    and points the trial's `fgsm_source` field at its checkpoint, the spec checks keep its seed out of `seeds`, and
    the source is checked and loaded by pixelreg_core.attacks.source.
    `eps_max(dataset record)`: the top of the default eps range, when the attack's differs from the record's rule
    (`Dataset.eps_top`). `eps_name`: what its rows' eps column holds (figures label it), e.g. "severity".
    """

    name: str
    title: str
    options: dict[str, Option]
    select: Callable[[nn.Module, torch.Tensor, torch.Tensor, AttackContext, dict[str, Any]], Selected]
    measure: Callable[[nn.Module, Any, Point, dict[str, Any]], Measured]
    metric: str = "accuracy"
    eps: bool = True
    eps_axis: Callable[[dict[str, Any]], list[Any]] | None = None
    variants: Callable[[dict[str, Any]], list[str]] | None = None
    repeat_axis: bool = True
    clean: Callable[[Any], tuple[torch.Tensor, torch.Tensor] | None] | None = None
    whitebox: bool = False
    check: Callable[..., None] | None = None
    on_test_images: Callable[[dict[str, Any]], bool] = lambda opts: True
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    source: str | None = None
    eps_max: Callable[[datasets.Dataset], float] | None = None
    eps_name: str = "eps"

    def resolve(self, raw: Any) -> dict[str, Any]:
        return resolve_options(self.name, self.options, raw, self.presets)

    def eps_values(self, opts: dict[str, Any], task: str) -> list[Any]:
        """The eps axis: the attack's own (`eps_axis`), the eps list (`eps_list`), or one null eps."""
        if self.eps_axis is not None:
            return list(self.eps_axis(opts))
        return list(eps_list(self, opts, task)) if self.eps else [None]

    def evaluate(self, model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ctx: AttackContext,
                 opts: dict[str, Any]) -> list[dict[str, Any]]:
        """The attack's robustness rows (without key columns): `select` once, then `measure` at every point of
        variant x eps x repeat, in that order."""
        selected = self.select(model, x_all, y_all, ctx, opts)
        eps_values = self.eps_values(opts, ctx.cfg.task)
        clean = self.clean(selected) if self.clean is not None and 0.0 in eps_values else None
        repeats = opts.get("repeats", 1) if self.repeat_axis else 1
        rows, perturbations = [], []
        for variant in (self.variants(opts) if self.variants is not None else [""]):
            for index, eps in enumerate(eps_values):
                for repeat in range(repeats):
                    if eps == 0 and clean is not None:
                        x, y = clean
                        found = Measured(ctx.clean_accuracy(model, x, y, opts["batch_size"]), len(y))
                    else:
                        found = self.measure(model, selected, Point(eps, index, repeat, ctx.seed, variant), opts)
                    rows.append(row(self.name, found.value, found.images, eps=eps,
                                    metric=found.metric or self.metric, variant=variant, group=found.group,
                                    repeat=repeat, failed=found.failed, whitebox=self.whitebox))
                    if found.perturbations is not None:
                        perturbations.append(found.perturbations)
        if opts.get("spectrum") and perturbations:
            ctx.spectrum += spectrum_rows(torch.cat(perturbations), self.name)
        return rows


def row(attack: str, value: float, images: int, *, eps: float | None = None, metric: str = "accuracy",
        variant: str = "", group: str = "", repeat: int = 0, failed: int = 0,
        whitebox: bool = False) -> dict[str, Any]:
    """One robustness row without the key columns (the trainer adds them)."""
    return {"attack": attack, "variant": variant, "group": group, "eps": None if eps is None else float(eps),
            "repeat": int(repeat), "metric": metric, "value": float(value), "images": int(images),
            "failed": int(failed), "whitebox": bool(whitebox)}


def default_eps_max(attack: Attack, task: str) -> float:
    """The top of an eps attack's default range on a task: the attack's own rule, else the dataset record's."""
    record = datasets.get(task)
    return attack.eps_max(record) if attack.eps_max is not None else record.eps_top(attack.name)


def eps_list(attack: Attack, opts: dict[str, Any], task: str) -> list[float]:
    """The eps values an eps-curve attack runs, from explicit `eps`, else `eps_max`/`num_eps`, else the task's
    range (`default_eps_max`)."""
    if opts.get("eps") is not None:
        return [float(e) for e in opts["eps"]]
    top = opts.get("eps_max")
    if top is None:
        top = default_eps_max(attack, task)
    n = int(opts["num_eps"])
    return [top * i / (n - 1) for i in range(n)] if n > 1 else [float(top)]
