"""Soak test: about 100 tiny trials under random injected faults, then count what was lost or duplicated.

    python scripts/soak.py [--seeds 25] [--out DIR] [--fault-seed 0]

The sweep: digits x digits, width 4, 2 epochs, alpha {1, 2, 4} x seeds + one baseline per seed (100 trials with
25 seeds), max_failures 2, on a local Ray started by each launch (the real `orchestrator launch` command, as a
subprocess). Faults, all real (pixelreg_core/hooks/faults.py, through PIXELREG_FAULTS; no result is edited):

- random per trial and epoch: exceptions (in-worker retry), NaN losses (a ConfigError: failed at once, not retried),
  worker SIGKILLs (Tune restarts the trial);
- an unwritable results folder: a launch on a results root that cannot be written (refused, exit 2, nothing
  written), and the `robustness` table folder made unwritable for a few seconds while trials finish;
- one driver SIGKILL part-way, then a relaunch; then one more relaunch for the trials that ended failed (each fault
  fires once, so they finish; they resume from their last epoch checkpoint);
- a full disk: a second, small sweep (one seed) where the disk fills mid-sweep, at the first write of its last
  trial (half the bytes, then ENOSPC, and every write after it until space is back: fault kind `enospc`). The
  launch must end with one `error:` line naming the folder, exit 2, with no partial file in any table; once space
  is back the same launch completes with nothing lost or repeated, and what finished before is not trained again.

Printed at the end: completed, retried, failed (after the first relaunch and at the end), resumed-from-epoch
counts, whether every interrupted trial resumed from its last finished epoch, rows lost, rows duplicated, Ray
processes left running, and, per launch, the number of trials running at once before and after its first dead
worker (from the launch's progress lines).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.localray import processes as local_ray  # noqa: E402
from pixelreg_core.hooks import faults  # noqa: E402

EPOCHS = 2
RATES = {"raise": 0.06, "nan": 0.02, "sigkill": 0.03}


def write_spec(folder: Path, seeds: int) -> Path:
    spec = {"name": "soak", "pairs": [{"task": "digits", "reg_data": "digits"}],
            "grid": {"th": [0.3], "alpha": [1.0, 2.0, 4.0]}, "seeds": seeds, "baseline": True,
            "train": {"width": 4, "epochs": EPOCHS, "train_images": 120, "test_images": 40, "reg_images": 40,
                      "batch_size": 32, "num_threads": 1},
            "attacks": {"gaussian": {"images": 20, "num_eps": 2}}, "resources": {"cpu": 1}, "max_failures": 2}
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def set_immutable(path: Path, on: bool) -> None:
    """Unwritable even for root (chattr +i) where we are root; a plain chmod otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
    else:
        path.chmod(0o555 if on else 0o755)


class Launch:
    """One `orchestrator launch` subprocess; remembers every Ray process it had, to check none is left."""

    seen: list[dict] = []

    def __init__(self, spec: Path, root: Path, log: Path, env: dict[str, str]):
        self.log = log
        args = [sys.executable, "-m", "orchestrator.cli", "launch", str(spec), "--results", str(root),
                "--no-dashboard", "--progress-every", "5"]
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def snapshot(self) -> None:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        found = []
        for p in kids:
            try:
                found.append({"pid": p.pid, "started": p.create_time(), "name": p.name()})
            except psutil.Error:
                continue
        Launch.seen = local_ray.merge(Launch.seen, found)

    def wait(self, until=None, poll: float = 1.0) -> int | None:
        """Wait for the end (returns its exit code) or for `until()` to hold (returns None)."""
        while self.proc.poll() is None:
            self.snapshot()
            if until is not None and until():
                return None
            time.sleep(poll)
        return self.proc.returncode


def rows(sweep: Path, table: str) -> pd.DataFrame:
    folder = sweep / table
    return pd.read_parquet(folder) if folder.is_dir() and any(folder.glob("*.parquet")) else pd.DataFrame()


PROGRESS = re.compile(r"running (\d+), failed \d+, pending (\d+)")


def slots_after_worker_death(log: Path) -> tuple[int, int] | None:
    """(most trials running at once before the launch's first dead worker, most after it while trials were still
    pending), from the launch's own progress lines; None when no worker died in that launch."""
    before, after, dead = 0, 0, False
    for line in log.read_text(errors="replace").splitlines():
        if "worker process has died" in line or "actor is dead" in line:
            dead = True
        match = PROGRESS.search(line)
        if match:
            running, pending = int(match.group(1)), int(match.group(2))
            if not dead:
                before = max(before, running)
            elif pending > 0:
                after = max(after, running)
    return (before, after) if dead else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=25, help="trials = 4 x seeds (default 25: 100 trials)")
    parser.add_argument("--out", default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--kill-after", type=int, default=30, help="SIGKILL the driver after this many trials rows")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="pixelreg-soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root, marks = work / "results", work / "marks"
    sweep = root / "soak"
    spec = write_spec(work, args.seeds)
    plan = {"dir": str(marks), "rates": RATES, "seed": args.fault_seed}
    env = {**os.environ, "PYTHONPATH": str(REPO), faults.ENV: json.dumps(plan)}
    print(f"soak: {4 * args.seeds} trials, {EPOCHS} epochs, fault rates per epoch {RATES}; work folder {work}")
    started = time.monotonic()

    # 1. an unwritable results root is refused before anything runs
    blocked_root = work / "unwritable"
    blocked_root.mkdir(exist_ok=True)
    set_immutable(blocked_root, True)
    try:
        code = Launch(spec, blocked_root, work / "launch0.log", env).wait()
    finally:
        set_immutable(blocked_root, False)
    print(f"unwritable results root: exit {code}, files written {sum(1 for _ in blocked_root.rglob('*'))}")

    # 2. the sweep, its driver SIGKILLed part-way
    first = Launch(spec, root, work / "launch1.log", env)
    first.wait(until=lambda: len(rows(sweep, "trials")) >= args.kill_after)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    # its workers may finish the epoch they are in before they notice the raylet is gone: the last finished
    # epoch is what the checkpoints say once they are dead (the agents outlive them; the relaunch stops those)
    deadline = time.monotonic() + 60
    while [p for p in local_ray.alive(Launch.seen) if "Agent" not in p["name"]] and time.monotonic() < deadline:
        time.sleep(0.5)
    running = sweep / "checkpoints" / "running"
    at_kill = {p.stem: int(torch.load(p, weights_only=True)["epochs_done"]) for p in running.glob("*.pt")}
    print(f"driver SIGKILLed with {len(rows(sweep, 'trials'))} trials rows; {len(at_kill)} trial(s) had an epoch "
          "checkpoint")

    # 3. relaunch; the robustness folder is unwritable for a few seconds while trials finish
    second = Launch(spec, root, work / "launch2.log", env)
    n0 = len(rows(sweep, "trials"))
    second.wait(until=lambda: len(rows(sweep, "trials")) >= n0 + 5)
    set_immutable(sweep / "robustness", True)
    try:
        deadline = time.monotonic() + 6
        second.wait(until=lambda: time.monotonic() > deadline)
    finally:
        set_immutable(sweep / "robustness", False)
    code2 = second.wait()
    after_second = rows(sweep, "trials")
    not_ok = after_second[after_second["status"] != "ok"]
    failed_2 = len(not_ok)
    kinds = not_ok["error"].fillna("").map(lambda e: e.split(":", 1)[0]).value_counts().to_dict()
    print(f"relaunch 1: exit {code2}, {failed_2} trial(s) failed or blocked, by error: {kinds}")

    # 4. relaunch for the failed ones
    code3 = Launch(spec, root, work / "launch3.log", env).wait()
    time.sleep(2)
    print(f"relaunch 2: exit {code3}")

    trials, epochs, robust = rows(sweep, "trials"), rows(sweep, "epochs"), rows(sweep, "robustness")
    expected = 4 * args.seeds
    ok = trials[trials["status"] == "ok"]
    fired = [m.name.rsplit("-", 2) for m in marks.glob("*")] if marks.is_dir() else []
    by_kind = {k: sum(1 for _, _, kind in fired if kind == k) for k in faults.KINDS}
    interrupted: dict[str, int] = dict(at_kill)  # trial -> last finished epoch when it was interrupted
    for trial, epoch, kind in fired:
        if not (kind == "nan" and int(epoch) == EPOCHS):  # NaN weights after the last epoch are never used
            interrupted[trial] = max(interrupted.get(trial, 0), int(epoch))
    final = trials.set_index("trial_id")
    wrong_resume = [t for t, e in interrupted.items() if t in final.index and final.loc[t, "status"] == "ok"
                    and int(final.loc[t, "resumed_from_epoch"] or 0) != e]
    per_trial_rob = robust.groupby("trial_id").size() if len(robust) else pd.Series(dtype=int)
    rob_expected = int(per_trial_rob.mode().iloc[0]) if len(per_trial_rob) else 0
    lost = (expected - len(trials)) + sum(EPOCHS - int((epochs["trial_id"] == t).sum()) for t in ok["trial_id"]) \
        + sum(rob_expected - int(per_trial_rob.get(t, 0)) for t in ok["trial_id"])
    duplicated = int(trials["trial_id"].duplicated().sum() + epochs.duplicated(["trial_id", "epoch"]).sum()
                     + robust.duplicated(["trial_id", "attack", "variant", "eps", "repeat", "metric"]).sum())
    slots = {log.name: slots_after_worker_death(log) for log in sorted(work.glob("launch*.log"))}
    left = local_ray.alive(Launch.seen)

    print("\n=== soak figures ===")
    print(f"trials expected {expected}, rows {len(trials)}: completed {len(ok)}, "
          f"failed/blocked at the end {len(trials) - len(ok)}")
    print(f"faults fired: exceptions {by_kind['raise']}, NaN losses {by_kind['nan']}, worker SIGKILLs "
          f"{by_kind['sigkill']}, driver SIGKILL 1 ({len(at_kill)} trial(s) running), unwritable folder 2")
    print(f"retried (an exception or worker kill, then finished ok): "
          f"{sum(1 for t, _, k in fired if k in ('raise', 'sigkill') and t in set(ok['trial_id']))}")
    print(f"failed after relaunch 1: {failed_2} (NaN losses are not retried, and a write into the unwritable folder "
          f"fails every quick retry; relaunch 2 finished them all: {len(trials) - len(ok) == 0})")
    print(f"resumed from an epoch checkpoint: {int((ok['resumed_from_epoch'].fillna(0) > 0).sum())} trials; "
          f"interrupted trials not resumed from their last finished epoch: {len(wrong_resume)} {wrong_resume[:5]}")
    print(f"rows lost: {lost}; rows duplicated: {duplicated}")
    print(f"Ray processes of the launches still running: {len(left)}")
    for name, measured in slots.items():
        if measured:
            print(f"{name}: trials running at once (2 slots): at most {measured[0]} before its first dead worker, "
                  f"at most {measured[1]} after it while trials were pending")
    print(f"exit codes: unwritable root {code}, relaunch 1 {code2}, relaunch 2 {code3}; "
          f"wall {time.monotonic() - started:.0f} s")
    disk_ok = disk_full_case(work)
    local_ray.stop(local_ray.alive(Launch.seen))
    return 0 if lost == 0 and duplicated == 0 and not wrong_resume and not left and disk_ok else 1


def disk_full_case(work: Path) -> bool:
    """5. The disk fills during a launch (PIXELREG_FAULTS kind enospc) and stays full until the marker is removed;
    prints the figures and returns whether the launch ended as promised and the relaunch completed whole."""
    import pyarrow.parquet as pq

    from orchestrator.spec.expand import expand
    from orchestrator.spec.load import load_spec
    from pixelreg_core.results import TABLES

    folder = work / "disk-full"
    folder.mkdir(exist_ok=True)
    spec, root, marks = write_spec(folder, 1), folder / "results", folder / "marks"
    sweep = root / "soak"
    last = expand(load_spec(spec), str(sweep))[-1].trial_id  # mid-sweep: others run or finish before it
    plan = {"dir": str(marks), "faults": [{"trial": last, "kind": "enospc"}]}
    env = {**os.environ, "PYTHONPATH": str(REPO), faults.ENV: json.dumps(plan)}
    log = folder / "launch-full.log"
    code = Launch(spec, root, log, env).wait()
    before = {p.name: p.stat().st_mtime_ns for p in (sweep / "trials").glob("*.parquet")}
    errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error:")]
    fired = (marks / faults.DISK_FULL_MARKER).exists()
    partial = []
    for table in TABLES:
        for path in (sweep / table).glob("*.parquet") if (sweep / table).is_dir() else []:
            try:
                pq.read_table(path)
            except Exception:  # noqa: BLE001 - any unreadable file is what this case counts
                partial.append(path.name)
    if fired:
        (marks / faults.DISK_FULL_MARKER).unlink()  # space is back
    code2 = Launch(spec, root, folder / "launch-after.log", env).wait()
    trials, epochs = rows(sweep, "trials"), rows(sweep, "epochs")
    expected = 4  # 3 alphas + 1 baseline, one seed
    complete = len(trials) == expected and set(trials["status"]) == {"ok"} and trials["trial_id"].is_unique
    repeated = int(epochs.duplicated(["trial_id", "epoch"]).sum()) if len(epochs) else 0
    retrained = [name for name, mtime in before.items() if (sweep / "trials" / name).stat().st_mtime_ns != mtime]
    print(f"disk full: fault fired {fired}, exit {code}, error lines {len(errors)} "
          f"({errors[0][:120] if errors else '-'}), partial files {len(partial)}, trials finished before it "
          f"{len(before)}; after space is back: exit {code2}, trials ok "
          f"{int((trials['status'] == 'ok').sum()) if len(trials) else 0}/{expected}, finished ones trained again "
          f"{len(retrained)}, epoch rows repeated {repeated}")
    return (fired and code == 2 and len(errors) == 1 and "no space left" in errors[0] and not partial
            and code2 == 0 and complete and repeated == 0 and not retrained)


if __name__ == "__main__":
    raise SystemExit(main())
