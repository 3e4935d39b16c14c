"""Robustness evaluation on a tiny real model: a width-4 ResNet18 trained on sklearn's 8x8 digits for 150 steps."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from conftest import torch_threads

from benchmarks.fit import quick_fit
from pixelreg_core import attacks
from pixelreg_core.attacks import boundary, corruptions, fgsm, minimal, noise, resolve
from pixelreg_core.attacks.accuracy import accuracy, predict
from pixelreg_core.attacks.base import eps_list
from pixelreg_core.attacks.options import eps_options
from pixelreg_core.attacks.spectrum import spectrum_rows
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data.bundle import prepare_data
from pixelreg_core.model import save_checkpoint
from pixelreg_core.results import SCHEMAS, key_values, to_arrow

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = TrialConfig(task="digits", width=4, seed=0, alpha=0.0, device="cpu", attacks={})
    data = prepare_data(cfg)
    with torch_threads(1):
        model = quick_fit(cfg, data, 150)
        source_cfg = TrialConfig(task="digits", width=4, seed=1, alpha=0.0, role="fgsm_source", device="cpu")
        source = quick_fit(source_cfg, data, 150)
    ckpt = tmp_path_factory.mktemp("ckpt") / "source.pt"
    save_checkpoint(source, source_cfg, str(ckpt))
    own = tmp_path_factory.mktemp("own") / "own.pt"
    save_checkpoint(model, cfg, str(own))
    return {"cfg": cfg, "data": data, "model": model, "source": source, "source_ckpt": str(ckpt), "own": str(own)}


def _cfg(setup, **attack_opts) -> TrialConfig:
    return setup["cfg"].replace(attacks=attack_opts, fgsm_source=setup["source_ckpt"])


def _values(rows, attack):
    return [r["value"] for r in rows if r["attack"] == attack]


def test_accuracy_counts_the_right_predictions_batch_by_batch(setup):
    """The one accuracy loop every accuracy attack uses: the fraction of images whose prediction equals the label,
    whatever the batch size, with `perturb` applied batch by batch (and the tiny model did learn)."""
    model, x, y = setup["model"], setup["data"].test_x, setup["data"].test_y
    right = predict(model, x) == y
    assert accuracy(model, x, y) == int(right.sum()) / len(y) > 0.6
    assert accuracy(model, x, y, batch_size=7) == accuracy(model, x, y)
    wrong = torch.where(right, (y + 1) % 10, y)  # every label flipped where the model is right: it is never right
    assert accuracy(model, x, wrong) == 0.0
    starts = []
    assert accuracy(model, x, y, 100, lambda xb, start: starts.append(start) or torch.zeros_like(xb)) == \
        int((predict(model, torch.zeros_like(x)) == y).sum()) / len(y)
    assert starts == list(range(0, len(y), 100))
    assert math.isnan(accuracy(model, x[:0], y[:0]))


def test_eps_zero_equals_clean_accuracy(setup):
    data, model = setup["data"], setup["model"]
    clean = accuracy(model, data.test_x, data.test_y)
    opts = {"eps": [0.0, 0.3]}
    rows, _ = attacks.evaluate(model, data, _cfg(setup, gaussian=opts, uniform=opts, salt_pepper=opts,
                                                 fgsm_transfer=opts), None)
    for name in ("gaussian", "uniform", "salt_pepper", "fgsm_transfer"):
        at_zero = [r for r in rows if r["attack"] == name and r["eps"] == 0.0]
        assert len(at_zero) == 1 and at_zero[0]["value"] == clean and at_zero[0]["images"] == len(data.test_y)


@pytest.mark.float
def test_the_shortcuts_give_the_rows_the_plain_loops_give(setup, monkeypatch):
    """CPU forwards in cache-sized chunks and one clean accuracy shared by every eps-0 point: the same rows, value
    for value, as each curve running every eps itself in whole batches; the clean images are classified once."""
    from pixelreg_core import model as model_module
    from pixelreg_core.attacks import base, seeds

    data, model = setup["data"], setup["model"]
    opts = {"eps": [0.0, 0.1, 0.3], "batch_size": 100}
    cfg = _cfg(setup, gaussian={**opts, "repeats": 2}, uniform=opts, salt_pepper=opts, fgsm_transfer=opts)
    clean_passes = []
    real = base.accuracy  # the name AttackContext.clean_accuracy calls (the curves import their own)
    monkeypatch.setattr(base, "accuracy", lambda *a, **k: clean_passes.append(len(a[2])) or real(*a, **k))
    monkeypatch.setattr(model_module, "CPU_EVAL_CHUNK", 16)  # the test set is small: chunk it anyway
    rows, _ = attacks.evaluate(model, data, cfg, None)
    assert clean_passes == [len(data.test_y)]  # one clean pass for 5 eps-0 rows (gaussian has 2 repeats)

    monkeypatch.setattr(model_module, "CPU_EVAL_CHUNK", 10**9)
    x, y = data.test_x, data.test_y
    signs = fgsm.gradient_signs(setup["source"], x, y, 100)
    want = []
    for name, repeats in (("gaussian", 2), ("uniform", 1), ("salt_pepper", 1)):
        for i, eps in enumerate(opts["eps"]):
            for r in range(repeats):
                seed = seeds.derive_seed(cfg.seed, name, i, r)
                want.append((name, eps, r, noise.noise_accuracy(model, name, x, y, eps, seed, 100)))
    want += [("fgsm_transfer", eps, 0, fgsm.transfer_accuracy(model, x, y, signs, eps, 100)) for eps in opts["eps"]]
    assert [(r["attack"], r["eps"], r["repeat"]) for r in rows] == [w[:3] for w in want]
    # chunked and whole-batch forwards may round differently on another CPU: at most one near-tie image flips
    assert [r["value"] for r in rows] == pytest.approx([w[3] for w in want], abs=1.0 / len(y) + 1e-12)


def test_the_starting_point_search_finds_foolboxs_points(setup):
    """blended_uniform_starts classifies only undecided images; the points are foolbox's own, value for value,
    on images where every draw fails too (the labels below include classes noise is never read as)."""
    import foolbox as fb

    from pixelreg_core.attacks import foolbox_support, seeds

    model, data = setup["model"], setup["data"]
    x, y = data.test_x[:40], predict(setup["model"], data.test_x[:40])
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=torch.device("cpu"))
    with seeds.seeded_torch(7, torch.device("cpu")):
        theirs = fb.attacks.LinearSearchBlendedUniformNoiseAttack(directions=30, steps=20).run(
            fmodel, x, fb.criteria.Misclassification(y))
    with seeds.seeded_torch(7, torch.device("cpu")):
        ours = foolbox_support.blended_uniform_starts(fmodel, x, y, steps=20, directions=30)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, x)


def test_gaussian_accuracy_falls_and_repeats_exactly(setup):
    cfg = _cfg(setup, gaussian={"eps": [0.0, 0.3, 0.6, 1.2]})
    rows, _ = attacks.evaluate(setup["model"], setup["data"], cfg, None)
    acc = _values(rows, "gaussian")
    assert acc[0] > acc[1] > acc[3] and acc[2] > acc[3]
    assert acc[0] - acc[3] > 0.3
    again, _ = attacks.evaluate(setup["model"], setup["data"], cfg, None)
    assert rows == again


def test_noise_keeps_each_image_in_its_own_range():
    x = torch.rand(5, 1, 8, 8) * 0.5 + 0.2
    for kind in noise.NOISE_ATTACKS:
        noisy = noise.add_noise(kind, x, 0.3, torch.Generator().manual_seed(0))
        assert noisy.shape == x.shape and not torch.equal(noisy, x)
        assert (noisy.amin(dim=(1, 2, 3)) >= x.amin(dim=(1, 2, 3))).all()
        assert (noisy.amax(dim=(1, 2, 3)) <= x.amax(dim=(1, 2, 3))).all()


def test_fgsm_hurts_source_more_than_gaussian_of_same_size(setup):
    # White-box use of the source on its own signs: allowed here, refused by evaluate() (next test).
    data, source = setup["data"], setup["source"]
    signs = fgsm.gradient_signs(source, data.test_x, data.test_y)
    eps = 0.2
    fgsm_acc = fgsm.transfer_accuracy(source, data.test_x, data.test_y, signs, eps)
    gauss_acc = noise.noise_accuracy(source, "gaussian", data.test_x, data.test_y, eps, seed=0, batch_size=500)
    assert fgsm_acc < gauss_acc - 0.2
    # transferred to the other model it still hurts, less than white-box
    transferred = fgsm.transfer_accuracy(setup["model"], data.test_x, data.test_y, signs, eps)
    assert fgsm_acc < transferred < accuracy(setup["model"], data.test_x, data.test_y)


def test_evaluate_refuses_the_model_as_its_own_source(setup):
    cfg = setup["cfg"].replace(attacks={"fgsm_transfer": {}}, fgsm_source=setup["own"])
    with pytest.raises(ConfigError, match="fgsm_source"):
        attacks.evaluate(setup["model"], setup["data"], cfg, None)


def test_fgsm_cache_is_hit_on_second_use_and_a_damaged_entry_is_set_aside(setup, tmp_path, monkeypatch, capsys):
    computed = []  # images whose gradient signs were computed, per call
    real = fgsm.gradient_signs
    monkeypatch.setattr(fgsm, "gradient_signs",
                        lambda source, x, y, *a: computed.append(len(y)) or real(source, x, y, *a))
    cfg = _cfg(setup, fgsm_transfer={})
    cache = tmp_path / "fgsm_cache"  # as a sweep folder holds it
    first, _ = attacks.evaluate(setup["model"], setup["data"], cfg, cache)
    assert computed == [len(setup["data"].test_y)]
    assert len(entries := list((cache / "fgsm_signs").glob("*.npy"))) == 1
    # another trial (other seed) of the same task, other eps: same cache entry, no gradient computed
    other = cfg.replace(seed=5, attacks={"fgsm_transfer": {"eps": [0.05, 0.1]}})
    attacks.evaluate(setup["model"], setup["data"], other, cache)
    second, _ = attacks.evaluate(setup["model"], setup["data"], cfg, cache)
    assert computed == [len(setup["data"].test_y)]
    assert first == second and len(first) == 10
    # random bytes in the entry: one line names it, it moves to the folder's quarantine/, the signs are computed
    # again and stored, and the rows are the same
    entries[0].write_bytes(os.urandom(100))
    capsys.readouterr()
    third, _ = attacks.evaluate(setup["model"], setup["data"], cfg, cache)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"fgsm_cache/fgsm_signs/{entries[0].name}: unreadable" in lines[0], lines
    assert (tmp_path / "quarantine" / "fgsm_cache" / "fgsm_signs" / entries[0].name).read_bytes() != b""
    assert computed == [len(setup["data"].test_y)] * 2 and third == first
    assert np.load(entries[0]).shape[0] == len(setup["data"].test_y)


def test_boundary_adversarials_are_misclassified_and_scored_by_their_distance(setup):
    data, model = setup["data"], setup["model"]
    x, y = data.test_x[:12], data.test_y[:12]
    result = boundary.boundary_attack(model, x, y, steps=100, batch_size=6, seed=0)
    ok = result.success
    assert ok.sum() >= 8
    adv = result.adv[ok]
    assert (predict(model, adv) != y[ok]).all()
    # the score is the median over the successful images of the squared L2 distance per pixel value
    per_pixel = ((adv - x[ok]) ** 2).sum(dim=(1, 2, 3)) / x[0].numel()
    assert result.score() == pytest.approx(float(per_pixel.median()))
    assert result.score() > 0


def test_boundary_rows_and_spectrum(setup):
    cfg = _cfg(setup, boundary={"images": 8, "steps": 60, "repeats": 2, "batch_size": 8})
    rows, spectrum = attacks.evaluate(setup["model"], setup["data"], cfg, None)
    assert [r["repeat"] for r in rows] == [0, 1]
    for r in rows:
        assert r["metric"] == "boundary_score" and r["images"] + r["failed"] == 8 and r["value"] > 0
    radii = [s["radius"] for s in spectrum]
    assert radii[0] == 0.0 and radii == sorted(radii) and sum(s["power"] for s in spectrum) > 0


def test_boundary_authors_protocol_is_the_default_and_shares_images_across_models(setup):
    """issue 9: the paper preset is the authors' code: 50 steps, 1,000 images drawn once per task by a fixed seed
    (not the trial seed), each attacked away from the model's own prediction (misclassified images too); the
    `minimal` preset keeps converged minimal perturbations (25,000 steps, true labels). Fails if a default changes."""
    paper = resolve("boundary", {"preset": "paper"})
    assert (paper["steps"], paper["images"], paper["repeats"], paper["criterion"]) == (50, 1000, 5, "prediction")
    assert resolve("boundary", {})["criterion"] == "prediction" and resolve("boundary", {})["image_seed"] == 0
    minimal_opts = resolve("boundary", {"preset": "minimal"})
    assert (minimal_opts["steps"], minimal_opts["criterion"], minimal_opts["images"]) == (25000, "label", 1000)
    data = setup["data"]
    other_cfg = setup["cfg"].replace(seed=5)
    other = quick_fit(other_cfg, data, 20)  # a different, weaker model and another trial seed
    opts = resolve("boundary", {"images": 40})
    idx_a, labels_a = boundary.attacked_images(setup["model"], data.test_x, data.test_y, opts)
    idx_b, labels_b = boundary.attacked_images(other, data.test_x, data.test_y, opts)
    assert torch.equal(idx_a, idx_b) and len(idx_a) == 40
    assert torch.equal(labels_a, predict(setup["model"], data.test_x[idx_a]))  # the model's own predictions
    assert torch.equal(labels_b, predict(other, data.test_x[idx_b]))
    assert bool((labels_b != data.test_y[idx_b]).any())  # misclassified images are attacked too
    moved = boundary.attacked_images(setup["model"], data.test_x, data.test_y, {**opts, "image_seed": 1})[0]
    assert not torch.equal(moved, idx_a)
    label = {**opts, "criterion": "label"}
    idx_c, labels_c = boundary.attacked_images(other, data.test_x, data.test_y, label)
    assert torch.equal(labels_c, data.test_y[idx_c]) and torch.equal(predict(other, data.test_x[idx_c]), labels_c)
    # through evaluate: two trial seeds score the same number of images (all 8 attacked, none left out)
    for cfg, model in ((setup["cfg"], setup["model"]), (other_cfg, other)):
        rows, _ = attacks.evaluate(model, data, cfg.replace(attacks={"boundary": {"images": 8, "steps": 20}}), None)
        assert rows[0]["images"] + rows[0]["failed"] == 8


def test_spectrum_puts_the_power_at_the_perturbation_frequency():
    flat = spectrum_rows(torch.full((3, 1, 8, 8), 0.1))  # constant: all power at zero frequency
    assert flat[0]["radius"] == 0 and flat[0]["power"] > 0 and all(r["power"] < 1e-20 for r in flat[1:])
    checker = (-1.0) ** (torch.arange(8)[:, None] + torch.arange(8)[None, :])  # the highest frequency
    rows = spectrum_rows(checker.expand(2, 1, 8, 8))
    top = max(rows, key=lambda r: r["power"])
    assert top["radius"] == max(r["radius"] for r in rows if r["power"] > 1e-20) and top["radius"] >= 5


def test_minimal_perturbations_are_whitebox_and_positive(setup):
    cfg = _cfg(setup, minimal_l2={"images": 6, "method": "fmn", "steps": 30},
               minimal_linf={"images": 6, "pgd_steps": [10], "search_steps": 5})
    rows, _ = attacks.evaluate(setup["model"], setup["data"], cfg, None)
    assert {r["metric"] for r in rows} == {"min_l2", "min_linf"}
    for r in rows:
        assert r["whitebox"] is True and r["images"] + r["failed"] == 6
        assert math.isfinite(r["value"]) and r["value"] > 0
    linf = [r for r in rows if r["metric"] == "min_linf"][0]["value"]
    assert linf <= 1.0


def test_minimal_linf_eps_is_adversarial(setup):
    data, model = setup["data"], setup["model"]
    opts = resolve("minimal_linf", {"pgd_steps": [10], "search_steps": 4})
    x, y = data.test_x[:4], data.test_y[:4]
    correct = predict(model, x) == y
    assert correct.any()
    eps, adv = minimal.minimal_linf(model, x[correct], y[correct], opts, seed=0)
    assert torch.isfinite(eps).all() and (eps > 0).all() and (eps <= 1).all()
    # the prediction really changes within the found eps: the adversarial is misclassified and inside the L-inf ball
    assert (predict(model, adv) != y[correct]).all()
    assert ((adv - x[correct]).flatten(1).abs().amax(1) <= eps + 1e-6).all()


@pytest.mark.slow  # numba compiles Brendel-Bethge on first use: longer than any fast test takes
def test_brendel_bethge_minimal_l2(setup):
    opts = resolve("minimal_l2", {"images": 8, "steps": 20})
    x, y = setup["data"].test_x[:8], setup["data"].test_y[:8]
    dist = minimal.minimal_l2(setup["model"], x, y, opts, seed=0)
    # what holds for any model: an image the model already gets wrong is adversarial at distance 0; a correctly
    # classified one needs a perturbation > 0 (or the attack fails: inf)
    correct = predict(setup["model"], x) == y
    assert correct.any()
    assert (dist[~correct] == 0).all()
    assert torch.isfinite(dist[correct]).any() and (dist[correct] > 0).all()


def test_corrupted_images_keep_shape_and_range(setup):
    x = setup["data"].test_x[:5]
    for name in ("gaussian_noise", "motion_blur", "fog", "jpeg_compression", "elastic_transform"):
        out = corruptions.corrupt_images(x, name, 5, seed=0)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x)
    assert torch.equal(corruptions.corrupt_images(x, "fog", 3, 0), corruptions.corrupt_images(x, "fog", 3, 0))
    rgb = torch.rand(2, 3, 28, 28)
    assert corruptions.corrupt_images(rgb, "frost", 2, seed=1).shape == rgb.shape


def test_corruption_rows_have_groups(setup):
    cfg = _cfg(setup, corruptions={"names": ["gaussian_noise", "contrast"], "severities": [1, 5], "images": 40})
    rows, _ = attacks.evaluate(setup["model"], setup["data"], cfg, None)
    assert [(r["variant"], r["eps"], r["group"]) for r in rows] == [
        ("gaussian_noise", 1, "high"), ("gaussian_noise", 5, "high"), ("contrast", 1, "low"), ("contrast", 5, "low")]
    assert all(r["images"] == 40 and 0 <= r["value"] <= 1 for r in rows)


def test_corruptions_from_a_cifar_c_style_folder(setup, tmp_path):
    n = 6
    rng = np.random.default_rng(0)
    np.save(tmp_path / "fog.npy", rng.integers(0, 256, (5 * n, 8, 8, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", rng.integers(0, 10, 5 * n).astype(np.int64))
    cfg = _cfg(setup, corruptions={"names": ["fog"], "folder": str(tmp_path), "images": None})
    rows, _ = attacks.evaluate(setup["model"], setup["data"], cfg, None)
    assert len(rows) == 5 and all(r["images"] == n for r in rows)


class _Projection(torch.nn.Module):
    """Logits = random projections of the centred pixels: a model whose predictions follow small pixel changes."""

    def __init__(self, pixels: int, classes: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(pixels, classes, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - 0.5) @ self.weight


def test_cifar_c_images_become_gray_like_the_clean_test_images(tmp_path):
    """A gray model sees clean test images converted by cfg.gray (luma by default); the same RGB images read from
    a CIFAR-10-C folder must reach it converted the same way, so a model that is right on every clean image is
    right on every 'corrupted' copy that is the clean image itself."""
    from pixelreg_core.data.loaders import convert_channels

    n = 40
    rgb = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    x_rgb = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    model = _Projection(64, 10).eval()
    for gray in ("luma", "mean"):
        clean = convert_channels(x_rgb, 1, gray)
        with torch.no_grad():
            y = model(clean).argmax(1)  # the labels the model gets right on the clean gray images
        np.save(tmp_path / "fog.npy", np.concatenate([rgb] * 5))  # every severity: the clean images themselves
        np.save(tmp_path / "labels.npy", np.concatenate([y.numpy()] * 5))
        other = convert_channels(x_rgb, 1, "mean" if gray == "luma" else "luma")
        assert accuracy(model, other, y) < 0.9  # the two conversions differ enough for this model to tell
        cfg = TrialConfig(task="digits", gray=gray, attacks={})
        opts = resolve("corruptions", {"names": ["fog"], "severities": [1, 3], "folder": str(tmp_path),
                                       "images": None})
        rows = attacks.get("corruptions").evaluate(model, clean, y, attacks.AttackContext(cfg), opts)
        assert [r["value"] for r in rows] == [1.0, 1.0], gray


def test_rows_have_the_documented_columns(setup):
    cfg = _cfg(setup, gaussian={"eps": [0.1]}, fgsm_transfer={"eps": [0.1]},
               boundary={"images": 4, "steps": 20}, corruptions={"names": ["fog"], "severities": [2], "images": 10})
    rows, spectrum = attacks.evaluate(setup["model"], setup["data"], cfg, None)
    keys = key_values(cfg)
    table = to_arrow("robustness", [{**keys, **r} for r in rows])
    assert table.schema == SCHEMAS["robustness"] and table.num_rows == 4
    # every column but the model's keys and eval_id, which the trial adds per evaluation (trial.py)
    assert set(rows[0]) == set(SCHEMAS["robustness"].names) - set(keys) - {"eval_id"}
    spec = to_arrow("spectrum", [{**keys, **s} for s in spectrum])
    assert spec.num_rows > 0 and set(spectrum[0]) == {"attack", "radius", "power"}


def test_paper_preset_and_dataset_eps():
    boundary_opts = resolve("boundary", {"preset": "paper"})
    assert (boundary_opts["images"], boundary_opts["repeats"]) == (1000, 5)
    assert resolve("boundary", {"preset": "paper", "images": 10})["images"] == 10
    assert resolve("boundary", {})["images"] == 64
    def top(name, task):
        return eps_list(attacks.get(name), resolve(name, {}), task)[-1]

    mnist = eps_list(attacks.get("gaussian"), resolve("gaussian", {}), "MNIST")
    assert len(mnist) == 10 and mnist[0] == 0 and mnist[-1] == pytest.approx(0.5)
    # the papers' ranges, from each record's rule (D where the record has one, else eps_max; salt_pepper's cap)
    expected = {"MNIST": {"gaussian": 0.5, "uniform": 0.5, "salt_pepper": 0.3, "fgsm_transfer": 0.5},
                "idx:/data": {"gaussian": 0.5, "uniform": 0.5, "salt_pepper": 0.3, "fgsm_transfer": 0.5},
                "CIFAR10": {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.02},
                "CIFAR100": {"gaussian": 0.1, "uniform": 0.1, "salt_pepper": 0.1, "fgsm_transfer": 0.005}}
    for task, tops in expected.items():
        assert {name: top(name, task) for name in tops} == pytest.approx(tops), task
    # a new eps attack needs no key in any dataset record: it gets the record's eps_max
    new = attacks.Attack("new_attack", "New", eps_options(), select=lambda *a: None, measure=lambda *a: None)
    assert eps_list(new, new.resolve({}), "CIFAR10")[-1] == pytest.approx(0.1)
    assert eps_list(new, new.resolve({}), "digits")[-1] == pytest.approx(0.5)
    assert set(attacks.PAPER_ATTACKS) == {"gaussian", "uniform", "salt_pepper", "fgsm_transfer", "boundary"}
    assert attacks.attack_preset("full")["corruptions"] == {"preset": "paper"}


@pytest.mark.parametrize("attack_cfg, field", [
    ({"laser": {}}, "attacks.laser"),
    ({"gaussian": {"sigma": 1}}, "attacks.gaussian.sigma"),
    ({"gaussian": {"eps": [0.1, -0.2]}}, "attacks.gaussian.eps"),
    ({"uniform": {"eps_max": -1}}, "attacks.uniform.eps_max"),
    ({"boundary": {"images": 5000}}, "attacks.boundary.images"),
    ({"boundary": {"steps": 0}}, "attacks.boundary.steps"),
    ({"boundary": {"preset": "huge"}}, "attacks.boundary.preset"),
    ({"corruptions": {"names": ["rain"]}}, "attacks.corruptions.names"),
    ({"corruptions": {"severities": [6]}}, "attacks.corruptions.severities"),
    ({"minimal_l2": {"method": "cw"}}, "attacks.minimal_l2.method"),
    ({"gaussian": [0.1]}, "attacks.gaussian"),
])
def test_bad_inputs_raise_config_error_naming_the_field(attack_cfg, field):
    cfg = TrialConfig(task="digits", attacks=attack_cfg)
    with pytest.raises(ConfigError) as err:
        attacks.validate_attacks(cfg, test_count=360)
    assert err.value.field == field


def test_fgsm_source_errors(setup, tmp_path):
    base = setup["cfg"].replace(attacks={"fgsm_transfer": {}})
    for source in (None, str(tmp_path / "missing.pt"), setup["own"]):
        with pytest.raises(ConfigError) as err:
            attacks.validate_attacks(base.replace(fgsm_source=source))
        assert err.value.field == "fgsm_source"
    not_ckpt = tmp_path / "junk.pt"
    not_ckpt.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a pixelreg checkpoint"):
        attacks.validate_attacks(base.replace(fgsm_source=str(not_ckpt)))
    attacks.validate_attacks(base.replace(fgsm_source=setup["source_ckpt"]), 360)  # the good one passes


def test_corruption_folder_with_wrong_layout(tmp_path):
    cfg = TrialConfig(task="CIFAR10", attacks={"corruptions": {"names": ["fog"], "folder": str(tmp_path)}})
    with pytest.raises(ConfigError, match="labels.npy"):
        attacks.validate_attacks(cfg)
    np.save(tmp_path / "labels.npy", np.zeros(50, dtype=np.int64))
    with pytest.raises(ConfigError, match="fog.npy"):
        attacks.validate_attacks(cfg)
    np.save(tmp_path / "fog.npy", np.zeros((50, 32, 32), dtype=np.uint8))  # no channel axis
    with pytest.raises(ConfigError) as err:
        attacks.validate_attacks(cfg)
    assert err.value.field == "attacks.corruptions.folder"
    np.save(tmp_path / "fog.npy", np.zeros((50, 32, 32, 3), dtype=np.uint8))
    attacks.validate_attacks(cfg)


def test_fgsm_source_must_be_unregularized_and_not_the_evaluated_weights(setup, tmp_path):
    base = setup["cfg"].replace(attacks={"fgsm_transfer": {}})
    regularized = tmp_path / "regularized.pt"
    save_checkpoint(setup["source"], TrialConfig(task="digits", width=4, seed=1, alpha=4.0, device="cpu"),
                    str(regularized))
    with pytest.raises(ConfigError, match="unregularized"):
        attacks.validate_attacks(base.replace(fgsm_source=str(regularized)))
    # the evaluated model's own weights saved under another config (another sweep) pass the id check ...
    renamed = tmp_path / "renamed.pt"
    save_checkpoint(setup["model"], setup["cfg"].replace(sweep="other"), str(renamed))
    cfg = base.replace(fgsm_source=str(renamed))
    attacks.validate_attacks(cfg)
    # ... but never attack the model that holds them
    with pytest.raises(ConfigError, match="own weights"):
        attacks.evaluate(setup["model"], setup["data"], cfg, None)


def test_the_source_checkpoint_is_read_once_per_trial(setup, tmp_path, monkeypatch):
    from pixelreg_core import results
    from pixelreg_core.trial import run_trial

    reads = []  # every read_bytes / write_bytes of any module goes through results._filesystem
    real = results._filesystem
    monkeypatch.setattr(results, "_filesystem", lambda root: reads.append(str(root)) or real(root))
    cfg = TrialConfig(task="digits", width=4, epochs=1, seed=0, alpha=0.0, device="cpu", test_images=100,
                      attacks={"fgsm_transfer": {"num_eps": 3}}, fgsm_source=setup["source_ckpt"])
    row = run_trial(cfg, tmp_path)
    assert row["status"] == "ok"
    assert reads.count(setup["source_ckpt"]) == 1
