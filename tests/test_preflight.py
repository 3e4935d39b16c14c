"""Preflight: a sweep whose inputs are missing is refused before Ray starts, in one line, with exit 2, and nothing
is written. No Ray is started here: the launch path's Ray start is replaced by a function that fails the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator import cli
from orchestrator.errors import UserError
from orchestrator.localray import start as dashboard
from orchestrator.plan.preflight import check_dataset, preflight
from pixelreg_core.config import ConfigError, TrialConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started although the preflight should have refused the sweep")

    monkeypatch.setattr(dashboard, "start_ray", refuse)


def mnist_grid(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((REPO / "sweeps" / "mnist_grid.yaml").read_text())
    spec.update({"data_root": str(tmp_path / "empty-data"), "resources": {"cpu": 1, "gpu": 0}, **changes})
    (tmp_path / "empty-data").mkdir(exist_ok=True)
    path = tmp_path / "mnist_grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_mnist_grid_with_an_empty_data_root_is_refused_before_ray_and_writes_nothing(tmp_path, capsys):
    spec = mnist_grid(tmp_path)
    results = tmp_path / "results"
    assert cli.main(["launch", str(spec), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "data_root" in err and "MNIST" in err and "download: true" in err
    assert not results.exists()
    assert list((tmp_path / "empty-data").iterdir()) == []


def test_a_missing_image_folder_and_a_missing_fgsm_source_name_their_field(tmp_path, capsys):
    spec = mnist_grid(tmp_path, pairs=[{"task": "digits", "reg_data": f"folder:{tmp_path / 'nope'}"}])
    assert cli.main(["launch", str(spec), "--results", str(tmp_path / "r")]) == 2
    assert "pairs.reg_data" in capsys.readouterr().err
    cfg = TrialConfig(task="digits", fgsm_source=str(tmp_path / "src.pt"), attacks={"fgsm_transfer": {}})
    with pytest.raises(UserError, match="fgsm_source"):
        preflight([cfg], "s.yaml")


def test_matrix_shapes_are_read_from_the_npy_headers(tmp_path):
    np.save(tmp_path / "sim.npy", np.eye(4, dtype=np.float32))
    np.save(tmp_path / "images.npy", np.zeros((5, 8, 8), dtype=np.uint8))
    cfg = TrialConfig(task="digits", alpha=1.0, th=0.5, target="matrix", matrix=str(tmp_path / "sim.npy"),
                      matrix_images=str(tmp_path / "images.npy"))
    with pytest.raises(UserError, match="one row and column per image"):
        preflight([cfg], "s.yaml")
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    preflight([cfg], "s.yaml")


def test_present_torchvision_files_pass_and_download_skips_the_check(tmp_path):
    with pytest.raises(UserError, match="FashionMNIST"):
        check_dataset("FashionMNIST", str(tmp_path), False, "pairs.task")
    check_dataset("FashionMNIST", str(tmp_path), True, "pairs.task")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\0" * 16)
    check_dataset("FashionMNIST", str(tmp_path), False, "pairs.task")


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN"])
def test_each_torchvision_records_files_are_the_ones_its_torchvision_class_reads(tmp_path, name):
    """The records list their files (registry.torchvision); torchvision's own lists say what the class opens."""
    from torchvision import datasets as tv

    from pixelreg_core.data import registry

    cls = getattr(tv, name)
    if hasattr(cls, "resources"):  # MNIST family: ROOT/<Class>/raw/<file without .gz>
        names = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
        expected = {split: {f"{name}/raw/{n}" for n in names if n.startswith(prefix)}
                    for split, prefix in (("train", "train"), ("test", "t10k"))}
    elif hasattr(cls, "split_list"):  # SVHN: ROOT/<file>
        expected = {split: {cls.split_list[split][1]} for split in ("train", "test")}
    else:  # CIFAR: ROOT/<base_folder>/<batch files and meta>
        meta = f"{cls.base_folder}/{cls.meta['filename']}"
        expected = {split: {f"{cls.base_folder}/{f}" for f, _ in listed} | {meta}
                    for split, listed in (("train", cls.train_list), ("test", cls.test_list))}
    record = registry.get(name)
    for f in expected["train"] | expected["test"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"\0" * 16)
    record.check(name, str(tmp_path), False, "pairs.task")  # torchvision's files suffice ...
    for f in expected["train"] | expected["test"]:  # ... and each one is checked
        (tmp_path / f).rename(tmp_path / "away")
        with pytest.raises(ConfigError, match=Path(f).name):
            record.check(name, str(tmp_path), False, "pairs.task")
        (tmp_path / "away").rename(tmp_path / f)
