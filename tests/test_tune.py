"""orchestrator/run/tune.py: ASHA's max_t (the launch that lets an epochs grid's longest trial finish is in
tests/test_launch.py, slow tier)."""

from __future__ import annotations

from conftest import tiny

from orchestrator.run.tune import asha_max_t


def test_asha_max_t_lies_past_the_last_report_of_the_longest_trial():
    """A trial reports each epoch and once more at the end; ASHA stops a trial that reaches max_t, so max_t must
    come from the longest trial of the launch (a grid may vary epochs), times the seeds a searched point trains."""
    grid = [tiny(epochs=1), tiny(epochs=3, seed=1)]
    assert asha_max_t(grid) == 4
    assert asha_max_t(list(reversed(grid))) == 4
    assert asha_max_t(grid, seeds_per_trial=2) == 7
