"""A real launch in a subprocess, with its own local Ray: loopback only, one launch per sweep folder, and nothing
left running however the launch ends (SIGKILL then relaunch, SIGTERM).

One test, two launches of the same tiny sweep (each starts a local Ray: 15-60 s on a busy 2-core machine):
A runs; while it runs its Ray listens only on 127.0.0.1, a second launch is refused naming A, and status works.
Once A has finished a trial and is past the first epoch of the next, A is frozen (SIGSTOP) and its driver killed
with SIGKILL: some of its Ray survives, stopped. B takes A's stale lock over and stops what A left, finishes the
trial A was running from its last epoch checkpoint, never reruns or duplicates what A finished, and is ended with
SIGTERM, leaving nothing running. Both run with --max-concurrent 1 on a 2-CPU Ray: one trial at a time. (The
normal end runs the same `finally` as SIGTERM; test_launch's sweeps end normally.)
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import TINY_TRAIN, write_spec

from orchestrator import cli
from orchestrator.localray import processes as local_ray
from orchestrator.sweepdir.lock import LOCK_FILE
from pixelreg_core.results import read_table

# three epochs of longer steps: a trial still runs when the test kills the launch
TRAIN = {**TINY_TRAIN, "epochs": 3, "train_images": 200, "batch_size": 16}


def start(spec: Path, root: Path, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(spec), "--results", str(root),
            "--no-dashboard", "--max-concurrent", "1", "--progress-every", "2"]
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 150):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"launch ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def lock_record(sweep: Path) -> dict:
    try:
        return json.loads((sweep / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def training(sweep: Path) -> bool:
    """A trial is past its first epoch (its per-epoch checkpoint exists) and the lock lists a Ray worker."""
    running = sweep / "checkpoints" / "running"
    workers = [p for p in lock_record(sweep).get("ray", []) if p["name"].startswith("ray::")]
    return running.is_dir() and any(running.iterdir()) and bool(workers)


def finished(sweep: Path) -> dict[str, int]:
    """{file name: mtime} of the trials rows written so far: the trials that are complete."""
    rows = sweep / "trials"
    return {p.name: p.stat().st_mtime_ns for p in rows.glob("*.parquet")} if rows.is_dir() else {}


def interrupted(sweep: Path) -> set[str]:
    """Trials past their first epoch and not finished: what a kill now interrupts (a trial's checkpoints are
    <trial_id>.pt and <trial_id>.best-<epoch>.pt; a name starting with "." is a file being written)."""
    running = sweep / "checkpoints" / "running"
    done = {Path(name).stem for name in finished(sweep)}
    trials = {p.name.split(".", 1)[0] for p in running.glob("*.pt") if not p.name.startswith(".")}
    return trials - done if running.is_dir() else set()


def freeze(pid: int) -> list[psutil.Process]:
    """SIGSTOP a launch and every process below it (its Ray: GCS, raylet, the worker running the trial); the
    driver first, so it starts nothing new meanwhile."""
    driver = psutil.Process(pid)
    driver.suspend()
    procs = [driver]
    for proc in driver.children(recursive=True):
        try:
            proc.suspend()
            procs.append(proc)
        except psutil.Error:
            continue
    return procs


def thaw(procs: list[psutil.Process]) -> None:
    for proc in reversed(procs):
        try:
            proc.resume()
        except psutil.Error:
            continue


def tree(pid: int) -> list[dict]:
    procs = psutil.Process(pid).children(recursive=True)
    return [{"pid": p.pid, "started": p.create_time(), "name": p.name()} for p in procs if p.is_running()]


def listening(records: list[dict]) -> list[str]:
    found = []
    for record in records:
        try:
            conns = psutil.Process(record["pid"]).net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.slow
def test_loopback_lock_and_nothing_left_after_sigkill_sigterm_and_a_normal_end(tmp_path, capsys):
    spec = write_spec(tmp_path, name="guarded", seeds=[0, 1, 2], train=TRAIN, max_failures=0)
    root = tmp_path / "results"
    sweep = root / "guarded"
    seen: list[dict] = []  # every Ray process of the three launches, to clean up whatever the outcome
    try:
        a = start(spec, root, tmp_path / "a.log")
        wait_for(lambda: training(sweep), a, tmp_path / "a.log", "A's first epoch")
        seen += tree(a.pid)

        # loopback: every listening socket of A's Ray (GCS, raylet, agents, workers) is on 127.0.0.1
        addresses = listening(tree(a.pid))
        assert len(addresses) >= 5, addresses
        assert all(is_loopback(ip) for ip in addresses), addresses

        # the lock: a second launch is refused at once, naming the holder; status reads the folder meanwhile
        capsys.readouterr()
        assert cli.main(["launch", str(spec), "--results", str(root)]) == 2
        err = capsys.readouterr().err
        assert f"pid {a.pid}" in err and "since" in err and err.count("\n") == 1
        assert cli.main(["status", str(sweep)]) == 0

        # SIGKILL the driver only (as the OOM killer would), once a trial is finished and another past its first
        # epoch; part of its Ray outlives it. A tiny trial's last epochs take well under a second, so A is frozen
        # first: what it finished and what it cut short cannot change between the test's look and the kill.
        for _ in range(3):
            wait_for(lambda: finished(sweep) and interrupted(sweep), a, tmp_path / "a.log",
                     "A's first finished trial and another one's first epoch")
            frozen = freeze(a.pid)
            if interrupted(sweep):
                break
            thaw(frozen)  # the trial finished between the look and the freeze: wait for the next one
        recorded = lock_record(sweep)["ray"]
        done_by_a, cut_short = finished(sweep), interrupted(sweep)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        time.sleep(2)
        assert (finished(sweep), interrupted(sweep)) == (done_by_a, cut_short)  # the frozen leftovers wrote nothing
        rows_by_a = pd.read_parquet(sweep / "trials").set_index("trial_id")["finished_at"]
        assert done_by_a and cut_short, "the kill must land mid-sweep, during a trial"
        left_by_a = local_ray.alive(recorded)

        # B finds the stale lock, stops what A left, runs; SIGTERM ends it and its Ray with it
        b = start(spec, root, tmp_path / "b.log")
        wait_for(lambda: training(sweep) and lock_record(sweep).get("pid") == b.pid, b, tmp_path / "b.log",
                 "B's first epoch")
        assert local_ray.alive(recorded) == [], f"A's leftovers still run: {local_ray.alive(recorded)}"
        if left_by_a:
            assert "taking over the lock" in (tmp_path / "b.log").read_text()
        b_procs = tree(b.pid)
        seen += b_procs

        def resumed_row():
            rows = pd.read_parquet(sweep / "trials") if (sweep / "trials").is_dir() else pd.DataFrame()
            return rows[rows["trial_id"].isin(cut_short)] if len(rows) else rows

        wait_for(lambda: len(resumed_row()) > 0, b, tmp_path / "b.log", "B to finish the trial A was running")
        assert resumed_row()["resumed_from_epoch"].iloc[0] >= 1  # went on from A's last finished epoch
        b_procs = local_ray.merge(b_procs, tree(b.pid))
        seen += b_procs
        os.kill(b.pid, signal.SIGTERM)
        assert b.wait(timeout=60) != 0
        time.sleep(1)
        assert local_ray.alive(b_procs) == [], f"B's Ray outlived SIGTERM: {local_ray.alive(b_procs)}"
        assert not (sweep / LOCK_FILE).exists()
    finally:
        local_ray.stop(seen + lock_record(sweep).get("ray", []))
    trials = pd.read_parquet(sweep / "trials")
    assert trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    epochs = pd.read_parquet(sweep / "epochs")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    # a complete trial has all its epochs (SIGTERM may land between another trial's rows and its `trials` row:
    # those rows are that unfinished trial's, cleared by the next resume)
    assert len(epochs[epochs["trial_id"].isin(trials["trial_id"])]) == 3 * len(trials)
    robustness = pd.read_parquet(sweep / "robustness")
    assert not robustness.duplicated(["trial_id", "attack", "eps", "repeat", "metric"]).any()
    # --max-concurrent 1 on a 2-CPU Ray: one trial at a time (finished_at is whole seconds, hence the 1 s)
    end = (pd.to_datetime(trials["finished_at"]) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    spans = trials.assign(end=end).sort_values("end")
    starts = (spans["end"] - spans["wall_s"]).to_numpy()
    assert (starts[1:] >= spans["end"].to_numpy()[:-1] - 1.0).all(), spans[["trial_id", "end", "wall_s"]]
    # what A finished, B never ran again: the same files, the same finish times
    assert {name: finished(sweep)[name] for name in done_by_a} == done_by_a
    assert trials.set_index("trial_id").loc[rows_by_a.index, "finished_at"].tolist() == rows_by_a.tolist()


@pytest.mark.slow
def test_a_driver_sigkill_while_a_study_grows_loses_nothing_and_repeats_nothing(tmp_path):
    """A finished sweep; its spec with one more seed, (th, alpha) point, pair and attack is launched and the driver
    SIGKILLed once a new model is finished; the relaunch completes: old model untouched, every model (2 pairs x 2
    points x 2 seeds) has both attacks' rows, no row twice."""
    root = tmp_path / "results"
    sweep = root / "grows"
    gaussian = {"images": 20, "num_eps": 2}
    point = {"th": 0.3, "alpha": 1.0}
    first = write_spec(tmp_path, name="grows", seeds=[0], baseline=False, max_failures=0,
                       grid={"points": [point]}, attacks={"gaussian": gaussian})
    assert cli.main(["launch", str(first), "--results", str(root), "--no-dashboard"]) == 0
    old = {p.name: p.stat().st_mtime_ns for folder in ("trials", "epochs", "checkpoints", "robustness")
           for p in (sweep / folder).glob("*") if p.is_file()}
    grown = write_spec(tmp_path, name="grows", seeds=[0, 1], baseline=False, max_failures=0,
                       grid={"points": [point, {"th": 0.5, "alpha": 2.0}]},
                       pairs=[{"task": "digits", "reg_data": "digits"}, {"task": "mnist5k", "reg_data": "mnist5k"}],
                       attacks={"gaussian": gaussian, "uniform": gaussian})
    driver = start(grown, root, tmp_path / "grown.log")
    seen: list[dict] = []
    try:
        wait_for(lambda: len(finished(sweep)) >= 2, driver, tmp_path / "grown.log", "a new model")
        seen = lock_record(sweep).get("ray", [])
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray: the relaunch takes over the lock
        driver.wait()
        assert cli.main(["launch", str(grown), "--results", str(root), "--no-dashboard"]) == 0
    finally:
        local_ray.stop(seen)

    trials = read_table(sweep, "trials")
    assert len(trials) == 8 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert set(trials["task"]) == {"digits", "mnist5k"}
    assert set(zip(trials["th"], trials["alpha"], strict=True)) == {(0.3, 1.0), (0.5, 2.0)}
    now = {p.name: p.stat().st_mtime_ns for folder in ("trials", "epochs", "checkpoints", "robustness")
           for p in (sweep / folder).glob("*") if p.is_file()}
    assert {name: now[name] for name in old} == old  # the old model and its evaluation: untouched
    epochs = read_table(sweep, "epochs")
    assert len(epochs) == 8 and not epochs.duplicated(["trial_id", "epoch"]).any()
    robustness = read_table(sweep, "robustness")
    assert not robustness.duplicated(["trial_id", "attack", "eps", "repeat", "metric"]).any()
    assert robustness.groupby("trial_id")["attack"].nunique().tolist() == [2] * 8
