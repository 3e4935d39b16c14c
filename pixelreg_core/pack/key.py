"""Which trials may share a seed pack (no torch here: the orchestrator groups trials before any training)."""

from __future__ import annotations

import json

from pixelreg_core.config import TrialConfig

# Fields that may differ between the trials of one pack: what a member's own tensors carry (seed: its data split,
# init, batch order, augmentation and pairs; th, th2, exact_targets and the target files: its target; alpha: the
# weight of its similarity loss; fgsm_source: its own attack input). Everything else shapes the shared network,
# batches or schedule and must be equal.
PACK_FREE_FIELDS = ("seed", "th", "th2", "alpha", "exact_targets", "matrix", "matrix_images", "vgg_weights",
                    "fgsm_source", "pack")


def pack_key(cfg: TrialConfig) -> str:
    """Trials with one key can train as one pack: every field but PACK_FREE_FIELDS, and regularized or not."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in PACK_FREE_FIELDS}
    values["regularized"] = cfg.regularized
    return json.dumps(values, sort_keys=True, default=str)


def check_pack(cfgs: list[TrialConfig]) -> None:
    keys = {pack_key(c) for c in cfgs}
    if len(keys) > 1:
        raise ValueError("the trials of a pack differ in more than seed, th, th2, alpha and target parameters")


def packs(cfgs: list[TrialConfig]) -> list[list[TrialConfig]]:
    """The trials in packs of at most `pack` (the first trial's of each key) with one pack key, in the order of
    their first trial; pack 1 leaves every trial alone."""
    groups: dict[str, list[list[TrialConfig]]] = {}
    order: list[list[TrialConfig]] = []
    for cfg in cfgs:
        chunks = groups.setdefault(pack_key(cfg), [])
        if not chunks or len(chunks[-1]) >= max(1, chunks[-1][0].pack):
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(cfg)
    return order
