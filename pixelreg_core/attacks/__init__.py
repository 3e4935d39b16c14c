"""Robustness evaluation of a trained model: every attack of `cfg.attacks`, as Parquet-ready rows.

`cfg.attacks` maps attack names to option mappings; `{}` means the cheap demo defaults, `{"preset": "paper"}` the
papers' values (see options.OPTIONS for every option, its default and its paper value). `PRESETS` holds whole
attack sets a sweep spec can pick with one word: "demo" (random noise), "paper" (`PAPER_ATTACKS`: the Attias et
al. set) and "full" (every attack at paper settings).

The trainer calls `validate_attacks(cfg)` before loading data, `validate_attacks(cfg, test_count)` once the test
set size is known (both before any training), and `evaluate(...)` after training.

Modules: noise (gaussian, uniform, salt_pepper), fgsm (fgsm_transfer, with its sign cache), boundary
(Boundary Attack score), spectrum (Fourier profile of the boundary perturbations), minimal (white-box minimal
L2 / L-inf), corruptions (CIFAR-10-C style).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, TrialConfig, demo_attacks
from . import boundary, corruptions, fgsm, minimal, noise
from .common import seeded_subset
from .options import ATTACK_NAMES, OPTIONS, eps_list, resolve
from .spectrum import spectrum_rows

PAPER_ATTACKS: dict[str, dict[str, Any]] = {name: {"preset": "paper"} for name in (
    "gaussian", "uniform", "salt_pepper", "fgsm_transfer", "boundary")}
FULL_ATTACKS: dict[str, dict[str, Any]] = {name: {"preset": "paper"} for name in ATTACK_NAMES}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {"demo": demo_attacks(), "paper": PAPER_ATTACKS,
                                                 "full": FULL_ATTACKS}

__all__ = ["ATTACK_NAMES", "OPTIONS", "PAPER_ATTACKS", "PRESETS", "attack_preset", "evaluate", "validate_attacks"]


def attack_preset(name: str) -> dict[str, dict[str, Any]]:
    """A fresh copy of a named attack set ("demo", "paper", "full") for `cfg.attacks`."""
    if name not in PRESETS:
        raise ConfigError("attacks", f"unknown attack preset {name!r}; use one of {', '.join(PRESETS)} or a mapping")
    return copy.deepcopy(PRESETS[name])


def validate_attacks(cfg: TrialConfig, test_count: int | None = None, *,
                     check_source: bool = True) -> dict[str, dict[str, Any]]:
    """Resolve and check every attack's options; returns {name: resolved options}. Raises ConfigError.

    Cheap: it touches no test data; with fgsm_transfer it loads the source checkpoint to check that it exists and
    is not the evaluated trial itself (`check_source=False` skips that for a sweep planned before its source model
    is trained); with a corruption folder it reads the .npy headers.
    """
    if not isinstance(cfg.attacks, dict):
        raise ConfigError("attacks", "must map attack names to option mappings, e.g. {\"gaussian\": {}}")
    resolved = {}
    for name, raw in cfg.attacks.items():
        opts = resolve(name, raw)
        images = opts.get("images")
        from_folder = name == "corruptions" and opts["folder"] is not None
        if test_count is not None and images is not None and images > test_count and not from_folder:
            raise ConfigError(f"attacks.{name}.images", f"is {images} but the test set has only {test_count} "
                                                        f"images; set it to at most {test_count}")
        if name == "fgsm_transfer":
            if cfg.fgsm_source is None:
                raise ConfigError("fgsm_source", "attack fgsm_transfer needs the checkpoint of an unregularized "
                                                 "source model of the same task; set fgsm_source or drop the attack")
            if check_source:
                fgsm.load_source(cfg.fgsm_source, cfg)
        if from_folder:
            corruptions.check_folder(opts["folder"], opts["names"])
        resolved[name] = opts
    return resolved


def evaluate(model: nn.Module, data: Any, cfg: TrialConfig, cache_dir: str | os.PathLike | None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run cfg.attacks on data.test_x / data.test_y; returns (robustness rows, spectrum rows) without key columns.

    The model takes [0, 1] images and returns logits; it is put in eval mode and used on its own device.
    `cache_dir` holds the transferred-FGSM signs shared between trials (None: no disk cache).
    """
    x_all, y_all = data.test_x.detach().cpu(), data.test_y.detach().cpu()
    # the FGSM source is loaded and checked where it is used (fgsm.cached_signs); no need to load it here too
    all_opts = validate_attacks(cfg, len(y_all), check_source=False)
    model.eval()
    robustness: list[dict[str, Any]] = []
    spectra: list[dict[str, Any]] = []
    for name, opts in all_opts.items():
        if name in noise.NOISE_ATTACKS:
            idx = seeded_subset(len(y_all), opts["images"], cfg.seed, name)
            robustness += noise.run(name, model, x_all[idx], y_all[idx], eps_list(name, opts, cfg.task), opts,
                                    cfg.seed)
        elif name == "fgsm_transfer":
            idx = seeded_subset(len(y_all), opts["images"], cfg.seed, name)
            robustness += fgsm.run(model, x_all, y_all, idx, eps_list(name, opts, cfg.task), opts, cfg, cache_dir)
        elif name == "boundary":
            rows, results = boundary.run(model, x_all, y_all, opts, cfg.seed)
            robustness += rows
            if opts["spectrum"]:
                deltas = torch.cat([(r.adv - r.x)[r.success] for r in results])
                spectra += spectrum_rows(deltas, "boundary")
        elif name in ("minimal_l2", "minimal_linf"):
            robustness += minimal.run(name, model, x_all, y_all, opts, cfg.seed)
        elif name == "corruptions":
            robustness += corruptions.run(model, x_all, y_all, opts, cfg.seed)
    return robustness, spectra
