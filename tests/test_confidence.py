"""orchestrator.analysis.confidence: the intervals cover, p_chosen means what it says, the rule is select_best's.

The simulations draw synthetic seeds from known normal distributions, so the true ratios and the true choice are
known. They use a fixed seed (deterministic) and tolerances from the binomial spread of the repetitions, not from
one run's outcome.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.analysis.confidence import _apply_rule, choice_confidence


def _seeds(rng, mean, sd, n, rho=0.5):
    """n seeds of (clean accuracy, value at D) from a bivariate normal: a seed good clean tends to be good at D."""
    cov = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
    return rng.multivariate_normal(mean, cov, n)


@pytest.mark.parametrize("n", [3, 7])
def test_intervals_cover_the_true_ratios(n):
    """The nominal 90% intervals of R0/U0 and RD/UD cover the true ratios in 85-95% of repetitions, at 3 seeds
    (where a bootstrap of the 3 values would cover far less) and at 7. Each repetition draws the spreads of the
    setting and of the baseline anew (equal or up to 4x apart), so the check is not of one lucky configuration.
    500 repetitions: one binomial standard error is 1.3 points, so 85-95% holds a correct method's ~90% with room."""
    rng = np.random.default_rng(20261207)
    truth_r, truth_u = np.array([0.88, 0.62]), np.array([0.955, 0.40])
    reps, covered = 500, np.zeros(2)
    for _ in range(reps):
        setting = _seeds(rng, truth_r, rng.uniform([0.005, 0.02], [0.02, 0.08]), n)
        baseline = _seeds(rng, truth_u, rng.uniform([0.005, 0.02], [0.02, 0.08]), n)
        c = choice_confidence([setting], baseline, a0=0.9, draws=1000, seed=int(rng.integers(2**31)))
        covered += [c.r0u0_low[0] <= truth_r[0] / truth_u[0] <= c.r0u0_high[0],
                    c.rdud_low[0] <= truth_r[1] / truth_u[1] <= c.rdud_high[0]]
    coverage = covered / reps
    assert ((coverage >= 0.85) & (coverage <= 0.95)).all(), coverage


def test_p_chosen_is_calibrated():
    """Of the settings that get p_chosen between 0.8 and 0.97, the share that the rule truly chooses (on the true
    means) matches their mean p_chosen.

    Why this is a fair check: calibration holds on average over the studies one could meet, so the studies are
    drawn from a wide, flat range around the decision (true R0/U0 uniform on 0.86-0.96 across the 0.9 cut, true
    RD/UD uniform on 0.9-1.6, the spreads uniform over a range), three settings against one baseline at 3 seeds: the
    choice is open in many studies, clear in others, and no study is picked after seeing its p_chosen. Tolerance:
    3 binomial standard errors either way, plus 0.05 on the conservative side only, because Welch's t, which the
    method gives each ratio, is slightly conservative at 3 seeds (its df is estimated): the true share comes out
    up to ~0.04 above the stated p (measured on 1,500 studies), never below. Overconfidence fails the test."""
    rng = np.random.default_rng(7)
    stated, truly = [], []
    for _ in range(500):
        u = np.array([rng.uniform(0.93, 0.97), rng.uniform(0.3, 0.5)])
        r0u0, rdud = rng.uniform(0.86, 0.96, 3), rng.uniform(0.9, 1.6, 3)

        def spread():
            return rng.uniform([0.005, 0.02], [0.025, 0.06])

        baseline = _seeds(rng, u, spread(), 3)
        settings = [_seeds(rng, [a * u[0], b * u[1]], spread(), 3) for a, b in zip(r0u0, rdud, strict=True)]
        c = choice_confidence(settings, baseline, a0=0.9, draws=1000, seed=int(rng.integers(2**31)))
        best = _apply_rule(((r0u0 >= 0.9) & (rdud > 1))[None], rdud[None], r0u0[None])[0]  # the rule on the true means
        stated += list(c.p_chosen)
        truly += [best == i for i in range(3)]
    stated, truly = np.array(stated), np.array(truly)
    near = (stated >= 0.8) & (stated <= 0.97)
    p, share, m = stated[near].mean(), truly[near].mean(), near.sum()
    se = math.sqrt(p * (1 - p) / m)
    assert m >= 100, m
    assert p - 3 * se <= share <= p + 3 * se + 0.05, (p, share, m)


def test_the_rule_on_fixed_means_is_select_bests():
    """Seeds without spread leave nothing open: p_chosen is 1 for the setting the paper's rule picks on the means
    and 0 elsewhere; an acceptable setting needs both R0/U0 >= A0 and RD/UD > 1."""
    base = [[0.95, 0.40]] * 3
    not_acceptable = [[0.80, 0.90]] * 3          # R0/U0 0.84: the highest RD/UD, but below A0
    lower = [[0.90, 0.60]] * 3                   # RD/UD 1.5
    higher = [[0.88, 0.70]] * 3                  # RD/UD 1.75: chosen
    c = choice_confidence([not_acceptable, lower, higher], base, a0=0.9)
    assert c.p_chosen.tolist() == [0.0, 0.0, 1.0] and c.p_none == 0.0
    assert c.p_acceptable.tolist() == [0.0, 1.0, 1.0]
    assert c.rdud_low[2] == pytest.approx(1.75) and c.rdud_high[2] == pytest.approx(1.75)
    # Ties (exact equal ratios: with real seeds, only by accident) break as select_best's: the larger R0/U0,
    # then the first given (select_best's order: smaller alpha, then smaller Th).
    acceptable = np.array([[True, True, True]])
    assert _apply_rule(acceptable, np.array([[1.5, 1.5, 1.2]]), np.array([[0.92, 0.95, 0.99]])).tolist() == [1]
    assert _apply_rule(acceptable, np.array([[1.5, 1.5, 1.2]]), np.array([[0.95, 0.95, 0.99]])).tolist() == [0]
    assert _apply_rule(~acceptable, np.array([[1.5, 1.5, 1.2]]), np.array([[0.95, 0.95, 0.99]])).tolist() == [-1]
    none = choice_confidence([not_acceptable], base, a0=0.9)
    assert none.p_chosen.tolist() == [0.0] and none.p_none == 1.0


def test_an_open_choice_and_a_clear_one():
    """Two settings a seed's noise apart split p_chosen; one far ahead takes it. The probabilities and p_none sum
    to 1, every interval holds the ratio of the seed means, and the same input gives the same numbers."""
    rng = np.random.default_rng(3)
    base = _seeds(rng, [0.955, 0.40], [0.015, 0.03], 3)
    a = _seeds(rng, [0.90, 0.60], [0.015, 0.03], 3)
    b = _seeds(rng, [0.90, 0.61], [0.015, 0.03], 3)
    c = choice_confidence([a, b], base, a0=0.9)
    assert 0.05 < c.p_chosen[0] < 0.95 and 0.05 < c.p_chosen[1] < 0.95
    assert c.p_chosen.sum() + c.p_none == pytest.approx(1.0)
    for i, s in enumerate((a, b)):
        assert c.r0u0_low[i] <= s[:, 0].mean() / base[:, 0].mean() <= c.r0u0_high[i]
        assert c.rdud_low[i] <= s[:, 1].mean() / base[:, 1].mean() <= c.rdud_high[i]
    again = choice_confidence([a, b], base, a0=0.9)
    assert again.p_chosen.tolist() == c.p_chosen.tolist() and again.rdud_low.tolist() == c.rdud_low.tolist()
    far = _seeds(rng, [0.95, 0.80], [0.005, 0.01], 3)
    assert choice_confidence([a, far], base, a0=0.9).p_chosen[1] > 0.99


def test_one_seed_gives_no_interval():
    """A group with a single seed has no spread: no interval for it and no p_chosen for the selection, and the
    note says which group; the other settings still get their intervals."""
    base = [[0.95, 0.40], [0.96, 0.42], [0.94, 0.41]]
    two = [[0.90, 0.60], [0.91, 0.62]]
    c = choice_confidence([two, [[0.9, 0.6]]], base, a0=0.9)
    assert "setting 1 has 1 seed" in c.note
    assert np.isfinite([c.r0u0_low[0], c.rdud_high[0]]).all() and np.isnan([c.r0u0_low[1], c.rdud_high[1]]).all()
    assert np.isnan(c.p_chosen).all() and math.isnan(c.p_none)
    lone = choice_confidence([two], base[:1], a0=0.9)
    assert "baseline has 1 seed" in lone.note and np.isnan(lone.rdud_low).all()


def test_a_baseline_near_zero_leaves_the_ratio_unbounded():
    """When the baseline's value at D could be 0 (a t tail below zero), the ratio is unbounded above: the interval
    ends at inf, never at a negative or wrapped-around value."""
    base = [[0.95, 0.002], [0.96, 0.0], [0.94, 0.03]]
    c = choice_confidence([[[0.9, 0.2], [0.91, 0.21], [0.9, 0.19]]], base, a0=0.9)
    assert c.rdud_high[0] == np.inf and c.rdud_low[0] > 0
