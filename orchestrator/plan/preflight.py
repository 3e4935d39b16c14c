"""Preflight: everything a sweep reads from disk is there and has the right shape, before Ray starts.

Without it a missing dataset is found by every trial in turn, after Ray started, each retried (issue: 176 failed
trials for one absent MNIST folder). The checks are cheap: files exist and open, `.npy` headers are read through a
memory map, no dataset is decoded. What they cover, per trial config of the sweep:

- the task's and (for a regularized trial that loads it) reg_data's dataset, by the check its registry record owns
  (torchvision's files under `data_root` unless `download: true`, an `idx:` folder's IDX pair, a `folder:` folder
  with images, ...);
- `matrix` (N x N) and `matrix_images` ((N, H, W) or (N, C, H, W), the same N), `vgg_weights` for target vgg;
- the `fgsm_source` checkpoint (the transferred attacks' source model) the sweep does not train itself (the
  corruption folder's .npy headers are checked by pixelreg_core.attacks.validate_attacks, which launch runs on
  every config);
- `device: cuda` where no GPU is visible (`resources.gpu` is checked by run.resources.check_resources).

A failure is a UserError: one line naming the field and the fix; the CLI exits 2; nothing has been written.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.spec.fields import source_attacks
from pixelreg_core.config import ConfigError, TrialConfig


def check_dataset(name: str, data_root: str, download: bool, field: str) -> None:
    """Raise UserError unless dataset `name` can be loaded: its registry record's own check (cheap: files exist and
    open), so every reader a record names is checked, whatever it is."""
    from pixelreg_core.data import registry as datasets

    try:
        record = datasets.get(name, field)
        if record.check is not None:
            record.check(name, data_root, download, field)
    except ConfigError as err:
        raise UserError(str(err)) from None


def npy_shape(path: str, field: str) -> tuple[int, ...]:
    """The shape from a .npy header (memory-mapped: no data is read)."""
    import numpy as np

    if not Path(path).is_file():
        raise UserError(f"{field}: file {path} not found; give the path of a .npy file")
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (ValueError, OSError) as err:
        raise UserError(f"{field}: could not read {path} as .npy ({err}); save it with numpy.save") from None


def check_matrix(cfg: TrialConfig) -> None:
    matrix = npy_shape(cfg.matrix, "train.matrix")
    if len(matrix) != 2 or matrix[0] != matrix[1] or matrix[0] < 2:
        raise UserError(f"train.matrix: {cfg.matrix} has shape {matrix}; it must be a square N x N similarity, N >= 2")
    if cfg.matrix_images is None:
        raise UserError("train.matrix_images: not set; the matrix target needs its N images as a .npy file")
    images = npy_shape(cfg.matrix_images, "train.matrix_images")
    if len(images) not in (3, 4) or (len(images) == 4 and images[1] not in (1, 3)):
        raise UserError(f"train.matrix_images: {cfg.matrix_images} has shape {images}; use (N, H, W) or "
                        "(N, C, H, W) with C = 1 or 3")
    if images[0] != matrix[0]:
        raise UserError(f"train.matrix: {cfg.matrix} has shape {matrix} but matrix_images has {images[0]} images; "
                        "the matrix needs one row and column per image")


def check_gpu(cfg: TrialConfig) -> None:
    if cfg.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("train.device: cuda is asked for but no GPU is visible here; use device auto or cpu, or "
                        "launch on a GPU machine")


def preflight(configs: list[TrialConfig], spec_path: str | Path) -> None:
    """Check every input of every config once; raise UserError (one line, prefixed with the spec) on the first
    problem."""
    produced = {c.trial_id for c in configs if c.role == "fgsm_source"}
    seen: set[tuple] = set()
    try:
        for cfg in configs:
            datasets = [(cfg.task, "pairs.task")] + ([(cfg.reg_data, "pairs.reg_data")] if cfg.loads_reg_data else [])
            for name, field in datasets:
                key = ("data", name, cfg.data_root, cfg.download)
                if key not in seen:
                    seen.add(key)
                    check_dataset(name, cfg.data_root, cfg.download, field)
            if cfg.regularized and cfg.matrix is not None and ("matrix", cfg.matrix, cfg.matrix_images) not in seen:
                seen.add(("matrix", cfg.matrix, cfg.matrix_images))
                check_matrix(cfg)
            if cfg.regularized and cfg.target == "vgg" and not (cfg.vgg_weights and Path(cfg.vgg_weights).is_file()):
                raise UserError(f"train.vgg_weights: {cfg.vgg_weights or 'not set'}: target vgg needs a local VGG19 "
                                "state_dict file (e.g. torchvision's vgg19-dcbb9e9d.pth); set vgg_weights: PATH")
            source = cfg.fgsm_source
            if source and "://" not in source and Path(source).stem not in produced and not Path(source).is_file():
                transferred = ", ".join(source_attacks(cfg.attacks)) or "the transferred attacks"
                raise UserError(f"train.fgsm_source: checkpoint {source} not found; train the source first or drop "
                                f"{transferred} from attacks")
            check_gpu(cfg)
    except UserError as exc:
        raise UserError(f"{spec_path}: {exc}") from None
