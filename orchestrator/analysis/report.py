"""`orchestrator report ROOT/<name> [--out FILE]`: one self-contained HTML page for a sweep.

Self-contained because it is mailed around and opened on laptops without the results folder: the figures are
embedded as base64 PNG, the style is inline, nothing is fetched. It re-runs the aggregator first whenever the
aggregate files are missing or older than the newest trial file, so the page never shows stale numbers.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from pathlib import Path

from orchestrator.analysis.aggregate import (
    DEFAULT_A0,
    SELECTION_KEYS,
    aggregate_sweep,
    describe_chosen,
    describe_epoch_spread,
    read_derived,
)
from orchestrator.errors import UserError
from orchestrator.spec.schema import DEFAULT_CONFIDENCE

SOURCE_TABLES = ("trials", "robustness", "spectrum")
CHOSEN_COLUMNS = ["task", "reg_data", "arch", "attack", "target", "range", "th", "alpha", "n", "r0_over_u0",
                  "r0_over_u0_low", "r0_over_u0_high", "rd_over_ud", "rd_over_ud_low", "rd_over_ud_high", "d_used",
                  "d_source", "p_acceptable", "p_chosen", "decided", "diff", "ci_low", "ci_high", "p_holm",
                  "significant", "auc_ratio", "auc_rank"]
# Dashed in the row that stands for "no acceptable setting": they describe a setting, and none was chosen.
SETTING_VALUES = ["th", "alpha", "r0_over_u0", "r0_over_u0_low", "r0_over_u0_high", "rd_over_ud", "rd_over_ud_low",
                  "rd_over_ud_high", "p_acceptable", "p_chosen", "diff", "ci_low", "ci_high", "p_holm", "auc_ratio"]
CONFIRM_TABLE = ["task", "reg_data", "arch", "attack", "th", "alpha", "r0_over_u0", "rd_over_ud", "held_out_seeds",
                 "confirmed_r0_over_u0", "confirmed_rd_over_ud"]
FIGURE_CAPTIONS = {
    "curves": "Accuracy vs eps per attack: unregularized baseline vs the (Th, α) chosen for that attack; "
              "bands are ± 1 SEM over seeds (papers' Figs. 2-3). The dotted line marks the distortion D. Black "
              "rings mark the eps where the shown setting differs from the baseline: Welch t-test over the "
              "per-seed values at that eps, p < 0.05 after Holm-Bonferroni over the eps of that curve.",
    "tradeoff": "R0/U0 vs RD/UD for every (Th, α) and attack; the shaded region is acceptable "
                "(R0/U0 ≥ A0 and RD/UD > 1), the star is the chosen setting (papers' Fig. 4).",
    "boundary": "Boundary attack score: median squared L2 distance per pixel to the nearest adversarial found.",
    "corruptions": "Accuracy on common corruptions, averaged within low / medium / high frequency groups.",
    "layer_weights": "Learned layer weights softmax(γ) of the similarity pathway, mean over seeds.",
    "spectrum": "Radial Fourier power of the mean boundary perturbation (low frequencies on the left).",
}
MAX_TABLE_ROWS = 3000
STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto; max-width: 1320px;
       color: #222; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px;
margin-top: 1.8em; }
.meta { color: #666; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0; }
.wide { overflow-x: auto; max-width: 100%; margin: 8px 0; }  /* a table wider than the page scrolls, not the page */
.wide td { white-space: nowrap; }
pre { background: #f6f8fa; padding: 8px 12px; overflow-x: auto; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 18px 0 30px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 4px; }
details summary { cursor: pointer; font-weight: 600; margin: 8px 0; }
.failed { color: #b00020; } .note { background: #f6f8fa; padding: 8px 12px; border-left: 4px solid #8ab; }
"""


def needs_aggregate(root: Path) -> bool:
    """True when summary/best/figures are missing or older than the newest trial file."""
    outputs = [root / "summary.parquet", root / "best.parquet"]
    if not all(p.exists() for p in outputs) or not (root / "figures").is_dir():
        return True
    newest_input = max((p.stat().st_mtime for table in SOURCE_TABLES for p in (root / table).glob("*.parquet")),
                       default=0.0)
    return min(p.stat().st_mtime for p in outputs) < newest_input


def build_report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None, a0: float | None = None,
                 distortions: dict[str, float] | None = None, confirm_seeds: int | None = None,
                 everything: bool = False) -> str:
    """Aggregate if needed, then write the HTML page (atomically). Returns its path."""
    from orchestrator.analysis.selection import current, restrict
    from pixelreg_core.results import read_table

    root = Path(sweep_dir)
    if not (root / "trials").is_dir():
        raise UserError(f"{root}: no trials/ folder here; pass a sweep's results folder such as results/mnist_grid")
    if a0 is not None or distortions or confirm_seeds is not None or everything or needs_aggregate(root):
        aggregate_sweep(root, a0=DEFAULT_A0 if a0 is None else a0, distortions=distortions,
                        confirm_seeds=confirm_seeds, everything=everything)
    trials = restrict(read_table(root, "trials"), None if everything else current(str(root)), "trials")
    summary, best = read_derived(root, "summary.parquet"), read_derived(root, "best.parquet")
    if summary is None or best is None:  # damaged (now quarantined): aggregate writes them again
        aggregate_sweep(root, a0=DEFAULT_A0 if a0 is None else a0, distortions=distortions,
                        confirm_seeds=confirm_seeds, everything=everything)
        summary, best = read_derived(root, "summary.parquet"), read_derived(root, "best.parquet")
    page = render(root, trials, summary, best)
    path = Path(out) if out else root / "report.html"
    from pixelreg_core.results import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------------------------------- rendering


def render(root: Path, trials, summary, best) -> str:
    name = html.escape(root.name)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    a0 = best["a0"].iloc[0] if len(best) else DEFAULT_A0
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pixelreg report: {name}</title><style>{STYLE}</style></head><body>",
        f"<h1>pixelreg sweep report: {name}</h1>",
        f'<p class="meta">{html.escape(str(root.resolve()))} &middot; generated {now}</p>',
        "<h2>Sweep status</h2>", spec_section(root), status_section(trials), race_section(root),
        epoch_spread_section(summary), timing_section(trials),
        "<h2>Best (Th, α) per task, regularization set and attack</h2>", chosen_section(best, a0),
        "<h2>Figures</h2>", figures_section(root / "figures"),
        "<h2>Tables</h2>",
        details("All candidate settings (best.parquet)", table_html(best)),
        details(f"Summary: mean ± SEM over seeds (summary.parquet, {len(summary)} rows)", table_html(summary)),
        "</body></html>",
    ]
    return "\n".join(parts)


def details(title: str, body: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{body}</details>"


def table_html(frame) -> str:
    if not len(frame):
        return "<p>(empty)</p>"
    note = ""
    if len(frame) > MAX_TABLE_ROWS:
        note = f"<p>first {MAX_TABLE_ROWS} of {len(frame)} rows; the Parquet file has them all.</p>"
        frame = frame.head(MAX_TABLE_ROWS)
    frame = frame.astype({c: "float64" for c, t in frame.dtypes.items() if str(t) == "Int64"})  # <NA> -> dash
    table = frame.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}", border=0)
    return f'{note}<div class="wide">{table}</div>'  # scrolls sideways inside the page when wider than it


def spec_section(root: Path) -> str:
    """Which spec the page is of (its version, what changed from the one before) and its text, as it ran (with
    any command-line overrides applied)."""
    from orchestrator.analysis.selection import spec_line

    line = spec_line(str(root))
    path = root / "spec.yaml"
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    out = f"<p>{html.escape(line)}</p>" if line else ""
    if text is not None:
        out += details("The spec that ran (spec.yaml)", f"<pre>{html.escape(text)}</pre>")
    return out


def status_section(trials) -> str:
    """Trial counts by role and status, and one line per failed trial."""
    if not len(trials):
        return "<p>No trial has finished yet.</p>"
    counts = (trials.assign(status=trials["status"].fillna("unknown"))
              .groupby(["role", "status"], dropna=False).size().unstack(fill_value=0)
              .rename_axis(columns=None).reset_index())
    body = table_html(counts)
    failed = trials[trials["status"].fillna("") != "ok"]
    if len(failed):
        columns = ["trial_id", "task", "reg_data", "th", "alpha", "seed", "error"]
        body += (f'<p class="failed">{len(failed)} failed trial(s), left out of every number below:</p>'
                 + table_html(failed[columns]))
    return body


def race_section(root) -> str:
    """A race's rounds, why it stopped and its final verdicts (race.json); "" for a sweep with a fixed seed count."""
    from orchestrator.analysis import racelog

    lines = racelog.describe(racelog.read(str(root)))
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:])
    return f"<p>{html.escape(lines[0])}</p>" + (f"<ul>{items}</ul>" if items else "")


def epoch_spread_section(summary) -> str:
    """A warning per group whose seeds were reported at widely spread epochs (aggregate.chosen_epochs); none: ""."""
    lines = describe_epoch_spread(summary)
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<p class="failed">Chosen epochs spread widely across seeds:</p><ul>{items}</ul>'


def timing_section(trials) -> str:
    """Where the time went (analysis/timings.py): per-phase seconds over the ok trials; nothing when untimed."""
    from orchestrator.analysis.timings import sweep_span, time_breakdown

    table = time_breakdown(trials)
    if not len(table):
        return ""
    span = sweep_span(trials)
    note = "" if span is None else (f"<p>{span['trials']} trials over {span['span_s'] / 60:.1f} min from the first "
                                    f"start to the last finish; trial seconds summed {span['wall_s']:.0f} s.</p>")
    return "<h3>Where the time went</h3>" + note + table_html(table)


def chosen_section(best, a0: float) -> str:
    note = (f'<p class="note">A setting is acceptable when R0/U0 &ge; A0 = {a0:g} (clean accuracy kept) and '
            "RD/UD &gt; 1 (more accurate than the unregularized baseline at distortion D); the chosen one has the "
            "largest RD/UD. Baselines are seed-averaged. The AUC rank orders settings by the area under the "
            "accuracy-vs-eps curve relative to the baseline (1 = best). diff = RD - UD with its 95% Welch "
            "interval [ci_low, ci_high]; p_holm is the two-sided Welch t-test over the per-seed values (repeats "
            "averaged first), Holm-Bonferroni-adjusted over the settings of that row's task, regularization set, "
            "architecture and attack; significant = p_holm &lt; 0.05. Fewer than two seeds on either side: no "
            "test (dash). How sure the choice is: each ratio [90%] comes with its 90% interval from the seeds of "
            "both sides; p_acceptable and p_chosen are the probabilities that the setting is "
            f"acceptable and that the rule chooses it when the seeds are resampled; decided: p_chosen &ge; the "
            f"spec's confidence ({_confidence(best)}).</p>")
    if not len(best):
        return note + "<p>No regularized setting with a baseline yet.</p>"
    columns = [c for c in CHOSEN_COLUMNS if c in best.columns]  # a best.parquet written before a column existed
    rows = []
    for _, part in best.groupby(SELECTION_KEYS, dropna=False, sort=True):
        chosen = part[part["chosen"].astype(bool)]
        if len(chosen):
            rows.append(chosen[columns])
        else:
            row = part.head(1)[columns].astype(object)  # object: a bool or Int64 column can then hold a dash
            for column in SETTING_VALUES + ["auc_rank", "significant"]:
                if column in columns:
                    row[column] = None
            rows.append(row)
    import pandas as pd

    table = pd.concat(rows, ignore_index=True).infer_objects()  # numbers back to float columns for formatting
    table["auc_rank"] = pd.to_numeric(table["auc_rank"], errors="coerce")  # None -> NaN, printed as a dash
    for column in ("significant", "decided"):
        if column in table:
            table[column] = table[column].map({True: "yes", False: "no"})
    for column in ("r0_over_u0", "rd_over_ud"):  # one cell "value [low, high]": a narrower table
        if f"{column}_low" in table:
            table[column] = [_with_interval(*v) for v in table[[column, f"{column}_low", f"{column}_high"]].values]
            table = table.drop(columns=[f"{column}_low", f"{column}_high"]).rename(
                columns={column: f"{column} [90%]"})
    return (note + choice_lines(best) + table_html(table)
            + "<p>A row of dashes: no acceptable setting for that attack.</p>" + confirm_section(best))


def _with_interval(value, low, high) -> str | None:
    """'0.911 [0.872, 0.951]'; the value alone without an interval; None (a dash) without a value."""
    import pandas as pd

    if value is None or pd.isna(value):
        return None
    return f"{value:.4g}" + (f" [{low:.3f}, {high:.3f}]" if not pd.isna(low) else "")


def _confidence(best) -> str:
    return f"{best['confidence'].iloc[0] if 'confidence' in best and len(best) else DEFAULT_CONFIDENCE:g}"


def choice_lines(best) -> str:
    """The choice per pair and attack in words, with how sure it is (the lines `aggregate` and `status` print)."""
    lines = describe_chosen(best)
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>" if lines else ""


def confirm_section(best) -> str:
    """The setting chosen on the training seeds and its ratios on the held-out seeds (aggregate --confirm-seeds)."""
    if "held_out_seeds" not in best.columns or not best["held_out_seeds"].astype(bool).any():
        return ""
    note = ('<h3>Does the choice hold on seeds it never saw?</h3><p class="note">Each (Th, α) below was chosen by '
            "the same rule on all seeds but the held-out ones (the highest seed ids); r0_over_u0 and rd_over_ud "
            "are on all seeds, the confirmed_ ratios on the held-out seeds alone, against their baseline's mean. "
            "The choice holds when the confirmed ratios pass the rule too.</p>")
    table = best[best["train_chosen"].astype(bool)][CONFIRM_TABLE]
    if not len(table):
        return note + "<p>No acceptable setting on the training seeds.</p>"
    return note + table_html(table.reset_index(drop=True))


def figures_section(folder: Path) -> str:
    order = list(FIGURE_CAPTIONS)  # main results first: curves, trade-off, then the diagnostics
    pngs = sorted(folder.glob("*.png") if folder.is_dir() else [],
                  key=lambda p: (next((i for i, k in enumerate(order) if p.stem.startswith(k)), len(order)), p.name))
    if not pngs:
        return "<p>No figures (no data to draw yet).</p>"
    out = []
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        kind = next((k for k in FIGURE_CAPTIONS if png.stem.startswith(k)), "")
        caption = html.escape(FIGURE_CAPTIONS.get(kind, png.stem))
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(png.stem)}">'
                   f"<figcaption><b>{html.escape(png.name)}</b>: {caption}</figcaption></figure>")
    return "\n".join(out)
