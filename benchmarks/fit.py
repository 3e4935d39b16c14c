"""A model worth attacking in seconds, for the attack tests and benchmarks/bench_attacks.py (not the trainer: that is
pixelreg_core.train.train, with its pair loss, schedule and validation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelreg_core.config import TrialConfig
from pixelreg_core.data.bundle import DataBundle
from pixelreg_core.model import PairResNet, build_model


def quick_fit(cfg: TrialConfig, data: DataBundle, steps: int) -> PairResNet:
    """`steps` plain SGD steps (lr 0.05, momentum 0.9) on random batches of 64, seeded by cfg.seed; no pair loss,
    schedule or validation."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.in_channels, data.num_classes, data.input_scale, data.input_shift)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(steps):
        idx = torch.randint(0, len(data.train_y), (64,), generator=gen)
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
