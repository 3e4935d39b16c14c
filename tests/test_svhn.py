"""SVHN through torchvision, from files this test writes in torchvision's layout (`ROOT/train_32x32.mat`,
`ROOT/test_32x32.mat`: X (32, 32, 3, n) uint8, y (n, 1) with 10 for the digit 0), offline.

The dataset is one record in pixelreg_core/data/registry.py; this is its test: the record's reader (split=,
.labels, NCHW), its file check in preflight, and a tiny trial on it. torchvision checks each file's md5 against
the real SVHN's, which generated files cannot match: the test points that one checksum at its own files, and
everything else (torchvision's class, scipy's .mat reader, the label mapping 10 -> 0) runs as for the real data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny

from orchestrator.errors import UserError
from orchestrator.plan.preflight import preflight
from pixelreg_core.data import bundle as D
from pixelreg_core.data import registry as datasets
from pixelreg_core.trial import run_trial

SIZES = {"train": 60, "test": 20}


def write_svhn(root: Path, monkeypatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SVHN's two .mat files under root; returns split -> (images NCHW uint8, labels 0..9)."""
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    rng = np.random.default_rng(0)
    written = {}
    for split, n in SIZES.items():
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's own axis order: H, W, C, N
        digits = np.arange(n) % 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": np.where(digits == 0, 10, digits)[:, None]})
        url, filename, _ = SVHN.split_list[split]
        md5 = hashlib.md5((root / filename).read_bytes()).hexdigest()
        monkeypatch.setitem(SVHN.split_list, split, [url, filename, md5])
        written[split] = (x.transpose(3, 2, 0, 1), digits)
    return written


def test_svhn_reads_split_labels_and_nchw_from_torchvision_files(tmp_path, monkeypatch):
    written = write_svhn(tmp_path, monkeypatch)
    record = datasets.get("SVHN")
    x, y = record.load("SVHN", str(tmp_path), "test", False)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (SIZES["test"], 3, 32, 32)
    # torchvision transposes (H, W, C, N) to (N, C, H, W): the record's layout NCHW takes that as it is
    assert torch.equal(x, torch.from_numpy(np.ascontiguousarray(written["test"][0])))
    assert torch.equal(y, torch.from_numpy(written["test"][1]))  # the label 10 became the digit 0
    bundle = D.prepare_data(tiny(task="SVHN", reg_data="SVHN", data_root=str(tmp_path), train_images=None,
                                 test_images=None, reg_images=8, alpha=1.0, th=0.2))
    assert bundle.train_x.shape[1:] == (1, 32, 32) and len(bundle.test_y) == SIZES["test"]  # gray by luma
    assert len(bundle.train_y) + len(bundle.valid_y) == SIZES["train"] and bundle.num_classes == 10
    assert bundle.reg_x.shape == (8, 1, 32, 32) and (bundle.input_scale, bundle.augment) == (1.0, False)


def test_preflight_refuses_a_missing_svhn_root_in_one_line_and_passes_a_present_one(tmp_path, monkeypatch):
    cfg = tiny(task="SVHN", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError) as refused:
        preflight([cfg], "svhn.yaml")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("svhn.yaml: data_root: SVHN (pairs.task)")
    assert "train_32x32.mat" in message and "download: true" in message
    preflight([cfg.replace(download=True)], "svhn.yaml")  # the reader fetches the files then
    write_svhn(tmp_path, monkeypatch)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(UserError, match="test_32x32.mat"):
        preflight([cfg.replace(data_root=str(tmp_path))], "svhn.yaml")
    write_svhn(tmp_path, monkeypatch)
    preflight([cfg.replace(data_root=str(tmp_path))], "svhn.yaml")


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_regularized_trial_on_svhn_writes_its_rows(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_svhn(tmp_path / "data", monkeypatch)
    cfg = tiny(task="SVHN", reg_data="SVHN", data_root=str(tmp_path / "data"), epochs=1, train_images=None,
               test_images=None, reg_images=16, alpha=1.0, th=0.2, attacks={"gaussian": {"images": 10, "num_eps": 2}})
    row = run_trial(cfg, tmp_path / "out")
    assert row["status"] == "ok" and 0.0 <= row["clean_acc"] <= 1.0
    robustness = pd.read_parquet(tmp_path / "out" / "robustness")
    assert set(robustness["attack"]) == {"gaussian"} and robustness["eps"].max() == pytest.approx(
        datasets.get("SVHN").eps_top("gaussian"))
