"""What one setting and one curve point are, and the two numbers every comparison uses (`ratio`, `nearest`).

Shared by `aggregate` (summary.parquet, best.parquet), `figures` and the Optuna objective (`objective`), so the
search optimises exactly the ratio best.parquet reports and the figures draw the same groups. Pure Python and
pandas: no Ray, no matplotlib.
"""

from __future__ import annotations

import math

# Every key of a trial but seed and trial_id, plus the role (baseline / trial / fgsm_source): one group = one setting.
GROUP_KEYS = ["sweep", "task", "reg_data", "target", "range", "th", "alpha", "arch", "role"]
# What identifies one point of one curve inside a trial's robustness rows.
CURVE_KEYS = ["attack", "variant", "group", "eps", "metric"]
SETTING_KEYS = ["target", "range", "th", "alpha"]
SELECTION_KEYS = ["sweep", "task", "reg_data", "arch", "attack", "metric"]  # one choice of (Th, alpha) per these
CLEAN = "clean"  # the pseudo-attack that carries trials.clean_acc in the summary (eps 0, metric accuracy)


def ratio(a: float, b: float) -> float:
    """a / b, NaN (never inf) when the baseline b is 0 or either side is missing: such a ratio ranks nowhere."""
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def nearest(values: list[float], target: float) -> float:
    """The evaluated eps closest to `target` (ties: the larger); NaN when none was evaluated."""
    return min(values, key=lambda v: (abs(v - target), -v)) if values else math.nan


def per_trial_values(ok_trials, robustness):
    """One value per (trial, attack, variant, group, eps, metric): the mean over the trial's repeats.

    Clean accuracy joins as attack "clean", eps 0. Key columns come from the trials table (it alone has the role).
    """
    import pandas as pd

    keys = ok_trials[["trial_id", "seed"] + GROUP_KEYS]
    rob = robustness[robustness["trial_id"].isin(ok_trials["trial_id"])].copy()
    for column in ("variant", "group"):
        rob[column] = rob[column].fillna("")
    per_trial = (rob.groupby(["trial_id"] + CURVE_KEYS, dropna=False, sort=False)
                 .agg(value=("value", "mean"), images=("images", "mean"), failed=("failed", "mean"))
                 .reset_index())
    clean = pd.DataFrame({"trial_id": ok_trials["trial_id"], "attack": CLEAN, "variant": "", "group": "",
                          "eps": 0.0, "metric": "accuracy", "value": ok_trials["clean_acc"].astype("float64"),
                          "images": math.nan, "failed": math.nan})
    values = pd.concat([clean, per_trial], ignore_index=True) if len(per_trial) else clean
    return values.merge(keys, on="trial_id", how="left")
