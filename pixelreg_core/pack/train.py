"""The training loop of a seed pack: N trials' models trained as one grouped network (pack/model.py).

Each member keeps everything a separate run of its trial has: its own generator seeded with its seed (batch order,
augmentation, pairs drawn in the same order as train.py draws them), its own data (the validation holdout depends
on the seed), target, alpha, epoch rows, best epoch and per-epoch checkpoint, written in train.py's format (a
packed trial resumes separately and the reverse). One step concatenates the N batches along channels and
minimises the sum of the N losses: the models share no weights, so each one's gradient, and its SGD update, is
the one its own loss gives (tests/test_pack.py compares against separate steps).

A non-finite loss fails its own member only, at the once-per-epoch read as in train.py; the others are repacked
without it (weights, BatchNorm statistics, feature means and momenta sliced out) and go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pixelreg_core.checkpoint import EpochCheckpoint
from pixelreg_core.config import TrialConfig
from pixelreg_core.data.bundle import DataBundle, augment_batch
from pixelreg_core.failures import forget_frames, release_memory
from pixelreg_core.hooks import faults
from pixelreg_core.kernels import autocast, kernel_settings, make_optimizer, uses_channels_last
from pixelreg_core.model import PairResNet
from pixelreg_core.pack.key import check_pack
from pixelreg_core.pack.model import GroupedPairResNet, pack_state, unpack_state
from pixelreg_core.targets.builders import similarity_loss
from pixelreg_core.train import (
    PlacedData,
    TrainResult,
    batch_starts,
    check_finite,
    epoch_row,
    initial_result,
    keep_if_best,
    learning_rate,
)


@dataclass
class Member:
    """One trial of a pack: its inputs (as train.py takes them) and, after `train_pack`, its result or error."""

    cfg: TrialConfig
    data: DataBundle
    model: PairResNet  # the trial's initial model; after training it holds its last epoch's weights
    target: Any | None
    checkpoint: EpochCheckpoint | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    result: TrainResult | None = None
    error: BaseException | None = None
    # set up by train_pack
    generator: torch.Generator | None = field(default=None, repr=False)
    placed: PlacedData | None = field(default=None, repr=False)
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    best_valid: float = float("inf")


def train_pack(members: list[Member], device: torch.device) -> None:
    """Train every member; sets each one's `result`, or its `error` (the others go on).

    Members resumed from checkpoints at different epochs train as separate packs, one per resume point."""
    check_pack([m.cfg for m in members])
    for m in members:
        m.generator = torch.Generator(device=device).manual_seed(m.cfg.seed)
        reg_x = getattr(m.target, "images", None)
        m.placed = PlacedData.of(m.data, reg_x if reg_x is not None else m.data.reg_x, device)
        m.optimizer = make_optimizer(m.cfg, m.model, device)
        saved = (m.checkpoint.restore(m.model, m.optimizer, m.generator, m.target) if m.checkpoint is not None
                 else None)
        m.result, m.best_valid = initial_result(m.cfg, m.model, m.placed, saved)
    for split in ("train_x", "valid_x", "test_x"):
        sizes = sorted({len(getattr(m.placed, split)) for m in members})
        if len(sizes) > 1:
            raise ValueError(f"the trials of a pack have {split} of different sizes {sizes}; pack them apart")
    by_start: dict[int, list[Member]] = {}
    for m in members:
        by_start.setdefault(m.result.resumed_from_epoch, []).append(m)
    for start, group in sorted(by_start.items()):
        _train_group(group, start, device)


def _grouped(active: list[Member], device: torch.device, channels_last: bool
             ) -> tuple[GroupedPairResNet, torch.optim.Optimizer]:
    """The grouped network and its optimizer from the members' plain models and optimizers."""
    grouped = GroupedPairResNet.of([m.model for m in active])
    if channels_last:
        grouped.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(active[0].cfg, grouped, device)
    states = [m.optimizer.state_dict() for m in active]
    if states[0]["state"]:  # resumed (or repacked): the momenta, concatenated like the weights
        packed = optimizer.state_dict()
        packed["state"] = {idx: pack_state([s["state"][idx] for s in states]) for idx in states[0]["state"]}
        optimizer.load_state_dict(packed)
    return grouped, optimizer


def _unpack_into(grouped: GroupedPairResNet, optimizer: torch.optim.Optimizer, active: list[Member]) -> None:
    """Each member's plain model and optimizer get its slice of the grouped weights and momenta."""
    state = grouped.state_dict()
    opt_state = optimizer.state_dict()
    for n, m in enumerate(active):
        m.model.load_state_dict(unpack_state(state, n, len(active)))
        own = m.optimizer.state_dict()
        own["state"] = {idx: unpack_state(entry, n, len(active)) for idx, entry in opt_state["state"].items()}
        m.optimizer.load_state_dict(own)


def _train_group(active: list[Member], start: int, device: torch.device) -> None:
    cfg = active[0].cfg  # the shared fields: schedule, batch size, kernel options
    channels_last = uses_channels_last(cfg, device)
    grouped, optimizer = _grouped(active, device, channels_last)
    with kernel_settings(cfg, device):
        for epoch in range(start, cfg.epochs):
            started = time.perf_counter()
            lr = learning_rate(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            grouped.train()
            per_step, pairs = packed_epoch(active, grouped, optimizer, channels_last)
            rows = torch.stack(per_step).tolist()  # [steps][N][4]: the epoch's one read of its step numbers
            # float32 whatever `amp` says, as train.py evaluates (and every attack runs)
            valid = evaluate_pack(grouped, [m.placed.valid_x for m in active], [m.placed.valid_y for m in active])
            test = evaluate_pack(grouped, [m.placed.test_x for m in active], [m.placed.test_y for m in active])
            _unpack_into(grouped, optimizer, active)  # each member's own weights: its best state and checkpoint
            failed = []  # a failed member is dropped: the others are repacked without it
            for n, m in enumerate(active):
                try:
                    _finish_epoch(m, epoch, lr, [r[n] for r in rows],
                                  torch.cat([p[n] for p in pairs], dim=1).cpu() if pairs else None,
                                  valid[n], test[n][1], started)
                    faults.after_epoch(m.cfg.trial_id, epoch + 1, _MemberView(grouped, n))
                except Exception as exc:  # noqa: BLE001 - one member's failure is its trial's, not the pack's
                    forget_frames(exc)  # its frames hold the grouped network and graph: the others go on
                    m.error, m.result = exc, None
                    failed.append(m)
            if failed:
                _unpack_into(grouped, optimizer, active)  # again: a fault may have changed the weights since
                active = [m for m in active if m not in failed]
                if not active:
                    return
                grouped, optimizer = _grouped(active, device, channels_last)
                release_memory()  # the larger grouped network, its momenta and graph


def _finish_epoch(m: Member, epoch: int, lr: float, rows: list[list[float]], pairs: torch.Tensor | None,
                  valid: tuple[float, float], test_acc: float, started: float) -> None:
    """train.py's end of an epoch for one member: the finite checks, its row, best epoch, checkpoint, report.
    The row's `seconds` is the pack's epoch, shared by its members."""
    check_finite(m.cfg, rows, epoch, lr)
    row = epoch_row(m.cfg, epoch, lr, rows, pairs, valid, test_acc, len(m.placed.train_x), started)
    m.result.epochs.append(row)
    m.best_valid = keep_if_best(m.cfg, m.result, row, m.best_valid, m.model)
    if m.checkpoint is not None:
        m.checkpoint.save(epochs_done=epoch + 1, model=m.model, optimizer=m.optimizer, generator=m.generator,
                          rows=m.result.epochs, best_state=m.result.best_state, best_epoch=m.result.best_epoch,
                          best_valid=m.best_valid, untrained=m.result.untrained, target=m.target)
    if m.on_epoch is not None:
        m.on_epoch(dict(row))


class _MemberView:
    """Model n's slices of the grouped parameters, for faults.after_epoch (a `nan` fault hits that model only)."""

    def __init__(self, grouped: GroupedPairResNet, n: int):
        self.grouped, self.n = grouped, n

    def parameters(self):
        for p in self.grouped.parameters():
            yield p.chunk(self.grouped.n, dim=0)[self.n]


def packed_step_losses(model: GroupedPairResNet, x: torch.Tensor, y: torch.Tensor, xa: torch.Tensor | None,
                       xb: torch.Tensor | None, s_target: torch.Tensor | None, alpha: torch.Tensor,
                       arctanh: bool, amp: bool) -> tuple[torch.Tensor, ...]:
    """train.step_losses for N models: x [B, N*C, H, W], y [B, N], s_target [k, N], alpha [N].

    Returns (sum of the N losses, loss [N], loss_cls [N], loss_sim [N] or None, correct [N], s_cnn [k, N] or
    None); each model's loss is the mean over its own batch, as in a separate step."""
    with autocast(x.device, amp):
        logits = model(x)  # [B, N, classes]
        s_cnn = None if xa is None else model.pair_similarity(xa, xb)
    loss_cls = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none").mean(dim=0)
    correct = (logits.argmax(2) == y).sum(dim=0)
    if s_cnn is None:
        return loss_cls.sum(), loss_cls, loss_cls, None, correct, None
    s_cnn = s_cnn.float()
    loss_sim = similarity_loss(s_cnn, s_target.to(s_cnn.dtype), arctanh=arctanh, dim=0)
    loss = loss_cls + alpha * loss_sim
    return loss.sum(), loss, loss_cls, loss_sim, correct, s_cnn


def packed_epoch(active: list[Member], model: GroupedPairResNet, optimizer: torch.optim.Optimizer,
                 channels_last: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """train.train_epoch for a pack: per step a [N, 4] float64 device tensor, per regularized step [N, 2, k]."""
    cfg = active[0].cfg
    device = active[0].placed.train_y.device
    orders = [torch.randperm(len(m.placed.train_x), generator=m.generator, device=m.generator.device)
              for m in active]
    starts = batch_starts(len(orders[0]), cfg.batch_size)
    regularized = active[0].target is not None
    alpha = torch.tensor([m.cfg.alpha for m in active], device=device)
    per_step, pairs = [], []
    for step, start in enumerate(starts):
        end = starts[step + 1] if step + 1 < len(starts) else len(orders[0])
        xs, ys, xas, xbs, targets = [], [], [], [], []
        for m, order in zip(active, orders, strict=True):  # each member draws from its generator as train.py does
            idx = order[start:end]
            x = m.placed.train_x.take(idx)
            if m.data.augment:
                x = augment_batch(x, m.generator)
            xs.append(x)
            ys.append(m.placed.train_y[idx.to(device)])
            if regularized:
                i, j, s_target = m.target.sample(cfg.reg_pairs, m.generator)
                xas.append(m.placed.reg_x.take(i))
                xbs.append(m.placed.reg_x.take(j))
                targets.append(s_target.to(device))
        x, y = torch.cat(xs, dim=1), torch.stack(ys, dim=1)
        xa = xb = s_target = None
        if regularized:
            xa, xb, s_target = torch.cat(xas, dim=1), torch.cat(xbs, dim=1), torch.stack(targets, dim=1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            if xa is not None:
                xa, xb = (t.contiguous(memory_format=torch.channels_last) for t in (xa, xb))
        total, loss, loss_cls, loss_sim, correct, s_cnn = packed_step_losses(
            model, x, y, xa, xb, s_target, alpha, cfg.arctanh, cfg.amp)
        per_step.append(torch.stack([loss.detach(), loss_cls.detach(),
                                     (loss_cls if loss_sim is None else loss_sim).detach(),
                                     correct.to(loss.dtype)], dim=1).double())
        if s_cnn is not None:
            pairs.append(torch.stack([s_cnn.detach().T, s_target.to(s_cnn.dtype).T], dim=1))  # [N, 2, k]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return per_step, pairs


@torch.no_grad()
def evaluate_pack(model: GroupedPairResNet, xs: list[torch.Tensor], ys: list[torch.Tensor], batch_size: int = 512
                  ) -> list[tuple[float, float]]:
    """train.evaluate_split for each member on its own split (all of one size): [(mean loss, accuracy)] * N."""
    model.eval()
    n_images = len(xs[0])
    parts = []
    for start in range(0, n_images, batch_size):
        x = torch.cat([v[start:start + batch_size] for v in xs], dim=1)
        y = torch.stack([t[start:start + batch_size] for t in ys], dim=1)
        logits = model(x)
        loss = F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").sum(dim=0)
        parts.append(torch.stack([loss.double(), (logits.argmax(2) == y).sum(dim=0).double()], dim=1))
    sums = torch.stack(parts).tolist() if parts else []  # [batches][N][2]
    out = []
    for n in range(len(xs)):
        loss_sum, correct = 0.0, 0
        for batch in sums:
            loss_sum += batch[n][0]
            correct += int(batch[n][1])
        out.append((loss_sum / max(n_images, 1), correct / max(n_images, 1)))
    return out
