"""Fault injection for the reliability tests and scripts/soak.py: real failures at the end of an epoch.

Off unless the environment variable PIXELREG_FAULTS holds a JSON object, or `@FILE` naming a JSON file (Ray
workers inherit the environment of the process that started Ray, so setting it before a launch reaches every
trial):

    {"dir": "/tmp/marks",                       # required: one marker file per fault that fired
     "rates": {"raise": 0.1, "nan": 0.05, "sigkill": 0.05}, "seed": 0,   # random faults, or
     "faults": [{"trial": "<trial_id or *>", "epoch": 2, "kind": "raise"}]}  # explicit ones

Kinds: `raise` (an exception in the trainer), `nan` (the model's first parameter is set to NaN, so the next step's
loss is NaN and the trainer's own check stops the trial), `sigkill` (the worker process kills itself). A fault fires
after the epoch's checkpoint is saved and reported, and at most once per (trial, epoch, kind): its marker file is
created first, so the retry or the relaunch runs on. Random faults are decided by a hash of (seed, trial, epoch,
kind), so a soak run is repeatable. Nothing here touches results: the failures go through the same code paths as
real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

ENV = "PIXELREG_FAULTS"
KINDS = ("raise", "nan", "sigkill")


class InjectedFault(RuntimeError):
    """The exception a `raise` fault throws."""


def _plan() -> dict[str, Any] | None:
    """The plan from PIXELREG_FAULTS: JSON, or `@FILE` naming a JSON file read at every epoch (a test can then
    change the plan after the Ray workers, which inherit the variable, have started)."""
    text = os.environ.get(ENV)
    if text and text.startswith("@"):
        path = Path(text[1:])
        text = path.read_text() if path.is_file() else None
    return json.loads(text) if text else None


def _uniform(seed: int, trial_id: str, epoch: int, kind: str) -> float:
    digest = hashlib.sha256(f"{seed}/{trial_id}/{epoch}/{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def due(plan: dict[str, Any], trial_id: str, epoch: int) -> list[str]:
    """The kinds of fault planned for this trial after this epoch (before the once-only markers)."""
    kinds = [f["kind"] for f in plan.get("faults", [])
             if f.get("trial", "*") in ("*", trial_id) and int(f["epoch"]) == epoch]
    seed = int(plan.get("seed", 0))
    kinds += [kind for kind, rate in plan.get("rates", {}).items() if _uniform(seed, trial_id, epoch, kind) < rate]
    return [k for k in KINDS if k in kinds]


def _claim(folder: str, trial_id: str, epoch: int, kind: str) -> bool:
    """Create the fault's marker; False when it exists (the fault already fired once)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(os.path.join(folder, f"{trial_id}-{epoch}-{kind}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def after_epoch(trial_id: str, epoch: int, model: Any) -> None:
    """Fire the faults planned for (trial, epoch), each once. Called by the trainer after every epoch."""
    plan = _plan()
    if plan is None:
        return
    for kind in due(plan, trial_id, epoch):
        if not _claim(plan["dir"], trial_id, epoch, kind):
            continue
        if kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "raise":
            raise InjectedFault(f"injected fault after epoch {epoch}")
        if kind == "nan":
            import torch

            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
