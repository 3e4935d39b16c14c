"""Trials that cannot succeed are not run: those whose source model failed are recorded as `blocked`.

A trial with a transferred attack reads its source's checkpoint (`<sweep>/checkpoints/<source id>.pt`).
When the source failed, running the trial would only fail again after its whole training, as many times as it is
retried. Instead it gets a trials row with status `blocked` and an error naming the source and the source's own
error. `blocked` is not a complete status: a relaunch runs the source again, then the trials it unblocks.
"""

from __future__ import annotations

from orchestrator.sweepdir.tables import read_table, record_status, trial_values
from pixelreg_core.config import TrialConfig

BLOCKED = "blocked"


def skip_blocked(sweep_dir: str, *groups: list[TrialConfig], log=print) -> tuple[list[TrialConfig], ...]:
    """Each group without the trials whose source model has no `ok` row; those get a `blocked` row instead."""
    trials = read_table(sweep_dir, "trials")
    status, errors = trial_values(trials, "status"), trial_values(trials, "error")
    kept, blocked = [], 0
    for group in groups:
        runnable = []
        for cfg in group:
            source = cfg.source_model
            if source is None or status.get(source) == "ok":
                runnable.append(cfg)
                continue
            reason = errors.get(source) or f"status {status.get(source, 'missing')}"
            record_status(sweep_dir, cfg, BLOCKED, f"not run: its source model {source} failed ({reason})"[:2000])
            blocked += 1
        kept.append(runnable)
    if blocked:
        log(f"{blocked} trial(s) blocked, not run: their source model failed (orchestrator status lists why)")
    return tuple(kept)


def exit_code(statuses: dict[str, str]) -> int:
    """1 when any trial ended failed or blocked (scripts and schedulers must notice), else 0."""
    return 1 if any(s in ("failed", BLOCKED) for s in statuses.values()) else 0
