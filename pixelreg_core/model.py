"""ResNet with the pair pathway (docs/method.md, "The network").

The classifier is the authors' CIFAR-style ResNet: a 7x7 stride-1 stem without max-pool, four stages of basic
blocks (strides 1, 2, 2, 2), average pool, linear head. The pair pathway reads K = 5 layers (stem output and the
output of each stage), centres each layer's features by a running per-channel mean, and combines the per-layer
cosine similarities of two images with softmax(gamma) weights (or one fixed layer).

The model takes images in [0, 1] and normalises them itself, so attacks and noise always work in pixel space.
"""

from __future__ import annotations

import io
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from pixelreg_core.config import NUM_SIM_LAYERS, TrialConfig
from pixelreg_core.results import read_bytes, write_bytes

STAGE_BLOCKS = {"ResNet18": (2, 2, 2, 2), "ResNet34": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def trunk_layers(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The stem then each stage on the shifted, scaled input: the last output and the K = 5 layer outputs.

    One place for PairResNet and the grouped pack (pixelreg_core/pack/model.py), which differ only in their head.
    """
    h = model.stem((x - model.input_shift) * model.input_scale)
    layers = [h]
    for stage in model.stages:
        h = stage(h)
        layers.append(h)
    return h, layers


class PairResNet(nn.Module):
    def __init__(self, arch: str, width: int, in_channels: int, num_classes: int, *, input_scale: float = 1.0,
                 input_shift: float = 0.0, sim_layer: int | None = None, beta: float = 0.9, pair_bn: str = "split"):
        super().__init__()
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))
        self.register_buffer("input_shift", torch.tensor(float(input_shift)))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 1, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        stages, c_in = [], width
        for i, (blocks, stride) in enumerate(zip(STAGE_BLOCKS[arch], (1, 2, 2, 2), strict=True)):
            c_out = width * 2**i
            layers = [BasicBlock(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1) for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, num_classes)
        # Pair pathway state: gamma is trained (equal at init); the centring means are running statistics.
        self.gamma = nn.Parameter(torch.zeros(NUM_SIM_LAYERS))
        self.sim_layer = sim_layer
        self.beta = beta
        self.pair_bn = pair_bn
        # The fixed layer's one-hot weights, made once on the model's device (not per step: a tensor built on the
        # host each step would be a host-to-device copy and a synchronisation). Not persistent: not a checkpoint
        # entry, it follows from sim_layer.
        onehot = torch.zeros(NUM_SIM_LAYERS)
        if sim_layer is not None:
            onehot[sim_layer] = 1.0
        self.register_buffer("sim_onehot", onehot, persistent=False)
        for i, channels in enumerate([width] + [width * 2**s for s in range(4)]):
            self.register_buffer(f"feature_mean_{i}", torch.zeros(channels))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the K = 5 layer outputs the pair pathway reads."""
        h, layers = trunk_layers(self, x)
        logits = self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
        return logits, layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]

    def layer_weights(self) -> torch.Tensor:
        """softmax(gamma), or a one-hot vector when the similarity is taken at one fixed layer."""
        if self.sim_layer is not None:
            return self.sim_onehot.to(self.gamma.dtype)
        return torch.softmax(self.gamma, dim=0)

    def pair_similarity(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """S_cnn for k pairs: weighted per-layer cosine similarity of centred, flattened feature maps.

        `pair_bn` "split" runs the k first and the k second images as two forward passes, as the authors' code
        does, so in train mode each BatchNorm normalises a batch of k images (and updates its running statistics
        twice); "joint" runs one pass over all 2k, so both halves share batch statistics. Either way the layer
        outputs are then the same [2k, ...] stack, and everything after (centring, cosine) is one code path.

        Under `amp` the forward pass runs in bf16, but everything from the layer outputs on is float32, autocast
        off: bf16 keeps 8 bits, so near 1 a cosine moves in steps of 1/256 (0.9990 becomes 1.0, 0.9975 becomes
        0.99609), and with exact +-1 targets through 2 * artanh a +1 pair's loss would be 0 or at least 36,
        its gradient gone once the cosine passes about 0.998. The running feature means are float32 for the
        same reason. Without `amp` the casts do nothing (the layers are float32 already)."""
        k = xa.shape[0]
        if self.pair_bn == "split":
            layers = [torch.cat(pair) for pair in zip(self.features(xa)[1], self.features(xb)[1], strict=True)]
        else:
            _, layers = self.features(torch.cat([xa, xb]))
        with torch.autocast(device_type=xa.device.type, enabled=False):
            weights = self.layer_weights().float()
            sims = []
            for i, h in enumerate(layers):
                h = h.float()
                mean = getattr(self, f"feature_mean_{i}")
                if self.training:  # running mean over both images of every pair batch; no gradient through it
                    with torch.no_grad():
                        mean.mul_(self.beta).add_(h.mean(dim=(0, 2, 3)), alpha=1 - self.beta)
                centred = (h - mean[None, :, None, None]).flatten(1)
                sims.append(F.cosine_similarity(centred[:k], centred[k:], dim=1, eps=1e-8))
            return torch.stack(sims, dim=1) @ weights


# Images per forward pass in eval mode on a CPU. Measured on the quickstart model (ResNet18 width 8, 28 x 28, one
# thread): 0.26 ms per image at 100-250 images, 0.37 ms at 500, 0.62 ms at 3000 (the activations of a large batch
# outgrow the CPU caches). In eval mode each image's logits do not depend on the others in its batch, so chunking
# changes the speed, not the numbers (tests/test_attacks.py checks the rows). On a GPU larger batches are faster.
CPU_EVAL_CHUNK = 128


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) for a model in eval mode, in CPU_EVAL_CHUNK pieces on a CPU (one call elsewhere)."""
    if x.device.type != "cpu" or len(x) <= CPU_EVAL_CHUNK:
        return model(x)
    return torch.cat([model(x[i:i + CPU_EVAL_CHUNK]) for i in range(0, len(x), CPU_EVAL_CHUNK)])


def build_model(cfg: TrialConfig, in_channels: int, num_classes: int, input_scale: float = 1.0,
                input_shift: float = 0.0) -> PairResNet:
    return PairResNet(cfg.arch, cfg.width, in_channels, num_classes, input_scale=input_scale,
                      input_shift=input_shift, sim_layer=cfg.sim_layer, beta=cfg.beta, pair_bn=cfg.pair_bn)


def save_checkpoint(model: PairResNet, cfg: TrialConfig, path: str | os.PathLike) -> None:
    """Atomic save of the state_dict plus what rebuilds the model; loads with torch.load(weights_only=True)."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "in_channels": int(model.stem[0].in_channels),
        "num_classes": int(model.head.out_features),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())  # local path (atomic) or URI: results.py decides which


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> tuple[PairResNet, TrialConfig]:
    """The model in eval mode and its TrialConfig."""
    data = read_bytes(path)  # local path, file:// or another pyarrow URI
    if data is None:
        raise FileNotFoundError(path)
    return checkpoint_from_bytes(data, map_location)


def checkpoint_from_bytes(data: bytes, map_location: str | torch.device = "cpu") -> tuple[PairResNet, TrialConfig]:
    """`load_checkpoint` of a file already read (a caller that also hashes the file reads it once)."""
    payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    cfg = TrialConfig.from_dict(json.loads(payload["config"]))
    model = build_model(cfg, payload["in_channels"], payload["num_classes"])
    model.load_state_dict(payload["state_dict"])  # includes input_scale / input_shift buffers
    return model.to(map_location).eval(), cfg
