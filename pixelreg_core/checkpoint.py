"""Per-epoch training checkpoints: a trial stopped after epoch k resumes at epoch k + 1 with the same numbers.

After every epoch the trainer saves everything the next epoch depends on: model (with its running statistics),
optimizer (momentum buffers), the schedule position (epochs done), the trial's torch.Generator (batches, pairs,
augmentation) and torch's global RNG, where the target's pair order stands, the epoch rows so far, the untrained
model's figures and the best state so far. On CPU, restoring all of it makes the rest of the run bit-identical to
an uninterrupted one (tests/test_checkpoint.py checks every table).

Two files, so that each is written only when it changes: `OUT/checkpoints/running/<trial_id>.pt` (model, optimizer,
RNGs, rows: every epoch) and `OUT/checkpoints/running/<trial_id>.best-<epoch>.pt` (the best state, a third of the
bytes: written only in an epoch that improves the validation loss). The best file of a new epoch is written
before the epoch file that names it, and the previous best file is deleted only after, so a crash at any point
leaves an epoch file whose best file exists. Each is written whole (temp file + rename locally, one PUT on an object
store) through pixelreg_core.results, so a crash mid-save leaves the previous epoch's checkpoint. They are removed
once the trial's rows are written; a failed trial keeps them, so a relaunch resumes from its last finished epoch.
`benchmarks/bench_checkpoint.py` prints the bytes per epoch at width 64.
A file that belongs to another trial is ignored: the trial then starts from epoch 1. So is a file that cannot be
read (damaged, zero length), with one line, and it is moved into the sweep's quarantine/ folder, never deleted
(pixelreg_core.results.quarantine).
So is one saved on another kind of device (the device is not part of the trial id, so a trial stopped on a GPU
may be relaunched on a CPU): a CPU generator's state (5,056 bytes) cannot be put into a CUDA generator (16 bytes)
or the reverse, and continuing with another stream would give numbers neither device would give; the trial says
so in one line, drops the file and starts from epoch 1 on the new device, instead of failing at every relaunch.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from pixelreg_core.results import delete_file, is_uri, join, read_bytes, write_bytes

FORMAT = 2  # 2: the best state in its own file; a format-1 file (best state inside) is still read


def running_path(out_root: str | os.PathLike, trial_id: str) -> str:
    return join(out_root, "checkpoints", "running", f"{trial_id}.pt")


@dataclass
class EpochCheckpoint:
    """The resume file of one trial; `train` calls `restore` once and `save` after every epoch."""

    path: str
    trial_id: str
    epochs: int  # the trial's epoch count: a file with more epochs done than that is not this trial's
    best_saved: int | None = None  # the epoch (0: the untrained model) whose best file is on disk; None: none

    out_root: str | None = None  # the sweep folder (for_trial): where a damaged file is quarantined

    @classmethod
    def for_trial(cls, out_root: str | os.PathLike, cfg: Any) -> EpochCheckpoint:
        return cls(running_path(out_root, cfg.trial_id), cfg.trial_id, cfg.epochs, out_root=str(out_root))

    def best_path(self, epoch: int) -> str:
        # a URI's ?query (endpoint, region) stays last, where pyarrow reads it: the name changes before it
        text, sep, query = self.path.partition("?") if is_uri(self.path) else (self.path, "", "")
        return text.removesuffix(".pt") + f".best-{epoch}.pt" + sep + query

    def save(self, *, epochs_done: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, rows: list[dict[str, Any]], best_state: dict[str, torch.Tensor],
             best_epoch: int, best_valid: float, untrained: dict[str, Any] | None = None,
             target: Any | None = None) -> None:
        previous = self.best_saved
        if best_state and best_epoch != previous:  # first: the epoch file below must never name a missing one
            write_bytes(self.best_path(best_epoch), _serialise({"format": FORMAT, "trial_id": self.trial_id,
                                                                 "best_epoch": best_epoch, "best_state": best_state}))
            self.best_saved = best_epoch
        state = {
            "format": FORMAT, "trial_id": self.trial_id, "epochs_done": epochs_done,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(), "generator_device": generator.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "rows": rows, "best_epoch": best_epoch, "best_valid": best_valid, "best_file": self.best_saved,
            "untrained": untrained,
            # where the target's pair order stands (pair_draw without_replacement); {} for a stateless target
            "target": target.state_dict() if hasattr(target, "state_dict") else {},
        }
        write_bytes(self.path, _serialise(state))
        if previous is not None and previous != self.best_saved:  # last: until now the epoch file named it
            delete_file(self.best_path(previous))

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none usable (missing, unreadable, another trial's)."""
        state = self._read(self.path)
        if (not isinstance(state, dict) or state.get("format") not in (1, FORMAT)
                or state.get("trial_id") != self.trial_id or not 0 < int(state.get("epochs_done", 0)) <= self.epochs):
            return None
        if state["format"] == FORMAT:  # the best state lives in the best file the epoch file names (if any yet)
            state["best_state"] = {}
            if state.get("best_file") is not None:
                best = self._read(self.best_path(int(state["best_file"])))
                if (not isinstance(best, dict) or best.get("trial_id") != self.trial_id
                        or best.get("best_epoch") != state["best_file"]):
                    return None
                state["best_state"] = best["best_state"]
        return state

    def _read(self, path: str) -> Any:
        """The object saved at `path`; None when there is none, or when it cannot be read: then it is quarantined
        (with its epoch file, for a best file) and the trial starts from epoch 1."""
        data = read_bytes(path)
        state = _deserialise(data)
        if data is not None and state is None and self.out_root is not None:
            from pixelreg_core.results import quarantine

            relative = f"checkpoints/running/{os.path.basename(path.split('?', 1)[0])}"
            epoch_file = f"checkpoints/running/{self.trial_id}.pt"
            quarantine(self.out_root, relative, "not a readable torch file", f"the resume state of model "
                       f"{self.trial_id}", "the trial starts again from epoch 1",
                       also=[epoch_file] if relative != epoch_file else [])
        return state

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                target: Any | None = None) -> dict[str, Any] | None:
        """Load the last checkpoint into model, optimizer, RNGs and the target's pair order; returns it (rows,
        best_*) or None."""
        state = self.load()
        if state is None:
            return None
        other = other_device(state, generator)
        if other is not None:  # checked before anything is restored: nothing is left half-loaded
            print(f"checkpoint {self.path}: saved on {other}, but this trial runs on {generator.device.type}; its "
                  "random state cannot carry over, so the trial starts again from epoch 1", file=sys.stderr,
                  flush=True)
            self.remove()
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if hasattr(target, "load_state_dict"):
            target.load_state_dict(state.get("target") or {})
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.best_saved = state.get("best_file") if state["format"] == FORMAT else None
        return state

    def remove(self) -> None:
        """The epoch file and every best file (one a crash left between writing a best file and its epoch file
        too)."""
        delete_file(self.path)
        for epoch in range(0, self.epochs + 1):
            delete_file(self.best_path(epoch))


def _serialise(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _deserialise(data: bytes | None) -> Any:
    """The saved object, or None for a missing or damaged file (a damaged file only means starting over)."""
    if data is None:
        return None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        return None


def other_device(state: dict[str, Any], generator: torch.Generator) -> str | None:
    """The device type a checkpoint's generator was saved on when it is not `generator`'s, else None. Files from
    before `generator_device` was saved are told apart by the state's size, which differs between devices."""
    saved = state.get("generator_device")
    if saved is not None and saved != generator.device.type:
        return str(saved)
    if state["generator"].numel() != generator.get_state().numel():
        return saved or f"another device ({state['generator'].numel()}-byte generator state)"
    return None
