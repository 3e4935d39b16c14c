"""Per-epoch training checkpoints: a trial stopped after epoch k resumes at epoch k + 1 with the same numbers.

After every epoch the trainer saves everything the next epoch depends on: model (with its running statistics),
optimizer (momentum buffers), the schedule position (epochs done), the trial's torch.Generator (batches, pairs,
augmentation) and torch's global RNG, where the target's pair order stands, the epoch rows so far, the untrained
model's figures and the best state so far. On CPU, restoring all of it makes the rest of the run bit-identical to
an uninterrupted one (tests/test_checkpoint.py checks every table).

The file is `OUT/checkpoints/running/<trial_id>.pt`, written whole (temp file + rename locally, one PUT on an object
store) through pixelreg_core.results, so a crash mid-save leaves the previous epoch's checkpoint. It is removed
once the trial's rows are written; a failed trial keeps it, so a relaunch resumes from its last finished epoch.
A file that cannot be read, or that belongs to another trial, is ignored: the trial then starts from epoch 1.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import torch

from pixelreg_core.results import delete_file, join, read_bytes, write_bytes

FORMAT = 1


def running_path(out_root: str | os.PathLike, trial_id: str) -> str:
    return join(out_root, "checkpoints", "running", f"{trial_id}.pt")


@dataclass
class EpochCheckpoint:
    """The resume file of one trial; `train` calls `restore` once and `save` after every epoch."""

    path: str
    trial_id: str
    epochs: int  # the trial's epoch count: a file with more epochs done than that is not this trial's

    @classmethod
    def for_trial(cls, out_root: str | os.PathLike, cfg: Any) -> EpochCheckpoint:
        return cls(running_path(out_root, cfg.trial_id), cfg.trial_id, cfg.epochs)

    def save(self, *, epochs_done: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, rows: list[dict[str, Any]], best_state: dict[str, torch.Tensor],
             best_epoch: int, best_valid: float, untrained: dict[str, Any] | None = None,
             target: Any | None = None) -> None:
        state = {
            "format": FORMAT, "trial_id": self.trial_id, "epochs_done": epochs_done,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "rows": rows, "best_state": best_state, "best_epoch": best_epoch, "best_valid": best_valid,
            "untrained": untrained,
            # where the target's pair order stands (pair_draw without_replacement); {} for a stateless target
            "target": target.state_dict() if hasattr(target, "state_dict") else {},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes(self.path, buffer.getvalue())

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none usable (missing, unreadable, another trial's)."""
        data = read_bytes(self.path)
        if data is None:
            return None
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged file only means starting over
            return None
        if (not isinstance(state, dict) or state.get("format") != FORMAT or state.get("trial_id") != self.trial_id
                or not 0 < int(state.get("epochs_done", 0)) <= self.epochs):
            return None
        return state

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                target: Any | None = None) -> dict[str, Any] | None:
        """Load the last checkpoint into model, optimizer, RNGs and the target's pair order; returns it (rows,
        best_*) or None."""
        state = self.load()
        if state is None:
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if hasattr(target, "load_state_dict"):
            target.load_state_dict(state.get("target") or {})
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state

    def remove(self) -> None:
        delete_file(self.path)
