"""The training loop: L = L_task + alpha * L_sim, one classification batch and one pair batch per step.

SGD with momentum and the authors' cyclic schedule; the reported model is the epoch with the lowest validation
loss. Everything random draws from one seeded generator, so a config and seed give the same numbers on CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .config import ConfigError, TrialConfig
from .data import DataBundle, augment_batch
from .model import PairResNet
from .targets import similarity_loss


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


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start indices of the classification batches of one epoch: all batches full but the last, except that a
    last batch of a single image is folded into the one before it. BatchNorm cannot train on one image whose
    feature map has shrunk to 1 x 1 (8 x 8 digits after three stride-2 stages): it would stop the trial."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def learning_rate(cfg: TrialConfig, epoch: int) -> float:
    """Cycles of `cycle_phases` phases of `phase_epochs` epochs; lr * decay**phase, restarting each cycle."""
    phase = (epoch // cfg.phase_epochs) % cfg.cycle_phases
    return cfg.lr * cfg.lr_decay**phase


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int  # 1-based
    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        return self.epochs[self.best_epoch - 1]


@torch.no_grad()
def evaluate_split(model: PairResNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return loss / max(len(x), 1), correct / max(len(x), 1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def train(cfg: TrialConfig, data: DataBundle, model: PairResNet, target: Any | None, device: torch.device,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train `model` on `data`; `target` (from target_kinds.build_target) is None for an unregularized model."""
    generator = torch.Generator().manual_seed(cfg.seed)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    valid_x, valid_y = data.valid_x.to(device), data.valid_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    reg_x = getattr(target, "images", None)
    reg_x = (reg_x if reg_x is not None else data.reg_x).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    regularized = cfg.regularized
    if regularized and target is None:
        raise ValueError(f"alpha is {cfg.alpha} but no target was given; build one with target_kinds.build_target")

    result = TrainResult(best_state={}, best_epoch=0)
    best_valid = float("inf")
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(len(train_x), generator=generator).to(device)
        sums = {"cls": 0.0, "sim": 0.0, "correct": 0, "seen": 0, "steps": 0}
        s_cnn_all, s_target_all = [], []
        starts = batch_starts(len(order), cfg.batch_size)
        for step, start in enumerate(starts):
            idx = order[start:starts[step + 1] if step + 1 < len(starts) else len(order)]
            x, y = train_x[idx], train_y[idx]
            if data.augment:
                x = augment_batch(x, generator)
            logits = model(x)
            loss_cls = F.cross_entropy(logits, y)
            loss = loss_cls
            if regularized:
                i, j, s_target = target.sample(cfg.reg_pairs, generator)
                s_cnn = model.pair_similarity(reg_x[i.to(device)], reg_x[j.to(device)])
                s_target = s_target.to(device=device, dtype=s_cnn.dtype)
                loss_sim = similarity_loss(s_cnn, s_target, arctanh=cfg.arctanh)
                loss = loss_cls + cfg.alpha * loss_sim
                sums["sim"] += loss_sim.item()
                s_cnn_all.append(s_cnn.detach().cpu())
                s_target_all.append(s_target.detach().cpu())
            if not torch.isfinite(loss):
                culprit = "alpha" if regularized else "lr"
                raise ConfigError(culprit, f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                                           f"(lr {lr:g}, alpha {cfg.alpha:g}); lower lr or alpha")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums["cls"] += loss_cls.item()
            sums["correct"] += (logits.argmax(1) == y).sum().item()
            sums["seen"] += len(y)
            sums["steps"] += 1

        valid_loss, valid_acc = evaluate_split(model, valid_x, valid_y)
        _, test_acc = evaluate_split(model, test_x, test_y)
        if not torch.isfinite(torch.tensor(valid_loss)):
            raise ConfigError("lr", f"the validation loss became {valid_loss} at epoch {epoch + 1}; lower lr or alpha")
        row = {
            "epoch": epoch + 1, "lr": lr,
            "loss_cls": sums["cls"] / sums["steps"],
            "loss_sim": sums["sim"] / sums["steps"] if regularized else None,
            "sim_corr": _pearson(torch.cat(s_cnn_all), torch.cat(s_target_all)) if regularized else None,
            "train_acc": sums["correct"] / sums["seen"],
            "valid_loss": valid_loss, "valid_acc": valid_acc, "test_acc": test_acc,
            "seconds": time.perf_counter() - started,
        }
        result.epochs.append(row)
        if valid_loss < best_valid:  # ties keep the earlier epoch
            best_valid = valid_loss
            result.best_epoch = epoch + 1
            result.best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(dict(row))
    return result
