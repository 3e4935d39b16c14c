"""Several trials end to end as one seed pack: each prepared as its own run prepares it, trained together, then
attacked and written one by one as a plain model (its slice of the grouped weights), so each trial's rows, id and
checkpoint are the ones a separate run writes.

A failure of one trial (bad input, a non-finite loss, an attack that raises) is that trial's: it gets what
run_trial leaves for a failure (no tables; a failed trials row with `record_failure`), the others go on. Only a
failure of the shared training (out of memory, say) fails every trial still training.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pixelreg_core.checkpoint import EpochCheckpoint
from pixelreg_core.config import TrialConfig
from pixelreg_core.pack.key import check_pack
from pixelreg_core.pack.train import Member, train_pack
from pixelreg_core.trial import Clock, check_trial, fail_trial, finish_trial, prepare_trial


@dataclass
class Outcome:
    """One trial of a pack: its trials row ("ok" or "failed"), and the exception when it failed."""

    cfg: TrialConfig
    row: dict[str, Any]
    error: BaseException | None = None


def run_pack(cfgs: list[TrialConfig], out_root: str | os.PathLike, *,
             on_epoch: Callable[[TrialConfig, dict[str, Any]], None] | None = None,
             cache_dir: str | os.PathLike | None = None, record_failure: bool = False,
             node: str | None = None) -> list[Outcome]:
    """run_trial for each of `cfgs` (one pack key), trained as one grouped network; one Outcome per trial, in order.
    `on_epoch(cfg, row)` is called for every trial's every epoch."""
    check_pack(cfgs)
    clock = Clock.now()  # the pack's: each trial's wall_s and cpu_s are the whole pack's
    train_s = 0.0
    out_root = str(out_root)
    node = node or platform.node() or None
    threads_before = torch.get_num_threads()
    outcomes: dict[str, Outcome] = {}
    members, prepared = [], {}

    def failed(cfg: TrialConfig, exc: BaseException, device: Any) -> None:
        fail_trial(cfg, exc, out_root, record_failure, device, clock, node)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
        outcomes[cfg.trial_id] = Outcome(cfg, {"trial_id": cfg.trial_id, "status": "failed", "error": error}, exc)

    try:
        for cfg in cfgs:
            device: Any = cfg.device
            try:
                device, attack_options = check_trial(cfg)
                prepared[cfg.trial_id] = p = prepare_trial(cfg, device, attack_options)
            except Exception as exc:  # noqa: BLE001 - bad input of one trial is that trial's failure
                failed(cfg, exc, device)
                continue
            members.append(Member(cfg, p.data, p.model, p.target, EpochCheckpoint.for_trial(out_root, cfg),
                                  on_epoch=None if on_epoch is None else (lambda row, c=cfg: on_epoch(c, row))))
        if members:
            devices = {prepared[m.cfg.trial_id].device for m in members}
            if len(devices) > 1:
                raise ValueError(f"the trials of a pack resolve to different devices {sorted(map(str, devices))}")
            train_started = time.perf_counter()
            try:
                train_pack(members, devices.pop())
            except BaseException as exc:  # the shared training failed: every trial still in it failed
                for m in members:
                    if m.error is None:
                        m.error = exc
                if not isinstance(exc, Exception):
                    raise
            train_s = time.perf_counter() - train_started  # shared: the pack's training time
        for m in members:
            p = prepared[m.cfg.trial_id]
            if m.error is not None:
                failed(m.cfg, m.error, p.device)
                continue
            try:  # each trial attacked as the plain model a separate run would have
                outcomes[m.cfg.trial_id] = Outcome(m.cfg, finish_trial(m.cfg, p, m.result, out_root, cache_dir,
                                                                       clock, node, train_s))
            except Exception as exc:  # noqa: BLE001 - one trial's failing attack is that trial's
                failed(m.cfg, exc, p.device)
    except BaseException as exc:
        for m in members:  # interrupted: leave no half-written trial behind
            if m.cfg.trial_id not in outcomes:
                fail_trial(m.cfg, exc, out_root, False, m.cfg.device, clock, node)
        raise
    finally:
        torch.set_num_threads(threads_before)
    return [outcomes[cfg.trial_id] for cfg in cfgs]
