"""The papers' figures from a sweep's tables, as PNG files under <sweep>/figures/.

- curves_<task>_<reg>.png    accuracy vs eps per attack, baseline vs the chosen (Th, alpha), SEM bands (Figs. 2-3)
- tradeoff_<task>_<reg>.png  R0/U0 vs RD/UD for every (Th, alpha) per attack, acceptable region shaded (Fig. 4)
- boundary.png               boundary-attack score (larger = more robust) per setting, mean +/- SEM
- corruptions.png            corruption accuracy by frequency group (low / medium / high), mean +/- SEM
- layer_weights.png          learned softmax(gamma) over the similarity layers, mean over seeds
- spectrum.png               radial Fourier power of the mean boundary perturbation

A figure whose data is absent is skipped with the reason, never drawn empty. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from orchestrator.analysis.curves import CLEAN, GROUP_KEYS, SETTING_KEYS, per_trial_values
from orchestrator.analysis.stats import significant_eps

FIGURE_PREFIXES = ("curves_", "tradeoff_", "boundary", "corruptions", "layer_weights", "spectrum")
FREQUENCY_GROUPS = ("low", "medium", "high")
MAX_LINES = 6  # more lines than this in one panel are unreadable
BASELINE_COLOR = "#444444"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def attack_title(attack: str) -> str:
    """The attack's title from the core's attack registry (torch is imported only when a figure needs one)."""
    from pixelreg_core.attacks import title

    return title(attack)


def write_figures(sweep_dir: str | os.PathLike, *, summary, best, trials, robustness, spectrum,
                  a0: float) -> tuple[list[str], dict[str, str]]:
    """Draw every figure that has data. Returns (paths written, {figure: why skipped})."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(sweep_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    skipped: dict[str, str] = {}
    for selection, _part in _selections(summary):
        slug = _slug(*selection)
        for name, draw in ((f"curves_{slug}", _curves), (f"tradeoff_{slug}", _tradeoff)):
            fig, why = draw(summary, best, selection, a0)
            _keep(fig, why, out / f"{name}.png", name, written, skipped)
    if not _selections(summary):
        skipped["curves, tradeoff"] = "no regularized trial has finished yet"
    for name, draw, data in (("boundary", _boundary, summary), ("corruptions", _corruptions, (trials, robustness)),
                             ("layer_weights", _layer_weights, trials), ("spectrum", _spectrum, (trials, spectrum))):
        fig, why = draw(data, summary, best)
        _keep(fig, why, out / f"{name}.png", name, written, skipped)
    for stale in out.glob("*.png"):  # a figure skipped now must not survive from an earlier run
        if stale.name.startswith(FIGURE_PREFIXES) and str(stale) not in written:
            stale.unlink()
    return written, skipped


# --------------------------------------------------------------------------------------------------- helpers


def _selections(summary) -> list[tuple[tuple[str, str, str], Any]]:
    """(task, reg_data, arch) of every regularized setting, each with its summary rows."""
    trials = summary[summary["role"] == "trial"]
    return [(tuple(str(v) for v in key), part)
            for key, part in trials.groupby(["task", "reg_data", "arch"], dropna=False, sort=True)]


def _slug(task: str, reg_data: str, arch: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", str(v)).strip("-") for v in (task, reg_data, arch))


def _label(row) -> str:
    return f"Th={row['th']:g}, α={row['alpha']:g}"


def _keep(fig, why: str | None, path: Path, name: str, written: list[str], skipped: dict[str, str]) -> None:
    """Save atomically (the report may be reading the folder) and close the figure."""
    import matplotlib.pyplot as plt

    if fig is None:
        skipped[name] = why or "no data"
        return
    from pixelreg_core.results import atomic_path

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    written.append(str(path))


def _grid(n: int, width: float = 5.2, height: float = 4.0, cols: int = 3):
    import matplotlib.pyplot as plt

    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _baseline_rows(summary, task: str, arch: str):
    return summary[(summary["role"] == "baseline") & (summary["task"] == task) & (summary["arch"] == arch)]


def _setting_rows(summary, task: str, reg_data: str, arch: str, setting: dict[str, Any]):
    mask = ((summary["role"] == "trial") & (summary["task"] == task) & (summary["reg_data"] == reg_data)
            & (summary["arch"] == arch))
    for key in SETTING_KEYS:
        mask &= summary[key] == setting[key]
    return summary[mask]


def _shown_setting(best, selection, attack: str) -> tuple[dict[str, Any] | None, str]:
    """The chosen setting for an attack, else the one with the largest RD/UD (labelled as not acceptable)."""
    task, reg_data, arch = selection
    rows = best[(best["task"] == task) & (best["reg_data"] == reg_data) & (best["arch"] == arch)
                & (best["attack"] == attack)]
    if not len(rows):
        return None, ""
    chosen = rows[rows["chosen"]]
    if len(chosen):
        return chosen.iloc[0].to_dict(), "chosen"
    ranked = rows.sort_values("rd_over_ud", ascending=False, na_position="last")
    return ranked.iloc[0].to_dict(), "best RD/UD, not acceptable"


def _band(ax, rows, color: str, label: str, marker: str = "o") -> None:
    rows = rows.sort_values("eps")
    x, y, sem = rows["eps"].to_numpy(), rows["mean"].to_numpy(), rows["sem"].fillna(0.0).to_numpy()
    ax.plot(x, y, marker=marker, color=color, label=label, lw=2, ms=5)
    ax.fill_between(x, y - sem, y + sem, color=color, alpha=0.2, lw=0)


# --------------------------------------------------------------------------------------------------- figures


def _curves(summary, best, selection, a0: float):
    """Accuracy vs eps per attack: the baseline against the setting chosen for that attack (papers' Figs. 2-3)."""
    task, reg_data, arch = selection
    rows = summary[(summary["metric"] == "accuracy") & (summary["variant"] == "") & (summary["attack"] != CLEAN)]
    base = _baseline_rows(rows, task, arch)
    attacks = sorted(set(base["attack"]) & set(rows.loc[rows["reg_data"] == reg_data, "attack"]))
    if not attacks:
        return None, "no accuracy-vs-eps attack evaluated on both the baseline and a regularized setting"
    fig, axes = _grid(len(attacks))
    for ax, attack in zip(axes, attacks, strict=True):
        _band(ax, base[base["attack"] == attack], BASELINE_COLOR, "unregularized", marker="s")
        setting, how = _shown_setting(best, selection, attack)
        if setting is not None:
            mine = _setting_rows(rows, task, reg_data, arch, setting)
            _band(ax, mine[mine["attack"] == attack], COLORS[0], f"{_label(setting)} ({how})")
            _mark_significant(ax, mine[mine["attack"] == attack], base[base["attack"] == attack])
            ax.axvline(setting["d_used"], color="#999999", ls=":", lw=1, label=f"D = {setting['d_used']:g}")
        ax.set_title(attack_title(attack))
        ax.set_xlabel("eps")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="lower left")
    fig.suptitle(f"{task} classified, regularized with {reg_data} ({arch}): mean ± SEM over seeds", fontsize=13)
    return fig, None


def _mark_significant(ax, mine, base) -> None:
    """Ring the eps where the setting's curve differs from the baseline's: Welch p < 0.05 per eps, Holm-adjusted
    over the eps of this curve (orchestrator.analysis.stats). The legend says which test, or that no eps passed it."""
    eps = significant_eps(mine, base)
    if not eps:
        ax.plot([], [], " ", label="no eps differs from baseline (Welch, Holm over eps)")
        return
    points = mine.set_index("eps").loc[eps, "mean"]
    ax.scatter(points.index, points.to_numpy(), s=150, facecolors="none", edgecolors="black", linewidths=1.5,
               zorder=5, label="differs from baseline (Welch p < 0.05, Holm over eps)")


def _tradeoff(summary, best, selection, a0: float):
    """R0/U0 vs RD/UD of every (Th, alpha), one panel per attack, acceptable region shaded (papers' Fig. 4)."""
    task, reg_data, arch = selection
    rows = best[(best["task"] == task) & (best["reg_data"] == reg_data) & (best["arch"] == arch)]
    rows = rows[rows["r0_over_u0"].notna() & rows["rd_over_ud"].notna()]
    if not len(rows):
        return None, "no setting has both a baseline and a ratio (is the baseline missing?)"
    attacks = sorted(rows["attack"].unique())
    fig, axes = _grid(len(attacks))
    for ax, attack in zip(axes, attacks, strict=True):
        part = rows[rows["attack"] == attack]
        x, y = part["r0_over_u0"], part["rd_over_ud"]
        x_lo, x_hi = _span([x, part.get("r0_over_u0_low"), part.get("r0_over_u0_high")], a0, 1.0, 0.03)
        y_lo, y_hi = _span([y, part.get("rd_over_ud_low"), part.get("rd_over_ud_high")], 1.0, 1.0, 0.1)
        ax.fill_between([a0, x_hi], 1, y_hi, color="#2ca02c", alpha=0.12, label=f"acceptable (≥ {a0:g}, > 1)")
        ax.axvline(a0, color="#2ca02c", lw=1, ls="--")
        ax.axhline(1, color="#2ca02c", lw=1, ls="--")
        _intervals(ax, part, (x_hi, y_hi))
        ok = part["acceptable"].astype(bool)
        ax.scatter(x[~ok], y[~ok], color="#888888", s=40, label="not acceptable", zorder=3)
        ax.scatter(x[ok], y[ok], color=COLORS[0], s=40, label="acceptable", zorder=3)
        chosen = part[part["chosen"].astype(bool)]
        if len(chosen):
            ax.scatter(chosen["r0_over_u0"], chosen["rd_over_ud"], marker="*", s=260, color=COLORS[1],
                       label="chosen", zorder=4)
        for _, row in part.iterrows():
            sure = f"\np_chosen {row['p_chosen']:.2f}" if math.isfinite(row.get("p_chosen", math.nan)) else ""
            ax.annotate(_label(row) + sure, (row["r0_over_u0"], row["rd_over_ud"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        eps_used = part["d_used"].iloc[0]
        metric = part["metric"].iloc[0]
        if metric == "accuracy":
            where = distortion_label(attack, eps_used)
            ax.set_ylabel("RD / UD (accuracy at distortion D)")
        else:
            where = metric.replace("_", " ")
            ax.set_ylabel(f"R / U ({where})")
        ax.set_title(f"{attack_title(attack)} ({where})")
        ax.set_xlabel("R0 / U0 (clean accuracy vs unregularized)")
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.collections + ax.patches + ax.containers if not
               h.get_label().startswith("_")}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=len(handles), fontsize=10)
    fig.suptitle(f"{task} classified, regularized with {reg_data} ({arch}): accuracy trade-off per (Th, α)",
                 fontsize=13)
    return fig, None


def _span(columns, low_mark: float, high_mark: float, pad: float) -> tuple[float, float]:
    """Axis limits holding every finite value of the columns (points and interval ends; a column may be None in a
    best.parquet written before the intervals) and the two marks, padded."""
    import numpy as np

    values = np.concatenate([np.asarray(c, dtype=float) for c in columns if c is not None])
    values = values[np.isfinite(values)]
    return min(values.min(), low_mark) - pad, max(values.max(), high_mark) + pad * 1.5


def _intervals(ax, part, tops: tuple[float, float]) -> None:
    """Each setting's 90% intervals of R0/U0 and RD/UD as error bars (an open top, inf, is drawn to the edge), so a
    point whose interval straddles A0 or 1 looks it. Nothing where best.parquet has no interval (a single seed)."""
    import numpy as np

    if "r0_over_u0_low" not in part:
        return
    has = part[part["r0_over_u0_low"].notna() & part["rd_over_ud_low"].notna()]
    if not len(has):
        return
    x, y = has["r0_over_u0"].to_numpy(), has["rd_over_ud"].to_numpy()
    x_hi = np.minimum(has["r0_over_u0_high"].to_numpy(), tops[0])
    y_hi = np.minimum(has["rd_over_ud_high"].to_numpy(), tops[1])
    ax.errorbar(x, y, xerr=[x - has["r0_over_u0_low"].to_numpy(), x_hi - x],
                yerr=[y - has["rd_over_ud_low"].to_numpy(), y_hi - y], fmt="none", ecolor="#555555",
                elinewidth=1, capsize=3, alpha=0.7, zorder=2, label="90% interval")


def distortion_label(attack: str, eps: float) -> str:
    """The tradeoff panel's D, named by what the attack's eps column holds (its record: a corruption's severity)."""
    from pixelreg_core.attacks import eps_name

    name = eps_name(attack)
    return f"D = {eps:g}" if name == "eps" else f"{name} D = {eps:g}"


def _panels(summary):
    """One panel per (task, reg_data, arch) that has a regularized trial: (fig, [(ax, selection)]), or (None, why)."""
    selections = _selections(summary)
    if not selections:
        return None, "no regularized trial has finished yet"
    fig, axes = _grid(len(selections), width=6.0, height=4.2, cols=2)
    return fig, [(ax, selection) for ax, (selection, _) in zip(axes, selections, strict=True)]


def _boundary(data, summary, best):
    """Boundary-attack score per setting (median squared L2 per pixel; larger = more robust)."""
    rows = summary[summary["metric"] == "boundary_score"]
    if not len(rows):
        return None, "no boundary_score rows in robustness/"
    fig, panels = _panels(summary)
    if fig is None:
        return None, panels
    for ax, (task, reg_data, arch) in panels:
        base = _baseline_rows(rows, task, arch)
        mine = rows[(rows["role"] == "trial") & (rows["task"] == task) & (rows["reg_data"] == reg_data)
                    & (rows["arch"] == arch)].sort_values(["th", "alpha"])
        labels = ["unregularized"] * len(base) + [_label(r) for _, r in mine.iterrows()]
        means = list(base["mean"]) + list(mine["mean"])
        sems = list(base["sem"].fillna(0)) + list(mine["sem"].fillna(0))
        colors = [BASELINE_COLOR] * len(base) + [COLORS[0]] * len(mine)
        ax.bar(range(len(means)), means, yerr=sems, color=colors, capsize=3)
        ax.set_xticks(range(len(means)), labels, rotation=35, ha="right", fontsize=9)
        ax.set_ylabel("median squared L2 per pixel")
        ax.set_title(f"{task} / {reg_data}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Boundary attack score (larger = more robust), mean ± SEM over seeds", fontsize=13)
    return fig, None


def _corruptions(data, summary, best):
    """Accuracy on corrupted images averaged within each frequency group, baseline vs the chosen settings."""
    import numpy as np

    trials, robustness = data
    rob = robustness[robustness["group"].fillna("").isin(FREQUENCY_GROUPS) & (robustness["metric"] == "accuracy")]
    if not len(rob) or not len(trials):
        return None, "no corruption rows with a frequency group in robustness/"
    values = per_trial_values(trials, rob)
    values = values[values["attack"] != CLEAN]
    per_trial = values.groupby(["trial_id", "group"] + GROUP_KEYS, dropna=False)["value"].mean().reset_index()
    stats = (per_trial.groupby(GROUP_KEYS + ["group"], dropna=False)["value"]
             .agg(["mean", "std", "count"]).reset_index())
    stats["sem"] = stats["std"] / np.sqrt(stats["count"])
    fig, panels = _panels(summary)
    if fig is None:
        return None, panels
    for ax, (task, reg_data, arch) in panels:
        shown = [("unregularized", _baseline_rows(stats, task, arch), BASELINE_COLOR)]
        chosen = best[(best["task"] == task) & (best["reg_data"] == reg_data) & (best["arch"] == arch)
                      & best["chosen"].astype(bool)].drop_duplicates(SETTING_KEYS)
        for i, (_, setting) in enumerate(chosen.sort_values(["th", "alpha"]).iterrows()):
            picked_by = ", ".join(sorted(best.loc[(best["chosen"].astype(bool)) & (best["th"] == setting["th"])
                                                  & (best["alpha"] == setting["alpha"])
                                                  & (best["task"] == task) & (best["reg_data"] == reg_data),
                                                  "attack"]))
            shown.append((f"{_label(setting)} (chosen by {picked_by})",
                          _setting_rows(stats, task, reg_data, arch, setting), COLORS[i % len(COLORS)]))
        width = 0.8 / len(shown)
        for i, (label, rows, color) in enumerate(shown):
            rows = rows.set_index("group").reindex(FREQUENCY_GROUPS)
            xs = np.arange(len(FREQUENCY_GROUPS)) + (i - (len(shown) - 1) / 2) * width
            ax.bar(xs, rows["mean"], width, yerr=rows["sem"].fillna(0), color=color, label=label, capsize=3)
        ax.set_xticks(range(len(FREQUENCY_GROUPS)), [f"{g} frequency" for g in FREQUENCY_GROUPS])
        ax.set_ylabel("accuracy (mean over corruptions, severities)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task} / {reg_data}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.suptitle("Common corruptions by frequency group, mean ± SEM over seeds", fontsize=13)
    return fig, None


def _layer_weights(trials, summary, best):
    """Heatmap of the learned layer weights softmax(gamma), mean over seeds, one row per (Th, alpha)."""
    import numpy as np

    has = trials[(trials["role"] == "trial") & trials["layer_weights"].notna()]
    has = has[has["layer_weights"].map(lambda w: w is not None and len(w) > 0)]
    if not len(has):
        return None, "no trial recorded learned layer weights (fixed sim_layer, or no regularized trial)"
    selections = [(key, part) for key, part in has.groupby(["task", "reg_data", "arch"], dropna=False, sort=True)]
    fig, axes = _grid(len(selections), width=6.5, height=1.6 + 0.45 * has.groupby(SETTING_KEYS).ngroups, cols=2)
    image = None
    for ax, ((task, reg_data, arch), part) in zip(axes, selections, strict=True):
        labels, matrix = [], []
        for _, setting in part.groupby(SETTING_KEYS, dropna=False, sort=True):
            weights = np.array([list(w) for w in setting["layer_weights"]], dtype=float)
            labels.append(f"{_label(setting.iloc[0])} (n={len(weights)})")
            matrix.append(weights.mean(axis=0))
        width = max(len(m) for m in matrix)
        grid = np.full((len(matrix), width), np.nan)
        for i, m in enumerate(matrix):
            grid[i, :len(m)] = m
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        names = ["stem"] + [f"stage {k}" for k in range(1, width)]
        ax.set_xticks(range(width), names)
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if value < 0.5 else "black")
        ax.set_title(f"{task} / {reg_data} ({arch})")
    fig.colorbar(image, ax=axes, label="softmax(γ) weight", shrink=0.8)
    fig.suptitle("Learned similarity-layer weights, mean over seeds", fontsize=13)
    return fig, None


def _spectrum(data, summary, best):
    """Radial Fourier power of the mean boundary perturbation: baseline vs every regularized setting (log scale)."""
    import numpy as np

    trials, spectrum = data
    if not len(spectrum) or not len(trials):
        return None, "no rows in spectrum/ (the boundary attack was not run)"
    keys = trials[["trial_id"] + GROUP_KEYS]
    rows = spectrum[["trial_id", "attack", "radius", "power"]].merge(keys, on="trial_id", how="inner")
    if not len(rows):
        return None, "spectrum rows belong to no finished trial"
    stats = rows.groupby(GROUP_KEYS + ["radius"], dropna=False)["power"].agg(["mean", "std", "count"]).reset_index()
    stats["sem"] = stats["std"] / np.sqrt(stats["count"])
    panels = [(key, part) for key, part in stats[stats["role"] == "trial"].groupby(["task", "reg_data", "arch"])]
    if not panels:
        return None, "no regularized trial has spectrum rows"
    fig, axes = _grid(len(panels), width=6.0, height=4.2, cols=2)
    for ax, ((task, reg_data, arch), part) in zip(axes, panels, strict=True):
        base = _baseline_rows(stats, task, arch).rename(columns={"radius": "eps"})
        if len(base):
            _band(ax, base, BASELINE_COLOR, "unregularized", marker="s")
        settings = list(part.groupby(SETTING_KEYS, dropna=False, sort=True))
        title = f"{task} / {reg_data} ({arch})"
        if len(settings) > MAX_LINES:  # keep it readable: the chosen settings only
            chosen = best[(best["task"] == task) & (best["reg_data"] == reg_data) & best["chosen"].astype(bool)]
            picked = {tuple(r) for r in chosen[SETTING_KEYS].itertuples(index=False)}
            settings = [(key, rows) for key, rows in settings if tuple(key) in picked][:MAX_LINES]
            title += ", chosen settings"
        for i, (_, setting) in enumerate(settings):
            _band(ax, setting.rename(columns={"radius": "eps"}), COLORS[i % len(COLORS)], _label(setting.iloc[0]))
        ax.set_yscale("log")
        ax.set_xlabel("radial spatial frequency (bin, low → high)")
        ax.set_ylabel("power")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Fourier spectrum of the mean boundary perturbation, mean ± SEM over seeds", fontsize=13)
    return fig, None
