"""Targets and pair sampling checked against explicit N x N computations on small N (issue 2, "Targets")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.targets.builders import EPS, VGG19_TO_CONV3_1, pixel_embeddings, similarity_loss, threshold_targets
from pixelreg_core.targets.pairs import PairSampler, range_mask, sample_pairs
from pixelreg_core.targets.registry import build_target

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_images(n: int = 12, side: int = 3, seed: int = 0) -> torch.Tensor:
    """Tiny random images: with D = 9 the pixel similarities spread widely, so every range has members."""
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def direct_similarity(images: torch.Tensor) -> torch.Tensor:
    """S_pixel written out the long way, in float64, as docs/method.md states it."""
    x = images.double().mean(dim=1).reshape(images.shape[0], -1)
    x = x - x.mean(dim=0)
    x = x / x.norm(dim=1, keepdim=True)
    return x @ x.T


def reg_cfg(**changes) -> TrialConfig:
    return TrialConfig(**{"alpha": 4.0, "th": 0.3, "reg_images": 12, "seed": 0, **changes})


# --- embeddings and thresholds ---------------------------------------------------------------------------------
def test_pixel_embeddings_equal_direct_computation_rgb_and_gray():
    rgb = torch.rand(10, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    emb = pixel_embeddings(rgb)
    assert emb.shape == (10, 25) and emb.dtype == torch.float32
    torch.testing.assert_close((emb @ emb.T).double(), direct_similarity(rgb), atol=1e-5, rtol=0)
    gray = rgb.mean(dim=1)  # (N, H, W) input: the channel mean is already taken
    torch.testing.assert_close(pixel_embeddings(gray), emb, atol=1e-6, rtol=0)
    assert torch.equal(rgb, torch.rand(10, 3, 5, 5, generator=torch.Generator().manual_seed(1)))  # input untouched


def test_pixel_embeddings_guard_zero_rows():
    a, b = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    images = torch.stack([a, b, (a + b) / 2])  # the third image is the mean image: its centred row is zero
    emb = pixel_embeddings(images)
    assert torch.isfinite(emb).all()
    assert emb[2].abs().max() < 1e-6
    torch.testing.assert_close(emb[:2].norm(dim=1), torch.ones(2))


def test_threshold_targets_equal_direct_computation():
    s = torch.rand(50, 50, generator=torch.Generator().manual_seed(3)) * 2 - 1
    th = 0.4
    expected = np.where(s.numpy() > th, 1.0, np.where(s.numpy() < -th, -1.0, 0.0))
    np.testing.assert_array_equal(threshold_targets(s, th).numpy(), expected)  # exactly +/-1 (authors' code)
    softened = np.where(s.numpy() > th, 1 - EPS, np.where(s.numpy() < -th, -(1 - EPS), 0.0))
    np.testing.assert_allclose(threshold_targets(s, th, EPS).numpy(), softened, rtol=0, atol=1e-7)
    assert threshold_targets(torch.tensor([0.4, -0.4]), 0.4).tolist() == [0.0, 0.0]  # |s| = Th is not above Th


def test_exact_targets_are_the_default_and_exactly_plus_minus_one():
    """issue 9: the authors' targets are exactly +/-1 (eps only inside f's logs); exact_targets false is the older
    +/-(1 - 1e-5). Fails if the default changes."""
    assert TrialConfig().exact_targets is True
    images = small_images()
    gen = torch.Generator().manual_seed(5)
    _, _, exact = build_target(reg_cfg(), images, None).sample(300, gen)
    assert set(exact.abs().unique().tolist()) == {0.0, 1.0}
    _, _, soft = build_target(reg_cfg(exact_targets=False), images, None).sample(300, gen)
    assert soft.abs().unique().tolist() == [0.0, pytest.approx(1 - EPS)]
    assert torch.isfinite(similarity_loss(torch.zeros(3), torch.tensor([1.0, -1.0, 0.0])))  # f stays finite
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    _, _, same = build_target(reg_cfg(target="categorical"), images, labels).sample(300, gen)
    assert set(same.unique().tolist()) == {0.0, 1.0}


# --- pair sampling -----------------------------------------------------------------------------------------------
def qualifying_pairs(emb: torch.Tensor, range_: str, th: float, th2: float | None) -> list[tuple[int, int]]:
    n = emb.shape[0]
    s = (emb[:, None, :] * emb[None, :, :]).sum(-1)  # explicit N x N, same row-dot definition as the sampler
    mask = range_mask(s, range_, th, th2)
    return [(i, j) for i, j in itertools.combinations(range(n), 2) if mask[i, j]]


def check_uniform_over_qualifying(emb, range_, th, th2, draws_per_pair=150, **sampler_args) -> PairSampler:
    """Draw many pairs; assert only qualifying, never i == j, s = S[i, j], and a chi-square fit to uniform."""
    pairs = qualifying_pairs(emb, range_, th, th2)
    assert len(pairs) >= 2, "test data must give this range several qualifying pairs"
    sampler = PairSampler(emb, th=th, range=range_, th2=th2, **sampler_args)
    gen = torch.Generator().manual_seed(7)
    counts = dict.fromkeys(pairs, 0)
    total = draws_per_pair * len(pairs)
    for _ in range(0, total, 500):
        i, j, s = sampler.sample(500, gen)
        assert (i != j).all()
        direct = (emb[i] * emb[j]).sum(-1)
        torch.testing.assert_close(s, direct, atol=1e-6, rtol=0)
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            key = (min(a, b), max(a, b))
            assert key in counts, f"pair {key} does not qualify for range {range_}"
            counts[key] += 1
    observed = np.array(list(counts.values()))
    assert (observed > 0).all()
    assert chisquare(observed).pvalue > 1e-3, observed
    return sampler


@pytest.mark.parametrize("range_,th2", [("all", None), ("high", None), ("low", None), ("positive", None),
                                        ("negative", None), ("double", 0.1)])
def test_sample_pairs_uniform_over_qualifying_pairs_by_rejection(range_, th2):
    emb = pixel_embeddings(small_images())
    sampler = check_uniform_over_qualifying(emb, range_, 0.3, th2)
    assert sampler.mode in ("all", "rejection")  # common pairs are never enumerated


def planted_embeddings(n: int = 60, planted: int = 6) -> torch.Tensor:
    """Random 8x8 images (pixel similarities near 0) with a few near-duplicate pairs: range high at Th 0.8
    keeps only those, a qualifying fraction well below 1%."""
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(n, 1, 8, 8, generator=gen)
    for m in range(planted):
        images[2 * m + 1] = (images[2 * m] + 0.05 * torch.rand(1, 8, 8, generator=gen)).clamp(0, 1)
    return pixel_embeddings(images)


def test_rare_range_takes_the_enumeration_path_and_stays_uniform():
    emb = planted_embeddings()
    assert len(qualifying_pairs(emb, "high", 0.8, None)) == 6
    sampler = check_uniform_over_qualifying(emb, "high", 0.8, None, draws_per_pair=300)
    assert sampler.mode == "enumerated"
    assert sampler.fraction == pytest.approx(6 / (60 * 59 / 2))


def test_forced_paths_agree_on_what_qualifies():
    emb = planted_embeddings()
    check_uniform_over_qualifying(emb, "high", 0.8, None, enumerate_below=0.0)  # forced rejection
    forced = check_uniform_over_qualifying(pixel_embeddings(small_images()), "low", 0.3, None, enumerate_below=1.1)
    assert forced.mode == "enumerated"


def test_sample_pairs_is_deterministic_under_the_generator():
    emb = pixel_embeddings(small_images(n=40, side=4))
    first = sample_pairs(emb, 16, th=0.2, range="high", generator=torch.Generator().manual_seed(5))
    again = sample_pairs(emb, 16, th=0.2, range="high", generator=torch.Generator().manual_seed(5))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert first[0].shape == first[1].shape == first[2].shape == (16,)
    assert first[0].dtype == torch.long


@pytest.mark.parametrize("range_,th,th2", [("high", 0.99, None), ("double", 0.99, 1e-9)])
def test_range_without_qualifying_pair_is_a_config_error_naming_th(range_, th, th2):
    emb = pixel_embeddings(small_images())
    with pytest.raises(ConfigError) as err:
        sample_pairs(emb, 4, th=th, range=range_, th2=th2)
    assert err.value.field == "th"
    assert "lower th" in str(err.value)


def test_bad_range_and_missing_th2_are_config_errors():
    emb = pixel_embeddings(small_images())
    with pytest.raises(ConfigError) as err:
        sample_pairs(emb, 4, th=0.3, range="sideways")
    assert err.value.field == "range"
    with pytest.raises(ConfigError) as err:
        sample_pairs(emb, 4, th=0.3, range="double")
    assert err.value.field == "th2"


@pytest.mark.parametrize("th,th2", [(0.0, None), (1.0, None), (-0.1, None), (0.2, 0.0), (0.2, 0.3), (0.2, 0.1)])
def test_config_and_sampler_agree_on_the_threshold_bounds(th, th2):
    """One rule for th and th2 (0 < th2 < th < 1): a config the trainer accepts is one the sampler accepts, and
    the other way round (the sampler once took th = 0 and th2 = 0, which the config refused)."""
    range_ = "double" if th2 is not None else "high"
    emb = pixel_embeddings(small_images())
    try:
        TrialConfig(alpha=1.0, th=th, th2=th2, range=range_).validate()
        config_ok = True
    except ConfigError:
        config_ok = False
    try:
        PairSampler(emb, th=th, range=range_, th2=th2)
        sampler_ok = True
    except ConfigError as err:
        sampler_ok = err.field not in ("th", "th2") or "no pair" in str(err)
    assert config_ok == sampler_ok == (0 < th < 1 and (th2 is None or 0 < th2 < th))


# --- the loss ----------------------------------------------------------------------------------------------------
def test_loss_is_finite_at_plus_minus_one_targets_with_finite_gradients():
    s_cnn = torch.tensor([1.0, -1.0, 0.999999, 0.0], requires_grad=True)
    s_target = torch.tensor([1.0, -1.0, -1.0, 1 - EPS])
    loss = similarity_loss(s_cnn, s_target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s_cnn.grad).all()


def test_loss_is_four_times_the_textbook_artanh_form():
    gen = torch.Generator().manual_seed(6)
    s_cnn = torch.rand(64, generator=gen) * 1.8 - 0.9
    s_target = torch.rand(64, generator=gen) * 1.8 - 0.9
    textbook = (torch.atanh(s_cnn.double()) - torch.atanh(s_target.double())).pow(2).mean()
    torch.testing.assert_close(similarity_loss(s_cnn, s_target).double(), 4 * textbook, rtol=1e-3, atol=0)


def test_loss_without_arctanh_is_plain_mse():
    s_cnn, s_target = torch.tensor([0.5, -0.2, 0.9]), torch.tensor([1.0, 0.0, -1.0])
    torch.testing.assert_close(similarity_loss(s_cnn, s_target, arctanh=False),
                               torch.nn.functional.mse_loss(s_cnn, s_target))


# --- build_target ------------------------------------------------------------------------------------------------
def test_threshold_and_pixel_targets_match_the_explicit_matrix():
    images = small_images()
    s = direct_similarity(images).float()
    gen = torch.Generator().manual_seed(8)
    threshold = build_target(reg_cfg(target="threshold"), images, None)
    i, j, target = threshold.sample(200, gen)
    torch.testing.assert_close(target, threshold_targets(s[i, j], 0.3), atol=0, rtol=0)
    assert threshold.images is None
    pixel = build_target(reg_cfg(target="pixel", range="high"), images, None)
    i, j, target = pixel.sample(200, gen)
    torch.testing.assert_close(target, s[i, j], atol=1e-5, rtol=0)
    assert (s[i, j].abs() > 0.3).all()


def test_shuffle_permutes_the_image_target_correspondence():
    images = small_images()
    s = threshold_targets(direct_similarity(images).float(), 0.3)
    target = build_target(reg_cfg(target="shuffle"), images, None)
    perm = target.permutation
    assert sorted(perm.tolist()) == list(range(12)) and not torch.equal(perm, torch.arange(12))
    i, j, s_target = target.sample(300, torch.Generator().manual_seed(9))
    torch.testing.assert_close(s_target, s[perm[i], perm[j]], atol=0, rtol=0)
    assert not torch.equal(s_target, s[i, j])
    assert torch.equal(build_target(reg_cfg(target="shuffle"), images, None).permutation, perm)  # seeded
    assert not torch.equal(build_target(reg_cfg(target="shuffle", seed=1), images, None).permutation, perm)


def save_matrix_files(tmp_path, n_matrix: int, n_images: int):
    gen = np.random.default_rng(0)
    m = gen.uniform(-1, 1, (n_matrix, n_matrix)).astype(np.float32)
    m = (m + m.T) / 2
    np.save(tmp_path / "sim.npy", m)
    np.save(tmp_path / "images.npy", gen.uniform(0, 1, (n_images, 8, 8)).astype(np.float32))
    return m, str(tmp_path / "sim.npy"), str(tmp_path / "images.npy")


def test_matrix_target_reads_the_matrix_and_brings_its_images(tmp_path):
    m, sim, imgs = save_matrix_files(tmp_path, 6, 6)
    target = build_target(reg_cfg(target="matrix", matrix=sim, matrix_images=imgs), small_images(), None)
    assert target.images.shape == (6, 1, 8, 8) and target.images.dtype == torch.float32
    i, j, s_target = target.sample(100, torch.Generator().manual_seed(10))
    assert (i != j).all()
    torch.testing.assert_close(s_target, torch.from_numpy(m)[i, j].clamp(-1 + EPS, 1 - EPS))
    shuffled = build_target(reg_cfg(target="shuffle", matrix=sim, matrix_images=imgs), small_images(), None)
    perm = shuffled.permutation
    i, j, s_target = shuffled.sample(100, torch.Generator().manual_seed(10))
    torch.testing.assert_close(s_target, torch.from_numpy(m)[perm[i], perm[j]].clamp(-1 + EPS, 1 - EPS))


def test_matrix_shape_mismatch_is_a_config_error_with_both_shapes(tmp_path):
    _, sim, imgs = save_matrix_files(tmp_path, 5, 6)
    with pytest.raises(ConfigError) as err:
        build_target(reg_cfg(target="matrix", matrix=sim, matrix_images=imgs), small_images(), None)
    assert err.value.field == "matrix"
    assert "(5, 5)" in str(err.value) and "(6, 8, 8)" in str(err.value)


def test_matrix_and_categorical_allow_only_range_all(tmp_path):
    _, sim, imgs = save_matrix_files(tmp_path, 6, 6)
    for cfg in (reg_cfg(target="matrix", matrix=sim, matrix_images=imgs, range="high"),
                reg_cfg(target="categorical", range="low")):
        with pytest.raises(ConfigError) as err:
            build_target(cfg, small_images(), torch.zeros(12, dtype=torch.long))
        assert err.value.field == "range"


def test_categorical_target_is_one_for_same_label_zero_otherwise():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    target = build_target(reg_cfg(target="categorical"), small_images(), labels)
    i, j, s_target = target.sample(300, torch.Generator().manual_seed(11))
    expected = torch.where(labels[i] == labels[j], 1 - EPS, 0.0)
    torch.testing.assert_close(s_target, expected)
    assert (s_target > 0).any() and (s_target == 0).any()
    with pytest.raises(ConfigError):
        build_target(reg_cfg(target="categorical"), small_images(), torch.full((12,), -1))


def test_vgg_without_weights_is_a_config_error_naming_vgg_weights(tmp_path):
    for weights in (None, str(tmp_path / "missing.pth")):
        with pytest.raises(ConfigError) as err:
            build_target(reg_cfg(target="vgg", vgg_weights=weights), small_images(side=8), None)
        assert err.value.field == "vgg_weights"


def test_vgg_target_runs_on_a_torchvision_state_dict(tmp_path):
    """A randomly initialised state_dict with torchvision's key names, trimmed to the layers conv3_1 needs."""
    from torchvision.models import vgg19
    from torchvision.models.vgg import make_layers

    torch.manual_seed(0)
    layers = make_layers(VGG19_TO_CONV3_1)
    with torch.device("meta"):  # the real architecture's names and shapes, without allocating 143M weights
        reference = vgg19().state_dict()
    state = {f"features.{k}": v for k, v in layers.state_dict().items()}
    assert all(reference[k].shape == v.shape for k, v in state.items())
    torch.save(state, tmp_path / "vgg19.pth")
    images = small_images(n=10, side=8)
    target = build_target(reg_cfg(target="vgg", vgg_weights=str(tmp_path / "vgg19.pth")), images, None)
    emb = target.embeddings
    assert emb.shape == (10, 256 * 2 * 2)
    with torch.no_grad():
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        feats = layers.eval()((images.expand(-1, 3, -1, -1) - mean) / std).flatten(1).double()
    feats = feats - feats.mean(0)
    feats = feats / feats.norm(dim=1, keepdim=True)
    torch.testing.assert_close((emb @ emb.T).double(), feats @ feats.T, atol=1e-5, rtol=0)
    i, j, s_target = target.sample(16, torch.Generator().manual_seed(12))
    assert set(s_target.unique().tolist()) <= {-(1 - EPS), 0.0, 1 - EPS}


@pytest.mark.gpu
def test_targets_sample_on_cuda_with_a_cuda_generator():
    images = small_images(n=60, side=8).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for range_ in ("all", "high"):
        target = build_target(reg_cfg(target="threshold", range=range_, th=0.1), images, None)
        i, j, s_target = target.sample(16, gen)
        assert i.is_cuda and s_target.is_cuda and (i != j).all()
    listed = PairSampler(planted_embeddings().cuda(), th=0.8, range="high")
    i, j, s = listed.sample(16, gen)
    assert listed.mode == "enumerated" and s.is_cuda and (s > 0.8).all()
