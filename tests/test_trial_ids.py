"""Every shipped sweep (sweeps/**/*.yaml) expands to the trial ids, roles and source checkpoints it expanded to at
commit b1b9cf4 (tests/data/trial_ids.json, written once by `python scripts/trial_ids.py` on that commit). A moved
id re-runs, and orphans the results of, every trial of a sweep already run: a change that moves one on purpose
says so and rewrites the file."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.trial_ids import shipped_ids

STORED = Path(__file__).parent / "data" / "trial_ids.json"


def test_every_shipped_sweep_expands_to_its_stored_trial_ids():
    stored = json.loads(STORED.read_text())
    now = shipped_ids()
    assert sorted(now) == sorted(stored), "a shipped sweep was added or removed: add or remove its ids here"
    for spec, trials in stored.items():
        assert now[spec] == trials, f"{spec}: its trial ids moved"
