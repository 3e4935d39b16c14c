"""`orchestrator aggregate ROOT/<name>`: per-trial Parquet rows -> summary.parquet, best.parquet and figures/.

Why two steps of averaging: a trial may evaluate an attack several times (repeats of the boundary attack, noise
redraws); those repeats measure the *same* model, so they are averaged first. Seeds are independent models, so the
mean and the standard error of the mean (SEM = sample std / sqrt(n)) are taken across seeds. With one seed the SEM
is NaN, never 0: one model says nothing about the spread.

Selection of (Th, alpha) follows the papers (docs/method.md, "Choosing (Th, alpha)"): R0/U0 is the clean accuracy of a
regularized setting over that of the unregularized baseline of the same task, RD/UD the same at a high distortion D;
a setting is acceptable when R0/U0 >= A0 and RD/UD > 1, and the chosen one has the largest RD/UD among those.
Baselines are seed-averaged (mean over the baseline's seeds), not seed-matched: a baseline seed that failed or is
still missing then does not drop a regularized seed, and the ratios are ratios of the curves the figures show.

Pandas, pyarrow and matplotlib are imported inside functions: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from orchestrator.analysis import stats
from orchestrator.analysis.curves import (
    CLEAN,
    CURVE_KEYS,
    GROUP_KEYS,
    SELECTION_KEYS,
    SETTING_KEYS,
    nearest,
    per_trial_values,
    ratio,
)
from orchestrator.errors import UserError

# A selection compares settings of one task x regularization set, one architecture, one attack.

DEFAULT_A0 = 0.9


# --------------------------------------------------------------------------------------------------- CLI


def parse_distortions(items: list[str] | None) -> dict[str, float]:
    """["gaussian=0.3", ...] -> {"gaussian": 0.3}; a malformed item is a UserError naming it."""
    result: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            eps = float(value)
        except ValueError:
            eps = math.nan
        if not sep or not name or not math.isfinite(eps) or eps < 0:
            raise UserError(f"--distortion {item!r}: write ATTACK=EPS with EPS >= 0, e.g. gaussian=0.3")
        result[name.strip()] = eps
    return result


# --------------------------------------------------------------------------------------------------- entry point


def aggregate_sweep(sweep_dir: str | os.PathLike, a0: float = DEFAULT_A0, distortions: dict[str, float] | None = None,
                    figures: bool = True, confirm_seeds: int | None = None,
                    everything: bool = False, confidence: float | None = None) -> dict[str, Any]:
    """Write summary.parquet and best.parquet (and figures/ unless figures=False) for one sweep folder.

    Returns what was written: paths, row counts, ok/failed trial counts, failed trial errors, chosen settings and
    the figures written or skipped (with the reason). Statistics columns come from orchestrator.analysis.stats; with
    confirm_seeds=K the choice is re-made on all but the K highest seeds and scored on those K. `confidence` (the
    P(chosen) a decided choice needs) defaults to the folder's current spec's, else 0.9. Safe to run while a
    sweep is still writing: it reads the finished trials only, and every output is replaced atomically.
    """
    import pyarrow.fs as pafs

    from orchestrator.analysis.selection import current, current_spec, restrict
    from orchestrator.spec.schema import DEFAULT_CONFIDENCE
    from pixelreg_core.results import compact_tables, filesystem, is_uri, join, read_table

    root = str(sweep_dir) if is_uri(sweep_dir) else Path(sweep_dir)
    fs, base = filesystem(root)
    if fs.get_file_info(f"{base}/trials").type != pafs.FileType.Directory:
        raise UserError(f"{root}: no trials/ folder here; pass a sweep's results folder such as results/mnist_grid")
    if not math.isfinite(a0) or a0 <= 0:
        raise UserError(f"--a0 {a0}: must be a positive ratio such as 0.9")
    if confidence is None:
        spec = current_spec(str(root))
        confidence = DEFAULT_CONFIDENCE if spec is None else spec.confidence
    elif not 0 < confidence < 1:
        raise UserError(f"--confidence {confidence}: must be a probability between 0 and 1 (exclusive), such as 0.9")
    selection = None if everything else current(str(root))  # the current spec's models and evaluations
    trials = restrict(read_table(root, "trials"), selection, "trials")
    robustness = restrict(read_table(root, "robustness"), selection, "robustness")
    ok, failed = split_trials(trials)
    summary = summarize(ok, robustness, failed)
    best = select_best(summary, a0=a0, distortions=distortions or {})
    seed_values = stats.per_seed_values(ok, robustness)
    best = stats.add_statistics(best, seed_values)

    def choose(trials):  # the paper's rule on a subset of the trials (the seeds --confirm-seeds keeps or holds out)
        return select_best(summarize(trials, robustness, trials.iloc[0:0]), a0=a0, distortions=distortions or {})

    best = stats.confirm_selection(best, ok, confirm_seeds, choose)
    best = stats.add_confidence(best, seed_values, confidence)

    summary_path = write_parquet(summary, join(root, "summary.parquet"))
    best_path = write_parquet(best, join(root, "best.parquet"))
    compacted = compact_tables(root)  # one file per table for readers that pay per file (an object store)
    result: dict[str, Any] = {
        "summary": summary_path, "best": best_path, "summary_rows": len(summary), "best_rows": len(best),
        "compact": compacted,
        "trials_ok": len(ok), "trials_failed": len(failed),
        "failed": {str(r.trial_id): str(r.error) for r in failed.itertuples()},
        "chosen": describe_chosen(best), "confirmed": stats.describe_confirmation(best),
        "epoch_spread": describe_epoch_spread(summary),
        "figures": [], "skipped_figures": {},
    }
    if figures and is_uri(root):
        result["skipped_figures"]["figures"] = ("drawn only for a local results folder; copy the sweep folder "
                                                "and run `orchestrator aggregate` on the copy")
    elif figures:
        from orchestrator.analysis import figures as figs

        written, skipped = figs.write_figures(root, summary=summary, best=best, trials=ok,
                                              robustness=robustness, a0=a0,
                                              spectrum=restrict(read_table(root, "spectrum"), selection, "spectrum"))
        result["figures"], result["skipped_figures"] = written, skipped
    return result


def read_derived(sweep_dir: str | os.PathLike, name: str):
    """summary.parquet or best.parquet (`name`) as a DataFrame; None when it is not there or cannot be read (then
    it is quarantined: `orchestrator aggregate` writes it again from the tables)."""
    import io

    import pandas as pd

    from pixelreg_core.results import DAMAGED, join, quarantine, read_bytes

    data = read_bytes(join(str(sweep_dir), name))
    if data is None:
        return None
    try:
        return pd.read_parquet(io.BytesIO(data))
    except DAMAGED as exc:
        quarantine(sweep_dir, name, exc, "the aggregated results", "`orchestrator aggregate` writes it again")
        return None


# --------------------------------------------------------------------------------------------------- summary


def split_trials(trials):
    """(ok, failed) trials. A trial counts as ok only with status "ok": a null status is an unfinished write."""
    is_ok = trials["status"].fillna("").eq("ok")
    return trials[is_ok].reset_index(drop=True), trials[~is_ok].reset_index(drop=True)


def summarize(ok_trials, robustness, failed_trials):
    """summary rows: per group x curve point, mean / std / SEM across seeds, n seeds and n failed trials."""
    import numpy as np

    values = per_trial_values(ok_trials, robustness)
    grouped = values.groupby(GROUP_KEYS + CURVE_KEYS, dropna=False, sort=True)
    summary = grouped.agg(mean=("value", "mean"), std=("value", "std"), n=("value", "count"),
                          images=("images", "mean"), failed_images=("failed", "mean")).reset_index()
    # pandas' std is the sample std (ddof=1), NaN for n = 1, which is what the SEM must be then.
    summary["sem"] = summary["std"] / np.sqrt(summary["n"].where(summary["n"] > 0))
    summary["n"] = summary["n"].astype("int64")
    failed_counts = failed_trials.groupby(GROUP_KEYS, dropna=False).size().rename("n_failed").reset_index()
    summary = summary.merge(failed_counts, on=GROUP_KEYS, how="left")
    summary["n_failed"] = summary["n_failed"].fillna(0).astype("int64")
    summary = summary.merge(chosen_epochs(ok_trials), on=GROUP_KEYS, how="left")
    summary["epoch_spread"] = summary["epoch_spread"].fillna(False).astype(bool)
    columns = (GROUP_KEYS + CURVE_KEYS + ["mean", "sem", "std", "n", "n_failed", "images", "failed_images"]
               + EPOCH_COLUMNS)
    return summary[columns]


# The seeds of a group reported at epochs this far apart: the choice says more about the validation set than about
# the models (issue: 80 validation images put a baseline seed at epoch 1 of 5, 0.03 below its epoch 5 on the test
# set). Half the epochs, and at least 2, apart.
EPOCH_COLUMNS = ["best_epoch_min", "best_epoch_max", "epochs_max", "valid_images_min", "epoch_spread"]


def chosen_epochs(ok_trials):
    """Per group: the range of the seeds' chosen epochs, the epochs trained, the smallest validation set, and
    `epoch_spread`, true when the chosen epochs lie at least max(2, epochs / 2) apart."""
    import pandas as pd

    frame = ok_trials[GROUP_KEYS].copy()
    frame["best_epoch"] = pd.to_numeric(ok_trials.get("best_epoch"), errors="coerce")
    frame["epochs"] = pd.to_numeric(ok_trials.get("epochs"), errors="coerce")
    frame["valid_images"] = pd.to_numeric(ok_trials.get("valid_images"), errors="coerce")
    out = (frame.groupby(GROUP_KEYS, dropna=False)
           .agg(best_epoch_min=("best_epoch", "min"), best_epoch_max=("best_epoch", "max"),
                epochs_max=("epochs", "max"), valid_images_min=("valid_images", "min")).reset_index())
    width = out["best_epoch_max"] - out["best_epoch_min"]
    out["epoch_spread"] = (width >= (out["epochs_max"] / 2).clip(lower=2)).fillna(False).astype(bool)
    return out[GROUP_KEYS + EPOCH_COLUMNS]


def describe_epoch_spread(summary) -> list[str]:
    """One line per group whose seeds' chosen epochs are spread widely (`chosen_epochs`)."""
    if "epoch_spread" not in summary or not len(summary):
        return []
    flagged = summary[summary["epoch_spread"]].drop_duplicates(GROUP_KEYS)
    lines = []
    for row in flagged.itertuples():
        what = f"Th={row.th:g} alpha={row.alpha:g}" if row.role == "trial" else row.role
        valid = "" if math.isnan(row.valid_images_min) else f" on {int(row.valid_images_min)} validation images"
        lines.append(f"{row.task} / {row.reg_data} / {what}: the seeds' chosen epochs range from "
                     f"{int(row.best_epoch_min)} to {int(row.best_epoch_max)} of {int(row.epochs_max)}{valid}; "
                     "a larger valid_images (or select: last) makes the choice mean more (docs/paper-preset.md)")
    return lines


# --------------------------------------------------------------------------------------------------- selection


def curves_for_selection(summary):
    """Summary rows usable as one curve per (setting, attack, metric): variant "" rows, plus for attacks evaluated
    per variant (corruptions) the mean over variants at each eps/severity."""
    import pandas as pd

    plain = summary[summary["variant"] == ""]
    per_variant = summary[summary["variant"] != ""]
    if len(per_variant):
        merged = (per_variant.groupby(GROUP_KEYS + ["attack", "eps", "metric"], dropna=False)
                  .agg(mean=("mean", "mean"), n=("n", "min")).reset_index())
        plain = pd.concat([plain, merged], ignore_index=True)
    return plain[GROUP_KEYS + ["attack", "eps", "metric", "mean", "n"]]


def default_distortion(task: str, attack: str, eps_values: list[float]) -> tuple[float, str]:
    """(D, where it came from) for one task and attack."""
    # The papers' D per dataset lives in its record (pixelreg_core.data.registry); every other task (MNIST-like data)
    # uses the largest eps evaluated: the papers show the MNIST gain "at high noise level", and the top of the
    # range is what the CIFAR rule amounts to.
    from pixelreg_core.data import registry as datasets
    from pixelreg_core.errors import ConfigError

    try:
        paper = datasets.get(str(task)).distortion
    except ConfigError:
        paper = {}
    if attack in paper:
        return paper[attack], "paper"
    return (max(eps_values) if eps_values else math.nan), "largest eps"


def auc(curve: dict[float, float], eps_values: list[float]) -> float:
    """Trapezoid area under accuracy vs eps over the given eps (needs two points or more)."""
    import numpy as np

    if len(eps_values) < 2:
        return math.nan
    xs = sorted(eps_values)
    return float(np.trapezoid([curve[x] for x in xs], xs))


def select_best(summary, a0: float = DEFAULT_A0, distortions: dict[str, float] | None = None):
    """best rows: every regularized setting x attack with R0/U0, RD/UD, acceptability, the choice and AUC rank."""
    import pandas as pd

    distortions = distortions or {}
    curves = curves_for_selection(summary)
    curves = curves[curves["eps"].notna()]
    baselines = curves[curves["role"] == "baseline"]
    settings = curves[curves["role"] == "trial"]

    def curve_of(frame, attack, metric) -> dict[float, float]:
        part = frame[(frame["attack"] == attack) & (frame["metric"] == metric)]
        return dict(zip(part["eps"].astype(float), part["mean"].astype(float), strict=True))

    rows: list[dict[str, Any]] = []
    for setting_key, setting in settings.groupby(["sweep", "task", "reg_data", "arch"] + SETTING_KEYS, dropna=False):
        sweep, task, reg_data, arch, target, range_, th, alpha = setting_key
        base = baselines[(baselines["task"] == task) & _same(baselines["arch"], arch)
                         & _same(baselines["sweep"], sweep)]
        r_clean = curve_of(setting, CLEAN, "accuracy").get(0.0, math.nan)
        u_clean = curve_of(base, CLEAN, "accuracy").get(0.0, math.nan)
        n_base = int(base.loc[base["attack"] == CLEAN, "n"].max()) if (base["attack"] == CLEAN).any() else 0
        n_setting = int(setting.loc[setting["attack"] == CLEAN, "n"].max()) if (setting["attack"] == CLEAN).any() \
            else int(setting["n"].max())
        for (attack, metric), _part in setting[setting["attack"] != CLEAN].groupby(["attack", "metric"]):
            r_curve, u_curve = curve_of(setting, attack, metric), curve_of(base, attack, metric)
            common = sorted(set(r_curve) & set(u_curve))
            if attack in distortions:
                d_requested, d_source = distortions[attack], "user"
            else:
                d_requested, d_source = default_distortion(task, attack, common or sorted(r_curve))
            d_used = nearest(common, d_requested)
            rd, ud = (r_curve[d_used], u_curve[d_used]) if common else (math.nan, math.nan)
            auc_r = auc(r_curve, common) if metric == "accuracy" else math.nan
            auc_u = auc(u_curve, common) if metric == "accuracy" else math.nan
            r0u0, rdud = ratio(r_clean, u_clean), ratio(rd, ud)
            rows.append({
                "sweep": sweep, "task": task, "reg_data": reg_data, "arch": arch, "attack": attack, "metric": metric,
                "target": target, "range": range_, "th": th, "alpha": alpha, "n": n_setting, "n_baseline": n_base,
                "R0": r_clean, "U0": u_clean, "RD": rd, "UD": ud, "r0_over_u0": r0u0, "rd_over_ud": rdud,
                "d_requested": d_requested, "d_used": d_used, "d_source": d_source, "a0": a0,
                "acceptable": bool(r0u0 >= a0 and rdud > 1), "auc": auc_r, "auc_baseline": auc_u,
                "auc_ratio": ratio(auc_r, auc_u),
            })
    best = pd.DataFrame(rows, columns=BEST_COLUMNS[:-2])
    return _mark_choice(best)


BEST_COLUMNS = ["sweep", "task", "reg_data", "arch", "attack", "metric", "target", "range", "th", "alpha", "n",
                "n_baseline", "R0", "U0", "RD", "UD", "r0_over_u0", "rd_over_ud", "d_requested", "d_used",
                "d_source", "a0", "acceptable", "auc", "auc_baseline", "auc_ratio", "chosen", "auc_rank"]


def _same(series, value):
    """Equality that treats two nulls as equal (keys may be null)."""
    import pandas as pd

    return series.isna() if pd.isna(value) else series.eq(value)


def _mark_choice(best):
    """chosen: largest RD/UD among the acceptable (ties: larger R0/U0, then smaller alpha, smaller Th).
    auc_rank: 1 = largest AUC ratio within the selection; NaN ratios get no rank."""
    best = best.copy()
    best["chosen"] = False
    best["auc_rank"] = math.nan
    for _, idx in best.groupby(SELECTION_KEYS, dropna=False).groups.items():
        part = best.loc[idx]
        ranks = part["auc_ratio"].rank(ascending=False, method="min")
        best.loc[idx, "auc_rank"] = ranks
        ok = part[part["acceptable"]]
        if len(ok):
            order = ok.sort_values(["rd_over_ud", "r0_over_u0", "alpha", "th"], ascending=[False, False, True, True])
            best.loc[order.index[0], "chosen"] = True
    best["auc_rank"] = best["auc_rank"].astype("Int64")
    return best.sort_values(SELECTION_KEYS + ["th", "alpha"]).reset_index(drop=True)[BEST_COLUMNS]


def describe_chosen(best) -> list[str]:
    """One readable line per selection: the chosen setting with its ratios, their 90% intervals and how sure the
    choice is (p_chosen: decided or undecided, and the other settings still in contention), or why none is."""
    lines = []
    for key, part in best.groupby(SELECTION_KEYS, dropna=False):
        _, task, reg_data, arch, attack, _metric = key
        chosen = part[part["chosen"]]
        where = f"{task} / {reg_data} / {attack}"
        if len(chosen):
            c = chosen.iloc[0]
            lines.append(f"{where}: {_setting(c)} (R0/U0={c['r0_over_u0']:.3f}{_interval(c, 'r0_over_u0')}, "
                         f"RD/UD={c['rd_over_ud']:.3f}{_interval(c, 'rd_over_ud')} at eps {c['d_used']:g})"
                         f"{_how_sure(part, c)}")
        else:
            lines.append(f"{where}: no acceptable setting (R0/U0 >= {part['a0'].iloc[0]:g} and RD/UD > 1)"
                         f"{_how_sure(part, None)}")
    return lines


def _setting(row) -> str:
    return f"Th={row['th']:g} alpha={row['alpha']:g}"


def _interval(row, column: str) -> str:
    """' [low, high]' (the 90% interval), or '' where best.parquet has none (one seed, or written before)."""
    low, high = row.get(f"{column}_low", math.nan), row.get(f"{column}_high", math.nan)
    return f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) else ""


# A setting the rule picks in at least this share of the resamplings is named as still in contention.
CONTENTION = 0.02


def _how_sure(part, chosen) -> str:
    """'; p_chosen 0.97: decided', or undecided with the settings still in contention, or why there is no
    p_chosen. `part` is one selection's rows; `chosen` its chosen row or None."""
    if "p_chosen" not in part:
        return ""  # a best.parquet written before the confidence columns
    if part["p_chosen"].isna().any():
        short = part[(part["n"] < 2) | (part["n_baseline"] < 2)]
        who = (", ".join(_setting(r) + f" has {int(r['n'])} seed(s)" for _, r in short[short["n"] < 2].iterrows())
               or f"the baseline has {int(part['n_baseline'].min())} seed(s)")
        return f"; p_chosen not known: {who} (2 or more on every setting and the baseline give it)"
    decided = bool(part["decided"].iloc[0])
    p_none = 1 - part["p_chosen"].sum()
    if chosen is not None:
        head = f"; p_chosen {chosen['p_chosen']:.2f}"
        others = part[(part["p_chosen"] >= CONTENTION) & ~part["chosen"]]
    else:
        head = f"; P(no setting acceptable) {p_none:.2f}"
        others = part[part["p_chosen"] >= CONTENTION]
    if decided:
        return f"{head}: decided (at confidence {part['confidence'].iloc[0]:g})"
    others = others.sort_values("p_chosen", ascending=False)
    named = [f"{_setting(r)} {r['p_chosen']:.2f}" for _, r in others.head(3).iterrows()]
    if len(others) > 3:
        named.append(f"{len(others) - 3} more")
    if chosen is not None and p_none >= CONTENTION:
        named.append(f"none {p_none:.2f}")
    also = f"; the resamplings also choose {', '.join(named)}" if named else ""
    return (f"{head}: undecided (below {part['confidence'].iloc[0]:g}{also}; more seeds of these and of the "
            "baseline would decide it)")


# --------------------------------------------------------------------------------------------------- output


def write_parquet(frame, path: str | os.PathLike) -> str:
    """Write a DataFrame all at once (local path or URI): locally a hidden temp file renamed over the target."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pixelreg_core.results import write_bytes

    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    write_bytes(path, buffer.getvalue().to_pybytes())
    return str(path)
