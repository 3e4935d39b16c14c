"""N PairResNets as one grouped network (the seed pack, docs/spec.md "pack").

Model n of the pack sees channels [n*C, (n+1)*C) of every layer: the input is the N images' channels side by
side, every convolution has groups=N, every BatchNorm has N*C channels (its statistics are per channel, so exactly
per model), and the head is a grouped 1x1 convolution. A layer of model n never reads another model's channels, so
the N models train as if apart, while each kernel launch does N models' work: on a GPU that dispatches a small
model's step faster than N separate steps (issue 17, finding 9); on CPU it does not pay.

Every tensor of the grouped state is the N models' tensors concatenated along dim 0 (0-dim buffers, such as the
input scale and BatchNorm's step count, are shared), with the same names as PairResNet's: `pack_state` and
`unpack_state` are the whole mapping, for parameters, buffers and optimizer momenta alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixelreg_core.config import NUM_SIM_LAYERS
from pixelreg_core.model import STAGE_BLOCKS, PairResNet, trunk_layers


def pack_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The grouped state of N models' state dicts (or of N optimizer-state entries): concatenated along dim 0."""
    out = {}
    for name, first in states[0].items():
        values = [s[name] for s in states]
        if first.dim() == 0:
            if any(not torch.equal(v, first) for v in values[1:]):
                raise ValueError(f"{name} differs between the models of a pack; only per-model tensors may")
            out[name] = first.clone()
        else:
            out[name] = torch.cat(values, dim=0)
    return out


def unpack_state(state: dict[str, torch.Tensor], n: int, size: int) -> dict[str, torch.Tensor]:
    """Model n's own state (copies) out of a grouped state of `size` models."""
    return {name: (t.clone() if t.dim() == 0 else t.detach().chunk(size, dim=0)[n].clone())
            for name, t in state.items()}


class GroupedBlock(nn.Module):
    """BasicBlock of N models: the same layers and names, every convolution grouped."""

    def __init__(self, c_in: int, c_out: int, stride: int, n: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n * c_in, n * c_out, 3, stride, 1, bias=False, groups=n)
        self.bn1 = nn.BatchNorm2d(n * c_out)
        self.conv2 = nn.Conv2d(n * c_out, n * c_out, 3, 1, 1, bias=False, groups=n)
        self.bn2 = nn.BatchNorm2d(n * c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(n * c_in, n * c_out, 1, stride, bias=False, groups=n),
                                          nn.BatchNorm2d(n * c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class GroupedPairResNet(nn.Module):
    """N PairResNets of one architecture. Inputs [B, N*C, H, W] (model n's images in channels n*C ...), logits
    [B, N, classes], S_cnn [k, N]. `head.weight` is [N*classes, C] like N linear heads stacked; `gamma` is [N*5]."""

    def __init__(self, arch: str, width: int, in_channels: int, num_classes: int, n: int, *,
                 sim_layer: int | None = None, beta: float = 0.9, pair_bn: str = "split"):
        super().__init__()
        self.n, self.num_classes, self.pair_bn = n, num_classes, pair_bn
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("input_shift", torch.tensor(0.0))
        self.stem = nn.Sequential(nn.Conv2d(n * in_channels, n * width, 7, 1, 3, bias=False, groups=n),
                                  nn.BatchNorm2d(n * width), nn.ReLU())
        stages, c_in = [], width
        for i, (blocks, stride) in enumerate(zip(STAGE_BLOCKS[arch], (1, 2, 2, 2), strict=True)):
            c_out = width * 2**i
            stages.append(nn.Sequential(*[GroupedBlock(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1, n)
                                          for b in range(blocks)]))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, n * num_classes)  # applied as a grouped 1x1 convolution: N heads
        self.gamma = nn.Parameter(torch.zeros(n * NUM_SIM_LAYERS))
        self.sim_layer = sim_layer
        self.beta = beta
        onehot = torch.zeros(n, NUM_SIM_LAYERS)
        if sim_layer is not None:
            onehot[:, sim_layer] = 1.0
        self.register_buffer("sim_onehot", onehot, persistent=False)
        for i, channels in enumerate([width] + [width * 2**s for s in range(4)]):
            self.register_buffer(f"feature_mean_{i}", torch.zeros(n * channels))

    @classmethod
    def of(cls, models: list[PairResNet]) -> GroupedPairResNet:
        """The grouped network holding copies of `models` (same arch, width, sim_layer, beta), on their device."""
        first = models[0]
        grouped = cls(_arch_of(first), first.stem[0].out_channels, first.stem[0].in_channels,
                      first.head.out_features, len(models), sim_layer=first.sim_layer, beta=first.beta,
                      pair_bn=first.pair_bn)
        grouped.to(first.gamma.device, first.gamma.dtype)
        grouped.load_state_dict(pack_state([m.state_dict() for m in models]))
        return grouped

    def member_state(self, n: int) -> dict[str, torch.Tensor]:
        """Model n's state dict, loadable into a PairResNet."""
        return unpack_state(self.state_dict(), n, self.n)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, layers = trunk_layers(self, x)
        pooled = F.adaptive_avg_pool2d(h, 1)  # [B, N*C, 1, 1]
        logits = F.conv2d(pooled, self.head.weight[:, :, None, None], self.head.bias, groups=self.n)
        return logits.view(len(x), self.n, self.num_classes), layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]

    def layer_weights(self) -> torch.Tensor:
        """[N, 5]: each model's softmax(gamma), or its one-hot fixed layer."""
        if self.sim_layer is not None:
            return self.sim_onehot.to(self.gamma.dtype)
        return torch.softmax(self.gamma.view(self.n, NUM_SIM_LAYERS), dim=1)

    def pair_similarity(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """[k, N]: model n's S_cnn of its k pairs (its images in channels n*C of xa and xb)."""
        k = xa.shape[0]
        if self.pair_bn == "split":  # as PairResNet: two passes, BatchNorm batches of k (authors' code)
            layers = [torch.cat(pair) for pair in zip(self.features(xa)[1], self.features(xb)[1], strict=True)]
        else:
            _, layers = self.features(torch.cat([xa, xb]))
        with torch.autocast(device_type=xa.device.type, enabled=False):  # float32 under amp: PairResNet says why
            weights = self.layer_weights().float()
            sims = []
            for i, h in enumerate(layers):
                h = h.float()
                mean = getattr(self, f"feature_mean_{i}")
                if self.training:  # per channel, so per model: the running mean PairResNet keeps
                    with torch.no_grad():
                        mean.mul_(self.beta).add_(h.mean(dim=(0, 2, 3)), alpha=1 - self.beta)
                centred = (h - mean[None, :, None, None]).reshape(2 * k, self.n, -1)
                sims.append(F.cosine_similarity(centred[:k], centred[k:], dim=2, eps=1e-8))  # [k, N]
            return (torch.stack(sims, dim=2) * weights).sum(dim=2)


def _arch_of(model: PairResNet) -> str:
    blocks = tuple(len(stage) for stage in model.stages)
    return next(name for name, counts in STAGE_BLOCKS.items() if counts == blocks)
