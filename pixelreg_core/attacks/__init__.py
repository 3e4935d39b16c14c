"""Robustness evaluation of a trained model: the attack registry, and every attack of `cfg.attacks` as rows.

`ATTACKS` maps each attack name to its record (`base.Attack`): its title (for figures), its options with demo
defaults and paper values (`options.Option`), and its `select` and `measure`, which `Attack.evaluate` runs over
the attack's points (variant x eps x repeat) into robustness rows: foolbox 3's one call shape, the whole test set
in [0, 1] and an `AttackContext` with the seed, the task, the source model and shared inputs. `cfg.attacks` maps
attack names to option mappings; `{}` means the cheap demo defaults, `{"preset": "paper"}` the papers' values.
`PRESETS` holds whole attack sets a sweep spec can pick with one word: "demo" (random noise), "paper"
(`PAPER_ATTACKS`: the Attias et al. set) and "full" (every attack at paper settings).

The trainer resolves the options once, before loading data (`validate_attacks(cfg)`), checks the image counts
against the test set (`check_image_counts`) and passes the resolved options to `evaluate`.

Adding an attack: write its module with its `ATTACKS` records and add the module's name to `MODULES` below
(docs/design.md, "An attack"; pgd.py is the example).
A transferred attack says so in its record (`source=`): the sweep side reads only that flag (`source_attacks`).
Modules: the attacks noise (gaussian, uniform, salt_pepper), fgsm (fgsm_transfer), pgd (pgd_transfer), boundary
(Boundary Attack score and its spectrum), minimal (white-box minimal L2 / L-inf), corruptions (CIFAR-10-C style);
what they share: base (the record, its loop and rows, the context), options (option declarations and their
checks), accuracy (predictions and the batched accuracy loop), seeds (seeded streams and image subsets),
foolbox_support (foolbox's import and the starting-point search), source (a transferred attack's source model and
its cache), spectrum (the Fourier profile of perturbations).
"""

from __future__ import annotations

import copy
import importlib
import os
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pixelreg_core.attacks import source as attack_source
from pixelreg_core.attacks.base import Attack, AttackContext
from pixelreg_core.attacks.source import Source
from pixelreg_core.config import ConfigError, TrialConfig, demo_attacks

# The attack modules, each with its `ATTACKS` list of records, in the order the registry lists them. A new attack
# is a new module and its name here.
MODULES = ("noise", "fgsm", "boundary", "minimal", "corruptions", "pgd")
ATTACKS: dict[str, Attack] = {a.name: a for module in MODULES
                              for a in importlib.import_module(f"{__name__}.{module}").ATTACKS}
ATTACK_NAMES = tuple(ATTACKS)

PAPER_ATTACKS: dict[str, dict[str, Any]] = {name: {"preset": "paper"} for name in (
    "gaussian", "uniform", "salt_pepper", "fgsm_transfer", "boundary")}
FULL_ATTACKS: dict[str, dict[str, Any]] = {name: {"preset": "paper"} for name in ATTACK_NAMES}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {"demo": demo_attacks(), "paper": PAPER_ATTACKS,
                                                 "full": FULL_ATTACKS}

__all__ = ["ATTACKS", "ATTACK_NAMES", "PAPER_ATTACKS", "PRESETS", "Attack", "AttackContext", "attack_preset",
           "check_image_counts", "eps_name", "evaluate", "get", "load_source", "resolve", "source_attacks", "title",
           "validate_attacks"]


def get(name: str) -> Attack:
    """The record of an attack; ConfigError naming `attacks.<name>` for an unknown one."""
    if name not in ATTACKS:
        raise ConfigError(f"attacks.{name}", f"unknown attack {name!r}; use one of {', '.join(ATTACK_NAMES)}")
    return ATTACKS[name]


def title(name: str) -> str:
    """A figure title for an attack name (the name itself for one the registry does not know)."""
    return ATTACKS[name].title if name in ATTACKS else name


def eps_name(name: str) -> str:
    """What an attack's eps column holds, for figure labels ("eps" for one the registry does not know)."""
    return ATTACKS[name].eps_name if name in ATTACKS else "eps"


def source_attacks(names: Iterable[str]) -> list[str]:
    """The transferred attacks among `names` (those whose record names a `source`), in their order; names the
    registry does not know are left out (`get` reports them)."""
    return [name for name in names if name in ATTACKS and ATTACKS[name].source is not None]


def load_source(cfg: TrialConfig, map_location: torch.device | str = "cpu") -> Source | None:
    """The checked source model of cfg's transferred attacks, read once (None when cfg has none); raises
    ConfigError naming `fgsm_source`."""
    names = source_attacks(cfg.attacks)
    if not names:
        return None
    attack_source.require(cfg, names)
    return attack_source.load(cfg, map_location)


def resolve(name: str, raw: Any) -> dict[str, Any]:
    """One attack's options: defaults (or paper values) overlaid with `raw`; raises ConfigError."""
    return get(name).resolve(raw)


def attack_preset(name: str) -> dict[str, dict[str, Any]]:
    """A fresh copy of a named attack set ("demo", "paper", "full") for `cfg.attacks`."""
    if name not in PRESETS:
        raise ConfigError("attacks", f"unknown attack preset {name!r}; use one of {', '.join(PRESETS)} or a mapping")
    return copy.deepcopy(PRESETS[name])


def validate_attacks(cfg: TrialConfig, test_count: int | None = None, *,
                     check_source: bool = True) -> dict[str, dict[str, Any]]:
    """Resolve and check every attack's options; returns {name: resolved options}. Raises ConfigError.

    Cheap: it touches no test data; with a transferred attack (`Attack.source`) it requires `fgsm_source` and
    loads that checkpoint to check that it exists and is not the evaluated trial itself (`check_source=False`
    skips the load: for a sweep planned before its source model is trained, and for the trainer, which loads it
    once with `load_source`); with a corruption folder it reads the .npy headers. With `test_count`, image
    counts are checked against the test set too (`check_image_counts`).
    """
    if not isinstance(cfg.attacks, dict):
        raise ConfigError("attacks", "must map attack names to option mappings, e.g. {\"gaussian\": {}}")
    resolved = {}
    for name, raw in cfg.attacks.items():
        attack = get(name)
        opts = attack.resolve(raw)
        if attack.check is not None:
            attack.check(opts, cfg, check_source)
        resolved[name] = opts
    names = source_attacks(resolved)
    if names:
        attack_source.require(cfg, names)
        if check_source:
            attack_source.load(cfg)
    if test_count is not None:
        check_image_counts(resolved, test_count)
    return resolved


def check_image_counts(resolved: dict[str, dict[str, Any]], test_count: int) -> None:
    """No attack may ask for more test images than the test set has (resolved options from validate_attacks)."""
    for name, opts in resolved.items():
        images = opts.get("images")
        if images is not None and images > test_count and ATTACKS[name].on_test_images(opts):
            raise ConfigError(f"attacks.{name}.images", f"is {images} but the test set has only {test_count} "
                                                        f"images; set it to at most {test_count}")


def evaluate(model: nn.Module, data: Any, cfg: TrialConfig, cache_dir: str | os.PathLike | None,
             resolved: dict[str, dict[str, Any]] | None = None, source: Source | None = None, *,
             seconds: dict[str, float] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run cfg.attacks on data.test_x / data.test_y; returns (robustness rows, spectrum rows) without key columns.

    The model takes [0, 1] images and returns logits; it is put in eval mode and used on its own device.
    `cache_dir` holds what transferred attacks craft on their source, shared between trials (None: no disk
    cache). `resolved`: the options from `validate_attacks` (the trainer resolves them once per trial); None
    resolves them here. `source`: the source model from `load_source` (the trainer reads it once per trial);
    None loads it here when an attack needs it.
    `seconds`, if given, gets each attack's wall seconds (its spectrum included), for the trials row's `attack_s`.
    """
    # The test set goes to the model's device once; every attack works there (accuracy.py).
    device = next(model.parameters()).device
    x_all, y_all = data.test_x.detach().to(device), data.test_y.detach().to(device)
    if resolved is None:
        resolved = validate_attacks(cfg, len(y_all), check_source=False)  # the source is loaded just below
    if source_attacks(resolved):
        source = source or load_source(cfg, device)
        source.model.to(device)
        attack_source.refuse_own_weights(source, model)
    else:
        source = None
    model.eval()
    ctx = AttackContext(cfg, cache_dir, source=source)
    robustness: list[dict[str, Any]] = []
    for name, opts in resolved.items():
        started = time.perf_counter()
        robustness += ATTACKS[name].evaluate(model, x_all, y_all, ctx, opts)
        if seconds is not None:
            seconds[name] = time.perf_counter() - started
    return robustness, ctx.spectrum
