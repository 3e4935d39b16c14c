"""A real racing launch (`seeds: {start, max}`, slow tier): seeds go only where the choice is open, a SIGKILL of the
driver mid-race and a relaunch lose and repeat nothing, and the race says why it stopped.

The tiny sweep: digits, two settings. Th 0.3 alpha 1 learns about as well as the baseline (its choice stays open
at confidence 0.99: R0/U0 near 1 give or take a seed's spread of several points); at alpha 300 the pair loss swamps
the classification (clean accuracy 0.03 against about 0.4 measured here): it is clearly out and must never get a
seed beyond the first round's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, write_spec

from orchestrator import cli
from orchestrator.analysis import racelog
from orchestrator.analysis.race import AT_MAX, DECIDED
from pixelreg_core.results import read_table

START, MAX = 2, 4
# enough training that a model learns something (about half the test digits right at width 8, 4 epochs, 400 images)
TRAIN = {**TINY_TRAIN, "width": 8, "epochs": 4, "train_images": 400, "test_images": 100, "lr": 0.05}


def race_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path, name="race", seeds={"start": START, "max": MAX}, confidence=0.99, max_failures=0,
                      train=TRAIN,
                      grid={"th": [0.3], "alpha": [1.0, 300.0]})


def rows(sweep: Path) -> dict[str, int]:
    folder = sweep / "trials"
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} if folder.is_dir() else {}


def rounds(sweep: Path) -> int:
    try:
        return len((racelog.read(str(sweep)) or racelog.empty())["rounds"])
    except ValueError:  # never half-written (atomic), but be safe while it is replaced
        return 0


@pytest.mark.slow
def test_a_race_adds_seeds_only_where_open_survives_a_sigkill_and_says_why_it_stopped(tmp_path, capsys):
    spec = race_spec(tmp_path)
    root = tmp_path / "results"
    sweep = root / "race"
    log = tmp_path / "first.log"
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "launch", str(spec), "--results",
                               str(root), "--no-dashboard", "--progress-every", "2"],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not (rounds(sweep) >= 2 and len(rows(sweep)) >= 4):  # mid-race: a round beyond the first asked
            assert driver.poll() is None, f"the launch ended before mid-race:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no second round:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray, as a lost machine would
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    before = rows(sweep)
    asked_before = racelog.asked(racelog.read(str(sweep)))
    capsys.readouterr()
    assert cli.main(["launch", str(spec), "--results", str(root), "--no-dashboard"]) == 0
    out = capsys.readouterr().out

    record = racelog.read(str(sweep))
    asked = [tid for r in record["rounds"] for tid in r["trials"]]
    assert len(asked) == len(set(asked)), "a seed was asked for twice"
    assert asked_before <= set(asked)
    trials = read_table(sweep, "trials")
    assert trials["trial_id"].is_unique and set(trials["trial_id"]) == set(asked)  # every asked trial, once
    assert set(trials["status"]) == {"ok"}
    assert {name: rows(sweep)[name] for name in before} == before  # finished before the kill: not trained again
    epochs = read_table(sweep, "epochs")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    robustness = read_table(sweep, "robustness")
    assert not robustness.duplicated(["trial_id", "attack", "eps", "repeat", "metric"]).any()

    # seeds only where the choice was open: the untrained setting keeps its first-round seeds; every later round
    # adds only arms an undecided selection asked to grow
    regularized = trials[trials["role"] == "trial"]
    assert sorted(regularized.loc[regularized["alpha"] == 300.0, "seed"]) == list(range(START))
    assert len(regularized.loc[regularized["alpha"] == 1.0]) > START  # the open one grew
    for later in record["rounds"][1:]:
        asked_for = {g for verdict in later["why"].values() for g in verdict["grow"]}
        assert all(not verdict["decided"] for verdict in later["why"].values())
        assert set(later["seeds"]) <= asked_for | {"digits baseline"}, later
        if "digits baseline" in later["seeds"]:
            assert "baseline" in asked_for
    assert record["stopped"] in (DECIDED, AT_MAX)
    assert f"stopped: {record['stopped']}" in out
    status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(sweep)], capture_output=True,
                            text=True, check=True).stdout
    assert f"stopped: {record['stopped']}" in status and "pending 0 of" in status
