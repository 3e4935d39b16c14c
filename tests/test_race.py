"""The race's round decision (orchestrator.analysis.race) on synthetic per-seed values, the spec's `seeds: {start,
max}` and its one-line refusals. The real racing launch (killed and relaunched) is test_race_launch.py (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from orchestrator.analysis import race
from orchestrator.errors import UserError
from orchestrator.spec.expand import expand, race_start
from orchestrator.spec.load import load_spec


def seeds(clean: float, robust: float, n: int, spread: float = 0.01, seed: int = 0) -> np.ndarray:
    """n seeds of (clean accuracy, accuracy at D) around the given means, drawn from a fixed generator."""
    rng = np.random.default_rng(seed)
    return np.column_stack([clean + spread * rng.standard_normal(n), robust + spread * rng.standard_normal(n)])


BASE = seeds(0.96, 0.40, 5, seed=1)


def fixed(clean: list[float], robust: list[float]) -> np.ndarray:
    return np.column_stack([clean, robust])


# two settings far above A0 whose RD/UD means lie 0.01 apart with a seed spread of 0.02: their rank is open
A = fixed([0.95, 0.96, 0.94], [0.58, 0.62, 0.60])
B = fixed([0.95, 0.94, 0.96], [0.59, 0.63, 0.61])


def test_a_clear_winner_is_decided_and_asks_for_nothing():
    settings = {"mild": seeds(0.95, 0.42, 5, seed=2), "strong": seeds(0.94, 0.70, 5, seed=3)}
    verdict = race.decide(settings, BASE, a0=0.9, level=0.9)
    assert verdict.chosen == "strong" and verdict.decided and verdict.grow == []


def test_a_clearly_out_setting_gets_no_seed_and_the_baseline_none_when_only_the_rank_is_open():
    # a and b: both far above A0 and their RD/UD one spread apart (the rank is open); c: far below A0 (out).
    # Which of a and b has the larger RD/UD does not depend on the baseline at all: it gets no seed.
    settings = {"a": A, "b": B, "c": seeds(0.50, 0.30, 3, seed=6)}
    verdict = race.decide(settings, seeds(0.96, 0.40, 3, spread=0.02, seed=7), a0=0.9, level=0.9)
    assert not verdict.decided
    assert verdict.p_chosen["c"] < race.EPSILON
    assert set(verdict.grow) <= {"a", "b"} and verdict.grow, verdict.values


def test_the_baseline_grows_when_its_spread_keeps_acceptability_open():
    # one setting, precise, whose R0/U0 sits at A0 only through a noisy baseline (3 seeds, spread 0.03)
    settings = {"a": seeds(0.866, 0.60, 8, spread=0.002, seed=8)}
    baseline = seeds(0.96, 0.40, 3, spread=0.03, seed=9)
    verdict = race.decide(settings, baseline, a0=0.9, level=0.9)
    assert not verdict.decided and race.BASELINE in verdict.grow, verdict.values


def test_an_arm_with_fewer_than_two_seeds_grows_first():
    settings = {"a": seeds(0.95, 0.6, 1), "b": seeds(0.95, 0.6, 3)}
    verdict = race.decide(settings, BASE, a0=0.9, level=0.9)
    assert not verdict.decided and verdict.grow == ["a"]


def selection(arms: dict[str, np.ndarray], baseline: np.ndarray) -> race.Selection:
    as_dict = {name: {s: tuple(v) for s, v in enumerate(values)} for name, values in arms.items()}
    return race.Selection(key=("s", "t", "r", "a", "gaussian", "accuracy"), settings=as_dict,
                          baseline_arm="base", baseline={s: tuple(v) for s, v in enumerate(baseline)})


def test_next_round_stops_decided_at_max_or_not_while_a_seed_runs():
    open_ = selection({"a": A, "b": B}, seeds(0.96, 0.4, 3, seed=7))
    step = race.next_round([open_], {"a": 3, "b": 3, "base": 3}, set(), max_seeds=10, a0=0.9, level=0.9)
    assert step.grow and step.stopped is None
    at_max = race.next_round([open_], {"a": 3, "b": 3, "base": 3}, set(), max_seeds=3, a0=0.9, level=0.9)
    assert at_max.grow == [] and at_max.stopped == race.AT_MAX
    running = race.next_round([open_], {"a": 3, "b": 3, "base": 3}, {"a", "b"}, max_seeds=3, a0=0.9, level=0.9)
    assert running.grow == [] and running.stopped is None  # a running seed may still decide it
    clear = selection({"mild": seeds(0.95, 0.42, 5, seed=2), "strong": seeds(0.94, 0.70, 5, seed=3)}, BASE)
    done = race.next_round([clear], {"mild": 5, "strong": 5, "base": 5}, set(), max_seeds=10, a0=0.9, level=0.9)
    assert done.grow == [] and done.stopped == race.DECIDED


def test_next_round_counts_only_the_seeds_it_is_given():
    # the replay's seed orders: the first k seeds of each arm's order count, the others are not trained yet
    sel = selection({"a": seeds(0.95, 0.600, 6, spread=0.02, seed=4),
                     "b": seeds(0.95, 0.610, 6, spread=0.02, seed=5)}, seeds(0.96, 0.4, 6, seed=7))
    order = {"a": [5, 0], "b": [1, 2, 3], "base": [4, 2]}
    settings, baseline = sel.arrays(order)
    assert [len(settings["a"]), len(settings["b"]), len(baseline)] == [2, 3, 2]
    assert settings["a"].tolist() == [list(sel.settings["a"][5]), list(sel.settings["a"][0])]  # those seeds' values


RACE_SPEC = {"name": "r", "pairs": [{"task": "digits", "reg_data": "digits"}],
             "grid": {"points": [{"th": 0.3, "alpha": 1.0}, {"th": 0.3, "alpha": 4.0}]},
             "train": {"width": 4, "epochs": 1}, "attacks": {"gaussian": {"images": 20}}}


def spec_file(tmp_path, **changes):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**RACE_SPEC, **changes}))
    return path


def test_a_race_spec_expands_to_max_seeds_and_starts_with_start_seeds(tmp_path):
    spec = load_spec(spec_file(tmp_path, seeds={"start": 3, "max": 6, "decide": ["gaussian"]}))
    configs = expand(spec, str(tmp_path / "r"))
    assert spec.seed_list == list(range(6)) and len(configs) == 3 * 6
    first = race_start(spec, configs)
    assert len(first) == 3 * 3 and {c.seed for c in first} == {0, 1, 2}
    fixed = load_spec(spec_file(tmp_path, seeds=7))  # a count and a list behave as before
    assert fixed.race is None and fixed.seed_list == list(range(7))
    assert race_start(fixed, expand(fixed, str(tmp_path / "r"))) == expand(fixed, str(tmp_path / "r"))


@pytest.mark.parametrize(("seeds_field", "extra", "says"), [
    ({"start": 1, "max": 5}, {}, "seeds.start: 1"),
    ({"start": 3, "max": 3}, {}, "seeds.max: 3 is not above seeds.start 3"),
    ({"start": 3, "max": 6, "decide": ["fgsm"]}, {}, "seeds.decide[0]: 'fgsm' is not among attacks"),
    ({"start": 3, "max": 6, "first": 2}, {}, "seeds"),
    ({"start": 3, "max": 6}, {"scheduler": "asha"}, "seeds: a race needs scheduler: fifo"),
])
def test_a_bad_race_is_one_line_naming_the_field(tmp_path, seeds_field, extra, says):
    with pytest.raises(UserError) as info:
        load_spec(spec_file(tmp_path, seeds=seeds_field, **extra))
    assert says in str(info.value) and "\n" not in str(info.value)
