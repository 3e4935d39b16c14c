"""The number `search: optuna` maximises for one (Th, alpha) point, computed as best.parquet computes its ratios.

R0/U0 and RD/UD compare the point's mean over seeds with the mean over the baseline's seeds (seed-averaged
baselines), with `curves.ratio` (NaN at a zero baseline) and the eps nearest to `objective.eps` picked by
`curves.nearest`: the objective of a point is the `rd_over_ud` that `orchestrator aggregate --distortion
ATTACK=EPS` writes for it (when it is feasible). No Ray here: the trainable and the search both call it.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.analysis.curves import nearest, ratio
from orchestrator.sweepdir.tables import read_trial

# The lowest score() gives (clean_ratio >= 0 and min_clean_ratio <= 1). A point without a ratio (its baseline
# scored 0, so best.parquet says NaN and never chooses it) gets it too: Optuna needs a number, and the worst one
# keeps the search away from a point the selection could never pick.
FLOOR = -1.0


def score(clean_ratio: float, robust_ratio: float, min_clean_ratio: float) -> float:
    """Feasible (R0/U0 >= A0): RD/UD. Infeasible: R0/U0 - A0 < 0, below every feasible score, and graded so the
    sampler still learns which way is better. No ratio (NaN): FLOOR."""
    if not (math.isfinite(clean_ratio) and math.isfinite(robust_ratio)):
        return FLOOR
    if clean_ratio >= min_clean_ratio:
        return robust_ratio
    return clean_ratio - min_clean_ratio


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def evaluate_point(sweep_dir: str, trial_ids: list[str], baseline_ids: list[str], objective: Any) -> dict[str, float]:
    """One point's objective from the finished rows of its seeds (`trial_ids`) and the baseline's (`baseline_ids`).

    Returns objective, clean_ratio (R0/U0), robust_ratio (RD/UD), clean_acc (R0) and robust_acc (RD)."""
    r0 = _mean([clean_accuracy(sweep_dir, t) for t in trial_ids])
    u0 = _mean([clean_accuracy(sweep_dir, b) for b in baseline_ids])
    rd = _mean([accuracy_at(sweep_dir, t, objective.attack, objective.eps) for t in trial_ids])
    ud = _mean([accuracy_at(sweep_dir, b, objective.attack, objective.eps) for b in baseline_ids])
    clean_ratio, robust_ratio = ratio(r0, u0), ratio(rd, ud)
    return {"objective": score(clean_ratio, robust_ratio, objective.min_clean_ratio), "clean_ratio": clean_ratio,
            "robust_ratio": robust_ratio, "clean_acc": r0, "robust_acc": rd}


def clean_accuracy(sweep_dir: str, trial_id: str) -> float:
    """The trial's clean test accuracy (trials.clean_acc)."""
    rows = read_trial(sweep_dir, "trials", trial_id)
    if not rows:
        raise ValueError(f"trial {trial_id} has no trials row")
    return float(rows[0]["clean_acc"])


def accuracy_at(sweep_dir: str, trial_id: str, attack: str, eps: float) -> float:
    """Mean accuracy over repeats at the evaluated eps nearest to `eps` (eps grids are per dataset), chosen as
    best.parquet chooses its D (curves.nearest)."""
    rows = [r for r in read_trial(sweep_dir, "robustness", trial_id) or []
            if r["attack"] == attack and r["metric"] == "accuracy"]
    if not rows:
        raise ValueError(f"trial {trial_id} has no {attack} accuracy rows; add {attack} to the spec's attacks")
    used = nearest(sorted({r["eps"] for r in rows}), eps)
    values = [r["value"] for r in rows if r["eps"] == used]
    return sum(values) / len(values)
