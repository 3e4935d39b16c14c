"""How an attack measures a model: predicted labels and the one batched accuracy loop every accuracy attack uses.

All attacks work on [0, 1] pixel tensors [n, C, H, W] on the model's device (`evaluate` puts the test set there
once): on a GPU the images, the noise and the FGSM signs stay on it, and counts are read back once per accuracy,
not once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from pixelreg_core.model import eval_logits


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (CPU int64) for images on any device, in batches."""
    device = model_device(model)
    out = [eval_logits(model, x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             perturb: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> float:
    """Accuracy on (x, y), batch by batch in order; `perturb(batch, start)` turns each batch into the images the
    model sees (noise, FGSM). The one batched accuracy loop every accuracy attack uses. NaN for no images."""
    if len(y) == 0:
        return math.nan
    device = model_device(model)
    correct = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device, read once
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size]
        if perturb is not None:
            xb = perturb(xb, start)
        correct += (eval_logits(model, xb.to(device)).argmax(1) == y[start:start + batch_size].to(device)).sum()
    return int(correct) / len(y)  # exact ratio, like every attack row


def clamp_per_image(noisy: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Clamp each image to its own [min, max] (docs/method.md, "Evaluation"): noise cannot widen an image's
    intensity range."""
    lo = original.amin(dim=(1, 2, 3), keepdim=True)
    hi = original.amax(dim=(1, 2, 3), keepdim=True)
    return torch.maximum(torch.minimum(noisy, hi), lo)
