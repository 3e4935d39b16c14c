"""The core trainer end to end on scikit-learn's digits: tiny model, few images, real training."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, tiny, torch_threads

from pixelreg_core import cli
from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.data.bundle import prepare_data
from pixelreg_core.model import build_model, load_checkpoint, save_checkpoint
from pixelreg_core.results import SCHEMAS
from pixelreg_core.targets.builders import similarity_loss
from pixelreg_core.targets.registry import build_target
from pixelreg_core.train import learning_rate, train
from pixelreg_core.trial import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_layer_weights_sum_to_one_and_fixed_layer_is_one_hot():
    model = build_model(tiny(alpha=4), 1, 10)
    assert torch.isclose(model.layer_weights().sum(), torch.tensor(1.0))
    assert torch.allclose(model.layer_weights(), torch.full((5,), 0.2))
    fixed = build_model(tiny(alpha=4, sim_layer=2), 1, 10)
    assert fixed.layer_weights().tolist() == [0, 0, 1, 0, 0]


def test_cyclic_schedule_restarts_after_a_cycle():
    cfg = tiny()
    lrs = [learning_rate(cfg, e) for e in range(24)]
    assert lrs[0] == lrs[3] == 0.1 and lrs[4] == pytest.approx(0.03) and lrs[16] == pytest.approx(0.1 * 0.3**4)
    assert lrs[20] == 0.1


@pytest.mark.float
def test_a_few_epochs_lower_both_losses():
    """Both terms of the loss, evaluated on the same fixed data (all train images; 512 fixed pairs) before and
    after training, fall clearly: by 10% (classification) and 5% (similarity).

    The run is what makes that hold on any CPU: 8 epochs, 4 at lr 0.02 then 4 at 0.006. At lr 0.05 for 5 epochs
    these losses swing by +-0.5 from epoch to epoch (width 4, batches of 32), so whether the last one sat below the
    first was the CPU's rounding: an AMD EPYC ended at 2.555 from 2.531. Seen with this run, seeds 0-3, on an
    AVX-512 Xeon under its own and PyTorch's portable kernels (ATEN_CPU_CAPABILITY=default): after/before at most
    0.82 (classification) and 0.87 (similarity)."""
    cfg = tiny(alpha=1, th=0.2, epochs=8, phase_epochs=4, lr=0.02)
    data = prepare_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, 1, data.num_classes)
    target = build_target(cfg, data.reg_x, data.reg_y)
    i, j, s_target = target.sample(512, torch.Generator().manual_seed(123))

    def losses() -> tuple[float, float]:
        # on a copy in train mode: batch statistics, as the loss is trained (after a few dozen steps BatchNorm's
        # running statistics are not settled yet, so eval mode would measure them, not the learning)
        probe = copy.deepcopy(model).train()
        with torch.no_grad():
            loss_cls = F.cross_entropy(probe(data.train_x), data.train_y)
            s_cnn = probe.pair_similarity(data.reg_x[i], data.reg_x[j])
        return float(loss_cls), float(similarity_loss(s_cnn, s_target))

    before = losses()
    train(cfg, data, model, target, torch.device("cpu"))
    after = losses()
    assert after[0] < 0.9 * before[0] and after[1] < 0.95 * before[1], (before, after)


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path):
    rows = [run_trial(tiny(alpha=4, seed=s), tmp_path / f"r{i}") for i, s in enumerate((0, 0, 1))]
    epochs = [pd.read_parquet(tmp_path / f"r{i}" / "epochs") for i in range(3)]
    pd.testing.assert_frame_equal(epochs[0].drop(columns="seconds"), epochs[1].drop(columns="seconds"))
    assert rows[0]["clean_acc"] == rows[1]["clean_acc"]
    assert rows[0]["layer_weights"] == rows[1]["layer_weights"]
    assert not epochs[0]["loss_cls"].equals(epochs[2]["loss_cls"])


def test_run_trial_writes_documented_tables_and_a_loadable_checkpoint(tmp_path):
    row = run_trial(tiny(alpha=4), tmp_path)
    for table in ("trials", "epochs", "robustness"):
        frame = pd.read_parquet(tmp_path / table)
        assert list(frame.columns) == SCHEMAS[table].names
        assert (frame["trial_id"] == row["trial_id"]).all()
    trials = pd.read_parquet(tmp_path / "trials")
    assert trials.loc[0, "status"] == "ok" and len(trials.loc[0, "layer_weights"]) == 5
    assert sum(trials.loc[0, "layer_weights"]) == pytest.approx(1.0)
    assert len(pd.read_parquet(tmp_path / "epochs")) == 2
    model, cfg = load_checkpoint(row["checkpoint"])
    assert cfg.trial_id == row["trial_id"]
    data = prepare_data(cfg)
    with torch.no_grad():
        acc = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    assert acc == pytest.approx(row["clean_acc"])


def test_baseline_is_shared_across_regularization_datasets():
    """An unregularized model made as one (TrialConfig.unregularized) has one id whatever regularizer fields it
    came from; nothing rewrites a config when it is constructed."""
    a = tiny(alpha=1.0, reg_data="digits", th=0.5).unregularized()
    b = tiny(alpha=2.0, reg_data="MNIST", th=0.8).unregularized()
    assert a.trial_id == b.trial_id and a.role == "baseline" and a.reg_data == "none" and a.alpha == 0
    as_given = TrialConfig(**{**TINY, "alpha": 0.0, "th": 0.5})
    assert (as_given.role, as_given.reg_data, as_given.th) == ("trial", "digits", 0.5)


@pytest.mark.parametrize("name, value", [("task", ""), ("role", "main"), ("alpha", -1.0), ("alpha", float("nan")),
                                         ("width", 0), ("width", "8"), ("lr", 0), ("beta", 1.0), ("lr_decay", 1.5),
                                         ("valid_fraction", 1.0), ("valid_images", 0), ("select", "best"),
                                         ("test_images", 0), ("device", "tpu"), ("compile", "fast"), ("pack", 0),
                                         ("attacks", []), ("sim_layer", 5)])
def test_a_bad_field_is_one_line_naming_it_and_its_value(name, value):
    """Every field's rule (TrialConfig field metadata) speaks the same way: `field: is <value>; <fix>`, also for
    a value of the wrong type."""
    with pytest.raises(ConfigError, match=f"^{name}: is {re.escape(repr(value))}; "):
        tiny(**{"alpha": 1.0, name: value}).validate()


def test_regularizer_fields_are_checked_only_for_a_regularized_trial():
    tiny(alpha=0, reg_pairs=0, pair_draw="sometimes").validate()  # unregularized: they mean nothing
    with pytest.raises(ConfigError, match="^reg_pairs: is 0; k must be >= 1"):
        tiny(alpha=1.0, reg_pairs=0).validate()


def test_trial_id_ignores_where_it_runs():
    assert tiny(device="cpu").trial_id == tiny(device="auto", data_root="/elsewhere").trial_id
    assert tiny(seed=1).trial_id != tiny(seed=2).trial_id


def test_diverging_loss_is_one_clear_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ConfigError, match="lower lr or alpha"):
        run_trial(tiny(alpha=4, lr=1e12, epochs=1), tmp_path)
    assert not any(p.suffix == ".parquet" for p in tmp_path.rglob("*"))


def test_failure_is_recorded_when_asked(tmp_path):
    with pytest.raises(ConfigError):
        run_trial(tiny(alpha=4, lr=1e12, epochs=1), tmp_path, record_failure=True)
    trials = pd.read_parquet(tmp_path / "trials")
    assert trials["status"].tolist() == ["failed"] and "lower lr" in trials.loc[0, "error"]
    assert not (tmp_path / "epochs").exists() or not os.listdir(tmp_path / "epochs")


@pytest.mark.parametrize("flags, field", [
    (["--task", "NoSuchSet"], "task"),
    (["--th", "1.5", "--alpha", "4"], "th"),
    (["--th", "0", "--alpha", "4"], "th"),
    (["--alpha", "-1"], "alpha"),
    (["--alpha", "4", "--reg-images", "1"], "reg_images"),
    (["--task", "MNIST", "--data-root", "/nonexistent"], "MNIST"),
    (["--alpha", "4", "--target", "matrix"], "matrix"),
    (["--attacks", '{"nosuch": {}}'], "attacks"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, field):
    code = cli.main(["train", "--out", str(tmp_path / "out"), "--width", "4", "--epochs", "1", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and field in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def test_cli_reads_the_authors_protocol_flags():
    """An optional boolean reads its word (bool("false") would be True); the protocol options are flags."""
    parser = cli.build_parser()
    for word, value in (("false", False), ("true", True), ("none", None)):
        assert parser.parse_args(["train", "--out", "x", "--reg-augment", word]).reg_augment is value
    args = parser.parse_args(["train", "--out", "x", "--gray", "mean", "--no-exact-targets"])
    assert (args.gray, args.exact_targets) == ("mean", False)


def test_cli_trains_one_trial_through_python_m(tmp_path):
    """The documented command, `python -m pixelreg_core train ...`, in its own process."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pixelreg_core", "train", "--out", str(tmp_path), "--width", "4", "--epochs", "1",
         "--train-images", "128", "--test-images", "64", "--reg-images", "100", "--valid-fraction", "0.1",
         "--alpha", "4", "--th", "0.2", "--attacks", '{"gaussian": {"images": 32}}', "--num-threads", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "clean accuracy" in done.stdout
    assert len(pd.read_parquet(tmp_path / "trials")) == 1
    bad = subprocess.run([sys.executable, "-m", "pixelreg_core", "train", "--out", str(tmp_path / "bad"),
                          "--alpha", "4", "--th", "1.5"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "th" in bad.stderr and not (tmp_path / "bad").exists()


# --- review fixes ---------------------------------------------------------------------------------------------
def test_a_last_batch_of_one_image_is_folded_into_the_one_before():
    from pixelreg_core.train import batch_starts

    assert batch_starts(65, 32) == [0, 32] and batch_starts(64, 32) == [0, 32] and batch_starts(66, 32) == [0, 32, 64]
    assert batch_starts(1, 32) == [0]
    # 33 digits at batch size 32 left one 8x8 image whose last stage is 1x1: BatchNorm stopped the trial
    cfg = tiny(epochs=1, train_images=33)
    data = prepare_data(cfg)
    assert len(data.train_y) == 33
    torch.manual_seed(0)
    result = train(cfg, data, build_model(cfg, 1, data.num_classes), None, torch.device("cpu"))
    assert result.best_epoch == 1


def test_train_refuses_a_regularized_config_without_a_target():
    cfg = tiny(alpha=4, epochs=1)
    data = prepare_data(cfg)
    with pytest.raises(ValueError, match="no target"):
        train(cfg, data, build_model(cfg, 1, data.num_classes), None, torch.device("cpu"))


def test_a_run_time_config_error_leaves_a_failed_row_when_asked(tmp_path):
    cfg = tiny(attacks={"fgsm_transfer": {}}, fgsm_source=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="fgsm_source"):
        run_trial(cfg, tmp_path / "out", record_failure=True)
    trials = pd.read_parquet(tmp_path / "out" / "trials")
    assert trials["status"].tolist() == ["failed"] and "fgsm_source" in trials.loc[0, "error"]
    with pytest.raises(ConfigError):  # without record_failure (the CLI) nothing is written
        run_trial(cfg, tmp_path / "cli")
    assert not (tmp_path / "cli").exists() or not any((tmp_path / "cli").rglob("*.parquet"))


def test_run_trial_leaves_the_thread_count_as_it_found_it(tmp_path):
    with torch_threads(2):
        run_trial(tiny(epochs=1), tmp_path)  # num_threads=1 for this trial only
        assert torch.get_num_threads() == 2


def test_a_matrix_target_brings_its_images_and_needs_none_from_reg_data(tmp_path):
    import numpy as np

    gen = np.random.default_rng(0)
    sim = gen.uniform(-1, 1, (30, 30)).astype(np.float32)
    np.save(tmp_path / "sim.npy", (sim + sim.T) / 2)
    np.save(tmp_path / "images.npy", gen.uniform(0, 1, (30, 8, 8)).astype(np.float32))
    # reg_images keeps its default 5,000, more than digits has: the matrix's own 30 images are used instead
    cfg = tiny(alpha=4, epochs=1, target="matrix", matrix=str(tmp_path / "sim.npy"),
               matrix_images=str(tmp_path / "images.npy"), reg_images=5000)
    assert len(prepare_data(cfg).reg_x) == 0
    row = run_trial(cfg, tmp_path / "out")
    assert row["status"] == "ok"
    assert pd.read_parquet(tmp_path / "out" / "epochs")["loss_sim"].notna().all()


def test_cli_bad_attacks_json_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "--out", str(tmp_path / "out"), "--attacks", "{bad"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: attacks: not valid JSON")


def test_checkpoints_take_file_uris_like_plain_paths(tmp_path):
    """model.py reads and writes through results.py, so `file://PATH` and PATH name the same file (the model once
    sent anything with "://" to pyarrow's URI parser while results.is_uri treated file:// as local)."""
    cfg = tiny(alpha=4)
    model = build_model(cfg, 1, 10)
    save_checkpoint(model, cfg, f"file://{tmp_path}/a.pt")
    assert (tmp_path / "a.pt").is_file() and not list(tmp_path.glob(".*"))  # no temp file left behind
    loaded, loaded_cfg = load_checkpoint(str(tmp_path / "a.pt"))
    assert loaded_cfg == cfg
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    save_checkpoint(loaded, loaded_cfg, str(tmp_path / "b.pt"))
    assert load_checkpoint(f"file://{tmp_path}/b.pt")[1] == cfg
    with pytest.raises(FileNotFoundError):
        load_checkpoint(f"file://{tmp_path}/missing.pt")


def test_the_trials_row_says_where_the_time_went(tmp_path, capsys):
    """train_s, eval_s, the per-attack seconds and cpu_s are on record, add up inside wall_s, and
    `orchestrator status` and the report show them summed over the sweep."""
    import json

    from orchestrator import cli as orchestrator_cli
    from orchestrator.analysis.report import timing_section
    from orchestrator.analysis.timings import OTHER, time_breakdown

    attacks = {"gaussian": {"images": 64, "num_eps": 2}, "uniform": {"images": 64, "num_eps": 2}}
    rows = [run_trial(tiny(epochs=1, seed=s, attacks=attacks), tmp_path) for s in (0, 1)]
    for row in rows:
        per_attack = json.loads(row["attack_s"])
        assert list(per_attack) == ["gaussian", "uniform"] and all(v >= 0 for v in per_attack.values())
        assert sum(per_attack.values()) <= row["eval_s"] + 0.01  # rounded to ms
        assert 0 < row["train_s"] and row["train_s"] + row["eval_s"] <= row["wall_s"]
        assert row["cpu_s"] > 0
    trials = pd.read_parquet(tmp_path / "trials")
    table = time_breakdown(trials).set_index("phase")
    assert list(table.index) == ["training", "attack gaussian", "attack uniform", OTHER, "trial total (wall_s)"]
    assert table.loc["trial total (wall_s)", "total_s"] == pytest.approx(trials["wall_s"].sum())
    assert table.loc["training", "total_s"] == pytest.approx(trials["train_s"].sum())
    assert table.drop(index="trial total (wall_s)")["share"].sum() == pytest.approx(1.0)
    assert (table["trials"] == 2).all()

    assert orchestrator_cli.main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "where the time went:" in out and "2 trials over" in out and "CPU seconds" in out
    assert "training" in out and "attack gaussian" in out and "attack uniform" in out
    assert "Where the time went" in timing_section(trials) and "attack uniform" in timing_section(trials)
    # a sweep written before the timing columns existed: nothing to show, no error
    assert time_breakdown(trials.assign(train_s=None)).empty
