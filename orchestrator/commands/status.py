"""`orchestrator status ROOT/<name>`: where a sweep stands, read from its Parquet files only.

Works while the sweep runs (every file is written atomically) and after the driver died: no Ray, no Tune state.
The expected total comes from the spec.yaml that launch saved next to the results.
"""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.analysis import racelog
from orchestrator.analysis.timings import render_text as timing_lines
from orchestrator.errors import UserError
from orchestrator.spec.expand import expand, race_start, searched_runs
from orchestrator.spec.load import parse_spec, parse_yaml
from orchestrator.sweepdir.tables import SPEC_FILE, filesystem, quarantined, read_table, read_text

NOT_OK = ("failed", "blocked")  # listed with their errors; blocked: not run because its source model failed
COLUMNS = ["role", "task", "reg_data", "th", "alpha", "seed", "status", "clean_acc", "wall_s", "train_s", "eval_s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", help="a sweep's results folder, e.g. results/quickstart")
    parser.add_argument("--all", action="store_true", help="list every trial (default: the first 50 and failures)")
    parser.add_argument("--everything", action="store_true",
                        help="every model the folder holds (default: those of its current spec)")


def expected_total(sweep_dir: str) -> int | None:
    """Trials the saved spec expands to (optuna: plus its search budget); None when the spec cannot be read."""
    text = read_text(sweep_dir, SPEC_FILE)
    if text is None:
        return None
    try:
        spec = parse_spec(parse_yaml(text, SPEC_FILE), SPEC_FILE)
        configs = expand(spec, sweep_dir)
    except Exception:  # noqa: BLE001 - status must work even with an unreadable spec
        return None
    total = len(configs)
    if spec.race is not None:  # a race: the trials its rounds asked for so far (round 0 before it starts)
        record = racelog.read(sweep_dir)
        total = len(racelog.asked(record)) if record else len(race_start(spec, configs))
    return total + searched_runs(spec)


def summarize(sweep_dir: str, everything: bool = False) -> dict[str, Any]:
    """Counts by status and by role, and the per-trial table (a DataFrame), of the current spec's models (all the
    folder holds with `everything`)."""
    from orchestrator.analysis.selection import current, restrict

    trials = restrict(read_table(sweep_dir, "trials"), None if everything else current(sweep_dir), "trials")
    total = expected_total(sweep_dir)
    by_status = trials["status"].value_counts().to_dict()
    by_role = trials.groupby(["role", "status"]).size().to_dict() if len(trials) else {}
    pending = None if total is None else max(0, total - len(trials))
    return {"trials": trials, "total": total, "by_status": by_status, "by_role": by_role, "pending": pending,
            "chosen": chosen_lines(sweep_dir), "race": racelog.describe(racelog.read(sweep_dir))}


def chosen_lines(sweep_dir: str) -> list[str]:
    """The choice per pair and attack with how sure it is, from best.parquet (none before the first aggregate, or
    when it cannot be read)."""
    from orchestrator.analysis.aggregate import describe_chosen, read_derived

    best = read_derived(sweep_dir, "best.parquet")
    return describe_chosen(best) if best is not None else []


def render(info: dict[str, Any], show_all: bool = False) -> str:
    import pandas as pd

    trials = info["trials"]
    lines = []
    total = info["total"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(info["by_status"].items())) or "no trials finished yet"
    lines.append(f"trials: {counts}; pending {info['pending'] if total is not None else '?'}"
                 f" of {total if total is not None else '? (spec.yaml unreadable)'}")
    for (role, status), n in sorted(info["by_role"].items()):
        lines.append(f"  {role:<12} {status:<8} {n}")
    lines += info.get("race", [])
    if len(trials):
        table = trials.sort_values(["role", "task", "reg_data", "th", "alpha", "seed"])
        shown = table if show_all or len(table) <= 50 else pd.concat(
            [table.head(50), table[table["status"].isin(NOT_OK)]]).drop_duplicates("trial_id")
        with pd.option_context("display.max_rows", None, "display.width", 160):
            lines.append(shown[COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if len(shown) < len(table):
            lines.append(f"... {len(table) - len(shown)} more (--all lists every trial)")
        failed = trials[trials["status"].isin(NOT_OK)]
        for row in failed.itertuples():
            lines.append(f"{row.status} {row.trial_id}: {row.error}")
        lines += timing_lines(trials)
    if info.get("chosen"):
        lines.append("chosen, as of the last aggregate (best.parquet; `orchestrator aggregate` refreshes it):")
        lines += [f"  {line}" for line in info["chosen"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import pyarrow.fs as pafs

    fs, base = filesystem(args.sweep_dir)  # a local folder or a URI prefix (s3://bucket/prefix/<name>?...)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise UserError(f"{args.sweep_dir}: no such sweep folder; pass ROOT/<name>, e.g. results/quickstart")
    from orchestrator.analysis.selection import spec_line

    line = spec_line(args.sweep_dir)  # which spec the counts below are of, and what changed from the one before
    if line:
        print(line)
    print(render(summarize(args.sweep_dir, everything=args.everything), show_all=args.all))
    aside = quarantined(args.sweep_dir)  # after the reads above, which may have added to it
    if aside:
        print(f"quarantined: {len(aside)} unreadable file(s) moved to quarantine/ (what each held is redone by the "
              "next launch or evaluate; delete them once you no longer need them):")
        print("\n".join(f"  {name}" for name in aside))
    return 0
