"""Print the trial ids every shipped sweep (sweeps/**/*.yaml) expands to, as JSON: {spec path: [[trial_id, role,
source checkpoint], ...]}. Run it before and after a change to the spec or expansion code and diff the outputs: the
ids must not move (a moved id re-runs, and orphans the results of, every trial of a sweep already run).

    python scripts/trial_ids.py > before.json   # on main
    python scripts/trial_ids.py > after.json    # on the branch
    diff before.json after.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.spec.expand import expand
from orchestrator.spec.load import load_spec

REPO = Path(__file__).resolve().parents[1]


def shipped_ids() -> dict[str, list[list[str | None]]]:
    out = {}
    for path in sorted((REPO / "sweeps").rglob("*.yaml")):
        spec = load_spec(path)
        trials = expand(spec, f"results/{spec.name}")
        out[str(path.relative_to(REPO))] = [[c.trial_id, c.role, c.fgsm_source] for c in trials]
    return out


if __name__ == "__main__":
    json.dump(shipped_ids(), sys.stdout, indent=1)
    sys.stdout.write("\n")
