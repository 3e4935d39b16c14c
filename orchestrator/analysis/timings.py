"""Where a sweep's time went, from its trials table: training, each attack, the rest, and the sweep's span.

The trainer records per trial `wall_s` (the whole trial), `cpu_s` (process CPU seconds), `train_s`, `eval_s` and
`attack_s` (JSON: seconds per attack); this module sums them over the trials that finished ok, for
`orchestrator status` and the report. Trials written before these columns existed are left out of the phase
rows (their `train_s` is null) and counted in the note.
"""

from __future__ import annotations

import json
from typing import Any

OTHER = "other (data, target, checkpoint, writes)"


def _attack_seconds(text: Any) -> dict[str, float]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        return {str(k): float(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def time_breakdown(trials) -> Any:
    """One row per phase (training, attack <name> ..., other, trial total) over the ok trials that have timings:
    phase, trials, total_s (summed over trials), mean_s (per trial), share (of the summed wall_s). Empty (with
    those columns) when no such trial exists."""
    import pandas as pd

    columns = ["phase", "trials", "total_s", "mean_s", "share"]
    if not len(trials) or "train_s" not in trials.columns:
        return pd.DataFrame(columns=columns)
    timed = trials[(trials["status"] == "ok") & trials["train_s"].notna()]
    if not len(timed):
        return pd.DataFrame(columns=columns)
    wall = float(timed["wall_s"].sum())
    n = len(timed)
    phases: dict[str, float] = {"training": float(timed["train_s"].sum())}
    ran: dict[str, int] = {"training": n}  # an attack's mean is over the trials that ran it (sources skip FGSM)
    for text in timed["attack_s"]:
        for name, sec in _attack_seconds(text).items():
            phases[f"attack {name}"] = phases.get(f"attack {name}", 0.0) + sec
            ran[f"attack {name}"] = ran.get(f"attack {name}", 0) + 1
    # the rest of wall_s: data and target, model build, moving the test set, checkpoint and table writes
    phases[OTHER] = wall - sum(phases.values())
    phases["trial total (wall_s)"] = wall
    rows = [{"phase": k, "trials": ran.get(k, n), "total_s": v, "mean_s": v / ran.get(k, n),
             "share": v / wall if wall > 0 else None} for k, v in phases.items()]
    return pd.DataFrame(rows, columns=columns)


def sweep_span(trials) -> dict[str, float] | None:
    """Wall time from the first trial's start to the last one's finish (finished_at - wall_s), the summed trial
    seconds and CPU seconds, over every trial with a wall_s; None when there is none."""
    import pandas as pd

    if not len(trials) or "wall_s" not in trials.columns:
        return None
    timed = trials[trials["wall_s"].notna() & trials["finished_at"].notna()]
    if not len(timed):
        return None
    finished = pd.to_datetime(timed["finished_at"], utc=True)
    started = finished - pd.to_timedelta(timed["wall_s"], unit="s")
    cpu = timed["cpu_s"] if "cpu_s" in timed.columns else pd.Series(dtype=float)
    return {"span_s": (finished.max() - started.min()).total_seconds(), "wall_s": float(timed["wall_s"].sum()),
            "cpu_s": float(cpu.sum()) if cpu.notna().any() else None, "trials": len(timed)}


def render_text(trials) -> list[str]:
    """The lines `orchestrator status` prints under "where the time went"; none when nothing is timed yet."""
    table = time_breakdown(trials)
    span = sweep_span(trials)
    if not len(table) and span is None:
        return []
    lines = ["where the time went:"]
    if span is not None:
        text = (f"  {span['trials']} trials over {span['span_s'] / 60:.1f} min (first start to last finish); "
                f"trial seconds summed {span['wall_s']:.0f} s")
        if span["cpu_s"] is not None:
            share = span["cpu_s"] / max(span["wall_s"], 1e-9)
            text += f", CPU seconds {span['cpu_s']:.0f} s ({share:.0%} of them; under 100%: waiting for a core)"
        lines.append(text)
    if len(table):
        n = int(table["trials"].iloc[0])
        lines.append(f"  {n} ok trials with timings; the mean is over the trials that ran the phase:")
        for r in table.itertuples():
            share = "" if r.share is None else f"  {r.share:5.1%}"
            lines.append(f"    {r.phase:<42} mean {r.mean_s:8.1f} s  total {r.total_s:8.0f} s{share}"
                         f"  ({r.trials} trials)")
    return lines
