"""One trial's configuration: a plain dataclass, the only input of the core trainer.

The orchestrator builds these from a sweep spec; the CLI builds one from flags. Everything a trial does follows
from this object, so its stable hash (`trial_id`) names the trial: the same config is the same trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pixelreg_core.data import registry as datasets
from pixelreg_core.errors import (
    ConfigError,  # re-exported: `from pixelreg_core.config import ConfigError` keeps working
)
from pixelreg_core.targets import registry as target_kinds
from pixelreg_core.targets.ranges import RANGES
from pixelreg_core.targets.registry import TARGETS

ARCHS = ("ResNet18", "ResNet34")
DEVICES = ("auto", "cpu", "cuda", "mps")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
ROLES = ("trial", "baseline", "fgsm_source")
GRAY_MODES = ("luma", "mean")
PAIR_BN_MODES = ("split", "joint")
PAIR_DRAWS = ("without_replacement", "with_replacement")
SELECT_RULES = ("valid_loss", "valid_acc", "last")
NUM_SIM_LAYERS = 5  # stem output + the 4 stages (ref. code)

# Fields that say where or how a trial runs, not what it computes: left out of the trial id so that moving the
# data, the device or the source checkpoint's path does not turn a finished trial into a new one.
# The kernel options (amp ... compile) are here too, like `device`: a CUDA run's numbers already differ from a CPU
# run's in the last bits, and bf16 autocast (`amp`) changes them more, but the trial computes the same estimator
# of the same model; switching a kernel option must not make a sweep rerun every finished trial. What a trial ran
# with stays on record: the `config` column of its trials row holds every field, these included.
KERNEL_FIELDS = ("amp", "channels_last", "fused_sgd", "cudnn_benchmark", "tf32", "compile")
# `pack` too: a trial trained in a seed pack writes the rows a separate run of it writes (pixelreg_core/pack/).
NON_IDENTITY_FIELDS = ("data_root", "download", "device", "num_threads", "fgsm_source", "pack", *KERNEL_FIELDS)
# What evaluates a model, not what trains it: a model (its trial_id) is named by everything else, so adding an
# attack to a finished sweep evaluates the stored models instead of training new ones. Each evaluation is named
# by (model, attack, options, source model): TrialConfig.eval_id.
EVALUATION_FIELDS = ("attacks",)

# Fields that only matter when alpha > 0. A sweep's unregularized models get their defaults (spec.expand), so a grid
# over, say, sim_layer does not make one baseline per sim_layer value (the same model under different ids).
REGULARIZER_FIELDS = ("reg_data", "target", "range", "th", "th2", "arctanh", "exact_targets", "reg_images",
                      "reg_augment", "reg_pairs", "pair_draw", "pair_bn", "sim_layer", "beta", "matrix",
                      "matrix_images", "vgg_weights")
# Baselines are unregularized: these of the REGULARIZER_FIELDS have no meaning for them and are set to neutral
# values, so one baseline per task x seed is shared by every regularization dataset of that task (the same id).
BASELINE_NEUTRAL = {"reg_data": "none", "target": "none", "range": "none", "th": 0.0, "th2": None}


@dataclass(frozen=True)
class Rule:
    """What one field's value must be: `ok(value)`, else ConfigError(field, "is <value>; <fix>"). A value of the
    wrong type fails its rule too. `regularized_only`: checked only when alpha > 0 (the field means nothing
    otherwise)."""

    ok: Callable[[Any], bool]
    fix: str
    regularized_only: bool = False

    def check(self, name: str, value: Any) -> None:
        try:
            ok = bool(self.ok(value))
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(name, f"is {value!r}; {self.fix}")


def one_of(choices: tuple[str, ...], regularized_only: bool = False) -> Rule:
    return Rule(lambda v: v in choices, f"use one of {', '.join(choices)}", regularized_only)


def at_least(low: int, fix: str = "", none: str = "", regularized_only: bool = False) -> Rule:
    """A whole number >= low; `none`, if given, says what null means (then null is allowed)."""
    def ok(v: Any) -> bool:
        return (none != "" and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)
    return Rule(ok, fix or f"must be a whole number >= {low}" + (f", or null ({none})" if none else ""),
                regularized_only)


def in_range(low: float, high: float, *, low_open: bool = True, high_open: bool = True, fix: str = "") -> Rule:
    """A finite number in (low, high), `low_open`/`high_open` false closing that end."""
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(ok, fix or f"must lie in {interval}")


def demo_attacks() -> dict[str, dict[str, Any]]:
    """Cheap defaults for a CPU demo: random noise only. The paper's set is `attacks.PAPER_ATTACKS`."""
    return {"gaussian": {}, "uniform": {}, "salt_pepper": {}}


@dataclass
class TrialConfig:
    """Every field of one trial. Each field's `help` doubles as the CLI's --help text (see `field_help`); its
    `rule` (a `Rule`) is what `validate` checks."""

    # --- identity -------------------------------------------------------------------------------------------
    sweep: str = field(default="adhoc", metadata={"help": "sweep name written into every row"})
    role: str = field(default="trial", metadata={"help": "trial | baseline | fgsm_source", "rule": one_of(ROLES)})
    task: str = field(default="digits", metadata={"help": "classification dataset, a labelled one of: "
                                                         + datasets.names_help(),
                                                 "rule": Rule(bool, "name a dataset such as MNIST or digits")})
    reg_data: str = field(default="digits", metadata={"help": "regularization dataset: " + datasets.names_help()})
    # --- the regularizer ------------------------------------------------------------------------------------
    target: str = field(default="threshold", metadata={"help": "|".join(TARGETS)})
    range: str = field(default="all", metadata={"help": "which pairs are regularized: " + "|".join(RANGES)})
    th: float = field(default=0.2, metadata={"help": "threshold Th in (0, 1)"})
    th2: float | None = field(default=None, metadata={"help": "second, lower threshold for range double"})
    alpha: float = field(default=0.0, metadata={"help": "regularization strength (0 = unregularized); "
                                                        "for the authors' 2*artanh loss form",
                                                "rule": in_range(0, math.inf, low_open=False, fix="must be >= 0 "
                                                                 "(0 trains an unregularized model)")})
    arctanh: bool = field(default=True, metadata={"help": "compare similarities through the stable arctanh "
                                                          "(false: plain MSE)"})
    exact_targets: bool = field(default=True, metadata={"help": "S^Th targets exactly +/-1, eps only inside the "
                                                                "logs (authors' code); false: +/-(1 - 1e-5)"})
    reg_images: int = field(default=5000, metadata={"help": "N: first N train images of reg_data",
                                                    "rule": at_least(2, "N must be >= 2", regularized_only=True)})
    reg_augment: bool | None = field(default=None, metadata={"help": "augment each regularization image once at "
                                                                     "load time (null: the reg_data's record "
                                                                     "decides; on for CIFAR, authors' code)"})
    reg_pairs: int = field(default=16, metadata={"help": "k: pairs per regularization batch",
                                                 "rule": at_least(1, "k must be >= 1", regularized_only=True)})
    pair_draw: str = field(default="without_replacement",
                           metadata={"help": "without_replacement: pairs in passes over a shuffled order of all "
                                             "qualifying pairs i < j (authors' code) | with_replacement: each "
                                             "step draws k uniform pairs",
                                     "rule": one_of(PAIR_DRAWS, regularized_only=True)})
    pair_bn: str = field(default="split", metadata={"help": "BatchNorm batches of the pair pathway: split (the k "
                                                            "first and the k second images as two passes, authors' "
                                                            "code) | joint (one pass over all 2k)",
                                                    "rule": one_of(PAIR_BN_MODES, regularized_only=True)})
    sim_layer: int | None = field(default=None, metadata={"help": "None: learned softmax(gamma) over the 5 "
                                                                  "layers; 0-4: that layer only (0 = stem)",
                                                          "rule": Rule(lambda v: v is None or 0 <= v < NUM_SIM_LAYERS,
                                                                       "use null (learned weights) or "
                                                                       f"0-{NUM_SIM_LAYERS - 1}")})
    beta: float = field(default=0.9, metadata={"help": "running-mean momentum of the feature centring",
                                               "rule": in_range(0, 1)})
    matrix: str | None = field(default=None, metadata={"help": "target matrix/shuffle: .npy N x N similarity"})
    matrix_images: str | None = field(default=None, metadata={"help": "target matrix/shuffle: .npy N images "
                                                                      "(N,H,W) or (N,C,H,W) in [0,1]"})
    vgg_weights: str | None = field(default=None, metadata={"help": "target vgg: local VGG19 state_dict file"})
    # --- model and schedule ---------------------------------------------------------------------------------
    seed: int = field(default=0, metadata={"help": "seed of splits, init, batches and noise"})
    arch: str = field(default="ResNet18", metadata={"help": "|".join(ARCHS), "rule": one_of(ARCHS)})
    width: int = field(default=64, metadata={"help": "base channels (64 in the papers; 4-8 for tests)",
                                             "rule": at_least(1)})
    grayscale: bool = field(default=True, metadata={"help": "grayscale input (false: RGB)"})
    gray: str = field(default="luma", metadata={"help": "RGB -> gray: luma (0.299, 0.587, 0.114; authors' code) "
                                                        "| mean (channel average)", "rule": one_of(GRAY_MODES)})
    epochs: int = field(default=20, metadata={"help": "training epochs", "rule": at_least(1)})
    batch_size: int = field(default=64, metadata={"help": "classification batch size", "rule": at_least(1)})
    lr: float = field(default=0.1, metadata={"help": "peak learning rate",
                                             "rule": in_range(0, math.inf, fix="must be > 0")})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    lr_decay: float = field(default=0.3, metadata={"help": "lr factor per phase",
                                                   "rule": in_range(0, 1, high_open=False)})
    phase_epochs: int = field(default=4, metadata={"help": "epochs per lr phase", "rule": at_least(1)})
    cycle_phases: int = field(default=5, metadata={"help": "phases per cycle, then lr restarts", "rule": at_least(1)})
    valid_fraction: float = field(default=0.01, metadata={"help": "share of train held out for validation",
                                                          "rule": in_range(0, 1, fix="must lie in (0, 1), e.g. 0.01")})
    valid_images: int | None = field(default=None, metadata={"help": "validation images held out (overrides "
                                                                     "valid_fraction; null: valid_fraction)",
                                                             "rule": at_least(1, none="valid_fraction decides")})
    select: str = field(default="valid_loss", metadata={"help": "which epoch is the reported model: valid_loss "
                                                                "(lowest, authors' code) | valid_acc (highest) | "
                                                                "last", "rule": one_of(SELECT_RULES)})
    select_untrained: bool = field(default=True, metadata={"help": "the untrained model (epoch 0) is a candidate "
                                                                   "of `select` (authors' code)"})
    train_images: int | None = field(default=None, metadata={"help": "cap on training images (demos, tests)",
                                                             "rule": at_least(1, none="all")})
    test_images: int | None = field(default=None, metadata={"help": "cap on test images",
                                                            "rule": at_least(1, none="all")})
    # --- evaluation -----------------------------------------------------------------------------------------
    attacks: dict[str, dict[str, Any]] = field(default_factory=demo_attacks,
                                               metadata={"help": "JSON: attack name -> options",
                                                         "rule": Rule(lambda v: isinstance(v, dict), "must map "
                                                                      "attack names to option mappings")})
    # The source model of every transferred attack (Attack.source); named after the first one, fgsm_transfer.
    fgsm_source: str | None = field(default=None, metadata={"help": "checkpoint of the unregularized source "
                                                                    "model of the transferred attacks"})
    # --- where it runs: not identity (NON_IDENTITY_FIELDS) ---------------------------------------------------
    data_root: str = field(default="data", metadata={"help": "torchvision dataset root"})
    download: bool = field(default=False, metadata={"help": "let torchvision download missing datasets"})
    device: str = field(default="auto", metadata={"help": "|".join(DEVICES), "rule": one_of(DEVICES)})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: torch default)"})
    # --- kernels and precision: how fast, not what (all off = today's numbers; docs/performance.md) ----------
    amp: bool = field(default=False, metadata={"help": "bf16 autocast of the forward passes (meant for CUDA; "
                                                       "changes the numbers slightly)"})
    channels_last: bool = field(default=False, metadata={"help": "NHWC memory layout for the model and batches"})
    fused_sgd: bool = field(default=False, metadata={"help": "one fused SGD kernel (off: torch's default, foreach "
                                                             "on CUDA)"})
    cudnn_benchmark: bool = field(default=False, metadata={"help": "let cuDNN time and pick conv algorithms (CUDA)"})
    tf32: bool = field(default=False, metadata={"help": "TF32 tensor-core math for float32 convolutions and "
                                                        "matmuls (CUDA; off: plain float32, though cuDNN's own "
                                                        "default is on)"})
    compile: str = field(default="none", metadata={"help": "torch.compile of the training step: "
                                                           + "|".join(COMPILE_MODES)
                                                           + " (reduce-overhead adds CUDA graphs)",
                                                   "rule": one_of(COMPILE_MODES)})
    pack: int = field(default=1, metadata={"help": "seed pack: the orchestrator trains up to N trials that differ "
                                                   "only in seed, th, alpha or target parameters as one grouped "
                                                   "network (1: each apart; docs/spec.md)",
                                           "rule": at_least(1, "use 1 (train apart) or more (trials trained as "
                                                               "one grouped network)")})

    # ----------------------------------------------------------------------------------------------------------
    def unregularized(self, role: str = "baseline") -> TrialConfig:
        """This config as a baseline (or, with role fgsm_source, a transferred attack's source): alpha 0 and
        the neutral values of BASELINE_NEUTRAL, so one unregularized model of a task x seed has one id whatever
        regularizer fields it was made from. The sweep expansion and the CLI make their unregularized models
        with this; nothing rewrites a config behind its maker's back."""
        return self.replace(alpha=0.0, role=role, **BASELINE_NEUTRAL)

    @property
    def regularized(self) -> bool:
        return self.alpha > 0

    @property
    def loads_reg_data(self) -> bool:
        """Whether the trial reads reg_data: regularized, and its target does not bring its own images (a matrix
        target's N images come with the matrix; the target registry's `own_images` says which do)."""
        return self.regularized and self.reg_data != "none" and not target_kinds.get(self.target).own_images(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown trial field; known fields: {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """What trains the model: every field but where it runs (NON_IDENTITY_FIELDS) and its evaluation."""
        d = self.to_dict()
        for name in (*NON_IDENTITY_FIELDS, *EVALUATION_FIELDS):
            d.pop(name)
        return d

    @property
    def trial_id(self) -> str:
        """The model's id, stable across processes and machines: sha256 of the canonical JSON of the identity
        fields (the attacks are not among them)."""
        return _digest(self.identity())

    @property
    def source_model(self) -> str | None:
        """The trial id of the source model, from its checkpoint's file name: not where the folder lives, nor a
        URI's ?query (endpoint, region). None without a source."""
        path = (self.fgsm_source or "").split("?", 1)[0]
        return os.path.basename(path).removesuffix(".pt") or None

    def eval_id(self, attack: str, transferred: bool = False) -> str:
        """One evaluation's id: `<attack>-<hash>` of (model, attack, its options as given and, for a transferred
        attack (pixelreg_core.attacks.source_attacks), the source model, named by its checkpoint file). The
        options are those of `attacks`, not defaults filled in, so a new default in the code does not rename
        finished evaluations."""
        source = self.source_model if transferred else None
        return f"{attack}-" + _digest({"model": self.trial_id, "attack": attack,
                                       "options": self.attacks.get(attack), "source": source})[:8]

    def validate(self) -> TrialConfig:
        """Raise ConfigError on the first value a user must fix: each field's `rule`, then, when regularized,
        the target's own checks (target, range, th, th2 and the matrix files: the target registry's one place).
        Cheap: touches no data."""
        for f in dataclasses.fields(self):
            rule = f.metadata.get("rule")
            if rule is not None and (not rule.regularized_only or self.regularized):
                rule.check(f.name, getattr(self, f.name))
        if self.regularized:
            target_kinds.check(self)
        return self


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def field_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrialConfig)}
