"""Regularization targets: towards what similarity each sampled pair of regularization images is pulled.

The trainer asks a target object for k pairs per step: `target_kinds.build_target(cfg, reg_x, reg_y)` returns one
whose `.sample(k, generator)` gives indices (i, j) into the regularization set and `s_target`, ready for
`similarity_loss`. Which kinds exist, which ranges each allows and whether it brings its own images is the registry
`pixelreg_core.targets.registry`; the builders it names are at the end of this module. Pixel-derived targets
(threshold, pixel, shuffle, vgg) draw their pairs from `pairs.PairSampler`, which never builds the N x N matrix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pixelreg_core.data.loaders import convert_channels
from pixelreg_core.errors import ConfigError
from pixelreg_core.targets.fields import TargetFields
from pixelreg_core.targets.pairs import PairOrder, PairSampler, pair_rows, random_pairs

EPS = 1e-5  # inside f's logs (authors' code); with exact_targets false also +/-1 targets become +/-(1 - EPS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_TO_CONV3_1 = [64, 64, "M", 128, 128, "M", 256]  # torchvision's VGG19 ("E") config up to conv3_1


# ---------------------------------------------------------------------------------------------------------------
# The public functions
# ---------------------------------------------------------------------------------------------------------------
def pixel_embeddings(images: Tensor | np.ndarray) -> Tensor:
    """Rows E with S_pixel = E E^T: channels averaged, flattened, mean image subtracted, rows L2-normalised.

    Accepts (N, C, H, W), (N, H, W) or already flat (N, D). Channels are averaged as in the ref. code, so RGB and
    grayscale versions of a dataset give nearly the same targets. Returns float32 on the images' device.
    """
    x = torch.as_tensor(images)
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"images must be (N, D), (N, H, W) or (N, C, H, W); got shape {tuple(x.shape)}")
    owned = False
    if x.dim() == 4:
        if x.shape[1] == 1:
            x = x[:, 0]
        else:
            x = x.to(torch.float32).mean(dim=1)
            owned = True
    flat = x.reshape(x.shape[0], -1)
    flat = flat.to(torch.float32) if owned else flat.to(torch.float32, copy=True)
    return centred_unit_rows_(flat)


def threshold_targets(s: Tensor, th: float, eps: float = 0.0) -> Tensor:
    """S^Th elementwise: +(1-eps) where s > th, -(1-eps) where s < -th, 0 elsewhere (same shape and dtype).

    eps 0 (the default, `exact_targets: true`) gives exactly +/-1 as the authors' code does: `similarity_loss`'s
    f stays finite there because its own eps sits inside the logs. eps = EPS is the older +/-(1 - 1e-5), which
    weakens every +/-1 pair a little (about a 6% smaller alpha)."""
    # masked_fill_, not `out[s > th] = ...`: boolean-mask assignment would read a count back from the GPU per step
    return torch.zeros_like(s).masked_fill_(s > th, 1.0 - eps).masked_fill_(s < -th, -(1.0 - eps))


def similarity_loss(s_cnn: Tensor, s_target: Tensor, arctanh: bool = True, eps: float = EPS,
                    dim: int | None = None) -> Tensor:
    """Mean over pairs of (f(s_cnn) - f(s_target))^2 with the authors' stable f(x) = log(1+x+eps) - log(1-x+eps).
    `dim`: the mean over that dimension only (a seed pack's [k, N] similarities: one loss per model).

    f is 2*artanh(x), so this loss is 4x the textbook (artanh(a) - artanh(b))^2: kept on purpose, because every
    alpha the authors report (and this project's `alpha`) is for this form. Finite at targets of exactly +/-1.
    arctanh=False compares the similarities directly (plain MSE).
    """
    if arctanh:
        squares = (_stable_2artanh(s_cnn, eps) - _stable_2artanh(s_target, eps)).pow(2)
    else:
        squares = (s_cnn - s_target).pow(2)
    return squares.mean() if dim is None else squares.mean(dim=dim)


def _stable_2artanh(x: Tensor, eps: float) -> Tensor:
    return torch.log(1 + x + eps) - torch.log(1 - x + eps)


def centred_unit_rows_(features: Tensor) -> Tensor:
    """In place: subtract the mean row and L2-normalise every row. Returns `features`.

    A row that centring leaves (numerically) at zero, i.e. an image equal to the mean image, becomes exactly zero:
    normalising its float rounding residue would give it a random direction and random similarities.
    In place because at N = 50,000 each copy of the embedding costs 157 MB of the 500 MB budget.
    """
    scale = float(torch.linalg.vector_norm(features, dim=1).max()) if features.numel() else 0.0
    features -= features.mean(dim=0, keepdim=True)
    norms = torch.linalg.vector_norm(features, dim=1, keepdim=True)
    zero = norms <= 1e-5 * scale + 1e-30  # 1e-5: ~100x float32 rounding of rows of size `scale`
    features /= torch.where(zero, torch.inf, norms)
    return features


# ---------------------------------------------------------------------------------------------------------------
# Target objects: what `build_target` returns
# ---------------------------------------------------------------------------------------------------------------
class Target:
    """Base of all targets. `images` is None, or the regularization images the trainer must use instead of reg_x
    (the matrix target brings its own N images). `permutation` is the shuffle control's image->target map."""

    name = "target"
    images: Tensor | None = None
    permutation: Tensor | None = None

    def __init__(self, n: int, order: PairOrder | None = None):
        self.n = n
        self.order = order  # every pair i < j in a shuffled order (pair_draw without_replacement); None: i.i.d.

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def pairs(self, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """k pairs of a target where every pair qualifies: the next k of the shuffled order, or k uniform pairs."""
        if self.order is None:
            return random_pairs(self.n, k, generator)
        i, j = self.order.window(k)
        self.order.advance(k)
        return i, j

    def state_dict(self) -> dict[str, Tensor]:
        """Where the pair order stands (saved in the per-epoch checkpoint); {} when pairs are drawn i.i.d."""
        return {} if self.order is None else self.order.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.order is not None:
            self.order.load_state_dict(state)

    def describe(self) -> dict[str, object]:
        """Facts for logs: which target, how many images, and how pairs are drawn."""
        return {"target": self.name, "n": self.n, "mode": "all", "fraction": 1.0}


class EmbeddingTarget(Target):
    """Targets derived from S = E E^T (pixel, VGG features): threshold S^Th, or raw S clamped to +/-(1-eps)."""

    def __init__(self, emb: Tensor, *, name: str, value: str, th: float, range: str, th2: float | None,
                 permutation: Tensor | None = None, eps: float = EPS, exact: bool = True, replacement: bool = True,
                 order_seed: int = 0):
        super().__init__(int(emb.shape[0]))
        self.name, self.value, self.th, self.eps = name, value, th, eps
        self.target_eps = 0.0 if exact else eps  # threshold targets: exactly +/-1 (exact_targets) or +/-(1 - eps)
        self.permutation = permutation
        self.sampler = PairSampler(emb, th=th, range=range, th2=th2, replacement=replacement, order_seed=order_seed)

    def state_dict(self) -> dict[str, Tensor]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.sampler.load_state_dict(state)

    @property
    def embeddings(self) -> Tensor:
        return self.sampler.emb

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        i, j, s = self.sampler.sample(k, generator)
        if self.value == "threshold":
            return i, j, threshold_targets(s, self.th, self.target_eps)
        return i, j, s.clamp(-(1 - self.eps), 1 - self.eps)

    def describe(self) -> dict[str, object]:
        return {"target": self.name, "n": self.n, "mode": self.sampler.mode, "fraction": self.sampler.fraction}


class MatrixTarget(Target):
    """A user-supplied N x N similarity (e.g. predicted mouse V1 responses, Li et al.) over its own N images.
    Every pair i != j qualifies; a permutation (shuffle control) reads the target at (perm[i], perm[j])."""

    def __init__(self, matrix: Tensor, images: Tensor, *, permutation: Tensor | None = None, eps: float = EPS,
                 order: PairOrder | None = None):
        super().__init__(int(matrix.shape[0]), order)
        self.name = "matrix" if permutation is None else "shuffle"
        self.matrix, self.images, self.permutation, self.eps = matrix, images, permutation, eps

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        i, j = self.pairs(k, generator)  # on the matrix's device: its order is there, a trial's generator too
        i, j = i.to(self.matrix.device), j.to(self.matrix.device)  # (a no-op then; a copy for another generator)
        a, b = (i, j) if self.permutation is None else (self.permutation[i], self.permutation[j])
        return i, j, self.matrix[a, b].clamp(-(1 - self.eps), 1 - self.eps)


class CategoricalTarget(Target):
    """(ref. code) 1 for two images of the same class (+(1-eps) with exact_targets false), 0 otherwise; every
    pair i != j qualifies."""

    name = "categorical"

    def __init__(self, labels: Tensor, eps: float = 0.0, order: PairOrder | None = None):
        super().__init__(int(labels.shape[0]), order)
        self.labels, self.eps = labels, eps

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        i, j = self.pairs(k, generator)
        i, j = i.to(self.labels.device), j.to(self.labels.device)
        same = (self.labels[i] == self.labels[j]).to(torch.float32)
        return i, j, same * (1 - self.eps)


# ---------------------------------------------------------------------------------------------------------------
# The builders the target registry (pixelreg_core.targets.registry) names, and their loaders
# ---------------------------------------------------------------------------------------------------------------
def matrix_target(cfg: TargetFields, device: torch.device | None = None) -> MatrixTarget:
    """Target matrix (or shuffle with a matrix): the user's N x N similarity over its own N images, all of it (the
    matrix, its images, the permutation and the pair order) on `device` (the trial's; default cpu), so that a
    step's draw never copies between the host and the device."""
    device = torch.device("cpu") if device is None else device
    matrix, images = load_matrix(cfg)
    perm = seeded_permutation(matrix.shape[0], cfg.seed) if cfg.target == "shuffle" else None
    return MatrixTarget(matrix.to(device), images.to(device), permutation=None if perm is None else perm.to(device),
                        order=all_pairs_order(cfg, matrix.shape[0], device))


def order_seed(cfg: TargetFields) -> int:
    """The key of a trial's shuffled pair order (pair_draw without_replacement): fixed by the trial seed, separate
    from the generator's stream, so the order is the same on every run and every device for that seed."""
    return int(hashlib.sha256(f"{cfg.seed}/pair_order".encode()).hexdigest()[:15], 16)


def all_pairs_order(cfg: TargetFields, n: int, device: torch.device) -> PairOrder | None:
    """A shuffled order of all n(n-1)/2 pairs for targets where every pair qualifies, or None (with replacement)."""
    if cfg.pair_draw == "with_replacement":
        return None
    return PairOrder(n * (n - 1) // 2, order_seed(cfg), device, pair_rows(n))


def categorical_target(cfg: TargetFields, reg_y: Tensor | None) -> CategoricalTarget:
    if reg_y is None or bool((torch.as_tensor(reg_y) < 0).any()):
        raise ConfigError("target", f"categorical needs class labels, but reg_data {cfg.reg_data!r} has none; "
                                    "use a labelled dataset or another target")
    labels = torch.as_tensor(reg_y)
    return CategoricalTarget(labels, eps=0.0 if cfg.exact_targets else EPS,
                             order=all_pairs_order(cfg, int(labels.shape[0]), labels.device))


def embedding_target(cfg: TargetFields, reg_x: Tensor) -> EmbeddingTarget:
    """Targets from S = E E^T of the regularization images: threshold, pixel, vgg features, shuffle (no matrix)."""
    kind = cfg.target
    emb = vgg_embeddings(reg_x, cfg.vgg_weights) if kind == "vgg" else pixel_embeddings(reg_x)
    perm = None
    if kind == "shuffle":
        perm = seeded_permutation(emb.shape[0], cfg.seed).to(emb.device)
        emb = emb[perm]  # image i now carries the similarities of image perm[i]
    value = "pixel" if kind == "pixel" else "threshold"
    return EmbeddingTarget(emb, name=kind, value=value, th=cfg.th, range=cfg.range, th2=cfg.th2, permutation=perm,
                           exact=cfg.exact_targets, replacement=cfg.pair_draw == "with_replacement",
                           order_seed=order_seed(cfg))


def seeded_permutation(n: int, seed: int) -> Tensor:
    """A permutation fixed by the seed; never the identity (for n >= 2), since the shuffle control must shuffle."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if n >= 2 and bool((perm == torch.arange(n)).all()):
        perm = perm.roll(1)
    return perm


def load_matrix(cfg: TargetFields) -> tuple[Tensor, Tensor]:
    """The N x N similarity (float32, in [-1, 1]) and its N images as (N, C, H, W) float32 in [0, 1]."""
    if cfg.matrix is None:
        raise ConfigError("matrix", f"target {cfg.target} needs a .npy N x N similarity file; set matrix: PATH")
    if cfg.matrix_images is None:
        raise ConfigError("matrix_images", "the matrix target needs its N images; set matrix_images: PATH.npy")
    matrix = _load_npy("matrix", cfg.matrix)
    images = _load_npy("matrix_images", cfg.matrix_images)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ConfigError("matrix", f"{cfg.matrix} has shape {matrix.shape}; it must be a square N x N similarity")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] not in (1, 3)):
        raise ConfigError("matrix_images", f"{cfg.matrix_images} has shape {images.shape}; "
                                           "use (N, H, W) or (N, C, H, W) with C = 1 or 3")
    if matrix.shape[0] != images.shape[0]:
        raise ConfigError("matrix", f"{cfg.matrix} has shape {matrix.shape} but matrix_images has shape "
                                    f"{images.shape}: the matrix needs one row and column per image "
                                    f"({images.shape[0]} x {images.shape[0]})")
    if matrix.shape[0] < 2:
        raise ConfigError("matrix", f"has shape {matrix.shape}; pairs need N >= 2 images")
    matrix = matrix.astype(np.float32)
    if not np.isfinite(matrix).all() or np.abs(matrix).max() > 1 + 1e-6:
        raise ConfigError("matrix", f"{cfg.matrix} must hold finite similarities in [-1, 1] (cosine or "
                                    "correlation); rescale it")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    images = images.astype(np.float32)
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ConfigError("matrix_images", f"{cfg.matrix_images} must hold pixels in [0, 1] (or uint8 0-255)")
    x = torch.from_numpy(images)
    if x.dim() == 3:
        x = x[:, None]
    x = convert_channels(x, 1 if cfg.grayscale else 3, cfg.gray).contiguous()
    return torch.from_numpy(matrix), x


def _load_npy(field_name: str, path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise ConfigError(field_name, f"file {path} not found; give the path of a .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ConfigError(field_name, f"could not read {path} as .npy ({err}); save it with numpy.save") from err


def vgg_embeddings(images: Tensor, weights: str | None, batch_size: int = 128) -> Tensor:
    """Rows E of VGG19 conv3_1 (after its ReLU) features, centred and normalised like the pixel embeddings.

    Li et al. use this layer as the VGG control (reported as most V1-like). Only the first 11 layers are built and
    loaded, so any torchvision VGG19 state_dict works, pretrained (e.g. vgg19-dcbb9e9d.pth) or a trimmed one.
    Grayscale images are repeated to 3 channels and ImageNet-normalised; images must be at least 4 x 4.
    """
    layers = load_vgg_conv3_1(weights).to(images.device)
    n = images.shape[0]
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    if images.dim() == 3:
        images = images[:, None]
    if min(images.shape[-2:]) < 4:
        raise ConfigError("target", f"vgg needs images of at least 4 x 4 pixels; got {tuple(images.shape[-2:])}")
    out: Tensor | None = None
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].to(torch.float32)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            feats = layers((x - mean) / std).flatten(1)
            if out is None:
                out = torch.empty(n, feats.shape[1], dtype=torch.float32, device=images.device)
            out[start:start + feats.shape[0]] = feats
    return centred_unit_rows_(out)


def load_vgg_conv3_1(weights: str | None) -> torch.nn.Sequential:
    """torchvision's VGG19 feature layers up to conv3_1 + ReLU, with weights from a local state_dict file."""
    if weights is None or not Path(weights).is_file():
        where = "is not set" if weights is None else f"file {weights} not found"
        raise ConfigError("vgg_weights", f"{where}; target vgg needs a local VGG19 state_dict (e.g. torchvision's "
                                         "vgg19-dcbb9e9d.pth): set vgg_weights: PATH")
    from torchvision.models.vgg import make_layers

    layers = make_layers(VGG19_TO_CONV3_1, batch_norm=False)  # indices match vgg19().features[:12]
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and format errors all mean the same thing to the user
        raise ConfigError("vgg_weights", f"could not load {weights} ({type(err).__name__}); "
                                         "give a torch.save'd VGG19 state_dict") from err
    wanted = {}
    for key in layers.state_dict():
        for source in (f"features.{key}", key):
            if isinstance(state, dict) and source in state:
                wanted[key] = state[source]
                break
        else:
            raise ConfigError("vgg_weights", f"{weights} lacks features.{key}; give a torchvision VGG19 state_dict")
    try:
        layers.load_state_dict(wanted)
    except RuntimeError as err:
        raise ConfigError("vgg_weights", f"{weights} does not fit VGG19 ({str(err).splitlines()[0]})") from err
    return layers.eval()
