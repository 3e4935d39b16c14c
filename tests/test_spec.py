"""Sweep spec loading: the shipped sweeps validate, and every bad input is one line naming file + field, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.plan.resources import check_resources
from orchestrator.spec.expand import expand
from orchestrator.spec.load import load_spec, parse_spec
from orchestrator.spec.schema import SweepSpec
from orchestrator.sweepdir.resume import spec_fingerprint
from pixelreg_core.attacks import resolve

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
name: tiny
pairs:
  - {task: digits, reg_data: digits}
grid: {th: [0.2, 0.8], alpha: [4]}
seeds: 2
train: {width: 4, epochs: 1}
attacks: {gaussian: {}}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def validate(path: Path, capsys) -> tuple[int, str, str]:
    rc = main(["validate", str(path)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("name, expected", [
    ("quickstart.yaml", "ok: 10 trials (1 fgsm_source, 3 baseline, 6 trial)"),
    ("mnist_grid.yaml", "ok: 176 trials (1 fgsm_source, 7 baseline, 168 trial)"),
    ("fashion_grid.yaml", "ok: 176 trials (1 fgsm_source, 7 baseline, 168 trial)"),
    ("cifar10_paper.yaml", "ok: 29 trials (1 fgsm_source, 7 baseline, 21 trial)"),
])
def test_shipped_sweeps_validate(name, expected, capsys):
    rc, out, err = validate(REPO / "sweeps" / name, capsys)
    assert (rc, err) == (0, "")
    assert out.startswith(expected)


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates_through_the_command(path, capsys):
    """Every spec under sweeps/ (sweeps/paper/ included) passes `orchestrator validate`, the user's entry point."""
    rc, out, err = validate(path, capsys)
    assert (rc, err) == (0, "") and out.startswith("ok: ")


PAPER_SETTINGS = {  # spec -> (task, arch, epochs, [(reg_data, th, alpha)]): the authors' reported settings
    "mnist_mnist": ("MNIST", "ResNet18", 20, [("MNIST", 0.2, 4.0)]),
    "mnist_fashion": ("MNIST", "ResNet18", 20, [("FashionMNIST", 0.8, 10.0)]),
    "fashion_mnist": ("FashionMNIST", "ResNet18", 20, [("MNIST", 0.4, 10.0)]),
    "fashion_fashion": ("FashionMNIST", "ResNet18", 20, [("FashionMNIST", 0.8, 10.0)]),
    "cifar10": ("CIFAR10", "ResNet18", 40, [(r, 0.8, 10.0) for r in ("CIFAR10", "CIFAR100", "folder:data/imagenet")]),
    "cifar100": ("CIFAR100", "ResNet34", 60, [(r, 0.8, 10.0) for r in ("CIFAR10", "CIFAR100", "folder:data/imagenet")]),
}


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_sweeps_use_the_authors_settings(name):
    task, arch, epochs, settings = PAPER_SETTINGS[name]
    spec = load_spec(REPO / "sweeps" / "paper" / f"{name}.yaml")
    trials = [cfg for cfg in expand(spec, "results/x") if cfg.role == "trial"]
    assert sorted({(c.reg_data, c.th, c.alpha) for c in trials}) == sorted(settings)
    assert {(c.task, c.arch, c.epochs, c.width) for c in trials} == {(task, arch, epochs, 64)}
    assert spec.seed_list == list(range(7)) and all(c.exact_targets and c.gray == "luma" for c in trials)
    boundary = resolve("boundary", trials[0].attacks["boundary"])
    assert (boundary["steps"], boundary["images"], boundary["criterion"]) == (50, 1000, "prediction")


def test_quickstart_is_the_small_offline_demo():
    spec = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert [(p.task, p.reg_data) for p in spec.pairs] == [("mnist5k", "mnist5k")]
    assert [(p["th"], p["alpha"]) for p in spec.grid_points()] == [(0.2, 0.5), (0.2, 4.0)]
    assert spec.seed_list == [0, 1, 2] and spec.baseline and not spec.download
    assert 4 <= spec.train["width"] <= 8 and spec.train["epochs"] <= 6  # about 6 minutes on 2 CPU cores
    assert {"gaussian", "uniform", "salt_pepper", "fgsm_transfer", "boundary"} <= set(spec.attacks)
    assert (spec.resources.cpu, spec.resources.gpu) == (1.0, 0.0)


def test_good_spec_defaults_and_normalisation(tmp_path):
    spec = load_spec(write(tmp_path, GOOD + "resources: {cpu: 0.5, gpu: 0.25}\nsearch: grid\nscheduler: asha\n"))
    assert spec.grid["alpha"] == [4.0] and isinstance(spec.grid["alpha"][0], float)  # alpha 4 == alpha 4.0
    assert spec.seed_list == [0, 1]
    assert (spec.resources.cpu, spec.resources.gpu) == (0.5, 0.25)
    assert spec.search.type == "grid" and spec.scheduler.type == "asha" and spec.scheduler.grace_period >= 1
    assert (spec.max_failures, spec.fgsm_source_seed, spec.target, spec.range) == (2, 1000, "threshold", "all")


def test_model_dump_round_trips_and_fingerprint(tmp_path):
    spec = load_spec(write(tmp_path, GOOD + "search: {type: grid}\n"))
    again = SweepSpec.model_validate(spec.model_dump())
    assert again.model_dump() == spec.model_dump() and spec_fingerprint(again) == spec_fingerprint(spec)
    moved = load_spec(write(tmp_path, GOOD + "data_root: /elsewhere\nresources: {cpu: 2}\n", "moved.yaml"))
    assert spec_fingerprint(moved) == spec_fingerprint(spec)  # where data lives and the machine are not the spec
    as_list = load_spec(write(tmp_path, GOOD.replace("seeds: 2", "seeds: [0, 1]"), "list.yaml"))
    assert spec_fingerprint(as_list) == spec_fingerprint(spec)
    changed = load_spec(write(tmp_path, GOOD.replace("alpha: [4]", "alpha: [4, 10]"), "changed.yaml"))
    assert spec_fingerprint(changed) != spec_fingerprint(spec)


def test_points_form_and_optuna_shorthand(tmp_path):
    text = GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}",
                        "grid: {points: [{th: 0.2, alpha: 4}, {th: 0.8, alpha: 10}], sim_layer: [null, 1]}")
    spec = load_spec(write(tmp_path, text))
    assert len(spec.grid_points()) == 4
    assert spec.grid_field_names() == ["sim_layer", "th", "alpha"]
    optuna = load_spec(write(tmp_path, GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "search: optuna"), "o.yaml"))
    assert optuna.search.type == "optuna" and optuna.search.trials >= 1 and optuna.search.objective.attack == "gaussian"


def test_scientific_notation_is_a_number(tmp_path):
    spec = load_spec(write(tmp_path, GOOD.replace("epochs: 1}", "epochs: 1, lr: 1e-3}")))
    assert spec.train["lr"] == pytest.approx(0.001)


# (spec text, the start of the error after "error: <file>: ")
BAD = [
    ("name: [unclosed\n", "line 2, column 1: invalid YAML (expected ',' or ']'"),
    ("name: tiny\npairs: [a\n  b: c\n", "line 3, column 4: invalid YAML"),
    ("- name: tiny\n- pairs: []\n", "the spec must be a mapping"),
    ("", "is empty"),
    (GOOD + "colour: red\n", "colour: unknown key; allowed keys: name, data_root"),
    (GOOD + "resources: {cpu: 1, gpus: 1}\n", "resources.gpus: unknown key; allowed keys: cpu, gpu"),
    (GOOD.replace("pairs:\n  - {task: digits, reg_data: digits}", "pairs:\n  - {task: digits, reg: digits}"),
     "pairs[0].reg: unknown key"),
    (GOOD + "name2: x\n", "name2: unknown key"),
    (GOOD.replace("name: tiny", "name: 123"), "name: got 123"),
    (GOOD.replace("name: tiny", "name: my sweep!"), "name: 'my sweep!' is not a plain name"),
    (GOOD.replace("name: tiny", "name: ../up"), "name: '../up' is not a plain name"),
    (GOOD.replace("name: tiny\n", ""), "name: is required"),
    (GOOD.replace("th: [0.2, 0.8]", "th: [0.2, 0.8, 1.5]"), "grid.th[2]: 1.5 is outside (0, 1)"),
    (GOOD.replace("th: [0.2, 0.8]", "th: [0, 0.8]"), "grid.th[0]: 0.0 is outside (0, 1)"),
    (GOOD.replace("alpha: [4]", "alpha: [4, -1]"), "grid.alpha[1]: -1.0 is negative"),
    (GOOD.replace("alpha: [4]", "alpha: [.nan]"), "grid.alpha[0]: nan is not a finite number"),
    (GOOD.replace("th: [0.2, 0.8]", "th: [.inf]"), "grid.th[0]: inf is not a finite number"),
    (GOOD.replace("epochs: 1}", "epochs: 1, lr: -.inf}"), "train.lr: -inf is not a finite number"),
    (GOOD.replace("alpha: [4]", "alpha: []"), "grid.alpha: got []; use a non-empty list"),
    (GOOD.replace("alpha: [4]", "alpha: 4"), "grid.alpha: got 4; use a non-empty list"),
    (GOOD.replace("alpha: [4]", "alpha: [four]"), "grid.alpha[0]: got 'four'"),
    (GOOD.replace("alpha: [4]", "alpha: [4, 4]"), "grid.alpha[1]: 4.0 is listed twice"),
    (GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "grid: {}"), "grid: is empty"),
    (GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "grid: {th: [0.2]}"), "grid.alpha: is required"),
    (GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "seeds: 3\n").replace("seeds: 2\n", ""),
     "grid: is required for search grid"),
    (GOOD.replace("alpha: [4]", "alpha: [4], thresh: [0.3]"), "grid.thresh: unknown field 'thresh' in grid"),
    (GOOD.replace("alpha: [4]", "alpha: [4], task: [MNIST]"), "grid.task: unknown field 'task' in grid"),
    (GOOD.replace("alpha: [4]", "alpha: [4], sim_layer: [null, 7]"), "grid.sim_layer: is 7; use null"),
    (GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "grid: {points: [{th: 0.2, alpha: 4}, {th: 0.8}]}"),
     "grid.points[1]: has fields"),
    (GOOD.replace("pairs:\n  - {task: digits, reg_data: digits}", "pairs: []"), "pairs: is empty"),
    (GOOD.replace("pairs:\n  - {task: digits, reg_data: digits}", "pairs: {task: digits}"), "pairs: got"),
    (GOOD.replace("{task: digits, reg_data: digits}", "{task: mnist, reg_data: digits}"),
     "pairs[0].task: unknown dataset 'mnist' (did you mean 'MNIST'?)"),
    (GOOD.replace("{task: digits, reg_data: digits}", "{task: digits, reg_data: ImageNet}"),
     "pairs[0].reg_data: unknown dataset 'ImageNet'"),
    (GOOD.replace("{task: digits, reg_data: digits}", "{task: 'folder:imgs', reg_data: digits}"),
     "pairs[0].task: 'folder:imgs' is an unlabeled image folder; use it as reg_data only"),
    (GOOD.replace("{task: digits, reg_data: digits}", "{task: digits, reg_data: digits}\n"
                                                       "  - {task: digits, reg_data: digits}"),
     "pairs[1]: digits x digits is listed twice"),
    (GOOD.replace("seeds: 2", "seeds: 0"), "seeds: 0 seeds; use a count > 0"),
    (GOOD.replace("seeds: 2", "seeds: -3"), "seeds: -3 seeds; use a count > 0"),
    (GOOD.replace("seeds: 2", "seeds: []"), "seeds: got []"),
    (GOOD.replace("seeds: 2", "seeds: [0, 1, 1]"), "seeds[2]: seed 1 is listed twice"),
    (GOOD.replace("seeds: 2", "seeds: [0, -1]"), "seeds[1]: got -1"),
    (GOOD.replace("seeds: 2", "seeds: two"), "seeds: got 'two'"),
    (GOOD.replace("epochs: 1}", "epochs: '1'}"), "train.epochs: got '1'; expected int"),
    (GOOD.replace("epochs: 1}", "epochs: 1.5}"), "train.epochs: got 1.5; expected int"),
    (GOOD.replace("epochs: 1}", "epochs: 0}"), "train.epochs: is 0; must be a whole number >= 1"),
    (GOOD.replace("width: 4", "width: 0"), "train.width: is 0; must be a whole number >= 1"),
    (GOOD.replace("epochs: 1}", "epochs: 1, arch: VGG}"), "train.arch: is 'VGG'; use one of ResNet18"),
    (GOOD.replace("epochs: 1}", "epochs: 1, epoch: 3}"), "train.epoch: unknown field 'epoch' in train"),
    (GOOD.replace("epochs: 1}", "epochs: 1, alpha: 3}"), "train.alpha: unknown field 'alpha' in train"),
    (GOOD.replace("epochs: 1}", "epochs: 1, grayscale: yes please}"), "train.grayscale: got 'yes please'"),
    (GOOD + "target: neural\n", "target: 'neural' is not a target; use one of threshold"),
    (GOOD + "range: middle\n", "range: 'middle' is not a range"),
    (GOOD + "range: double\n", "th2: range double needs th2"),
    (GOOD + "th2: 1.2\n", "th2: 1.2 is outside (0, 1)"),
    (GOOD + "download: maybe\n", "download: got 'maybe'"),
    (GOOD + "baseline: 1\n", "baseline: got 1"),
    (GOOD + "resources: {cpu: 0}\n", "resources.cpu: got 0; should be greater than 0"),
    (GOOD + "resources: {gpu: -1}\n", "resources.gpu: got -1; should be greater than or equal to 0"),
    (GOOD + "resources: {gpu: 1.5}\n", "resources.gpu: 1.5 GPUs: above 1 a trial needs a whole number"),
    (GOOD + "resources: 2\n", "resources: got 2; should be a mapping"),
    (GOOD + "max_failures: -1\n", "max_failures: got -1"),
    (GOOD + "search: random\n", "search.type: 'random' is not a search; use grid or optuna"),
    (GOOD + "search: {type: grid, trials: 5}\n", "search.trials: only for search type optuna"),
    (GOOD + "search: optuna\n", "grid: search optuna draws th and alpha"),
    (GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "search: {type: optuna, th: [0.5, 0.2]}"),
     "search.th: [0.5, 0.2] is not a range"),
    (GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "search: {type: optuna, objective: {attack: boundary}}"),
     "search.objective.attack: 'boundary' is not among attacks"),
    (GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "search: {type: optuna, start: [{th: 0.2, alpha: 40}]}"),
     "search.start[0].alpha: 40.0 lies outside search.alpha"),
    (GOOD + "scheduler: {type: asha, grace_period: 5}\n", "scheduler.grace_period: 5 is more than the 1 epochs"),
    (GOOD + "scheduler: {type: fifo, grace_period: 5}\n", "scheduler.grace_period: only for scheduler type asha"),
    (GOOD.replace("attacks: {gaussian: {}}", "attacks: {gaussian: {}, laser: {}}"), "attacks.laser: unknown attack"),
    (GOOD.replace("attacks: {gaussian: {}}", "attacks: {gaussian: {colour: 3}}"),
     "attacks.gaussian.colour: unknown option"),
    (GOOD.replace("attacks: {gaussian: {}}", "attacks: {gaussian: 3}"), "attacks.gaussian: got 3"),
    (GOOD.replace("attacks: {gaussian: {}}", "attacks: {preset: everything}"), "attacks.preset: 'everything'"),
    (GOOD.replace("attacks: {gaussian: {}}", "attacks: {fgsm_transfer: {}}") + "fgsm_source_seed: 1\n",
     "fgsm_source_seed: 1 is also in seeds"),
    (GOOD + "seeds: 3\n", "line 8, column 1: invalid YAML (duplicate key 'seeds')"),
]


@pytest.mark.parametrize("text, expected", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_input_is_one_line_naming_file_and_field(text, expected, tmp_path, capsys):
    path = write(tmp_path, text)
    rc, out, err = validate(path, capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}: {expected}"), err


def test_missing_file(tmp_path, capsys):
    rc, _, err = validate(tmp_path / "nope.yaml", capsys)
    assert rc == 2 and err.startswith(f"error: {tmp_path / 'nope.yaml'}: no such file")


def test_corruptions_without_the_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """The lean install has no imagecorruptions: a spec that generates corruptions stops at validate (and so at
    launch, before Ray) naming the extra; a CIFAR-10-C folder needs no library."""
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # what find_spec sees when it is not installed
    path = write(tmp_path, GOOD.replace("attacks: {gaussian: {}}", "attacks: {gaussian: {}, corruptions: {}}"))
    rc, out, err = validate(path, capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {path}: attacks.corruptions: generating corruptions needs the imagecorruptions "
                          "package"), err
    assert "pip install -e '.[corruptions]'" in err
    rc, out, err = validate(write(tmp_path, GOOD, "plain.yaml"), capsys)
    assert rc == 0 and err == ""


def test_yaml_is_never_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = write(tmp_path, GOOD + f"extra: !!python/object/apply:os.system ['touch {marker}']\n")
    rc, _, err = validate(path, capsys)
    assert rc == 2 and "invalid YAML" in err and "line 8" in err
    assert not marker.exists()


def test_parse_spec_accepts_a_mapping():
    spec = parse_spec(yaml.safe_load(GOOD), "inline")
    assert spec.source == "inline" and spec.name == "tiny"
    with pytest.raises(UserError, match=r"^inline: grid.th\[0\]: 2.0 is outside"):
        parse_spec({**yaml.safe_load(GOOD), "grid": {"th": [2], "alpha": [1]}}, "inline")


def test_check_resources_refuses_a_missing_gpu(tmp_path):
    cpu_only = load_spec(write(tmp_path, GOOD))
    check_resources(cpu_only, available_gpus=0)  # gpu 0 asks for nothing
    gpu = load_spec(write(tmp_path, GOOD + "resources: {gpu: 0.25}\n", "gpu.yaml"))  # validate passes anywhere
    with pytest.raises(UserError, match=r"gpu.yaml: resources.gpu: 0.25 GPU per trial asked for, but no CUDA GPU"):
        check_resources(gpu, available_gpus=0)
    check_resources(gpu, available_gpus=1)
    with pytest.raises(UserError, match="only 1 available"):
        check_resources(load_spec(write(tmp_path, GOOD + "resources: {gpu: 2}\n", "two.yaml")), available_gpus=1)


def test_check_resources_detects_this_machine(tmp_path):
    import torch

    gpu = load_spec(write(tmp_path, GOOD + "resources: {gpu: 1}\n"))
    if torch.cuda.is_available():
        check_resources(gpu)
    else:
        with pytest.raises(UserError, match="no CUDA GPU"):
            check_resources(gpu)


def test_spec_modules_import_without_torch_or_ray(tmp_path):
    """The CLI must stay fast: building its parser imports every command module, and none of them may import a
    heavy library at module level. `validate` refuses a spec too big to expand without importing any (that answer
    is the one a typo such as seeds: 100000000 gets, at once); a spec it accepts needs torch for the attack
    registry's options, never Ray."""
    def heavy(libraries: set[str]) -> str:
        return f"heavy = {libraries!r} & set(sys.modules); assert not heavy, heavy"

    everything = {"torch", "ray", "matplotlib", "foolbox"}
    subprocess.run([sys.executable, "-c", f"import sys; from orchestrator import cli; cli.build_parser(); "
                                          f"{heavy(everything)}"], check=True, cwd=REPO)
    huge = write(tmp_path, GOOD.replace("seeds: 2", "seeds: 100000000"), "huge.yaml")
    for path, rc, libraries in ((huge, 2, everything), (write(tmp_path, GOOD), 0, {"ray", "matplotlib"})):
        code = f"import sys; from orchestrator import cli; assert cli.main(['validate', {str(path)!r}]) == {rc}; "
        subprocess.run([sys.executable, "-c", code + heavy(libraries)], check=True, cwd=REPO, capture_output=True)


def test_the_th_bounds_are_one_rule_for_the_config_the_grid_th2_and_the_search(tmp_path, monkeypatch, capsys):
    """targets/ranges.py holds the bounds: narrowed there, every place that checks a threshold follows."""
    from pixelreg_core.config import ConfigError, TrialConfig
    from pixelreg_core.targets import ranges

    assert TrialConfig(th=0.6, alpha=1.0).validate()
    monkeypatch.setattr(ranges, "TH_BOUNDS", (0.0, 0.5))
    with pytest.raises(ConfigError, match="^th: "):
        TrialConfig(th=0.6, alpha=1.0).validate()
    search = GOOD.replace("grid: {th: [0.2, 0.8], alpha: [4]}", "search: {type: optuna, th: [0.1, 0.6]}")
    for text, expected in ((GOOD, "grid.th[1]: 0.8 is outside"),
                           (GOOD.replace("0.8", "0.4") + "th2: 0.6\n", "th2: 0.6 is outside"),
                           (search, "search.th: [0.1, 0.6] is not a range")):
        rc, _, err = validate(write(tmp_path, text), capsys)
        assert rc == 2 and expected in err, err


def test_a_spec_beyond_the_trial_limit_is_refused_at_once_before_expanding(tmp_path, capsys):
    """seeds: 100000000 (a typo away from 10) expands to hours and hundreds of GB: the count comes first, and the
    refusal names the field and the count (fast: see test_spec_modules_import_without_torch_or_ray, and
    benchmarks/bench_validate.py for the time); --max-trials raises the limit."""
    path = write(tmp_path, GOOD.replace("seeds: 2", "seeds: 100000000"))
    rc, out, err = validate(path, capsys)
    assert rc == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert "seeds: 100,000,000 seeds make up to" in err and "more than the limit of 100,000" in err
    assert "--max-trials" in err
    small = write(tmp_path, GOOD, "small.yaml")  # 2 points x 2 seeds: 4 trials, 2 baselines
    assert main(["validate", str(small), "--max-trials", "3"]) == 2
    assert "more than the limit of 3" in capsys.readouterr().err
    assert main(["validate", str(small), "--max-trials", "20"]) == 0
    assert "ok: 6 trials" in capsys.readouterr().out
    many = write(tmp_path, GOOD.replace("th: [0.2, 0.8]", f"th: {[round(0.001 * i, 3) for i in range(1, 999)]}")
                 .replace("alpha: [4]", f"alpha: {list(range(1, 201))}"), "grid.yaml")
    assert main(["plan", str(many), "--no-measure"]) == 2
    assert "grid: 199,600 grid points make up to" in capsys.readouterr().err
