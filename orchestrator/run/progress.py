"""A live progress line for a sweep, printed from inside Tune's driver loop.

Counts are in run_trial units (one TrialConfig = one unit), so an optuna sample that trains several seeds counts
as several units. ETA: the work left over the concurrent slots, where a pending unit takes the mean unit time so
far and a running trial takes that mean less the time it has already run (never below zero); and never less than
the running trial with the most left. Counting the running trials' elapsed time keeps the ETA falling between
completions instead of freezing at the last one's value. Crude, but it only needs numbers the driver already has.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def print_line(message: str) -> None:
    """The launch's log: prints at call time. Not `print` itself: Tune pickles its callbacks (and so this log)
    with every Tuner, and after a node loss Ray has replaced `builtins.print` in the driver, so a reference to the
    original no longer pickles ("not the same object as builtins.print") and the next phase could not start."""
    print(message, flush=True)


class Progress:
    """Sweep-wide counters, shared by the Tune phases of one launch."""

    def __init__(self, total: int, already_done: int, slots: int, log: Callable[[str], None] = print_line):
        self.total = total
        self.already_done = already_done
        self.slots = max(1, slots)
        self.log = log
        self.done = 0
        self.failed = 0
        self.running = 0
        self.unit_seconds: list[float] = []
        self.started = time.monotonic()
        self.running_since: dict[str, tuple[float, int]] = {}  # Tune trial id -> (monotonic start, units)

    @property
    def pending(self) -> int:
        return max(0, self.total - self.already_done - self.done - self.failed - self.running)

    def eta(self, now: float | None = None) -> float | None:
        if not self.unit_seconds:
            return None
        now = time.monotonic() if now is None else now
        mean = sum(self.unit_seconds) / len(self.unit_seconds)
        running_left = [max(units * mean - (now - since), 0.0) for since, units in self.running_since.values()]
        untimed = max(0, self.running - sum(units for _, units in self.running_since.values()))
        work = sum(running_left) + (untimed + self.pending) * mean
        return max(work / self.slots, max(running_left, default=0.0))

    def line(self) -> str:
        return (f"[{format_duration(time.monotonic() - self.started)}] done {self.already_done + self.done}"
                f"/{self.total} (this run {self.done}), running {self.running}, failed {self.failed}, "
                f"pending {self.pending}, ETA {format_duration(self.eta())}")
