"""The training loop: L = L_task + alpha * L_sim, one classification batch and one pair batch per step.

SGD with momentum and the authors' cyclic schedule; the reported model is the epoch `select` picks: by default the
lowest validation loss among the untrained model (epoch 0, `select_untrained`) and epochs 1..E, as the authors'
code does. Everything random draws from one seeded generator, so a config and seed give the same numbers on CPU.

A step never waits on the host. On a GPU every value read back to Python (`.item()`, `bool(t)`, `.cpu()`, an `if`
on a tensor) stalls the Python thread until the GPU has run all queued work, so a step that reads one loss cannot
run ahead of the GPU. Here the data, the generator (batch order, augmentation, pair sampling) and every per-step
number stay on the trial's device: losses, correct counts and the (S_cnn, S_target) pairs of `sim_corr` are kept
as device tensors and read once per epoch (`hostreads.py` counts the reads; tests/test_gpu_step.py shows they do
not grow with the number of steps). A non-finite loss is found in that once-per-epoch read, before the epoch's
model is validated or kept, and stops the trial with the same message naming the first bad step; the steps after
it ran on NaN weights that are never evaluated or saved.

On CPU the arithmetic is the same as a loop that reads every value at once (the per-step numbers are float32
values summed in Python floats in step order), so CPU results are bit-identical to that simpler loop.
Kernel options (`amp`, `channels_last`, `fused_sgd`, `cudnn_benchmark`, `tf32`, `compile`) change how the step runs;
all off is the plain float32 step, on CUDA too (`tf32` off turns off the TF32 convolutions cuDNN defaults to).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pixelreg_core.checkpoint import EpochCheckpoint
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data.bundle import DataBundle, augment_batch
from pixelreg_core.data.placement import DeviceImages, images_for
from pixelreg_core.hooks import faults
from pixelreg_core.kernels import autocast, compile_session, kernel_settings, make_optimizer, uses_channels_last
from pixelreg_core.model import PairResNet, eval_logits
from pixelreg_core.targets.builders import similarity_loss


def train(cfg: TrialConfig, data: DataBundle, model: PairResNet, target: Any | None, device: torch.device,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          checkpoint: EpochCheckpoint | None = None) -> TrainResult:
    """Train `model` on `data`; `target` (from targets.registry.build_target) is None for an unregularized model.
    With `checkpoint`, training resumes after the last epoch saved there and saves after every epoch.

    Everything random draws from one generator on `device`; on CPU that is the generator the numbers always came
    from. Build the target from images on `device` too (trial.py does), so that its pairs are drawn there.
    """
    regularized = cfg.regularized
    if regularized and target is None:
        raise ValueError(f"alpha is {cfg.alpha} but no target was given; build one with targets.registry.build_target")
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    reg_x = getattr(target, "images", None)
    placed = PlacedData.of(data, reg_x if reg_x is not None else data.reg_x, device)
    channels_last = uses_channels_last(cfg, device, min(data.train_x.shape[-2:]))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model, device)
    step_fn = compiled_step(cfg)
    saved = checkpoint.restore(model, optimizer, generator, target) if checkpoint is not None else None
    result, best_valid = initial_result(cfg, model, placed, saved)
    with kernel_settings(cfg, device), compile_session(cfg):
        for epoch in range(result.resumed_from_epoch, cfg.epochs):
            started = time.perf_counter()
            lr = learning_rate(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            per_step, pairs = train_epoch(cfg, placed, data.augment, model, target, optimizer, step_fn, generator,
                                          channels_last)
            # The epoch's one read of its step numbers (a device synchronisation); a non-finite loss stops the
            # trial here, before this epoch's weights are validated or kept.
            rows = torch.stack(per_step).tolist()
            check_finite(cfg, rows, epoch, lr)
            pair_values = torch.cat(pairs, dim=1).cpu() if regularized else None

            # Evaluation in float32 whatever `amp` says, as every attack runs: clean_acc (the best epoch's
            # test_acc) and the attacks' accuracies are then numbers of the same model, and the validation loss
            # that picks the best epoch is not rounded to bf16.
            valid = evaluate_split(model, placed.valid_x, placed.valid_y)
            _, test_acc = evaluate_split(model, placed.test_x, placed.test_y)
            row = epoch_row(cfg, epoch, lr, rows, pair_values, valid, test_acc, len(placed.train_x), started)
            result.epochs.append(row)
            best_valid = keep_if_best(cfg, result, row, best_valid, model)
            if checkpoint is not None:
                checkpoint.save(epochs_done=epoch + 1, model=model, optimizer=optimizer, generator=generator,
                                rows=result.epochs, best_state=result.best_state, best_epoch=result.best_epoch,
                                best_valid=best_valid, untrained=result.untrained, target=target)
            if on_epoch is not None:
                on_epoch(dict(row))
            faults.after_epoch(cfg.trial_id, epoch + 1, model)  # test-only, off unless PIXELREG_FAULTS is set
    return result


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int  # 1-based; 0 is the untrained model (`select_untrained`)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # epochs 1..E, the rows of the epochs table
    resumed_from_epoch: int = 0  # epochs restored from a checkpoint (0: trained from the start)
    untrained: dict[str, Any] | None = None  # epoch 0's validation and test figures, when it was a candidate

    @property
    def best(self) -> dict[str, Any]:
        if self.best_epoch == 0:
            return self.untrained
        return self.epochs[self.best_epoch - 1]


def train_epoch(cfg: TrialConfig, placed: PlacedData, augment: bool, model: PairResNet, target: Any | None,
                optimizer: torch.optim.Optimizer, step_fn: Callable[..., tuple[torch.Tensor, ...]],
                generator: torch.Generator, channels_last: bool = False
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One epoch of steps with no read back to the host.

    Returns per step a device tensor (loss, loss_cls, loss_sim, correct) in float64 (exact for float32 values
    and counts), and per regularized step a [2, k] tensor (S_cnn, S_target): the caller reads them once.
    """
    device = placed.train_y.device
    order = torch.randperm(len(placed.train_x), generator=generator, device=generator.device)
    starts = batch_starts(len(order), cfg.batch_size)
    graphs = cfg.compile in ("reduce-overhead", "max-autotune") and device.type == "cuda"  # both capture graphs
    per_step, pairs = [], []
    for step, start in enumerate(starts):
        idx = order[start:starts[step + 1] if step + 1 < len(starts) else len(order)]
        x, y = placed.train_x.take(idx), placed.train_y[idx.to(device)]
        if augment:
            x = augment_batch(x, generator)
        xa = xb = s_target = None
        if target is not None:
            i, j, s_target = target.sample(cfg.reg_pairs, generator)
            xa, xb = placed.reg_x.take(i), placed.reg_x.take(j)
            s_target = s_target.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            if xa is not None:
                xa, xb = (t.contiguous(memory_format=torch.channels_last) for t in (xa, xb))
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        # a batch of another size (the epoch's last) runs eager: compiling it would add a second graph per trial
        run_step = step_fn if len(idx) == cfg.batch_size else step_losses
        loss, loss_cls, loss_sim, correct, s_cnn = run_step(model, x, y, xa, xb, s_target, cfg.alpha, cfg.arctanh,
                                                            cfg.amp)
        # Copies taken before backward: with CUDA graphs the next replay reuses the outputs' memory.
        per_step.append(torch.stack([loss.detach(), loss_cls.detach(),
                                     (loss_cls if loss_sim is None else loss_sim).detach(),
                                     correct.to(loss.dtype)]).double())
        if s_cnn is not None:
            pairs.append(torch.stack([s_cnn.detach(), s_target.to(s_cnn.dtype)]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return per_step, pairs


def step_losses(model: PairResNet, x: torch.Tensor, y: torch.Tensor, xa: torch.Tensor | None,
                xb: torch.Tensor | None, s_target: torch.Tensor | None, alpha: float, arctanh: bool, amp: bool
                ) -> tuple[torch.Tensor, ...]:
    """The forward half of one step, as one function so `compile` can trace it whole.

    Returns (loss, loss_cls, loss_sim, correct, s_cnn); loss_sim and s_cnn are None for an unregularized step.
    Under `amp` the forward passes run in bf16 and the losses in float32.
    """
    with autocast(x.device, amp):
        logits = model(x)
        s_cnn = None if xa is None else model.pair_similarity(xa, xb)
    loss_cls = F.cross_entropy(logits.float(), y)
    correct = (logits.argmax(1) == y).sum()
    if s_cnn is None:
        return loss_cls, loss_cls, None, correct, None
    s_cnn = s_cnn.float()
    loss_sim = similarity_loss(s_cnn, s_target.to(s_cnn.dtype), arctanh=arctanh)
    return loss_cls + alpha * loss_sim, loss_cls, loss_sim, correct, s_cnn


def compiled_step(cfg: TrialConfig) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`step_losses`, through torch.compile when `compile` names a mode. "reduce-overhead" also captures CUDA
    graphs on CUDA (each step's outputs are copied out before the next replay overwrites them). Only full batches
    go through it (train_epoch): see `compile_session` for what keeps it at one graph per trial."""
    if cfg.compile == "none":
        return step_losses
    return torch.compile(step_losses, mode=None if cfg.compile == "default" else cfg.compile)


@torch.no_grad()
def evaluate_split(model: PairResNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, *,
                   amp: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode; one host read for the whole split."""
    model.eval()
    parts = []
    for start in range(0, len(x), batch_size):
        with autocast(x.device, amp):
            logits = eval_logits(model, x[start:start + batch_size])  # CPU: in cache-sized pieces, same logits
        target = y[start:start + batch_size]
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        parts.append(torch.stack([loss.double(), (logits.argmax(1) == target).sum().double()]))
    loss_sum, correct = 0.0, 0
    for batch_loss, batch_correct in (torch.stack(parts).tolist() if parts else []):
        loss_sum += batch_loss  # float32 sums added in Python floats, batch by batch
        correct += int(batch_correct)
    return loss_sum / max(len(x), 1), correct / max(len(x), 1)


@dataclass
class PlacedData:
    """The trial's tensors on its device: train and regularization images compact (placement.py), the small
    validation and test sets as float32, labels int64."""

    train_x: DeviceImages
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    reg_x: DeviceImages

    @classmethod
    def of(cls, data: DataBundle, reg_x: torch.Tensor, device: torch.device) -> PlacedData:
        """Train, test and regularization images from the process-wide device cache where the bundle says where
        they came from (placement.py), else copied from the bundle; labels and validation images per trial."""
        origin = data.origin or {}
        reg_origin = origin.get("reg") if reg_x is data.reg_x else None  # a matrix target brings its own images
        return cls(images_for(origin.get("train"), data.train_x, device), data.train_y.to(device),
                   data.valid_x.to(device), data.valid_y.to(device),
                   images_for(origin.get("test"), data.test_x, device).all(), data.test_y.to(device),
                   images_for(reg_origin, reg_x, device))


def initial_result(cfg: TrialConfig, model: PairResNet, placed: PlacedData, saved: dict[str, Any] | None
                   ) -> tuple[TrainResult, float]:
    """The result so far and its best `selection_score`: a checkpoint's, or none yet, with the untrained model
    as the first candidate (`select_untrained`)."""
    if saved is not None:
        return (TrainResult(best_state=saved["best_state"], best_epoch=saved["best_epoch"], epochs=saved["rows"],
                            resumed_from_epoch=saved["epochs_done"], untrained=saved.get("untrained")),
                saved["best_valid"])
    result, best_valid = TrainResult(best_state={}, best_epoch=0), float("inf")
    if cfg.select_untrained:
        # The authors' code validates the untrained model too: it is the reported one when no epoch beats it (a
        # diverged or harmful regularizer then reports chance accuracy instead of the least bad trained epoch).
        # Evaluation draws no random numbers, so the training that follows is the same with this on or off.
        valid_loss, valid_acc = evaluate_split(model, placed.valid_x, placed.valid_y)
        _, test_acc = evaluate_split(model, placed.test_x, placed.test_y)
        result.untrained = {"epoch": 0, "valid_loss": valid_loss, "valid_acc": valid_acc, "test_acc": test_acc}
        if math.isfinite(valid_loss):
            best_valid = selection_score(result.untrained, cfg.select)
            result.best_state = copy.deepcopy(model.state_dict())
    return result, best_valid


def learning_rate(cfg: TrialConfig, epoch: int) -> float:
    """Cycles of `cycle_phases` phases of `phase_epochs` epochs; lr * decay**phase, restarting each cycle."""
    phase = (epoch // cfg.phase_epochs) % cfg.cycle_phases
    return cfg.lr * cfg.lr_decay**phase


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start indices of the classification batches of one epoch: all batches full but the last, except that a
    last batch of a single image is folded into the one before it. BatchNorm cannot train on one image whose
    feature map has shrunk to 1 x 1 (8 x 8 digits after three stride-2 stages): it would stop the trial."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def check_finite(cfg: TrialConfig, rows: list[list[float]], epoch: int, lr: float) -> None:
    """A non-finite loss in the epoch's step rows stops the trial, naming the first bad step."""
    for step, (loss, _, _, _) in enumerate(rows):
        if not math.isfinite(loss):
            culprit = "alpha" if cfg.regularized else "lr"
            raise ConfigError(culprit, f"the loss became {loss} at epoch {epoch + 1}, step {step + 1} "
                                       f"(lr {lr:g}, alpha {cfg.alpha:g}); lower lr or alpha")


def epoch_row(cfg: TrialConfig, epoch: int, lr: float, rows: list[list[float]], pairs: torch.Tensor | None,
              valid: tuple[float, float], test_acc: float, train_images: int, started: float) -> dict[str, Any]:
    """The epochs-table row of an epoch from its step rows (loss, loss_cls, loss_sim, correct), its (S_cnn,
    S_target) pairs on the host (None unregularized) and its evaluation; a non-finite validation loss stops the
    trial."""
    valid_loss, valid_acc = valid
    if not math.isfinite(valid_loss):
        raise ConfigError("lr", f"the validation loss became {valid_loss} at epoch {epoch + 1}; lower lr or alpha")
    sum_cls, sum_sim, correct = 0.0, 0.0, 0
    for _, loss_cls, loss_sim, step_correct in rows:  # Python floats, in step order
        sum_cls += loss_cls
        sum_sim += loss_sim
        correct += int(step_correct)
    steps = len(rows)
    return {
        "epoch": epoch + 1, "lr": lr,
        "loss_cls": sum_cls / steps,
        "loss_sim": sum_sim / steps if cfg.regularized else None,
        "sim_corr": _pearson(pairs[0], pairs[1]) if pairs is not None else None,
        "train_acc": correct / train_images,
        "valid_loss": valid_loss, "valid_acc": valid_acc, "test_acc": test_acc,
        "seconds": time.perf_counter() - started,
    }


def selection_score(row: dict[str, Any], select: str) -> float:
    """The `select` rule as one number, lower is better: the validation loss, minus the validation accuracy, or
    minus the epoch (`last`). Ties keep the earlier epoch (the comparison is strict)."""
    if select == "valid_loss":
        return row["valid_loss"]
    if select == "valid_acc":
        return -row["valid_acc"]
    return -float(row["epoch"])


def keep_if_best(cfg: TrialConfig, result: TrainResult, row: dict[str, Any], best: float, model: PairResNet
                 ) -> float:
    """Keep the epoch's weights when `select` scores it better than the best so far (ties keep the earlier
    epoch); returns the best score."""
    score = selection_score(row, cfg.select)
    if score < best:
        result.best_epoch = row["epoch"]
        result.best_state = copy.deepcopy(model.state_dict())
        return score
    return best


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; asking for a device that is absent is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for but no GPU is visible; use device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", "mps was asked for but is not available; use device cpu or auto")
    return torch.device(name)

