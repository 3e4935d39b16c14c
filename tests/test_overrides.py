"""Command-line overrides (`seeds=5 train.epochs=2`): applied before validation, checked like the file, blamed on
the override when wrong, and recorded as the spec that runs (orchestrator.spec.overrides). No Ray here: the launch
with an override is in tests/test_launch.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import build_parser, main
from orchestrator.errors import UserError
from orchestrator.spec.load import load_spec, parse_spec, parse_yaml
from orchestrator.spec.overrides import changes
from orchestrator.sweepdir.resume import spec_fingerprint
from pixelreg_core.config import demo_attacks

GOOD = """\
# a comment the effective spec does not carry
{name: tiny, pairs: [{task: digits, reg_data: digits}], grid: {th: [0.2, 0.8], alpha: [4]}, seeds: 2,
 train: {width: 4, epochs: 1, lr: 1e-2}, attacks: {gaussian: {images: 20}}, search: grid}
"""


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD)
    return path


def test_overrides_set_dotted_keys_as_yaml_values(good):
    spec = load_spec(good, ["seeds=5", "train.epochs=2", "grid.alpha=[1,4]", "attacks.gaussian.images=30",
                            "train.lr=1e-3", "resources.cpu=2"])
    assert spec.seed_list == [0, 1, 2, 3, 4]
    assert spec.train["epochs"] == 2 and spec.train["width"] == 4 and spec.train["lr"] == 0.001
    assert spec.grid["alpha"] == [1.0, 4.0] and spec.grid["th"] == [0.2, 0.8]
    assert spec.attacks == {"gaussian": {"images": 30}}
    assert spec.resources.cpu == 2.0


def test_the_recorded_text_is_the_effective_spec(good):
    """spec.text (what the sweep folder records) reads back as the same spec, with the same fingerprint; without
    overrides it is the file itself, comments included."""
    assert load_spec(good).text == GOOD
    spec = load_spec(good, ["seeds=3", "name=other", "train.epochs=2"])
    assert spec.text.startswith(f"# {good} with overrides: seeds=3 name=other train.epochs=2\n")
    again = parse_spec(parse_yaml(spec.text, "spec.yaml"), "spec.yaml")
    assert spec_fingerprint(again) == spec_fingerprint(spec)
    assert again.name == "other" and again.seed_list == [0, 1, 2] and again.train["lr"] == 0.01
    assert spec_fingerprint(spec) != spec_fingerprint(load_spec(good))


def test_a_missing_section_starts_from_its_default_and_a_shorthand_opens(tmp_path, good):
    """attacks.gaussian.images on a spec without attacks changes one option of the demo attacks, not the set;
    `search: grid` written as a string takes search.type; null removes a key."""
    path = tmp_path / "noattacks.yaml"
    path.write_text(GOOD.replace(" attacks: {gaussian: {images: 20}},", ""))
    spec = load_spec(path, ["attacks.gaussian.images=50"])
    assert set(spec.attacks) == set(demo_attacks()) and spec.attacks["gaussian"]["images"] == 50
    spec = load_spec(good, ["search.type=optuna", "search.trials=3", "grid=null"])
    assert spec.search.type == "optuna" and spec.search.trials == 3 and spec.grid is None


@pytest.mark.parametrize("override, expected", [
    ("seedz=3", "override seedz=3: seedz: unknown key; allowed keys: name, data_root, download, pairs,"),
    ("resources.gpux=1", "override resources.gpux=1: resources.gpux: unknown key; allowed keys: cpu, gpu"),
    ("train.epochz=2", "override train.epochz=2: train.epochz: unknown field 'epochz' in train; allowed: "),
    ("seeds=-1", "override seeds=-1: seeds: -1 seeds; use a count > 0"),
    ("train.epochs='2'", "override train.epochs='2': train.epochs: got '2'; expected int"),
    ("grid.th=[0.2, 1.5]", "override grid.th=[0.2, 1.5]: grid.th"),
    ("attacks.gaussian.imagez=3", "override attacks.gaussian.imagez=3: attacks.gaussian.imagez"),
    ("grid.alpha=[1,4", "override grid.alpha=[1,4: line 1, column 5: invalid YAML"),
    ("name.first=x", "override name.first=x: name is 'tiny' in the spec, not a mapping; set name as a whole"),
    ("=3", "override '=3': not KEY=VALUE; write a dotted spec key and a YAML value"),
])
def test_a_bad_override_is_one_line_naming_it(override, expected, good, capsys):
    assert main(["validate", str(good), override]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and err.startswith(f"error: {expected}"), err


def test_an_error_outside_every_override_names_the_file_and_its_overrides(good, capsys):
    """search.type=optuna alone leaves the file's grid in place: the error is the grid's, said with the override."""
    assert main(["validate", str(good), "search.type=optuna"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {good} (with overrides search.type=optuna): grid: search optuna draws"), err


def test_overrides_may_follow_the_options_and_each_command_takes_them(good, tmp_path, capsys):
    assert main(["validate", str(good), "seeds=4"]) == 0
    assert "ok: 12 trials (4 baseline, 8 trial)" in capsys.readouterr().out
    assert main(["plan", str(good), "--no-measure", "--results", str(tmp_path), "seeds=1", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("trial ")]) == 2
    parser = build_parser()
    args = parser.parse_args(["launch", str(good), "seeds=3", "--results", str(tmp_path)])
    assert args.overrides == ["seeds=3"]
    args = parser.parse_args(["evaluate", str(good), "attacks.gaussian.images=10"])
    assert args.overrides == ["attacks.gaussian.images=10"]
    with pytest.raises(SystemExit):
        main(["plan", str(good), "--no-measure", "--bogus"])
    assert main(["validate", "seeds=4"]) == 2
    assert "no spec file among seeds=4" in capsys.readouterr().err


def test_evaluate_offers_only_what_it_does():
    """`evaluate` adds to stored models: it never deletes, so it has no --fresh (launch has)."""
    sub = build_parser()._subparsers._group_actions[0].choices
    evaluate = {o for a in sub["evaluate"]._actions for o in a.option_strings}
    launch = {o for a in sub["launch"]._actions for o in a.option_strings}
    assert "--fresh" in launch and "--fresh" not in evaluate
    assert launch - evaluate == {"--fresh"}


def test_changes_name_dotted_keys():
    before = yaml.safe_load(GOOD)
    after = {**before, "seeds": 4, "train": {**before["train"], "epochs": 2}, "search": {"type": "optuna"}}
    del after["grid"]
    assert changes(before, after) == ["seeds: 4 (was 2)", "train.epochs: 2 (was 1)",
                                      "search: {type: optuna} (was grid)", "grid: removed"]
    assert changes(before, before) == []


def test_load_spec_without_overrides_is_unchanged(good):
    with pytest.raises(UserError, match="seeds: -1 seeds"):
        load_spec(good, ["seeds=-1"])
    assert load_spec(good).seed_list == [0, 1]
