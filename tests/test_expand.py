"""Expansion: counts, shared baselines, FGSM sources, stable trial ids; `plan` prints and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.spec.expand import expand, role_counts, source_of, trial_from_params
from orchestrator.spec.load import parse_spec

REPO = Path(__file__).resolve().parents[1]
SWEEP_DIR = "results/grid"


def make_spec(**changes):
    data = {
        "name": "grid",
        "pairs": [{"task": "MNIST", "reg_data": "MNIST"}, {"task": "MNIST", "reg_data": "FashionMNIST"}],
        "grid": {"th": [0.2, 0.4, 0.6, 0.8], "alpha": [1, 4, 10]},
        "seeds": 7,
        "train": {"width": 4, "epochs": 1},
        "attacks": {"gaussian": {}, "fgsm_transfer": {}},
    }
    data.update(changes)
    return parse_spec(data, "test.yaml")


def ids(trials):
    return [cfg.trial_id for cfg in trials]


def test_counts_shared_baselines_and_one_source():
    trials = expand(make_spec(), SWEEP_DIR)
    assert len(trials) == 168 + 7 + 1
    assert role_counts(trials) == {"fgsm_source": 1, "baseline": 7, "trial": 168}
    assert len(set(ids(trials))) == len(trials)
    roles = [cfg.role for cfg in trials]
    assert roles == sorted(roles, key=["fgsm_source", "baseline", "trial"].index)  # sources first, then baselines
    baselines = [cfg for cfg in trials if cfg.role == "baseline"]
    assert sorted(cfg.seed for cfg in baselines) == list(range(7))
    assert {(cfg.reg_data, cfg.target, cfg.th, cfg.alpha) for cfg in baselines} == {("none", "none", 0.0, 0.0)}


def test_baselines_are_per_task_and_seed_across_tasks():
    pairs = [{"task": t, "reg_data": r} for t in ("MNIST", "FashionMNIST") for r in ("MNIST", "FashionMNIST")]
    trials = expand(make_spec(pairs=pairs, seeds=[3, 5]), SWEEP_DIR)
    baselines = {(cfg.task, cfg.seed) for cfg in trials if cfg.role == "baseline"}
    assert baselines == {(t, s) for t in ("MNIST", "FashionMNIST") for s in (3, 5)}
    assert role_counts(trials) == {"fgsm_source": 2, "baseline": 4, "trial": 4 * 12 * 2}


def test_fgsm_sources_and_their_checkpoint_paths():
    spec = make_spec()
    trials = expand(spec, "s3://bucket/results/grid")
    source = trials[0]
    assert (source.role, source.alpha, source.seed, source.task) == ("fgsm_source", 0.0, 1000, "MNIST")
    assert "fgsm_transfer" not in source.attacks and "gaussian" in source.attacks
    assert source.fgsm_source is None
    expected = f"s3://bucket/results/grid/checkpoints/{source.trial_id}.pt"
    assert {cfg.fgsm_source for cfg in trials[1:]} == {expected}
    assert source_of(spec, trials[-1]).trial_id == source.trial_id and source_of(spec, source) is None


def test_no_fgsm_attack_no_source_and_baseline_false():
    trials = expand(make_spec(attacks={"gaussian": {}}, baseline=False), SWEEP_DIR)
    assert role_counts(trials) == {"trial": 168}
    assert all(cfg.fgsm_source is None for cfg in trials)


def test_trial_ids_are_stable():
    first, second = expand(make_spec(), SWEEP_DIR), expand(make_spec(), SWEEP_DIR)
    assert ids(first) == ids(second)
    # where data and results live is not part of a trial
    assert ids(expand(make_spec(data_root="/mnt/elsewhere", download=True), "/other/root/grid")) == ids(first)
    # a changed field is a different trial, everywhere
    changed = ids(expand(make_spec(train={"width": 4, "epochs": 2}), SWEEP_DIR))
    assert not set(changed) & set(ids(first))
    # growing the grid keeps every existing trial's id (a resumed, extended sweep reruns nothing)
    grown = make_spec(grid={"th": [0.2, 0.4, 0.6, 0.8, 0.9], "alpha": [1, 4, 10]})
    assert set(ids(first)) < set(ids(expand(grown, SWEEP_DIR)))
    # alpha written as an int or a float is the same trial
    as_float = make_spec(grid={"th": [0.2, 0.4, 0.6, 0.8], "alpha": [1.0, 4.0, 10.0]})
    assert ids(expand(as_float, SWEEP_DIR)) == ids(first)


def test_points_give_exactly_the_listed_settings():
    spec = make_spec(grid={"points": [{"th": 0.2, "alpha": 4}, {"th": 0.8, "alpha": 10}]}, seeds=3)
    trials = [cfg for cfg in expand(spec, SWEEP_DIR) if cfg.role == "trial"]
    assert sorted({(cfg.th, cfg.alpha) for cfg in trials}) == [(0.2, 4.0), (0.8, 10.0)]
    assert len(trials) == 2 * 2 * 3


def test_regularizer_only_grid_fields_do_not_multiply_baselines():
    spec = make_spec(grid={"th": [0.2], "alpha": [4], "sim_layer": [None, 1], "reg_images": [100, 1000]})
    counts = role_counts(expand(spec, SWEEP_DIR))
    assert counts == {"fgsm_source": 1, "baseline": 7, "trial": 2 * 1 * 2 * 2 * 7}


def test_model_grid_fields_get_their_own_baselines_and_sources():
    spec = make_spec(grid={"th": [0.2], "alpha": [4], "width": [4, 8]}, seeds=2)
    trials = expand(spec, SWEEP_DIR)
    assert role_counts(trials) == {"fgsm_source": 2, "baseline": 4, "trial": 2 * 2 * 2}
    sources = {cfg.width: cfg.trial_id for cfg in trials if cfg.role == "fgsm_source"}
    for cfg in trials[2:]:
        assert cfg.fgsm_source == f"{SWEEP_DIR}/checkpoints/{sources[cfg.width]}.pt"


def test_alpha_zero_in_the_grid_is_the_shared_baseline():
    trials = expand(make_spec(grid={"th": [0.2, 0.8], "alpha": [0, 4]}), SWEEP_DIR)
    assert role_counts(trials) == {"fgsm_source": 1, "baseline": 7, "trial": 2 * 2 * 7}


def test_optuna_expands_sources_and_baselines_and_builds_searched_trials():
    spec = make_spec(grid=None, search={"type": "optuna", "trials": 5}, baseline=False)
    trials = expand(spec, SWEEP_DIR)
    assert role_counts(trials) == {"fgsm_source": 1, "baseline": 7}  # the objective needs the baselines
    cfg = trial_from_params(spec, "MNIST", "FashionMNIST", 2, {"th": 0.3, "alpha": 2.5}, SWEEP_DIR)
    assert (cfg.role, cfg.reg_data, cfg.th, cfg.alpha, cfg.seed, cfg.width) == ("trial", "FashionMNIST", 0.3, 2.5,
                                                                                2, 4)
    assert cfg.fgsm_source == f"{SWEEP_DIR}/checkpoints/{trials[0].trial_id}.pt"
    again = trial_from_params(spec, "MNIST", "FashionMNIST", 2, {"th": 0.3, "alpha": 2.5})
    assert again.trial_id == cfg.trial_id and again.fgsm_source is None
    with pytest.raises(UserError, match="not a pair"):
        trial_from_params(spec, "CIFAR10", "MNIST", 0, {"th": 0.3, "alpha": 1})
    with pytest.raises(UserError, match="th"):
        trial_from_params(spec, "MNIST", "MNIST", 0, {"th": 1.3, "alpha": 1})


def test_shipped_quickstart_expansion():
    from orchestrator.spec.load import load_spec

    trials = expand(load_spec(REPO / "sweeps" / "quickstart.yaml"), "results/quickstart")
    assert role_counts(trials) == {"fgsm_source": 1, "baseline": 3, "trial": 6}
    for cfg in trials:
        cfg.validate()


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_plan_prints_the_trials_and_writes_nothing(tmp_path, capsys, monkeypatch):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "planned", "pairs": [{"task": "digits", "reg_data": "digits"}],
        "grid": {"th": [0.2], "alpha": [4, 10], "sim_layer": [None, 1]}, "seeds": 2,
        "train": {"width": 4, "epochs": 2}, "attacks": {"gaussian": {}, "fgsm_transfer": {}}}))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert main(["plan", str(spec_path), "--results", str(tmp_path / "out"), "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert snapshot(tmp_path) == before
    lines = out.splitlines()
    assert lines[1].split() == ["role", "task", "reg_data", "th", "alpha", "seed", "trial_id", "sim_layer"]
    assert len([ln for ln in lines if ln.startswith("trial ")]) == 2 * 2 * 2
    assert "trials: 11 (1 fgsm_source, 2 baseline, 8 trial)" in out
    assert "epochs: 22 in all" in out and "rough guess" in out and "at a time" in out
    assert "measured" not in out


def test_plan_counts_the_tune_trials_of_seed_packs(tmp_path, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "packed", "pairs": [{"task": "digits", "reg_data": "digits"}],
        "grid": {"th": [0.2, 0.5], "alpha": [4]}, "seeds": 3, "train": {"width": 4, "epochs": 2, "pack": 4},
        "attacks": {"gaussian": {}}}))
    assert main(["plan", str(spec_path), "--results", str(tmp_path / "out"), "--no-measure"]) == 0
    # 6 regularized trials (2 th x 3 seeds) in packs of 4 and 2, the 3 baselines in one
    assert "seed packs (pack 4): 9 trials as 3 Tune trials" in capsys.readouterr().out


def test_plan_estimates_from_training_steps_measured_here(tmp_path, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "measured", "pairs": [{"task": "digits", "reg_data": "digits"}], "grid": {"alpha": [4]},
        "seeds": 1, "train": {"width": 4, "epochs": 2, "batch_size": 16}, "attacks": {}}))
    assert main(["plan", str(spec_path)]) == 0
    out = capsys.readouterr().out
    [measured] = [line for line in out.splitlines() if line.startswith("measured here: ")]
    # the typical trial's own model and image shape (digits: 8x8 gray), at its batch size
    assert "ResNet18 width 4 on 1x8x8 images, batch 16, 1 CPU thread(s)" in measured
    assert float(measured.split(": ")[-1].split(" ms")[0]) > 0
    assert "the measured per-image time" in out and "rough guess" not in out


def test_plan_of_a_paper_sweep_mentions_the_gpu(tmp_path, capsys):
    results = tmp_path / "out"
    assert main(["plan", str(REPO / "sweeps" / "mnist_grid.yaml"), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "trials: 176" in out
    # the spec's `resources: {cpu: 2, gpu: 0.25}` per trial, and the time estimate is per quarter GPU
    assert "resources per trial: 2 CPU, 0.25 GPU" in out
    [time_line] = [line for line in out.splitlines() if line.startswith("time: ")]
    assert time_line.endswith("on 0.25 GPU each")
    assert not results.exists()


def test_an_evaluation_is_named_by_its_source_model_not_where_the_folder_lives():
    spec = make_spec(attacks={"gaussian": {}, "fgsm_transfer": {}})
    local = [c for c in expand(spec, SWEEP_DIR) if c.role == "trial"][0]
    on_s3 = [c for c in expand(spec, "s3://bucket/runs/grid?endpoint_override=127.0.0.1:9000&region=us-east-1")
             if c.role == "trial"][0]
    assert local.trial_id == on_s3.trial_id and local.fgsm_source != on_s3.fgsm_source
    assert local.eval_id("fgsm_transfer", True) == on_s3.eval_id("fgsm_transfer", True)
    assert local.eval_id("fgsm_transfer", True) != local.eval_id("fgsm_transfer", False)  # the source is in it
