"""A race's record in its sweep folder: `race.json`, which round asked for which seeds and why the race stopped.

The trials themselves are ordinary models of the folder (their rows are the state, as for every sweep); this file
says why each exists. It is rewritten whole (atomically, pixelreg_core.results.write_bytes) at every decision that
adds seeds, before those seeds start, so a launch killed mid-race leaves a record whose last round lists the
trials a relaunch must finish: nothing the race asked for is lost, and a relaunch never asks again for a seed it
already asked for.

Format: {"rounds": [{"round": 0, "at": ISO time, "trials": [trial ids], "seeds": {arm: [seeds]},
"why": "start" | {selection: verdict}}], "stopped": "decided" | "max reached" | null, "verdicts": {selection:
verdict}} where a verdict is {"chosen": "Th 0.2 alpha 4" | "none", "p_chosen": 0.93, "decided": true}.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pixelreg_core.results import join, read_bytes, write_bytes

RACE_FILE = "race.json"


def read(sweep_dir: str) -> dict[str, Any] | None:
    """The folder's race record, or None when it holds none (not a race, or not started)."""
    data = read_bytes(join(sweep_dir, RACE_FILE))
    return None if data is None else json.loads(data.decode())


def empty() -> dict[str, Any]:
    return {"rounds": [], "stopped": None, "verdicts": {}}


def asked(record: dict[str, Any] | None) -> set[str]:
    """Every trial id some round of the record asked for."""
    return {tid for r in (record or empty())["rounds"] for tid in r["trials"]}


def add_round(sweep_dir: str, record: dict[str, Any], trials: list[str], seeds: dict[str, list[int]],
              why: Any) -> dict[str, Any]:
    """Append a round (the trial ids it asks for, per arm the seeds it adds) and write the record."""
    record["rounds"].append({"round": len(record["rounds"]), "at": _now(), "trials": trials, "seeds": seeds,
                             "why": why})
    record["stopped"] = None
    write(sweep_dir, record)
    return record


def finish(sweep_dir: str, record: dict[str, Any], stopped: str, verdicts: dict[str, Any]) -> None:
    """Record why the race stopped and the final verdict of every selection it decides."""
    record["stopped"] = stopped
    record["verdicts"] = verdicts
    record["stopped_at"] = _now()
    write(sweep_dir, record)


def write(sweep_dir: str, record: dict[str, Any]) -> None:
    write_bytes(join(sweep_dir, RACE_FILE), (json.dumps(record, indent=1, sort_keys=True, default=str) + "\n").encode())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def describe(record: dict[str, Any] | None) -> list[str]:
    """Lines for status, the report and the launch's end: rounds, trials asked for, and why the race stopped."""
    if record is None:
        return []
    rounds = record["rounds"]
    n = len(asked(record))
    stopped = record.get("stopped")
    head = (f"race: {len(rounds)} round(s), {n} trial(s) asked for; "
            + (f"stopped: {stopped}" if stopped else "still running (or interrupted: a relaunch goes on)"))
    lines = [head]
    for selection, v in sorted(record.get("verdicts", {}).items()):
        lines.append(f"  {selection}: chosen {v['chosen']} (p_chosen {v['p_chosen']:.2f}: "
                     f"{'decided' if v['decided'] else 'undecided'})")
    return lines
