"""Transferred PGD (pixelreg_core/attacks/pgd.py): a sweep with it trains the source first, a tiny trial runs it,
accuracy falls with eps, and the adversarials stay in the eps ball and in [0, 1]."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import TINY_TRAIN, tiny, tiny_spec, torch_threads

from benchmarks.fit import quick_fit
from orchestrator.errors import UserError
from orchestrator.spec.expand import expand
from orchestrator.spec.load import parse_spec
from pixelreg_core import attacks
from pixelreg_core.attacks import pgd
from pixelreg_core.attacks.accuracy import accuracy
from pixelreg_core.attacks.base import eps_list
from pixelreg_core.data.bundle import prepare_data
from pixelreg_core.model import load_checkpoint, save_checkpoint
from pixelreg_core.results import checkpoint_path
from pixelreg_core.trial import run_trial

EPS = [0.0, 0.15, 0.3, 0.5]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A source fitted in seconds (benchmarks/fit.py) and a model trained and evaluated by a real trial (digits,
    width 4), the evaluated one attacked by transferred PGD from the source."""
    out = tmp_path_factory.mktemp("pgd")
    source_cfg = tiny(seed=1000, alpha=0.0, role="fgsm_source", train_images=None, attacks={})
    cfg = tiny(seed=0, alpha=0.0, role="baseline", epochs=3, train_images=None,
               fgsm_source=checkpoint_path(out, source_cfg.trial_id),
               attacks={"pgd_transfer": {"eps": EPS, "images": 96}})
    with torch_threads(1):
        source = quick_fit(source_cfg, prepare_data(source_cfg), 150)
        save_checkpoint(source, source_cfg, cfg.fgsm_source)
        run_trial(cfg, out)
    return out, cfg, source_cfg


def test_a_sweep_with_pgd_trains_its_source_first(tmp_path):
    spec = parse_spec(tiny_spec(attacks={"pgd_transfer": {"images": 20}}))
    trials = expand(spec, tmp_path / "tiny")
    sources = [c for c in trials if c.role == "fgsm_source"]
    assert len(sources) == 1 and trials[0] is sources[0]  # first: the others read its checkpoint
    assert "pgd_transfer" not in sources[0].attacks  # never attacked by itself
    path = checkpoint_path(tmp_path / "tiny", sources[0].trial_id)
    assert all(c.fgsm_source == path for c in trials[1:])
    assert attacks.source_attacks(["gaussian", "pgd_transfer", "fgsm_transfer"]) == ["pgd_transfer",
                                                                                      "fgsm_transfer"]
    # the source's seed must stay out of the evaluated seeds: the flag, not the name, triggers the check
    with pytest.raises(UserError, match="fgsm_source_seed: 0 is also in seeds; the source model of pgd_transfer"):
        parse_spec(tiny_spec(attacks={"pgd_transfer": {"images": 20}}, fgsm_source_seed=0))
    parse_spec(tiny_spec(attacks={"gaussian": {}}, fgsm_source_seed=0))  # no transferred attack: no source
    # its image count is checked against the test set before anything trains, like every attack's
    with pytest.raises(UserError, match="attacks.pgd_transfer.images: is 500 but the test set has only 40"):
        parse_spec(tiny_spec(attacks={"pgd_transfer": {}}, train={**TINY_TRAIN, "test_images": 40}))


def test_pgd_accuracy_falls_with_eps(trained):
    out, cfg, _ = trained
    rows = pd.read_parquet(out / "robustness").query("trial_id == @cfg.trial_id and attack == 'pgd_transfer'")
    assert rows["eps"].tolist() == EPS and (rows["images"] == 96).all() and (rows["metric"] == "accuracy").all()
    acc = rows["value"].tolist()
    trials = pd.read_parquet(out / "trials").set_index("trial_id")
    assert acc[0] == pytest.approx(accuracy_on_subset(out, cfg))  # eps 0: the clean images
    assert acc[0] > 0.4 and acc[-1] < acc[0] - 0.2  # a strong transferred attack on a model that learned
    assert acc[-1] <= acc[1] <= acc[0]
    assert trials.loc[cfg.trial_id, "status"] == "ok"


def accuracy_on_subset(out, cfg) -> float:
    model, _ = load_checkpoint(checkpoint_path(out, cfg.trial_id))
    data = prepare_data(cfg)
    selected = pgd.select(model, data.test_x, data.test_y, attacks.AttackContext(cfg), {"images": 96})
    return accuracy(model, selected.x, selected.y)


def test_adversarials_stay_in_the_eps_ball_and_in_range(trained):
    out, cfg, source_cfg = trained
    source, _ = load_checkpoint(checkpoint_path(out, source_cfg.trial_id))
    data = prepare_data(cfg)
    x, y = data.test_x[:64], data.test_y[:64]
    for random_start in (False, True):
        adv = pgd.adversarials(source, x, y, 0.1, steps=5, rel_stepsize=0.5, random_start=random_start, seed=3)
        assert adv.shape == x.shape and not torch.equal(adv, x)
        assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        # the steps climb the source's loss: it gets (much) worse on them
        assert accuracy(source, adv, y) < accuracy(source, x, y) - 0.2


def test_pgd_options_and_eps_range():
    demo, paper = attacks.resolve("pgd_transfer", {}), attacks.resolve("pgd_transfer", {"preset": "paper"})
    assert (demo["steps"], demo["random_start"], paper["steps"], paper["random_start"]) == (10, False, 40, True)
    assert paper["rel_stepsize"] == pytest.approx(0.01 / 0.3)
    record = attacks.get("pgd_transfer")
    assert eps_list(record, demo, "MNIST")[-1] == pytest.approx(0.5)  # the datasets' default rule
    assert eps_list(record, demo, "CIFAR10")[-1] == pytest.approx(0.1)
    assert record.source is not None and attacks.attack_preset("full")["pgd_transfer"] == {"preset": "paper"}
