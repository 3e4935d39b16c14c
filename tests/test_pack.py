"""The seed pack (pixelreg_core/pack/): N trials as one grouped network train as N separate runs would."""

from __future__ import annotations

import json

import conftest
import pandas as pd
import pytest
import torch

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.hooks import faults
from pixelreg_core.model import build_model
from pixelreg_core.pack.model import GroupedPairResNet
from pixelreg_core.pack.train import packed_step_losses
from pixelreg_core.pack.trial import run_pack
from pixelreg_core.train import step_losses
from pixelreg_core.trial import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**changes) -> TrialConfig:
    """conftest's tiny trial, one epoch."""
    return conftest.tiny(**{"epochs": 1, **changes})


def _models(cfgs: list[TrialConfig], sim_layer=None) -> list:
    models = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        models.append(build_model(cfg.replace(sim_layer=sim_layer), 1, 10, input_scale=2.0, input_shift=0.5))
    return models


def _sgd_steps(steps: int, dtype: torch.dtype, sim_layer: int | None) -> tuple[list, GroupedPairResNet]:
    """`steps` SGD steps (from the second on with momentum) of 3 models with their own batches, pairs, targets
    and alphas, taken apart and as one pack; returns the separate models and the grouped one."""
    cfgs = [tiny(alpha=a, seed=s, th=th) for s, a, th in ((0, 1.0, 0.2), (1, 4.0, 0.5), (2, 0.5, 0.8))]
    separate = [m.to(dtype) for m in _models(cfgs, sim_layer)]
    grouped = GroupedPairResNet.of(separate)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in separate]
    packed_opt = torch.optim.SGD(grouped.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(7)
    alphas = torch.tensor([c.alpha for c in cfgs], dtype=dtype)
    for _ in range(steps):
        xs = [torch.rand(16, 1, 8, 8, generator=data, dtype=dtype) for _ in cfgs]
        ys = [torch.randint(10, (16,), generator=data) for _ in cfgs]
        xas = [torch.rand(6, 1, 8, 8, generator=data, dtype=dtype) for _ in cfgs]
        xbs = [torch.rand(6, 1, 8, 8, generator=data, dtype=dtype) for _ in cfgs]
        targets = [torch.randint(-1, 2, (6,), generator=data).to(dtype) for _ in cfgs]
        losses = []
        for n, (model, opt) in enumerate(zip(separate, opts, strict=True)):
            model.train()
            loss, *_ = step_losses(model, xs[n], ys[n], xas[n], xbs[n], targets[n], cfgs[n].alpha, True, False)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        grouped.train()
        total, loss, *_ = packed_step_losses(grouped, torch.cat(xs, 1), torch.stack(ys, 1), torch.cat(xas, 1),
                                             torch.cat(xbs, 1), torch.stack(targets, 1), alphas, True, False)
        packed_opt.zero_grad()
        total.backward()
        packed_opt.step()
        assert loss.tolist() == pytest.approx(losses, rel=1e-5)
    return separate, grouped


def _assert_same_state(separate: list, grouped: GroupedPairResNet, atol: float) -> None:
    for n, model in enumerate(separate):
        state = grouped.member_state(n)
        params = dict(model.named_parameters())
        for name, value in model.state_dict().items():
            # weights within atol; running statistics (variances near 10) also within atol of their size
            rtol = 0 if name in params else atol
            assert torch.allclose(state[name].double(), value.double(), atol=atol, rtol=rtol), name


@pytest.mark.float
@pytest.mark.parametrize("sim_layer", [None, 2])
def test_one_packed_sgd_step_equals_separate_steps(sim_layer):
    """Weights, BatchNorm statistics, gamma and feature means of each model within 1e-5 after one float32 step."""
    separate, grouped = _sgd_steps(1, torch.float32, sim_layer)
    _assert_same_state(separate, grouped, 1e-5)
    assert grouped.layer_weights().shape == (3, 5)


@pytest.mark.float
def test_a_second_packed_step_with_momentum_stays_within_rounding():
    """Two steps, the second with momentum: within 1e-4 (seen: 2e-5; float32 rounding of the first step, grown
    through small-batch BatchNorm, is what differs)."""
    separate, grouped = _sgd_steps(2, torch.float32, None)
    _assert_same_state(separate, grouped, 1e-4)


# How far a packed member's first epoch may sit from a separate run's. The packed model runs grouped convolutions,
# the separate one plain ones: two kernels that round differently, and their differences grow through the epoch's
# steps. The training means (loss_cls, loss_sim, sim_corr, batch statistics) stay within 1e-5 (seen: 9e-6 on an
# AVX-512 Xeon, under its own and PyTorch's portable kernels), so 1e-4. The validation loss is ill-conditioned at
# this size: eval-mode BatchNorm on running statistics of four batches gives logits so large that the loss is ~20,
# and there the same separate run moved by 0.95% between the Xeon's own and the portable kernels (19.895 against
# 20.084), and packed against separate by 5.8e-4 on an AMD EPYC: so 1e-2. A member mixed up with another (other
# seed, alpha, data) differs by far more (20 against 2.3 here).
MEANS_REL = 1e-4
VALID_LOSS_REL = 1e-2


def _tables(root, trial_id: str) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(root / name, filters=[("trial_id", "==", trial_id)])
            for name in ("trials", "epochs", "robustness")}


@pytest.mark.float
def test_a_packed_trial_writes_what_a_separate_run_writes(tmp_path):
    """Two regularized trials (other seed, th and alpha) in one pack: the same trial ids, tables and columns as
    separate runs, their first epoch's numbers within the tolerances above, each evaluated as its own model.

    lr 0.005, batches of 64 and 32 pairs: at width 4 the last stage's feature maps are 1 x 1, and with the
    defaults (lr 0.1, batches of 32 with a last batch of 6, BatchNorm over the 16 images of a pair half) float
    rounding grows to a few percent within the epoch (a pack of one shows it too); the step tests above show the
    pack computes the same numbers."""
    cfgs = [tiny(alpha=4.0, th=0.2, seed=0, pack=2, lr=0.005, batch_size=64, reg_pairs=32),
            tiny(alpha=1.0, th=0.5, seed=1, pack=2, lr=0.005, batch_size=64, reg_pairs=32)]
    outcomes = run_pack(cfgs, tmp_path / "packed")
    assert [o.row["status"] for o in outcomes] == ["ok", "ok"]
    for cfg in cfgs:
        run_trial(cfg.replace(pack=1), tmp_path / "apart")
        assert cfg.replace(pack=1).trial_id == cfg.trial_id  # pack is not part of the id
        packed, apart = _tables(tmp_path / "packed", cfg.trial_id), _tables(tmp_path / "apart", cfg.trial_id)
        for name in packed:
            assert list(packed[name].columns) == list(apart[name].columns), name
            assert len(packed[name]) == len(apart[name]) > 0, name
        for column, rel in (("loss_cls", MEANS_REL), ("loss_sim", MEANS_REL), ("sim_corr", MEANS_REL),
                            ("valid_loss", VALID_LOSS_REL)):
            assert packed["epochs"][column].tolist() == pytest.approx(apart["epochs"][column].tolist(), rel=rel)
        for column in ("train_acc", "valid_acc", "test_acc"):  # counts: at most one image either way
            assert packed["epochs"][column].tolist() == pytest.approx(apart["epochs"][column].tolist(), abs=1 / 64)
        assert packed["trials"]["best_epoch"].tolist() == apart["trials"]["best_epoch"].tolist()
        assert json.loads(packed["trials"]["config"][0])["seed"] == cfg.seed
        assert packed["robustness"]["value"].tolist() == pytest.approx(apart["robustness"]["value"].tolist(),
                                                                           abs=2 / 64)
    # the two members really are different models: other data order, pairs and weights
    first, second = (_tables(tmp_path / "packed", c.trial_id)["epochs"] for c in cfgs)
    assert first["loss_sim"][0] != second["loss_sim"][0]


@pytest.mark.float
def test_a_nan_in_one_model_fails_only_its_trial(tmp_path, monkeypatch):
    """A `nan` fault in member 1 after epoch 1 of 3: its trial fails at epoch 2 with train.py's message, and the
    other trial's numbers are exactly those of the same pack without the fault (the NaN weights never reach its
    channels; after epoch 2 it trains on alone, repacked), its first epoch that of a separate run within float
    tolerance (tiny models amplify rounding: later epochs drift apart by a few percent, see above)."""
    cfgs = [tiny(alpha=4.0, seed=s, epochs=3, pack=2, lr=0.005, batch_size=64, reg_pairs=32) for s in (0, 1)]
    clean = run_pack(cfgs, tmp_path / "clean")
    assert [o.row["status"] for o in clean] == ["ok", "ok"]
    plan = {"dir": str(tmp_path / "marks"), "faults": [{"trial": cfgs[1].trial_id, "epoch": 1, "kind": "nan"}]}
    monkeypatch.setenv(faults.ENV, json.dumps(plan))
    outcomes = run_pack(cfgs, tmp_path / "packed", record_failure=True)
    monkeypatch.delenv(faults.ENV)
    assert outcomes[0].row["status"] == "ok"
    assert outcomes[1].row["status"] == "failed" and isinstance(outcomes[1].error, ConfigError)
    assert "the loss became nan at epoch 2" in outcomes[1].row["error"]
    trials = pd.read_parquet(tmp_path / "packed" / "trials").set_index("trial_id")
    assert trials.loc[cfgs[0].trial_id, "status"] == "ok" and trials.loc[cfgs[1].trial_id, "status"] == "failed"
    epochs = pd.read_parquet(tmp_path / "packed" / "epochs")
    assert set(epochs["trial_id"]) == {cfgs[0].trial_id} and len(epochs) == 3
    without = pd.read_parquet(tmp_path / "clean" / "epochs", filters=[("trial_id", "==", cfgs[0].trial_id)])
    numbers = ["loss_cls", "loss_sim", "valid_loss", "valid_acc", "test_acc"]
    assert epochs[numbers].values.tolist()[:2] == without[numbers].values.tolist()[:2]
    run_trial(cfgs[0].replace(pack=1), tmp_path / "apart")
    apart = pd.read_parquet(tmp_path / "apart" / "epochs")
    for column in ("loss_cls", "loss_sim"):  # the first epoch; later ones drift (see above)
        assert epochs[column][0] == pytest.approx(apart[column][0], rel=MEANS_REL)
    assert epochs["valid_loss"][0] == pytest.approx(apart["valid_loss"][0], rel=VALID_LOSS_REL)


def test_a_failed_member_keeps_its_checkpoint_and_resumes_apart(tmp_path, monkeypatch):
    """A `raise` after epoch 1 in member 0 fails that trial only; its epoch checkpoint, written in train.py's
    format, stays, and a separate run of the trial resumes from it."""
    cfgs = [tiny(alpha=4.0, seed=s, epochs=2, pack=2, lr=0.005, batch_size=64, reg_pairs=32) for s in (0, 1)]
    plan = {"dir": str(tmp_path / "marks"), "faults": [{"trial": cfgs[0].trial_id, "epoch": 1, "kind": "raise"}]}
    monkeypatch.setenv(faults.ENV, json.dumps(plan))
    outcomes = run_pack(cfgs, tmp_path)
    assert [o.row["status"] for o in outcomes] == ["failed", "ok"]
    assert isinstance(outcomes[0].error, faults.InjectedFault)
    row = run_trial(cfgs[0].replace(pack=1), tmp_path)  # the fault fired once: this run goes on
    assert row["status"] == "ok" and row["resumed_from_epoch"] == 1
    epochs = pd.read_parquet(tmp_path / "epochs", filters=[("trial_id", "==", cfgs[0].trial_id)])
    assert epochs["epoch"].tolist() == [1, 2]


def test_packs_group_trials_that_differ_only_in_seed_th_alpha():
    from pixelreg_core.pack.key import packs

    grid = [tiny(alpha=a, th=th, seed=s, pack=3) for a in (1.0, 4.0) for th in (0.2, 0.8) for s in (0, 1)]
    other = [tiny(alpha=1.0, seed=0, width=8, pack=3), tiny(alpha=0.0, seed=0, pack=3)]  # wider; a baseline
    groups = packs(grid + other)
    assert [len(g) for g in groups] == [3, 3, 2, 1, 1]
    assert [c.trial_id for g in groups for c in g] == [c.trial_id for c in grid + other]  # start order kept
    assert [len(g) for g in packs(grid)] == [3, 3, 2] and all(len(g) == 1 for g in packs([c.replace(pack=1)
                                                                                            for c in grid]))
    with pytest.raises(ConfigError, match="pack: is 0"):
        tiny(pack=0).validate()


@pytest.mark.slow  # a benchmark smoke, as benchmarks/gpu.py --smoke is: the packed step itself is tested above
def test_the_pack_benchmark_prints_both_columns(tmp_path):
    """benchmarks/bench_pack.py at toy size (its figures are for a GPU session; here only that it runs)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pack.py"
    out = subprocess.run([sys.executable, str(script), "--device", "cpu", "--packs", "2", "--width", "2",
                          "--image", "8", "--batch", "8", "--pairs", "4", "--steps", "1", "--warmup", "0",
                          "--json", str(tmp_path / "pack.json")], capture_output=True, text=True, check=True).stdout
    assert "apart steps/s" in out and "packed steps/s" in out
    rows = json.loads((tmp_path / "pack.json").read_text())["rows"]
    assert rows[0]["n"] == 2 and rows[0]["apart_steps_per_s"] > 0 and rows[0]["packed_steps_per_s"] > 0


def test_a_stopped_pack_resumes_from_its_members_checkpoints_with_the_same_numbers(tmp_path, monkeypatch):
    """Both members stop after epoch 1 (a `raise` each): rerun, the pack resumes both from their checkpoints and
    writes the numbers of an uninterrupted pack exactly (weights, momenta, generators and pair orders restored
    member by member). A pack whose members stand at different epochs trains them as one pack per epoch."""
    cfgs = [tiny(alpha=4.0, seed=s, epochs=2, pack=2, lr=0.005, batch_size=64, reg_pairs=32) for s in (0, 1)]
    whole = run_pack(cfgs, tmp_path / "whole")
    assert [o.row["status"] for o in whole] == ["ok", "ok"]
    plan = {"dir": str(tmp_path / "marks"), "faults": [{"trial": c.trial_id, "epoch": 1, "kind": "raise"}
                                                        for c in cfgs]}
    monkeypatch.setenv(faults.ENV, json.dumps(plan))
    assert [o.row["status"] for o in run_pack(cfgs, tmp_path / "stopped")] == ["failed", "failed"]
    resumed = run_pack(cfgs, tmp_path / "stopped")  # each fault fires once
    assert [o.row["resumed_from_epoch"] for o in resumed] == [1, 1]
    numbers = ["trial_id", "epoch", "loss_cls", "loss_sim", "sim_corr", "valid_loss", "valid_acc", "test_acc"]
    expected = pd.read_parquet(tmp_path / "whole" / "epochs")[numbers].sort_values(["trial_id", "epoch"])
    got = pd.read_parquet(tmp_path / "stopped" / "epochs")[numbers].sort_values(["trial_id", "epoch"])
    assert got.values.tolist() == expected.values.tolist()

    # member 0 stopped after epoch 1, member 1 not started: two packs of one, each as its own run would go
    plan["faults"] = [{"trial": cfgs[0].trial_id, "epoch": 1, "kind": "raise"}]
    plan["dir"] = str(tmp_path / "marks2")
    monkeypatch.setenv(faults.ENV, json.dumps(plan))
    run_pack(cfgs[:1], tmp_path / "mixed")
    mixed = run_pack(cfgs, tmp_path / "mixed")
    assert [o.row["status"] for o in mixed] == ["ok", "ok"]
    assert [o.row["resumed_from_epoch"] for o in mixed] == [1, 0]


def test_under_amp_the_packed_similarity_is_float32_as_a_single_models():
    """bf16 autocast (CPU shows it): S_cnn [k, N] and the feature means stay float32, as PairResNet keeps them,
    and each model's losses are its separate model's up to bf16 rounding."""
    cfgs = [tiny(alpha=1.0, seed=s) for s in (0, 1)]
    separate = _models(cfgs)
    grouped = GroupedPairResNet.of(separate).train()
    data = torch.Generator().manual_seed(3)
    xs = [torch.rand(16, 1, 8, 8, generator=data) for _ in cfgs]
    ys = [torch.randint(10, (16,), generator=data) for _ in cfgs]
    xas = [torch.rand(6, 1, 8, 8, generator=data) for _ in cfgs]
    xbs = [torch.rand(6, 1, 8, 8, generator=data) for _ in cfgs]
    targets = [torch.randint(-1, 2, (6,), generator=data).float() for _ in cfgs]
    _, loss, _, _, _, s_cnn = packed_step_losses(grouped, torch.cat(xs, 1), torch.stack(ys, 1), torch.cat(xas, 1),
                                                 torch.cat(xbs, 1), torch.stack(targets, 1), torch.ones(2), True,
                                                 True)
    assert s_cnn.dtype == torch.float32 and s_cnn.shape == (6, 2)
    assert all(getattr(grouped, f"feature_mean_{i}").dtype == torch.float32 for i in range(5))
    for n, model in enumerate(separate):
        single, *_ = step_losses(model.train(), xs[n], ys[n], xas[n], xbs[n], targets[n], 1.0, True, True)
        assert float(loss[n].detach()) == pytest.approx(float(single.detach()), rel=5e-2)


class _Held:
    """Stands for what a failed training's frames hold (the grouped network, its optimizer and graph): in a
    reference cycle, as modules with hooks and autograd graphs are, so only a collection frees it."""

    def __init__(self):
        self.me = self


def test_a_failed_packs_outcomes_hold_no_frames_and_its_memory_is_freed(tmp_path, monkeypatch):
    # The trainable retries the members of a failed pack one by one while it still holds the pack's outcomes:
    # their errors must not keep the grouped network alive (on a GPU: its memory) through their tracebacks.
    import gc
    import weakref

    from pixelreg_core.pack import trial as pack_trial

    held = []

    def train_pack(members, device):
        grouped = _Held()
        held.append(weakref.ref(grouped))
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pack_trial, "train_pack", train_pack)
    outcomes = run_pack([tiny(seed=s, pack=2) for s in (0, 1)], tmp_path)
    assert [o.row["status"] for o in outcomes] == ["failed", "failed"]
    assert all(o.error.__traceback__ is None for o in outcomes)
    gc.collect()
    assert held[0]() is None
