"""The GPU-first training step, checked on CPU: no host reads inside an epoch, the same numbers as a loop that reads
every value at once, compact device images, the kernel options. Tests marked `gpu` run the device paths on CUDA
(skipped without one)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_reg

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data.bundle import DataBundle, augment_batch, prepare_data
from pixelreg_core.data.placement import DeviceImages, as_uint8_if_exact
from pixelreg_core.hooks.hostreads import count_host_reads
from pixelreg_core.model import build_model
from pixelreg_core.targets.builders import similarity_loss
from pixelreg_core.targets.registry import build_target
from pixelreg_core.train import PlacedData, batch_starts, evaluate_split, learning_rate, step_losses, train, train_epoch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run_train(cfg: TrialConfig, device: str = "cpu", data: DataBundle | None = None, on_epoch=None):
    data = data or prepare_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.in_channels, data.num_classes, data.input_scale, data.input_shift).to(device)
    target = build_target(cfg, data.reg_x.to(device), data.reg_y.to(device)) if cfg.regularized else None
    return train(cfg, data, model, target, torch.device(device), on_epoch), model


def reads_per_epoch(cfg: TrialConfig) -> list[int]:
    from pixelreg_core.data import placement

    placement.clear_cache()  # the same one-time placement work in every run (it is in the first epoch's count)
    marks: list[int] = []
    data = prepare_data(cfg)
    with count_host_reads() as reads:
        run_train(cfg, data=data, on_epoch=lambda row: marks.append(reads.total))
    return [b - a for a, b in zip([0, *marks], marks, strict=False)]


# ------------------------------------------------------------------------------------------ host reads


def test_the_read_counter_sees_every_kind_of_host_read():
    t = torch.arange(4.0)
    with count_host_reads() as reads:
        t.sum().item()
        bool(t[1] > 0)
        float(t[2])
        if t[3]:
            pass
        t.cpu()
        t.tolist()
        t[t > 1]  # boolean-mask indexing: a data-dependent size
        t.to("meta")  # copies to another device (meta: shapes only, no hardware) are transfers;
        torch.empty(4, device="meta").copy_(t)
        torch.empty(4).copy_(t)  # a copy within one device is not
    assert reads.by_kind["_local_scalar_dense"] == 4
    assert reads.by_kind["cpu"] == 1 and reads.by_kind["tolist"] == 1 and reads.by_kind["boolean_mask"] == 1
    assert reads.by_kind["transfer"] == 2
    with count_host_reads() as none:
        (t * 2 + 1).sum()
    assert none.total == 0


@pytest.mark.parametrize("kind", ["matrix", "shuffle"])
def test_a_matrix_targets_draw_copies_nothing_between_host_and_device(kind, tmp_path):
    # The matrix, its permutation and its pair order live on the trial's device: a draw there copies nothing.
    # `meta` stands for the device (shapes only, no hardware); every copy between it and the CPU is counted.
    from test_targets import save_matrix_files

    _, sim, imgs = save_matrix_files(tmp_path, 12, 12)
    cfg = tiny_reg(target=kind, matrix=sim, matrix_images=imgs)  # pair_draw: without_replacement, the default
    target = build_target(cfg, torch.empty(4, 1, 8, 8, device="meta"), None)
    assert {t.device.type for t in (target.matrix, target.images, target.order.position)} == {"meta"}
    with count_host_reads() as reads:
        for _ in range(3):
            i, j, s_target = target.sample(cfg.reg_pairs)
            DeviceImages(target.images).take(i)
    assert reads.total == 0, dict(reads.by_kind)
    assert i.device.type == s_target.device.type == "meta"


@pytest.mark.parametrize("changes", [{}, {"alpha": 0}, {"target": "categorical", "sim_layer": 1}],
                         ids=["regularized", "baseline", "categorical-fixed-layer"])
def test_host_reads_per_epoch_do_not_grow_with_the_number_of_steps(changes):
    short = reads_per_epoch(tiny_reg(**changes, train_images=128))  # 4 steps per epoch
    long = reads_per_epoch(tiny_reg(**changes, train_images=256))  # 8 steps per epoch
    assert short == long
    assert max(long[1:]) <= 10  # a handful per epoch (the step numbers, validation, test, sim_corr), not per step


def test_augmentation_and_rejection_sampling_add_no_reads_per_step():
    data = prepare_data(tiny_reg())
    for n in (128, 256):
        cfg = tiny_reg(range="high", th=0.6, train_images=n, epochs=1)
        bundle = prepare_data(cfg)
        bundle.augment = True
        target = build_target(cfg, bundle.reg_x, bundle.reg_y)
        model = build_model(cfg, 1, data.num_classes)
        placed = PlacedData.of(bundle, bundle.reg_x, torch.device("cpu"))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        with count_host_reads() as reads:
            train_epoch(cfg, placed, True, model, target, optimizer, step_losses, generator)
        assert reads.by_kind["_local_scalar_dense"] == 0 and reads.by_kind["cpu"] == 0, (n, dict(reads.by_kind))


# ------------------------------------------------------------------------------------------ same numbers


def reference_train(cfg: TrialConfig, data: DataBundle, model, target) -> list[dict]:
    """The plain loop that reads every value back at every step: what the sync-free loop must equal on CPU."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)
    rows = []
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        model.train()
        order = torch.randperm(len(data.train_x), generator=generator)
        sums = {"cls": 0.0, "sim": 0.0, "correct": 0}
        s_all, t_all = [], []
        starts = batch_starts(len(order), cfg.batch_size)
        for step, start in enumerate(starts):
            idx = order[start:starts[step + 1] if step + 1 < len(starts) else len(order)]
            x, y = data.train_x[idx], data.train_y[idx]
            if data.augment:
                x = augment_batch(x, generator)
            logits = model(x)
            loss = loss_cls = F.cross_entropy(logits, y)
            if cfg.regularized:
                i, j, s_target = target.sample(cfg.reg_pairs, generator)
                s_cnn = model.pair_similarity(data.reg_x[i], data.reg_x[j])
                loss_sim = similarity_loss(s_cnn, s_target, arctanh=cfg.arctanh)
                loss = loss_cls + cfg.alpha * loss_sim
                sums["sim"] += loss_sim.item()
                s_all.append(s_cnn.detach())
                t_all.append(s_target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums["cls"] += loss_cls.item()
            sums["correct"] += (logits.argmax(1) == y).sum().item()
        valid_loss, valid_acc = evaluate_split(model, data.valid_x, data.valid_y)
        corr = float(torch.corrcoef(torch.stack([torch.cat(s_all), torch.cat(t_all)]))[0, 1]) if s_all else None
        rows.append({"loss_cls": sums["cls"] / len(starts), "loss_sim": sums["sim"] / len(starts) if s_all else None,
                     "sim_corr": corr, "train_acc": sums["correct"] / len(order), "valid_loss": valid_loss,
                     "valid_acc": valid_acc})
    return rows


@pytest.mark.parametrize("changes", [{}, {"alpha": 0}, {"range": "high", "th": 0.6, "sim_layer": 2}],
                         ids=["regularized", "baseline", "high-range-fixed-layer"])
@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_the_sync_free_loop_gives_exactly_the_numbers_of_the_plain_loop(changes, augment):
    cfg = tiny_reg(**changes)
    data = prepare_data(cfg)
    data.augment = augment
    result, model = run_train(cfg, data=data)
    torch.manual_seed(cfg.seed)
    ref_model = build_model(cfg, 1, data.num_classes)
    target = build_target(cfg, data.reg_x, data.reg_y) if cfg.regularized else None
    expected = reference_train(cfg, data, ref_model, target)
    for got, want in zip(result.epochs, expected, strict=True):
        assert {k: got[k] for k in want} == want  # exact equality, not approx
    got_state, want_state = model.state_dict(), ref_model.state_dict()
    assert got_state.keys() == want_state.keys() and all(torch.equal(got_state[k], want_state[k]) for k in got_state)


def test_a_non_finite_loss_stops_at_its_epoch_before_any_weights_are_kept():
    seen = []
    with pytest.raises(ConfigError, match=r"the loss became (nan|inf|-inf) at epoch 1, step \d+ .*lower lr or alpha"):
        run_train(tiny_reg(lr=1e12, epochs=2), on_epoch=seen.append)
    assert seen == []  # no epoch was validated, reported or kept


# ------------------------------------------------------------------------------------------ device images


def test_eight_bit_images_are_stored_as_uint8_and_come_back_bit_for_bit():
    u = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    x = u.to(torch.float32).div_(255.0)  # the loaders' arithmetic (data.to_unit_float)
    stored = DeviceImages.of(x, "cpu")
    assert stored.stored.dtype == torch.uint8 and stored.nbytes() == x.numel()
    idx = torch.tensor([3, 0, 49, 3])
    assert torch.equal(stored.take(idx), x[idx]) and torch.equal(stored.all(), x)
    sixteenths = torch.randint(0, 17, (20, 1, 8, 8)).float() / 16.0  # digits: not k / 255
    assert as_uint8_if_exact(sixteenths).dtype == torch.float32
    assert torch.equal(DeviceImages.of(sixteenths, "cpu").take(idx[:2]), sixteenths[idx[:2]])


# ------------------------------------------------------------------------------------------ kernel options


def test_kernel_options_are_not_part_of_the_trial_id_and_are_validated():
    plain = tiny_reg()
    fast = tiny_reg(amp=True, channels_last=True, fused_sgd=True, cudnn_benchmark=True, compile="reduce-overhead")
    assert plain.trial_id == fast.trial_id and fast.to_dict()["amp"] is True  # recorded, but not identity
    with pytest.raises(ConfigError, match="compile"):
        tiny_reg(compile="fast").validate()


def test_amp_runs_the_forward_in_bf16_and_still_learns():
    plain, _ = run_train(tiny_reg(epochs=2))
    amp, model = run_train(tiny_reg(epochs=2, amp=True))
    for a, p in zip(amp.epochs, plain.epochs, strict=True):
        assert math.isfinite(a["loss_cls"]) and math.isfinite(a["loss_sim"])
        assert a["loss_cls"] == pytest.approx(p["loss_cls"], rel=0.1)
    assert amp.epochs[0]["loss_cls"] != plain.epochs[0]["loss_cls"]  # bf16 really ran
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32


CHANNELS = (4, 4, 8, 16, 32)  # the 5 layers' channels at width 4


def pair_layers(cosines: list[float]) -> list[torch.Tensor]:
    """The 5 layer outputs of one pair (2 images, 1 x 1 maps) whose layer i has cosine `cosines[i]` and channel
    means 0: each group of 4 channels is (1, 0, -1, 0) and (c, s, -c, -s), s = sqrt(1 - c^2)."""
    layers = []
    for c, channels in zip(cosines, CHANNELS, strict=True):
        a = torch.tensor([1.0, 0.0, -1.0, 0.0])
        b = torch.tensor([c, math.sqrt(1 - c * c), -c, -math.sqrt(1 - c * c)])
        layers.append(torch.stack([a, b])[:, :, None, None].repeat(1, channels // 4, 1, 1))
    return layers


def test_amp_keeps_s_cnn_in_float32_where_bf16_would_round_the_cosines():
    # bf16 near 1 has steps of 1/256: 0.9990 -> 1.0 and 0.9975 -> 0.99609 if the weighted sum ran under autocast
    cosines = [0.9990, 0.9975, 0.9990, 0.9975, 0.9990]
    # eval: the (zero) feature means are used as they are; joint: one `features` call returns both halves' layers
    model = build_model(tiny_reg(pair_bn="joint"), 1, 10).eval()
    model.features = lambda x: (None, pair_layers(cosines))
    x = torch.zeros(1, 1, 8, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        s_cnn = model.pair_similarity(x, x)
    assert s_cnn.dtype == torch.float32
    assert s_cnn.item() == pytest.approx(sum(cosines) / 5, abs=1e-6)


def test_amp_updates_the_feature_means_in_float32():
    # bf16 layer outputs 1 and 1 + 2^-7 (adjacent bf16 values): their mean 1 + 2^-8 is no bf16 value
    model = build_model(tiny_reg(), 1, 10).train()
    h = torch.tensor([1.0, 1.0 + 2**-7]).to(torch.bfloat16)[:, None, None, None]
    model.features = lambda x: (None, [h.repeat(1, c, 1, 1) for c in CHANNELS])
    x = torch.zeros(1, 1, 8, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        model.pair_similarity(x, x)
    assert model.feature_mean_0.dtype == torch.float32
    assert model.feature_mean_0[0].item() == pytest.approx((1 - model.beta) * (1 + 2**-8), abs=1e-7)


def test_amp_evaluates_clean_accuracy_in_float32_as_the_attacks_run(monkeypatch):
    from pixelreg_core import train as train_module

    calls = []
    real = train_module.evaluate_split

    def spy(*args, **kwargs):
        calls.append(kwargs.get("amp", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_split", spy)
    run_train(tiny_reg(epochs=1, amp=True))
    assert calls and not any(calls)  # validation and test splits in float32


def test_fused_sgd_and_the_cuda_only_options_train_on_cpu():
    plain, plain_model = run_train(tiny_reg(epochs=1))
    fused, fused_model = run_train(tiny_reg(epochs=1, fused_sgd=True))
    assert fused.epochs[0]["loss_cls"] == pytest.approx(plain.epochs[0]["loss_cls"], rel=1e-4)
    for a, b in zip(plain_model.parameters(), fused_model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    # channels_last and cudnn_benchmark act on CUDA only: on CPU the numbers are exactly the plain ones
    cl, _ = run_train(tiny_reg(epochs=1, channels_last=True, cudnn_benchmark=True))
    assert [dict(r, seconds=0) for r in cl.epochs] == [dict(r, seconds=0) for r in plain.epochs]
    assert torch.backends.cudnn.benchmark is False  # restored after the trial


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_an_explicit_kernel_option_and_off_is_plain_float32_on_cuda(tf32):
    # The flags are process-wide and settable without a GPU; the device only says which backend they are for.
    from pixelreg_core.kernels import kernel_settings, tf32_enabled

    before = tf32_enabled()
    cfg = tiny_reg(tf32=tf32)
    assert cfg.trial_id == tiny_reg().trial_id  # a kernel option: not part of the trial id
    with kernel_settings(cfg, torch.device("cuda")):
        assert tf32_enabled() == (tf32, tf32)
    assert tf32_enabled() == before  # restored
    with kernel_settings(cfg, torch.device("cpu")):  # no CUDA kernels run: left as they are
        assert tf32_enabled() == before


def test_tf32_never_reads_the_legacy_flags_once_the_new_api_was_used():
    # torch >= 2.9: reading cudnn.allow_tf32 after anything set the new fp32_precision API raises ("a mix of the
    # legacy and new APIs"); the trial must neither read it nor leave the switches otherwise than it found them.
    from pixelreg_core.kernels import kernel_settings, tf32_enabled

    conv = getattr(torch.backends.cudnn, "conv", None)
    if not hasattr(conv, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    found = (conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision)
    try:
        conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision = "tf32", "ieee"  # as a library might
        with pytest.raises(RuntimeError):
            torch.backends.cudnn.allow_tf32  # noqa: B018 - the read that must not happen
        with kernel_settings(tiny_reg(tf32=False), torch.device("cuda")):
            assert tf32_enabled() == (False, False)
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision = found


def test_the_kernel_settings_hold_for_the_whole_trial(tmp_path, monkeypatch):
    # On CUDA the settings (tf32) must cover the untrained model's evaluation, the epochs and every attack, so
    # clean_acc and the attacks' accuracies are of one arithmetic. On a CPU the flags do nothing, so the scope is
    # shown at its seam: how deep in kernel_settings each evaluation and attack runs.
    import contextlib

    from pixelreg_core import attacks, kernels, train, trial

    depth, seen = [0], []
    real = kernels.kernel_settings

    @contextlib.contextmanager
    def counted(cfg, device):
        with real(cfg, device):
            depth[0] += 1
            try:
                yield
            finally:
                depth[0] -= 1

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            seen.append((name, depth[0]))
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(trial, "kernel_settings", counted)
    monkeypatch.setattr(train, "evaluate_split", spy("evaluate_split", train.evaluate_split))
    monkeypatch.setattr(attacks, "evaluate", spy("attacks", attacks.evaluate))
    cfg = tiny_reg(epochs=1, select_untrained=True)
    assert trial.run_trial(cfg, tmp_path)["status"] == "ok"
    assert {name for name, _ in seen} == {"evaluate_split", "attacks"}
    assert all(d >= 1 for _, d in seen), seen
    (tmp_path / "robustness").rename(tmp_path / "gone")  # the stored model's evaluations run again
    seen.clear()
    trial.run_trial(cfg.replace(attacks={"uniform": {"images": 32}}), tmp_path)
    assert seen and all(d >= 1 for _, d in seen), seen
    from pixelreg_core.pack import trial as pack_trial

    monkeypatch.setattr(pack_trial, "kernel_settings", counted)
    seen.clear()
    outcomes = pack_trial.run_pack([cfg.replace(seed=s, pack=2) for s in (1, 2)], tmp_path / "pack")
    assert [o.row["status"] for o in outcomes] == ["ok", "ok"]
    assert {name for name, _ in seen} == {"evaluate_split", "attacks"} and all(d >= 1 for _, d in seen), seen


def eager_backend_compile(monkeypatch) -> None:
    """torch.compile with dynamo's real tracing, guards and graphs, but the "eager" backend: inductor's C++ build
    takes minutes per graph on a 2-core CPU; recompiles and graph counts are dynamo's alone."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: real(fn, backend="eager"))


def test_compile_keeps_one_graph_per_trial_despite_the_short_last_batch_and_earlier_trials(monkeypatch):
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from pixelreg_core.train import step_losses

    eager_backend_compile(monkeypatch)
    graphs = []  # compiled entries of the step after each epoch

    def count(row):
        graphs.append(len(_debug_get_cache_entry_list(step_losses.__code__)))

    assert len(prepare_data(tiny_reg(train_images=120)).train_x) % 32 != 0  # a short last batch in every epoch
    # trials one after another in one process, as a reused Ray actor runs them; each differs in a guarded value
    for changes in ({}, {"sim_layer": 2}, {"alpha": 0}, {"amp": True}):
        cfg = tiny_reg(compile="default", train_images=120, **changes)
        run_train(cfg, on_epoch=count)
    assert graphs == [1] * 8
    assert len(_debug_get_cache_entry_list(step_losses.__code__)) == 0  # freed once the trial is over


def test_compile_giving_up_is_one_warning(monkeypatch, capfd):
    import torch._dynamo

    from pixelreg_core.kernels import compile_session

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    fn = torch.compile(lambda x: x * 2, backend="eager")
    with compile_session(tiny_reg(compile="default")):
        for dtype in (torch.float32, torch.float64, torch.float16):  # each dtype is a recompile
            fn(torch.ones(2, dtype=dtype))
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: compile:")]
    assert len(lines) == 1 and "ran the step eager" in lines[0]


def test_skipped_cuda_graphs_are_one_warning(capfd):
    # reduce-overhead without CUDA graphs (inductor skips them for a CPU tensor, a mutated input, ...) runs at
    # compile's speed, not its own: inductor says so in its log, and bumps a counter

    from torch._dynamo.utils import counters

    from pixelreg_core.kernels import compile_session

    # (the log line is watched too, but torch's logging setup may stop its propagation: the counter is the check)
    with compile_session(tiny_reg(compile="reduce-overhead")):
        counters["inductor"]["cudagraph_skips"] += 1
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: compile:")]
    assert len(lines) == 1 and "skipped CUDA graphs" in lines[0]


def test_a_cuda_trial_refuses_in_one_line_what_its_gpu_or_image_cannot_run(monkeypatch):
    # The refusals are decided before anything runs, from what torch and the machine report: faked at that seam.
    from pixelreg_core import kernels

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "a GPU without bf16")
    with pytest.raises(ConfigError) as err, kernels.kernel_settings(tiny_reg(amp=True), torch.device("cuda")):
        pass
    assert err.value.field == "amp" and "no bf16" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError) as err, kernels.kernel_settings(tiny_reg(compile="default"), torch.device("cuda")):
        pass
    assert err.value.field == "compile" and "C compiler" in str(err.value)
    with kernels.kernel_settings(tiny_reg(compile="default", amp=True), torch.device("cpu")):  # CPU: none of it applies
        pass


def test_channels_last_acts_on_cpu_only_away_from_the_shapes_that_crashed():
    from pixelreg_core.kernels import smallest_feature_map, uses_channels_last

    cpu, cuda_device, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert [smallest_feature_map(s) for s in (8, 16, 28, 32)] == [1, 2, 4, 4]
    asked = tiny_reg(channels_last=True)
    assert uses_channels_last(asked.replace(width=8), cpu, 28)          # the quickstart's shape
    assert uses_channels_last(asked.replace(width=16), cpu, 32)
    assert not uses_channels_last(asked.replace(width=4), cpu, 28)      # crashed: width 4 on 28 x 28
    assert not uses_channels_last(asked.replace(width=8), cpu, 8)       # crashed: width 8 on 8 x 8 (last map 1 x 1)
    assert not uses_channels_last(asked.replace(width=8), cpu, None)    # shape unknown: off
    assert not uses_channels_last(tiny_reg(width=8), cpu, 28)           # not asked
    assert uses_channels_last(asked, cuda_device) and not uses_channels_last(asked.replace(width=8), mps, 28)


CPU_CHANNELS_LAST_RUN = """
import sys, torch
import torch.nn.functional as F
sys.path.insert(0, {tests!r})
from conftest import tiny_reg
from test_gpu_step import mnist_like, run_train
from pixelreg_core.model import build_model
torch.set_num_threads(1)
data = mnist_like(n_train=192, n_test=64)
plain, _ = run_train(tiny_reg(width=8, epochs=1), data=data)
cl, model = run_train(tiny_reg(width=8, epochs=1, channels_last=True), data=data)
assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)  # the layout really acted
losses, grads = [], []
for layout in (torch.contiguous_format, torch.channels_last):  # one step from the same weights
    torch.manual_seed(0)
    net = build_model(tiny_reg(width=8), 1, 10).to(memory_format=layout).train()
    loss = F.cross_entropy(net(data.train_x[:64].contiguous(memory_format=layout)), data.train_y[:64])
    loss.backward()
    losses.append(loss.item())
    grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
grad_diff = ((grads[0] - grads[1]).norm() / grads[0].norm()).item()
print(plain.epochs[0]["loss_cls"], cl.epochs[0]["loss_cls"], *losses, grad_diff)
"""


def test_channels_last_trains_on_cpu_at_the_quickstart_shape_with_the_plain_numbers():
    """In its own process (a heap corruption would end it, not pytest, and MALLOC_CHECK_ makes glibc look): a
    channels-last epoch at width 8 on 28 x 28 runs, and one step from the same weights gives the plain layout's
    loss and gradient up to float reassociation (a ReLU whose input is within rounding of 0 may flip, which moves
    the gradient's norm by about 1/sqrt(elements of the smallest map)). Over an epoch the differences grow, as any
    reassociation's do in training, but stay small."""
    from pathlib import Path

    code = CPU_CHANNELS_LAST_RUN.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MALLOC_CHECK_": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    plain_epoch, cl_epoch, plain_step, cl_step, grad_diff = (float(v) for v in done.stdout.split())
    assert cl_step == pytest.approx(plain_step, rel=1e-5)
    assert grad_diff < 3e-2
    assert cl_epoch == pytest.approx(plain_epoch, rel=2e-2)


def test_kernel_flags_on_the_command_line(tmp_path):
    from pixelreg_core import cli

    args = cli.build_parser().parse_args(["train", "--amp", "--fused-sgd", "--tf32", "--compile", "default", "--out",
                                          "x"])
    cfg = cli.config_from_args(args)
    assert cfg.amp is True and cfg.fused_sgd is True and cfg.compile == "default" and cfg.channels_last is False
    assert cfg.tf32 is True


# ------------------------------------------------------------------------------------------ CUDA (marked gpu)


def mnist_like(n_train: int = 512, n_test: int = 256, seed: int = 0) -> DataBundle:
    """28 x 28 uint8-valued images, as MNIST's loader gives them (exactly k / 255)."""
    g = torch.Generator().manual_seed(seed)
    img = lambda n: torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8).float().div_(255.0)  # noqa: E731
    lab = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return DataBundle(img(n_train), lab(n_train), img(32), lab(32), img(n_test), lab(n_test), img(300),
                      torch.full((300,), -1), num_classes=10)


def idx_folder(folder: Path, n: int = 600, seed: int = 0) -> Path:
    """n generated 28 x 28 digits-like images (smooth 7 x 7 noise scaled up) and labels as MNIST IDX files: a real
    dataset (`idx:FOLDER`, split 80/20 by position) that needs no scikit-learn, which the GPU machine lacks."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear")
    images = x.mul_(255).round_().to(torch.uint8).numpy()
    labels = torch.randint(0, 10, (n,), generator=g).to(torch.uint8).numpy()
    (folder / "t10k-images-idx3-ubyte").write_bytes(np.array([0x803, n, 28, 28], ">i4").tobytes() + images.tobytes())
    (folder / "t10k-labels-idx1-ubyte").write_bytes(np.array([0x801, n], ">i4").tobytes() + labels.tobytes())
    return folder


def cuda_tiny(tmp_path: Path, **changes) -> TrialConfig:
    """`tiny` on CUDA, its task and regularization data an IDX folder of generated images (`idx_folder`)."""
    task = f"idx:{idx_folder(tmp_path / 'idx')}"
    return tiny_reg(task=task, reg_data=task, device="cuda", **changes)


@pytest.mark.gpu
def test_cuda_data_placement_keeps_8_bit_images_as_uint8_on_the_gpu():
    data = mnist_like()
    placed = PlacedData.of(data, data.reg_x, torch.device("cuda"))
    assert placed.train_x.stored.dtype == torch.uint8 and placed.train_x.device.type == "cuda"
    assert placed.reg_x.stored.dtype == torch.uint8 and placed.test_x.device.type == "cuda"
    idx = torch.arange(0, 512, 7, device="cuda")
    assert torch.equal(placed.train_x.take(idx).cpu(), data.train_x[idx.cpu()])


# Every target kind and range, both pair draws, and the kernel options that change the step's code path: one
# epoch of each must queue its work without one synchronisation (vgg draws as threshold does, from embeddings made
# once). The ranges' thresholds suit `structured_like`'s images, whose pixel similarities spread widely.
SYNC_CASES = {
    **{f"threshold-{r}": dict(range=r, th=0.3 if r == "double" else 0.2, th2=0.02 if r == "double" else None)
       for r in ("all", "high", "low", "positive", "negative", "double")},
    "pixel": dict(target="pixel"), "shuffle": dict(target="shuffle"), "categorical": dict(target="categorical"),
    "matrix": dict(target="matrix"), "shuffle-matrix": dict(target="shuffle"),
    "with-replacement": dict(pair_draw="with_replacement"),
    "with-replacement-high": dict(pair_draw="with_replacement", range="high", th=0.2),
    "bf16": dict(amp=True), "fused-sgd": dict(fused_sgd=True), "channels-last": dict(channels_last=True),
    "compile": dict(compile="default"), "pack": dict(pack=2),
}


def structured_like(seed: int = 0) -> DataBundle:
    """mnist_like, with labelled regularization images of smooth structure (7 x 7 noise scaled up, in k / 255)."""
    data = mnist_like(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    smooth = F.interpolate(torch.rand(300, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear")
    data.reg_x = smooth.mul_(255).round_().div_(255)
    data.reg_y = torch.randint(0, 10, (300,), generator=g)
    return data


def epoch_twice_without_sync(cfg: TrialConfig, data: DataBundle, device: torch.device) -> list[list[float]]:
    """A warm-up epoch (allocator, cuDNN, compile), then one under sync-debug "error" (CUDA) that must not raise;
    a seed pack (`pack` N) trains N seeds as one grouped network. Returns the second epoch's step rows."""
    from pixelreg_core.kernels import make_optimizer, uses_channels_last
    from pixelreg_core.pack.model import GroupedPairResNet
    from pixelreg_core.pack.train import Member, packed_epoch
    from pixelreg_core.train import compiled_step

    def member(seed: int) -> Member:
        c = cfg.replace(seed=seed)
        torch.manual_seed(seed)
        m = Member(c, data, build_model(c, 1, 10).to(device), build_target(c, data.reg_x.to(device),
                                                                              data.reg_y.to(device)))
        m.generator = torch.Generator(device=device).manual_seed(seed)
        reg_x = m.target.images if m.target.images is not None else data.reg_x
        m.placed = PlacedData.of(data, reg_x, device)
        return m

    members = [member(seed) for seed in range(max(1, cfg.pack))]
    channels_last = uses_channels_last(cfg, device, 28)
    if cfg.pack > 1:
        model = GroupedPairResNet.of([m.model for m in members])
        optimizer = make_optimizer(cfg, model, device)
        run = lambda: packed_epoch(members, model, optimizer, channels_last)[0]  # noqa: E731
    else:
        m, step_fn = members[0], compiled_step(cfg)
        model = m.model.to(memory_format=torch.channels_last) if channels_last else m.model
        optimizer = make_optimizer(cfg, model, device)
        run = lambda: train_epoch(cfg, m.placed, True, model, m.target, optimizer, step_fn, m.generator,  # noqa: E731
                                  channels_last)[0]
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside the epoch raises
    try:
        per_step = run()
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    return torch.stack(per_step).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(SYNC_CASES))
def test_cuda_epoch_never_synchronises_with_the_host(case, tmp_path):
    from test_targets import save_matrix_files

    changes = dict(SYNC_CASES[case])
    if case in ("matrix", "shuffle-matrix"):
        _, sim, imgs = save_matrix_files(tmp_path, 40, 40)
        changes.update(matrix=sim, matrix_images=imgs)
    cfg = tiny_reg(task="MNIST", reg_data="MNIST", width=8, batch_size=64, device="cuda", **changes)
    rows = epoch_twice_without_sync(cfg, structured_like(), torch.device("cuda"))
    assert len(rows) == len(batch_starts(512, 64))
    assert all(math.isfinite(v) for r in rows for v in torch.tensor(r).flatten().tolist())


@pytest.mark.gpu
def test_cuda_trial_with_every_kernel_option(tmp_path):
    from pixelreg_core.trial import run_trial

    row = run_trial(cuda_tiny(tmp_path, amp=True, channels_last=True, fused_sgd=True, cudnn_benchmark=True),
                    tmp_path)
    assert row["status"] == "ok" and row["device"].startswith("cuda") and 0 <= row["clean_acc"] <= 1


@pytest.mark.gpu
def test_cuda_compiled_step_matches_the_eager_step_closely(tmp_path):
    eager, _ = run_train(cuda_tiny(tmp_path, epochs=1), device="cuda")
    compiled, _ = run_train(cuda_tiny(tmp_path, epochs=1, compile="default"), device="cuda")
    assert compiled.epochs[0]["loss_cls"] == pytest.approx(eager.epochs[0]["loss_cls"], rel=1e-2)


@pytest.mark.gpu
def test_two_trials_packed_on_one_gpu(tmp_path):
    """Two trials at once on the one GPU, as two processes (what Ray's fractional `gpu: 0.5` does)."""
    task = cuda_tiny(tmp_path).task
    procs = [subprocess.Popen([sys.executable, "-m", "pixelreg_core", "train", "--task", task, "--reg-data",
                               task, "--alpha", "4", "--th", "0.2", "--seed", str(seed), "--width", "8",
                               "--epochs", "2", "--train-images", "512", "--device", "cuda", "--attacks",
                               '{"gaussian": {"images": 64}}', "--out", str(tmp_path / f"r{seed}")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for seed in (0, 1)]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    import pandas as pd

    for seed in (0, 1):
        trials = pd.read_parquet(tmp_path / f"r{seed}" / "trials")
        assert trials["status"].tolist() == ["ok"] and trials["device"].iloc[0].startswith("cuda")


@pytest.mark.gpu
def test_two_trials_share_one_gpu_through_ray_fractional_gpus(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed here (the GPU check runs without it)")
    import pandas as pd
    import yaml

    spec = {"name": "packed", "pairs": [{"task": "digits", "reg_data": "digits"}], "grid": {"th": [0.2], "alpha": [4]},
            "seeds": [0, 1], "baseline": False, "train": {"width": 8, "epochs": 1, "train_images": 256},
            "attacks": {"gaussian": {"images": 32}}, "resources": {"cpu": 1, "gpu": 0.5}, "max_failures": 0}
    path = tmp_path / "packed.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", str(path), "--results",
                           str(tmp_path / "results"), "--no-dashboard", "--max-concurrent", "2"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 trial(s) at a time" in done.stdout
    trials = pd.read_parquet(tmp_path / "results" / "packed" / "trials")
    assert sorted(trials["status"]) == ["ok", "ok"] and all(d.startswith("cuda") for d in trials["device"])


# ------------------------------------------------------------------------------------------ once per process


def test_a_loaded_split_is_held_once_per_process_and_each_trial_indexes_it():
    from pixelreg_core.data import placement

    placement.clear_cache()
    a, b = prepare_data(tiny_reg(seed=0)), prepare_data(tiny_reg(seed=1))
    pa, pb = (PlacedData.of(d, d.reg_x, torch.device("cpu")) for d in (a, b))
    assert pa.train_x.stored is pb.train_x.stored and pa.train_x.index is not None  # one copy, two index sets
    assert pa.reg_x.stored.data_ptr() == pb.reg_x.stored.data_ptr()  # a view of the one cached split
    for data, placed in ((a, pa), (b, pb)):
        assert torch.equal(placed.train_x.all(), data.train_x) and torch.equal(placed.test_x, data.test_x)
        assert torch.equal(placed.reg_x.all(), data.reg_x)
    changed = prepare_data(tiny_reg(seed=0))
    changed.train_x = changed.train_x.flip(0)  # a bundle changed after loading uses its own tensors
    assert torch.equal(PlacedData.of(changed, changed.reg_x, torch.device("cpu")).train_x.all(), changed.train_x)


def test_the_device_rejection_sampler_reads_nothing_and_draws_only_qualifying_pairs():
    from pixelreg_core.targets.pairs import PairSampler

    emb = torch.nn.functional.normalize(torch.randn(300, 20, generator=torch.Generator().manual_seed(0)), dim=1)
    sampler = PairSampler(emb, th=0.3, range="high", enumerate_below=0.0)
    assert sampler.mode == "rejection"
    generator = torch.Generator().manual_seed(1)
    with count_host_reads() as reads:
        draws = [sampler._draw_rejection_on_device(16, generator) for _ in range(50)]
    assert reads.total == 0
    i, j = torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])
    assert len(i) == 800 and bool((i != j).all()) and bool(sampler.qualifies(sampler.similarity(i, j)).all())
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) > 700  # fresh pairs, not one pair reused


# ------------------------------------------------------------------------------------------ attacks on the device


def test_an_accuracy_attack_reads_once_however_many_batches():
    from pixelreg_core.attacks.noise import noise_accuracy

    model = build_model(tiny_reg(), 1, 10).eval()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    counts = []
    for batch in (8, 32):
        with count_host_reads() as reads:
            noise_accuracy(model, "gaussian", x, y, 0.1, seed=0, batch_size=batch)
        counts.append(reads.total)
    assert counts[0] == counts[1] == 1


@pytest.mark.gpu
def test_cuda_attacks_run_on_the_device(tmp_path):
    from pixelreg_core import attacks
    from pixelreg_core.model import save_checkpoint

    cfg = cuda_tiny(tmp_path)
    data = prepare_data(cfg)
    source_cfg = cfg.replace(alpha=0, seed=1000, role="fgsm_source")
    torch.manual_seed(1000)
    save_checkpoint(build_model(source_cfg, 1, 10), source_cfg, str(tmp_path / "source.pt"))
    model = build_model(cfg, 1, 10).cuda().eval()
    cfg = cfg.replace(fgsm_source=str(tmp_path / "source.pt"),
                      attacks={"gaussian": {"images": 64, "num_eps": 3}, "salt_pepper": {"images": 64},
                               "fgsm_transfer": {"images": 64}, "boundary": {"images": 8, "steps": 20}})
    rows, spectrum = attacks.evaluate(model, data, cfg, tmp_path / "cache")
    assert {r["attack"] for r in rows} == {"gaussian", "salt_pepper", "fgsm_transfer", "boundary"}
    for r in rows:
        assert r["metric"] != "accuracy" or 0.0 <= r["value"] <= 1.0
    again, _ = attacks.evaluate(model, data, cfg, tmp_path / "cache")  # signs from the disk cache, moved once
    assert [r["value"] for r in again if r["attack"] != "boundary"] == \
        [r["value"] for r in rows if r["attack"] != "boundary"]
