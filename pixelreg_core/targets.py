"""Regularization targets: which pairs of regularization images are regularized, and towards what similarity.

The trainer asks a target object for k pairs per step: `build_target(cfg, reg_x, reg_y).sample(k, generator)`
returns indices (i, j) into the regularization set and `s_target`, ready for `similarity_loss`.

Pixel-derived targets (threshold, pixel, shuffle, vgg) never build the N x N similarity matrix: S_pixel[i, j] is one
dot product of two unit rows of the embedding E (N x D), so a pair's target is computed when the pair is drawn and
memory stays O(N * D). The reference design materialised all N(N-1)/2 pairs (21.5 s and 4.0 GB at N = 5,000, growing
as N^2); `PairSampler` prepares in well under a second at N = 50,000 (benchmarks/bench_targets.py).
Ranges restrict the pairs to those whose S_pixel qualifies (REFERENCE.md, "Pixel targets"); pairs are drawn
uniformly from the qualifying ones either by rejection (when they are common) or from a list enumerated once,
block by block (when they are rare).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import RANGES, TARGETS, ConfigError, TrialConfig

EPS = 1e-5  # targets of +/-1 become +/-(1 - EPS) so that the arctanh stays finite (ref. code)
ESTIMATE_PAIRS = 8192  # random pairs used to estimate how common the qualifying pairs are
ENUMERATE_BELOW = 0.01  # below this qualifying fraction rejection wastes > 100 draws per pair: list them instead,
ENUMERATE_SMALL_LIST = (0.1, 4_000_000)  # and below 10% too while the list stays under 4M pairs (32 MB of int32)
BLOCK_ELEMENTS = 1 << 22  # floats per block of E E^T (16 MB): bounds the memory of enumeration and rejection
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


def threshold_targets(s: Tensor, th: float, eps: float = EPS) -> Tensor:
    """S^Th elementwise: +(1-eps) where s > th, -(1-eps) where s < -th, 0 elsewhere (same shape and dtype)."""
    # masked_fill_, not `out[s > th] = ...`: boolean-mask assignment would read a count back from the GPU per step
    return torch.zeros_like(s).masked_fill_(s > th, 1.0 - eps).masked_fill_(s < -th, -(1.0 - eps))


def sample_pairs(emb: Tensor, k: int, *, th: float, range: str = "all", generator: torch.Generator | None = None,
                 th2: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """k pairs (i, j), i != j, uniform over the pairs that qualify for `range`, and s = S_pixel[i, j] = <E_i, E_j>.

    A thin wrapper that prepares a `PairSampler` on every call; a training loop should build the sampler once.
    """
    return PairSampler(emb, th=th, range=range, th2=th2).sample(k, generator)


def similarity_loss(s_cnn: Tensor, s_target: Tensor, arctanh: bool = True, eps: float = EPS) -> Tensor:
    """Mean over pairs of (f(s_cnn) - f(s_target))^2 with the authors' stable f(x) = log(1+x+eps) - log(1-x+eps).

    f is 2*artanh(x), so this loss is 4x the textbook (artanh(a) - artanh(b))^2: kept on purpose, because every
    alpha the authors report (and this project's `alpha`) is for this form. Finite at targets of exactly +/-1.
    arctanh=False compares the similarities directly (plain MSE).
    """
    if arctanh:
        return (_stable_2artanh(s_cnn, eps) - _stable_2artanh(s_target, eps)).pow(2).mean()
    return (s_cnn - s_target).pow(2).mean()


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
# Ranges and pair sampling
# ---------------------------------------------------------------------------------------------------------------
def range_mask(s: Tensor, range: str, th: float, th2: float | None = None) -> Tensor:
    """Which similarities qualify for a range (REFERENCE.md): a bool tensor shaped like s."""
    a = s.abs()
    if range == "all":
        return torch.ones_like(s, dtype=torch.bool)
    if range == "high":
        return a > th
    if range == "low":
        return a <= th
    if range == "positive":
        return (s > th) | (a <= th)
    if range == "negative":
        return (s < -th) | (a <= th)
    if range == "double":
        return (a > th) | (a < th2)
    raise ConfigError("range", f"is {range!r}; use one of {', '.join(RANGES)}")


def check_range(range: str, th: float, th2: float | None) -> None:
    """Raise ConfigError for a range the sampler cannot honour."""
    if range not in RANGES:
        raise ConfigError("range", f"is {range!r}; use one of {', '.join(RANGES)}")
    if not 0 <= th < 1:
        raise ConfigError("th", f"is {th}; Th must lie in (0, 1), e.g. 0.2")
    if range == "double" and (th2 is None or not 0 <= th2 < th):
        raise ConfigError("th2", f"is {th2}; range double needs a second threshold with 0 <= th2 < th ({th})")


_NO_PAIR_FIX = {
    "high": ("|S_pixel| > th", "lower th"),
    "low": ("|S_pixel| <= th", "raise th"),
    "positive": ("S_pixel >= -th", "raise th"),
    "negative": ("S_pixel <= th", "raise th"),
    "double": ("|S_pixel| > th or |S_pixel| < th2", "lower th or raise th2"),
}


def random_pairs(n: int, m: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """m ordered pairs uniform over {(i, j): i != j}: j is drawn from the n-1 others and shifted past i."""
    device = generator.device if generator is not None else torch.device("cpu")
    i = torch.randint(n, (m,), generator=generator, device=device)
    j = torch.randint(n - 1, (m,), generator=generator, device=device)
    j += (j >= i).long()
    return i, j


class PairSampler:
    """Draws pairs uniformly from those that qualify for a range, with O(N * D) memory and cheap steps.

    Preparation (once): estimate the qualifying fraction from a seeded sample of random pairs. If it is at least
    `enumerate_below`, steps use vectorised rejection sampling (uniform over ordered pairs i != j, keep the
    qualifying ones: uniform over the qualifying pairs, at ~1/fraction draws per pair). If it is smaller,
    rejection would waste too many draws per step, so the qualifying pairs are listed once by scanning E E^T in
    row blocks of the upper triangle (few pairs by construction, so the list is small) and steps draw from it.
    Why these thresholds (measured on 2 CPU cores, MNIST 28x28): a rejection draw costs ~4.5 us (two gathered rows),
    a dot product inside the blockwise matmul ~0.02 us. Below 1% qualifying, rejection needs > 100 draws per pair
    (~10 ms per k=16 step at 1%, 55 ms at 0.15%), while the scan is paid once (0.3 s at N = 5,000, ~16 s at
    N = 50,000) and a short list. Up to 10% the scan is also taken when the expected list is small (N = 5,000).
    `mode` says which path was taken; `fraction` is the (estimated or, when enumerated, exact) qualifying share.
    """

    def __init__(self, emb: Tensor, *, th: float, range: str = "all", th2: float | None = None, seed: int = 0,
                 enumerate_below: float | None = None, estimate_pairs: int = ESTIMATE_PAIRS):
        check_range(range, th, th2)
        if emb.dim() != 2:
            raise ValueError(f"embeddings must be (N, D); got shape {tuple(emb.shape)}")
        self.n = int(emb.shape[0])
        if self.n < 2:
            raise ConfigError("reg_images", f"is {self.n}; pairs need N >= 2 regularization images")
        self.emb, self.range, self.th, self.th2 = emb, range, th, th2
        self.max_batch = max(64, BLOCK_ELEMENTS // max(1, int(emb.shape[1])))
        self._i: Tensor | None = None
        self._j: Tensor | None = None
        if range == "all":
            self.mode, self.fraction = "all", 1.0
            return
        i, j = random_pairs(self.n, estimate_pairs, torch.Generator().manual_seed(seed))
        hits = int(self.qualifies(self.similarity(i, j)).sum())
        self.fraction = hits / estimate_pairs
        if enumerate_below is None:
            top, list_pairs = ENUMERATE_SMALL_LIST
            enumerate_below = max(ENUMERATE_BELOW, min(top, list_pairs / (self.n * (self.n - 1) / 2)))
        if hits > 0 and self.fraction >= enumerate_below:
            self.mode = "rejection"
        else:
            self._enumerate()

    def similarity(self, i: Tensor, j: Tensor) -> Tensor:
        """S_pixel[i, j] as the dot product of rows; the one definition every path uses, so paths agree exactly."""
        i, j = i.to(self.emb.device), j.to(self.emb.device)
        if i.numel() <= self.max_batch:
            return (self.emb[i] * self.emb[j]).sum(dim=-1)
        chunks = [(self.emb[a] * self.emb[b]).sum(dim=-1)  # chunked: gathered rows cost D floats per pair
                  for a, b in zip(i.split(self.max_batch), j.split(self.max_batch), strict=True)]
        return torch.cat(chunks)

    def _row_dots_in(self, i: Tensor, j: Tensor, rows_a: Tensor, rows_b: Tensor) -> Tensor:
        """`similarity(i, j)` computed in preallocated row buffers (same arithmetic, no heap churn)."""
        out = []
        for a, b in zip(i.split(self.max_batch), j.split(self.max_batch), strict=True):
            ga, gb = rows_a[:a.numel()], rows_b[:b.numel()]
            torch.index_select(self.emb, 0, a, out=ga)
            torch.index_select(self.emb, 0, b, out=gb)
            out.append(ga.mul_(gb).sum(dim=-1))
        return torch.cat(out) if out else i.new_zeros(0, dtype=self.emb.dtype)

    def qualifies(self, s: Tensor) -> Tensor:
        return range_mask(s, self.range, self.th, self.th2)

    def _enumerate(self) -> None:
        """List the qualifying pairs i < j once, tile by tile over the upper triangle of E E^T.

        Tiles are screened with a matmul and a small tolerance, then the survivors are re-checked with the row-dot
        definition of `similarity`, so the list matches exactly what `sample` returns. Every large temporary has
        the same size in every tile and the pairs found go into one growing buffer: with many small kept pieces
        between large freed temporaries glibc's heap fragmented and the peak memory tripled at N = 50,000.
        """
        emb, n, device = self.emb, self.n, self.emb.device
        tile = min(n, max(256, math.isqrt(BLOCK_ELEMENTS)))
        tol = 1e-4  # matmul and row dot products may differ in the last bits: screen a slightly wider range
        grows_with_th = self.range in ("low", "positive", "negative")
        loose_th = self.th + tol if grows_with_th else self.th - tol
        loose_th2 = None if self.th2 is None else self.th2 + tol
        s_buf = torch.empty(tile * tile, dtype=emb.dtype, device=device)
        rows_a = torch.empty(self.max_batch, emb.shape[1], dtype=emb.dtype, device=device)
        rows_b = torch.empty_like(rows_a)
        found = _GrowingPairs(device)
        for r0 in range(0, n, tile):
            r1 = min(n, r0 + tile)
            for c0 in range(r0, n, tile):
                c1 = min(n, c0 + tile)
                s = s_buf[:(r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch.matmul(emb[r0:r1], emb[c0:c1].T, out=s)
                near = range_mask(s, self.range, loose_th, loose_th2)
                if c0 == r0:
                    near.triu_(1)  # diagonal tile: only i < j
                a, b = torch.nonzero(near, as_tuple=True)
                a, b = a + r0, b + c0
                keep = self.qualifies(self._row_dots_in(a, b, rows_a, rows_b))
                found.append(a[keep], b[keep])
        self._i, self._j = found.pairs()
        count = int(self._i.numel())
        if count == 0:
            rule, fix = _NO_PAIR_FIX[self.range]
            th2 = f", th2={self.th2}" if self.range == "double" else ""
            raise ConfigError("th", f"no pair of the {self.n} regularization images has {rule} (range {self.range}, "
                                    f"th={self.th}{th2}); {fix}, or use range all")
        self.mode = "enumerated"
        self.fraction = count / (self.n * (self.n - 1) / 2)

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """k pairs (i, j) as int64 on the embeddings' device, i != j, and their S_pixel."""
        if k < 1:
            raise ConfigError("reg_pairs", f"is {k}; k must be >= 1")
        if self.mode == "enumerated":
            i, j = self._draw_listed(k, generator)
        elif self.mode == "all":
            i, j = random_pairs(self.n, k, generator)
        else:
            i, j = self._draw_rejection(k, generator)
        i, j = i.to(self.emb.device, torch.long), j.to(self.emb.device, torch.long)
        return i, j, self.similarity(i, j)

    def _draw_listed(self, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        device = generator.device if generator is not None else torch.device("cpu")
        pick = torch.randint(int(self._i.numel()), (k,), generator=generator, device=device).to(self._i.device)
        swap = torch.randint(2, (k,), generator=generator, device=device).bool().to(self._i.device)
        a, b = self._i[pick], self._j[pick]  # random orientation: the same law as rejection over ordered pairs
        return torch.where(swap, b, a), torch.where(swap, a, b)

    def _draw_rejection(self, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        got_i, got_j, need = [], [], k
        while need > 0:
            m = min(self.max_batch, math.ceil(need / self.fraction * 1.2) + 8)
            i, j = random_pairs(self.n, m, generator)
            keep = self.qualifies(self.similarity(i, j)).to(i.device)
            i, j = i[keep][:need], j[keep][:need]  # candidates are i.i.d.: the first accepted ones are uniform
            got_i.append(i)
            got_j.append(j)
            need -= int(i.numel())
        return torch.cat(got_i), torch.cat(got_j)


class _GrowingPairs:
    """int32 (i, j) columns in one buffer that doubles when full: few, large allocations (see `_enumerate`)."""

    def __init__(self, device: torch.device, capacity: int = 1 << 16):
        self.buf = torch.empty(2, capacity, dtype=torch.int32, device=device)
        self.count = 0

    def append(self, i: Tensor, j: Tensor) -> None:
        m = int(i.numel())
        if self.count + m > self.buf.shape[1]:
            bigger = torch.empty(2, max(2 * self.buf.shape[1], self.count + m), dtype=torch.int32,
                                 device=self.buf.device)
            bigger[:, :self.count] = self.buf[:, :self.count]
            self.buf = bigger
        self.buf[0, self.count:self.count + m] = i
        self.buf[1, self.count:self.count + m] = j
        self.count += m

    def pairs(self) -> tuple[Tensor, Tensor]:
        kept = self.buf[:, :self.count].clone()  # release the spare capacity
        return kept[0], kept[1]


# ---------------------------------------------------------------------------------------------------------------
# Target objects: what `build_target` returns
# ---------------------------------------------------------------------------------------------------------------
class Target:
    """Base of all targets. `images` is None, or the regularization images the trainer must use instead of reg_x
    (the matrix target brings its own N images). `permutation` is the shuffle control's image->target map."""

    name = "target"
    images: Tensor | None = None
    permutation: Tensor | None = None

    def __init__(self, n: int):
        self.n = n

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """Facts for logs: which target, how many images, and how pairs are drawn."""
        return {"target": self.name, "n": self.n, "mode": "all", "fraction": 1.0}


class EmbeddingTarget(Target):
    """Targets derived from S = E E^T (pixel, VGG features): threshold S^Th, or raw S clamped to +/-(1-eps)."""

    def __init__(self, emb: Tensor, *, name: str, value: str, th: float, range: str, th2: float | None,
                 permutation: Tensor | None = None, eps: float = EPS):
        super().__init__(int(emb.shape[0]))
        self.name, self.value, self.th, self.eps = name, value, th, eps
        self.permutation = permutation
        self.sampler = PairSampler(emb, th=th, range=range, th2=th2)

    @property
    def embeddings(self) -> Tensor:
        return self.sampler.emb

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        i, j, s = self.sampler.sample(k, generator)
        if self.value == "threshold":
            return i, j, threshold_targets(s, self.th, self.eps)
        return i, j, s.clamp(-(1 - self.eps), 1 - self.eps)

    def describe(self) -> dict[str, object]:
        return {"target": self.name, "n": self.n, "mode": self.sampler.mode, "fraction": self.sampler.fraction}


class MatrixTarget(Target):
    """A user-supplied N x N similarity (e.g. predicted mouse V1 responses, Li et al.) over its own N images.
    Every pair i != j qualifies; a permutation (shuffle control) reads the target at (perm[i], perm[j])."""

    def __init__(self, matrix: Tensor, images: Tensor, *, permutation: Tensor | None = None, eps: float = EPS):
        super().__init__(int(matrix.shape[0]))
        self.name = "matrix" if permutation is None else "shuffle"
        self.matrix, self.images, self.permutation, self.eps = matrix, images, permutation, eps

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        i, j = random_pairs(self.n, k, generator)
        i, j = i.to(self.matrix.device), j.to(self.matrix.device)
        a, b = (i, j) if self.permutation is None else (self.permutation[i], self.permutation[j])
        return i, j, self.matrix[a, b].clamp(-(1 - self.eps), 1 - self.eps)


class CategoricalTarget(Target):
    """(ref. code) +(1-eps) for two images of the same class, 0 otherwise; every pair i != j qualifies."""

    name = "categorical"

    def __init__(self, labels: Tensor, eps: float = EPS):
        super().__init__(int(labels.shape[0]))
        self.labels, self.eps = labels, eps

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        i, j = random_pairs(self.n, k, generator)
        i, j = i.to(self.labels.device), j.to(self.labels.device)
        same = (self.labels[i] == self.labels[j]).to(torch.float32)
        return i, j, same * (1 - self.eps)


# ---------------------------------------------------------------------------------------------------------------
# build_target and its loaders
# ---------------------------------------------------------------------------------------------------------------
def build_target(cfg: TrialConfig, reg_x: Tensor, reg_y: Tensor | None = None) -> Target:
    """The target of cfg.target over the regularization set, prepared once; `.sample(k, generator)` per step.

    For target matrix (and shuffle with a matrix) the returned object's `.images` replace reg_x as the
    regularization set. Raises ConfigError for anything the user must fix, before any training.
    """
    kind = cfg.target
    if kind not in TARGETS:
        raise ConfigError("target", f"is {kind!r}; use one of {', '.join(TARGETS)}")
    check_range(cfg.range, cfg.th, cfg.th2)
    uses_matrix = kind == "matrix" or (kind == "shuffle" and cfg.matrix is not None)
    if uses_matrix or kind == "categorical":
        if cfg.range != "all":
            raise ConfigError("range", f"is {cfg.range!r}, but target {kind} regularizes every pair; set range: all "
                                       "(ranges apply to threshold, pixel, vgg and shuffle without a matrix)")
    if uses_matrix:
        matrix, images = load_matrix(cfg)
        perm = seeded_permutation(matrix.shape[0], cfg.seed) if kind == "shuffle" else None
        return MatrixTarget(matrix, images, permutation=perm)
    if kind == "categorical":
        if reg_y is None or bool((torch.as_tensor(reg_y) < 0).any()):
            raise ConfigError("target", f"categorical needs class labels, but reg_data {cfg.reg_data!r} has none; "
                                        "use a labelled dataset or another target")
        return CategoricalTarget(torch.as_tensor(reg_y))
    emb = vgg_embeddings(reg_x, cfg.vgg_weights) if kind == "vgg" else pixel_embeddings(reg_x)
    perm = None
    if kind == "shuffle":
        perm = seeded_permutation(emb.shape[0], cfg.seed).to(emb.device)
        emb = emb[perm]  # image i now carries the similarities of image perm[i]
    value = "pixel" if kind == "pixel" else "threshold"
    return EmbeddingTarget(emb, name=kind, value=value, th=cfg.th, range=cfg.range, th2=cfg.th2, permutation=perm)


def seeded_permutation(n: int, seed: int) -> Tensor:
    """A permutation fixed by the seed; never the identity (for n >= 2), since the shuffle control must shuffle."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if n >= 2 and bool((perm == torch.arange(n)).all()):
        perm = perm.roll(1)
    return perm


def load_matrix(cfg: TrialConfig) -> tuple[Tensor, Tensor]:
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
    if cfg.grayscale and x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    elif not cfg.grayscale and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
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
