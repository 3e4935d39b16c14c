"""Fault injection for the reliability tests and scripts/soak.py: real failures at the end of an epoch.

Off unless the environment variable PIXELREG_FAULTS holds a JSON object, or `@FILE` naming a JSON file (Ray
workers inherit the environment of the process that started Ray, so setting it before a launch reaches every
trial):

    {"dir": "/tmp/marks",                       # required: one marker file per fault that fired
     "rates": {"raise": 0.1, "nan": 0.05, "sigkill": 0.05}, "seed": 0,   # random faults, or
     "faults": [{"trial": "<trial_id or *>", "epoch": 2, "kind": "raise"}]}  # explicit ones

A full disk: `{"dir": ..., "faults": [{"trial": "<trial_id or *>", "kind": "enospc"}]}` makes the first local write
through pixelreg_core.results whose path names that trial fail as a full disk does (half the bytes written, then
OSError ENOSPC), and from then on every write fails the same way (the disk stays full) until the marker
`<dir>/disk-full` is removed (space is back). It fires once, at the write layer, not after an epoch.

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


DISK_FULL_MARKER = "disk-full"


def check_write(path: str) -> None:
    """Called by the write layer on a written temp file before it is renamed in: fails it like a full disk when
    the plan says so (see the module docstring)."""
    plan = _plan()
    if plan is None:
        return
    marker = Path(plan["dir"], DISK_FULL_MARKER)
    if not marker.exists():
        wanted = [f.get("trial", "*") for f in plan.get("faults", []) if f["kind"] == "enospc"]
        hit = next((t for t in wanted if t == "*" or t in os.path.basename(path)), None)
        if hit is None or not _claim(plan["dir"], hit.replace("*", "any"), 0, "enospc"):  # once per fault
            return
        marker.touch()
    import errno

    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # what a full disk leaves: the start of the file
        f.truncate(size // 2)
    raise OSError(errno.ENOSPC, "No space left on device (injected)", path)


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
