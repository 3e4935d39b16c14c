"""Several trials end to end as one seed pack: each prepared as its own run prepares it, trained together, then
attacked and written one by one as a plain model (its slice of the grouped weights), so each trial's rows, id and
checkpoint are the ones a separate run writes.

A failure of one trial (bad input, a non-finite loss, an attack that raises) is that trial's: it gets what
run_trial leaves for a failure (no tables; a failed trials row with `record_failure`), the others go on. Only a
failure of the shared training (out of memory, say) fails every trial still training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pixelreg_core.checkpoint import EpochCheckpoint
from pixelreg_core.config import TrialConfig
from pixelreg_core.errors import error_line
from pixelreg_core.failures import forget_frames, release_memory
from pixelreg_core.kernels import kernel_settings
from pixelreg_core.pack.key import check_pack
from pixelreg_core.pack.train import Member, train_pack
from pixelreg_core.trial import Clock, TrialRun, check_trial, fail_trial, finish_trial, prepare_trial


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
    runs = {cfg.trial_id: TrialRun.of(cfg, out_root, cache_dir, record_failure=record_failure, node=node, clock=clock)
            for cfg in cfgs}
    train_s = 0.0
    threads_before = torch.get_num_threads()
    outcomes: dict[str, Outcome] = {}
    members, prepared = [], {}

    def failed(cfg: TrialConfig, exc: BaseException, device: Any) -> None:
        forget_frames(exc)  # the Outcome keeps the error, not the grouped model and graph its frames held
        fail_trial(runs[cfg.trial_id], exc, device)
        outcomes[cfg.trial_id] = Outcome(cfg, {"trial_id": cfg.trial_id, "status": "failed",
                                               "error": error_line(exc)}, exc)

    settings = contextlib.ExitStack()  # the kernel options (tf32) over the pack's training and every evaluation
    try:
        for cfg in cfgs:
            device: Any = cfg.device
            try:
                device, attack_options = check_trial(cfg)
                prepared[cfg.trial_id] = p = prepare_trial(cfg, device, attack_options)
            except Exception as exc:  # noqa: BLE001 - bad input of one trial is that trial's failure
                failed(cfg, exc, device)
                continue
            resume = EpochCheckpoint.for_trial(runs[cfg.trial_id].out_root, cfg)
            members.append(Member(cfg, p.data, p.model, p.target, resume,
                                  on_epoch=None if on_epoch is None else (lambda row, c=cfg: on_epoch(c, row))))
        if members:
            devices = {prepared[m.cfg.trial_id].device for m in members}
            if len(devices) > 1:
                raise ValueError(f"the trials of a pack resolve to different devices {sorted(map(str, devices))}")
            device = devices.pop()
            settings.enter_context(kernel_settings(members[0].cfg, device))  # check_pack: one set of options
            train_started = time.perf_counter()
            try:
                train_pack(members, device)
            except BaseException as exc:  # the shared training failed: every trial still in it failed
                for m in members:
                    if m.error is None:
                        m.error = exc
                if not isinstance(exc, Exception):
                    raise
                forget_frames(exc)  # out of memory, say: the grouped network goes before the attacks run
                release_memory()
            train_s = time.perf_counter() - train_started  # shared: the pack's training time
        for m in members:
            p = prepared[m.cfg.trial_id]
            if m.error is not None:
                failed(m.cfg, m.error, p.device)
                continue
            try:  # each trial attacked as the plain model a separate run would have
                outcomes[m.cfg.trial_id] = Outcome(m.cfg, finish_trial(runs[m.cfg.trial_id], p, m.result, train_s))
            except Exception as exc:  # noqa: BLE001 - one trial's failing attack is that trial's
                failed(m.cfg, exc, p.device)
    except BaseException as exc:
        for m in members:  # interrupted: leave no half-written trial behind
            if m.cfg.trial_id not in outcomes:
                fail_trial(dataclasses.replace(runs[m.cfg.trial_id], record_failure=False), exc, m.cfg.device)
        raise
    finally:
        settings.close()
        torch.set_num_threads(threads_before)
    return [outcomes[cfg.trial_id] for cfg in cfgs]
