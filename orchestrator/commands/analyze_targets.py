"""`orchestrator analyze-targets --matrix M.npy --images X.npy [--out DIR]`: is a similarity matrix pixel-like?

Attias et al. started from the observation that the neural similarities Li et al. regularized with (a predictive
model of mouse V1) correlate with plain pixel similarities (their Fig. 1). This command repeats that check for any
user matrix: Pearson and Spearman correlation of the matrix's off-diagonal entries with the cosine similarity of
the centred images, a scatter plot, and the numbers as JSON. A high r says the cheap pixel target (target
"threshold" / "pixel") can stand in for the matrix.

Pixel similarities are one dot product per pair, so for large N a seeded random sample of pairs is used
(--max-pairs) instead of the N x N matrix; the sampled correlation is within ~1e-3 of the full one at 10^6 pairs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

DEFAULT_MAX_PAIRS = 1_000_000
PLOT_POINTS = 20_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", required=True, help=".npy N x N similarity matrix (e.g. neural responses)")
    parser.add_argument("--images", required=True, help=".npy N images: (N, H, W), (N, C, H, W) or (N, D)")
    parser.add_argument("--out", default=".", help="folder for target_vs_pixel.png and .json (default: .)")
    parser.add_argument("--max-pairs", type=int, default=DEFAULT_MAX_PAIRS,
                        help="use all N(N-1)/2 pairs up to this many, else a seeded random sample of this many")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sample and the plotted subset")


def run(args: argparse.Namespace) -> int:
    result = analyze_targets(args.matrix, args.images, args.out, max_pairs=args.max_pairs, seed=args.seed)
    print(f"N = {result['n_images']} images, {result['pairs']} pairs ({result['pair_selection']})")
    print(f"Pearson r  = {result['pearson']:.4f}")
    print(f"Spearman rho = {result['spearman']:.4f}")
    if not result["symmetric"]:
        print("note: the matrix is not symmetric; its upper triangle (i < j) was used")
    print(f"wrote {result['figure']}")
    print(f"wrote {result['json']}")
    return 0


# --------------------------------------------------------------------------------------------------- loading


def _load(path: str | os.PathLike, what: str):
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} file not found; pass an existing .npy file")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{p}: cannot read it as a .npy array ({exc}); save it with numpy.save") from exc


def load_inputs(matrix_path: str | os.PathLike, images_path: str | os.PathLike):
    """(matrix float64 N x N, images float32 with N rows), or a UserError naming the file and both shapes."""
    import numpy as np

    matrix = _load(matrix_path, "--matrix")
    images = _load(images_path, "--images")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise UserError(f"{matrix_path}: the similarity matrix must be square N x N; got shape {matrix.shape} "
                        f"(images {images_path} have shape {images.shape})")
    if images.ndim not in (2, 3, 4) or images.shape[0] != matrix.shape[0]:
        raise UserError(f"{images_path}: images of shape {images.shape} do not match the {matrix.shape} matrix "
                        f"{matrix_path}; need (N, H, W), (N, C, H, W) or (N, D) with N = {matrix.shape[0]}")
    if matrix.shape[0] < 3:
        raise UserError(f"{matrix_path}: N = {matrix.shape[0]}; a correlation needs at least 3 images")
    if not np.issubdtype(matrix.dtype, np.number) or not np.isfinite(matrix).all():
        raise UserError(f"{matrix_path}: the matrix must hold finite numbers (found NaN/inf or non-numbers)")
    if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
        raise UserError(f"{images_path}: the images must hold finite numbers (found NaN/inf or non-numbers)")
    return matrix.astype(np.float64), images.astype(np.float32)


def embeddings(images) -> tuple[Any, str]:
    """Rows E with S_pixel = E E^T (channels averaged, centred, L2-normalised), and which code computed them.

    The trainer's own function is used so the analysis sees exactly the targets training would; the numpy lines
    below are the same recipe for a checkout without it (kept identical on purpose)."""
    import numpy as np

    try:
        from pixelreg_core.targets.builders import pixel_embeddings
    except ImportError:
        pixel_embeddings = None
    if pixel_embeddings is not None:
        embeddings = pixel_embeddings(images).cpu().numpy().astype(np.float64)
        return embeddings, "pixelreg_core.targets.builders.pixel_embeddings"
    x = images.mean(axis=1) if images.ndim == 4 else images
    flat = x.reshape(len(x), -1).astype(np.float64)
    flat -= flat.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norms, 1e-12), "orchestrator fallback (same recipe)"


def pair_indices(n: int, max_pairs: int, seed: int):
    """All pairs i < j when there are few enough, else a seeded uniform sample of max_pairs of them."""
    import numpy as np

    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j, "all pairs i < j"
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j = j + (j >= i)  # uniform over j != i
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return lo, hi, f"random sample of {max_pairs} of {total} pairs, seed {seed}"


# --------------------------------------------------------------------------------------------------- analysis


def analyze_targets(matrix_path: str | os.PathLike, images_path: str | os.PathLike, out_dir: str | os.PathLike = ".",
                    max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0) -> dict[str, Any]:
    """Correlate a user similarity matrix with pixel similarities; write the scatter PNG and a JSON of numbers."""
    import numpy as np
    from scipy import stats

    if max_pairs < 3:
        raise UserError(f"--max-pairs {max_pairs}: must be >= 3")
    matrix, images = load_inputs(matrix_path, images_path)
    emb, source = embeddings(images)
    i, j, selection = pair_indices(len(matrix), max_pairs, seed)
    pixel = np.einsum("pd,pd->p", emb[i], emb[j])
    target = matrix[i, j]
    if np.ptp(target) == 0 or np.ptp(pixel) == 0:
        raise UserError(f"{matrix_path}: the off-diagonal entries (or the pixel similarities) are constant; "
                        "a correlation is undefined")
    result: dict[str, Any] = {
        "matrix": str(matrix_path), "images": str(images_path), "n_images": int(len(matrix)),
        "pairs": int(len(i)), "pair_selection": selection, "embeddings": source,
        "symmetric": bool(np.allclose(matrix, matrix.T)),
        "pearson": float(stats.pearsonr(pixel, target).statistic),
        "spearman": float(stats.spearmanr(pixel, target).statistic),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["figure"] = str(out / "target_vs_pixel.png")
    result["json"] = str(out / "target_vs_pixel.json")
    scatter(pixel, target, result, Path(result["figure"]), seed)
    Path(result["json"]).write_text(json.dumps(result, indent=2) + "\n")
    return result


def scatter(pixel, target, result: dict[str, Any], path: Path, seed: int) -> None:
    """Scatter of target vs pixel similarity with the least-squares line (a random subset of points if many)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    shown = rng.choice(len(pixel), size=PLOT_POINTS, replace=False) if len(pixel) > PLOT_POINTS else slice(None)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
    ax.scatter(pixel[shown], target[shown], s=6, alpha=max(0.05, min(0.8, 300 / max(1, len(pixel[shown])))),
               color="#1f77b4", lw=0)
    slope, intercept = np.polyfit(pixel, target, 1)
    xs = np.array([pixel.min(), pixel.max()])
    ax.plot(xs, slope * xs + intercept, color="#d62728", lw=2, label="least-squares line")
    shown_count = len(pixel) if isinstance(shown, slice) else PLOT_POINTS
    ax.set_title(f"Target vs pixel similarity (cf. Attias et al., Fig. 1)\n"
                 f"Pearson r = {result['pearson']:.3f}, Spearman ρ = {result['spearman']:.3f}, "
                 f"N = {result['n_images']}", fontsize=11)
    ax.set_xlabel("pixel similarity S_pixel (cosine of centred images)")
    ax.set_ylabel(f"user similarity ({Path(result['matrix']).name})")
    ax.grid(alpha=0.3)
    ax.legend(title=f"{shown_count} of {result['pairs']} pairs shown", fontsize=9, loc="upper left")
    from pixelreg_core.results import atomic_path

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)
