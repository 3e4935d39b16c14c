"""orchestrator/run/objective.py: the score the search maximizes."""

from __future__ import annotations

from orchestrator.run.objective import score


def test_search_score_prefers_every_feasible_point():
    assert score(clean_ratio=0.95, robust_ratio=1.3, min_clean_ratio=0.9) == 1.3
    infeasible = score(clean_ratio=0.5, robust_ratio=5.0, min_clean_ratio=0.9)
    assert infeasible < 0 < score(0.9, 0.01, 0.9)
    assert score(0.8, 5.0, 0.9) > score(0.5, 5.0, 0.9)  # graded: closer to feasible is better
