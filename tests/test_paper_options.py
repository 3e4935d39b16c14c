"""The four points of the authors' protocol after the first eight (docs/paper-preset.md): the pair pathway's
BatchNorm batches (`pair_bn`), pairs drawn without replacement (`pair_draw`), the untrained model as a candidate
(`select_untrained`) and the epoch choice with its validation size (`select`, `valid_images`). Each default is the
authors' value, and a test here fails if it changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_reg

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data.bundle import prepare_data, split_train_valid
from pixelreg_core.hooks.hostreads import count_host_reads
from pixelreg_core.hooks.opcount import OpCount
from pixelreg_core.model import build_model
from pixelreg_core.targets.builders import CategoricalTarget, all_pairs_order
from pixelreg_core.targets.pairs import WINDOW_STEPS, PairSampler, shuffled_index, triangle_pair
from pixelreg_core.targets.registry import build_target
from pixelreg_core.train import PlacedData, step_losses, train, train_epoch
from pixelreg_core.trial import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------------ the defaults


def test_pair_bn_default_is_the_authors_split_passes():
    assert TrialConfig().pair_bn == "split"


def test_pair_draw_default_is_the_authors_without_replacement():
    assert TrialConfig().pair_draw == "without_replacement"


def test_the_untrained_model_is_a_candidate_by_default():
    assert TrialConfig().select_untrained is True


def test_select_default_is_the_authors_lowest_validation_loss_on_their_valid_fraction():
    cfg = TrialConfig()
    assert cfg.select == "valid_loss" and cfg.valid_images is None and cfg.valid_fraction == 0.01


@pytest.mark.parametrize("field, value", [("pair_bn", "halves"), ("pair_draw", "shuffle"), ("select", "best"),
                                          ("valid_images", 0)])
def test_bad_values_name_their_field(field, value):
    with pytest.raises(ConfigError) as err:
        tiny_reg(**{field: value}).validate()
    assert err.value.field == field


# ------------------------------------------------------------------------------------------ pair_bn


def pair_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(6, 1, 8, 8, generator=g), torch.rand(6, 1, 8, 8, generator=g)


def centred_similarity(model, layers: list[torch.Tensor], k: int) -> torch.Tensor:
    """The pair pathway's centring and weighted cosine, written out, on layer outputs of the 2k images."""
    sims = []
    for i, h in enumerate(layers):
        mean = getattr(model, f"feature_mean_{i}")
        with torch.no_grad():
            mean.mul_(model.beta).add_(h.mean(dim=(0, 2, 3)), alpha=1 - model.beta)
        centred = (h - mean[None, :, None, None]).flatten(1)
        sims.append(F.cosine_similarity(centred[:k], centred[k:], dim=1, eps=1e-8))
    return torch.stack(sims, dim=1) @ model.layer_weights()


def joint_reference(model, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """The pair pathway as it was before `pair_bn` (one pass over all 2k images), written out."""
    return centred_similarity(model, model.features(torch.cat([xa, xb]))[1], xa.shape[0])


@pytest.mark.float
def test_pair_bn_joint_is_bit_identical_to_the_single_pass():
    xa, xb = pair_inputs()
    torch.manual_seed(0)
    model = build_model(tiny_reg(pair_bn="joint"), 1, 10).train()
    reference = copy.deepcopy(model)
    assert torch.equal(model.pair_similarity(xa, xb), joint_reference(reference, xa, xb))
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # BatchNorm running statistics and feature means too


@pytest.mark.float
def test_pair_bn_split_normalises_each_half_on_its_own():
    xa, xb = pair_inputs()
    torch.manual_seed(0)
    split = build_model(tiny_reg(), 1, 10).train()
    joint = copy.deepcopy(split)
    joint.pair_bn = "joint"
    manual = copy.deepcopy(split)
    s_split, s_joint = split.pair_similarity(xa, xb), joint.pair_similarity(xa, xb)
    # Each half alone through the network (train-mode BatchNorm over k images), then the same centring.
    layers = [torch.cat(p) for p in zip(manual.features(xa)[1], manual.features(xb)[1], strict=True)]
    assert torch.allclose(s_split, centred_similarity(manual, layers, len(xa)), atol=1e-6)
    assert not torch.allclose(s_split, s_joint, atol=1e-4)  # shared batch statistics give other feature maps
    # two passes update a BatchNorm's running statistics twice
    assert split.stem[1].num_batches_tracked.item() == 2 and joint.stem[1].num_batches_tracked.item() == 1


def reads_per_epoch(cfg: TrialConfig) -> list[int]:
    from pixelreg_core.data import placement

    placement.clear_cache()  # the same one-time placement work in every run
    data = prepare_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, 1, data.num_classes)
    target = build_target(cfg, data.reg_x, data.reg_y)
    marks: list[int] = []
    with count_host_reads() as reads:
        train(cfg, data, model, target, torch.device("cpu"), on_epoch=lambda row: marks.append(reads.total))
    return [b - a for a, b in zip([0, *marks], marks, strict=False)]


@pytest.mark.parametrize("draw", ["without_replacement", "with_replacement"])
def test_pair_bn_split_keeps_the_step_free_of_host_reads(draw):
    short = reads_per_epoch(tiny_reg(train_images=64, pair_bn="split", pair_draw=draw))  # 2 steps per epoch
    long = reads_per_epoch(tiny_reg(train_images=128, pair_bn="split", pair_draw=draw))  # 4 steps per epoch
    assert short == long


# ------------------------------------------------------------------------------------------ pair_draw


def test_the_shuffled_order_is_a_new_permutation_in_every_pass():
    for count in (1, 2, 3, 10, 97):
        x = shuffled_index(torch.arange(3 * count), count, seed=11).view(3, count)
        for row in x:
            assert sorted(row.tolist()) == list(range(count))
    x = shuffled_index(torch.arange(2 * 97), 97, seed=11).view(2, 97)
    assert x[0].tolist() != x[1].tolist() and x[0].tolist() != list(range(97))
    assert shuffled_index(torch.arange(97), 97, seed=12).tolist() != x[0].tolist()  # another seed, another order


def test_triangle_index_enumerates_each_pair_i_below_j_once():
    for n in (2, 3, 8, 41):
        i, j = triangle_pair(torch.arange(n * (n - 1) // 2), n)
        assert bool((i < j).all()) and len(set(zip(i.tolist(), j.tolist(), strict=True))) == n * (n - 1) // 2
    i, j = triangle_pair(torch.tensor([50_000 * 49_999 // 2 - 1]), 50_000)  # large N: no N x N anything
    assert (i.item(), j.item()) == (49_998, 49_999)


def embeddings(n: int = 30, d: int = 12, seed: int = 0) -> torch.Tensor:
    e = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return e / e.norm(dim=1, keepdim=True)


def draw(sampler, steps: int, k: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(steps):
        i, j, _ = sampler.sample(k, torch.Generator().manual_seed(0))
        out += list(zip(i.tolist(), j.tolist(), strict=True))
    return out


@pytest.mark.parametrize("range_, th, enumerate_below", [("all", 0.2, None), ("high", 0.3, 0.0),
                                                          ("high", 0.3, 1.0)],
                         ids=["all", "common-range-walks-the-order", "rare-range-listed"])
def test_a_pass_draws_every_qualifying_pair_exactly_once(range_, th, enumerate_below):
    emb = embeddings()
    sampler = PairSampler(emb, th=th, range=range_, enumerate_below=enumerate_below, replacement=False,
                          order_seed=3)
    s = emb @ emb.T
    qualifying = {(a, b) for a in range(30) for b in range(a + 1, 30)
                  if range_ == "all" or abs(float(s[a, b])) > th}
    if range_ != "all":
        assert sampler.mode == ("rejection" if enumerate_below == 0.0 else "enumerated")
        assert 50 < len(qualifying) < 400
    k = 5
    drawn = draw(sampler, steps=2 * len(qualifying) // k + 2, k=k)
    q = len(qualifying)
    assert len(set(drawn[:q])) == q and set(drawn[:q]) == qualifying  # each once, i < j, only qualifying ones
    assert set(drawn[q:2 * q]) == qualifying and drawn[q:2 * q] != drawn[:q]  # the next pass: a new order


def test_with_replacement_repeats_pairs_within_a_pass():
    sampler = PairSampler(embeddings(8), th=0.2, range="all", replacement=True)
    drawn = []
    g = torch.Generator().manual_seed(0)
    for _ in range(7):  # 28 pairs, 7 x 4 draws
        i, j, _ = sampler.sample(4, g)
        drawn += list(zip(i.tolist(), j.tolist(), strict=True))
    assert len({tuple(sorted(p)) for p in drawn}) < 28


def test_categorical_and_matrix_targets_follow_the_order_too():
    cfg = tiny_reg(target="categorical")
    labels = torch.arange(8) % 3
    target = CategoricalTarget(labels, order=all_pairs_order(cfg, 8, labels.device))
    drawn = []
    for _ in range(7):
        i, j, s = target.sample(4)
        assert torch.equal(s, (labels[i] == labels[j]).float())
        drawn += list(zip(i.tolist(), j.tolist(), strict=True))
    assert sorted(drawn) == [(a, b) for a in range(8) for b in range(a + 1, 8)]
    assert all_pairs_order(tiny_reg(pair_draw="with_replacement"), 8, labels.device) is None


@pytest.mark.parametrize("range_, enumerate_below", [("all", None), ("high", 0.0), ("high", 1.0)])
def test_drawing_in_order_reads_nothing_back_to_the_host(range_, enumerate_below):
    sampler = PairSampler(embeddings(), th=0.3, range=range_, enumerate_below=enumerate_below, replacement=False)
    with count_host_reads() as reads:
        for _ in range(5):
            sampler.sample(4)
    assert reads.total == 0, dict(reads.by_kind)


def test_the_pair_order_is_fixed_by_the_seed_and_resumes_from_its_state():
    cfg = tiny_reg()
    data = prepare_data(cfg)
    first, again = build_target(cfg, data.reg_x, data.reg_y), build_target(cfg, data.reg_x, data.reg_y)
    a = [first.sample(4)[0].tolist() for _ in range(3)]
    assert a == [again.sample(4)[0].tolist() for _ in range(3)]
    other = build_target(tiny_reg(seed=1), data.reg_x, data.reg_y)
    assert a != [other.sample(4)[0].tolist() for _ in range(3)]
    resumed = build_target(cfg, data.reg_x, data.reg_y)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.sample(4)[0], first.sample(4)[0])


def old_window(order):
    """The order's next m indices as every draw computed them before the window (shuffled_index per draw)."""
    return lambda m: order.decode(shuffled_index(order.position + torch.arange(m), order.count, order.seed))


@pytest.mark.parametrize("range_, enumerate_below", [("all", None), ("high", 0.0), ("high", 1.0)],
                         ids=["all", "rejection", "enumerated"])
def test_the_windowed_order_draws_the_indices_each_draw_computed_alone(range_, enumerate_below):
    # past a window (WINDOW_STEPS draws), past a pass (435 pairs of 30 images), and across a restored state
    made = [PairSampler(embeddings(), th=0.3, range=range_, enumerate_below=enumerate_below, replacement=False,
                        order_seed=5) for _ in range(2)]
    windowed, reference = made
    reference.order.window = old_window(reference.order)
    steps = WINDOW_STEPS + 40
    assert draw(windowed, steps, 4) == draw(reference, steps, 4)
    restored = PairSampler(embeddings(), th=0.3, range=range_, enumerate_below=enumerate_below, replacement=False,
                           order_seed=5)
    restored.load_state_dict(windowed.state_dict())
    assert draw(restored, 30, 4) == draw(reference, 30, 4)
    target = CategoricalTarget(torch.arange(30) % 3, order=all_pairs_order(tiny_reg(target="categorical"), 30,
                                                                             torch.device("cpu")))
    plain = CategoricalTarget(torch.arange(30) % 3, order=all_pairs_order(tiny_reg(target="categorical"), 30,
                                                                            torch.device("cpu")))
    plain.order.window = old_window(plain.order)
    assert [target.sample(3)[0].tolist() for _ in range(WINDOW_STEPS + 5)] == \
        [plain.sample(3)[0].tolist() for _ in range(WINDOW_STEPS + 5)]


@pytest.mark.parametrize("target, range_", [("threshold", "all"), ("threshold", "high"), ("categorical", "all")])
def test_the_pair_draw_is_at_most_5_percent_of_a_steps_operators(target, range_):
    # Operator counts are rounding-free: the same on every CPU and on a GPU, where each is a kernel launch.
    # benchmarks/bench_ops.py prints them for every draw, range and target kind; before the window the default
    # draw was 1,426 of 2,809 operators per step (51%).
    cfg = tiny_reg(target=target, range=range_, th=0.2, width=8, batch_size=32, train_images=64)
    data = prepare_data(cfg)
    model = build_model(cfg, data.in_channels, data.num_classes)
    built = build_target(cfg, data.reg_x, data.reg_y)
    placed = PlacedData.of(data, data.reg_x, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    with OpCount() as ops:
        for _ in range(WINDOW_STEPS):  # a whole window of draws: its one evaluation of the order included
            with ops.section("draw"):
                built.sample(cfg.reg_pairs, generator)
        draw_ops = ops.by_section["draw"] / WINDOW_STEPS
    sample = built.sample
    with OpCount() as ops:
        def counted(k, gen=None):
            with ops.section("draw"):
                return sample(k, gen)

        built.sample = counted
        per_step, _ = train_epoch(cfg, placed, False, model, built, optimizer, step_losses, generator)
    rest = (ops.total - ops.by_section["draw"]) / len(per_step)  # the step but its draw
    step_ops = rest + draw_ops
    assert draw_ops <= 0.05 * step_ops, (draw_ops, step_ops)


# ------------------------------------------------------------------------------------------ the chosen epoch


def unlearnable_validation(cfg: TrialConfig):
    """Digits whose validation images are all labelled 9 while training never shows a 9: every step lowers the
    logit of class 9, so every trained epoch has a higher validation loss than the untrained model (about ln 10)."""
    data = prepare_data(cfg)
    keep = data.train_y != 9
    data.train_x, data.train_y = data.train_x[keep], data.train_y[keep]
    data.valid_y = torch.full_like(data.valid_y, 9)
    data.origin = None  # the trainer must use these tensors, not the cached split
    return data


@pytest.mark.parametrize("untrained", [True, False])
def test_the_untrained_model_is_chosen_when_no_epoch_beats_it(untrained):
    cfg = tiny_reg(alpha=0, select_untrained=untrained, valid_fraction=0.2)
    data = unlearnable_validation(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, 1, data.num_classes)
    init = copy.deepcopy(model.state_dict())
    result = train(cfg, data, model, None, torch.device("cpu"))
    assert all(row["valid_loss"] > 2.0 for row in result.epochs)
    if untrained:
        assert result.best_epoch == 0 and result.best is result.untrained
        assert all(torch.equal(result.best_state[k], v) for k, v in init.items())
        assert all(result.untrained["valid_loss"] < row["valid_loss"] for row in result.epochs)
    else:
        assert result.best_epoch >= 1 and result.untrained is None


def test_validating_the_untrained_model_leaves_training_unchanged():
    runs = []
    for untrained in (True, False):
        cfg = tiny_reg(select_untrained=untrained)
        torch.manual_seed(cfg.seed)
        data = prepare_data(cfg)
        model = build_model(cfg, 1, data.num_classes)
        result = train(cfg, data, model, build_target(cfg, data.reg_x, data.reg_y), torch.device("cpu"))
        runs.append([{k: v for k, v in row.items() if k != "seconds"} for row in result.epochs])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("select", ["valid_acc", "last"])
def test_select_rules(select):
    cfg = tiny_reg(alpha=0, epochs=3, select=select)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg)
    result = train(cfg, data, build_model(cfg, 1, data.num_classes), None, torch.device("cpu"))
    if select == "last":
        assert result.best_epoch == 3
    else:
        accs = [result.untrained["valid_acc"]] + [row["valid_acc"] for row in result.epochs]
        assert result.best_epoch == accs.index(max(accs))  # the first of the best, epoch 0 included


def test_valid_images_holds_out_that_many_and_the_trials_row_records_it(tmp_path):
    train_idx, valid_idx = split_train_valid(1797, 0.01, 500, seed=0, valid_images=300)
    assert len(valid_idx) == 300 and len(train_idx) == 500 and not set(train_idx.tolist()) & set(valid_idx.tolist())
    with pytest.raises(ConfigError, match="valid_images"):
        split_train_valid(100, 0.01, None, seed=0, valid_images=100)
    row = run_trial(tiny_reg(alpha=0, epochs=1, valid_images=40), tmp_path)
    assert row["valid_images"] == 40 and 0 <= row["best_epoch"] <= 1
    row = run_trial(tiny_reg(alpha=0, epochs=1), tmp_path)
    assert row["valid_images"] == round(0.1 * 143)  # valid_fraction of the images in use (128 / 0.9 -> 143)
