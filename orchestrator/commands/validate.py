"""`orchestrator validate SPEC...`: load and expand each spec, print its trial count, run nothing, write nothing.

No resource check: a spec for a GPU cluster validates on a laptop (`launch` checks the GPUs it runs on).
"""

from __future__ import annotations

import argparse

from orchestrator.spec.expand import expand, race_line, role_counts
from orchestrator.spec.load import load_spec
from orchestrator.sweepdir.tables import DEFAULT_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="sweep spec YAML file(s), e.g. sweeps/quickstart.yaml")


def run(args: argparse.Namespace) -> int:
    for path in args.spec:
        spec = load_spec(path)
        trials = expand(spec, f"{DEFAULT_ROOT}/{spec.name}")
        counts = ", ".join(f"{n} {role}" for role, n in role_counts(trials).items())
        searched = (f" + {spec.search.trials} searched per pair (optuna)" if spec.search.type == "optuna" else "")
        print(f"ok: {len(trials)} trials ({counts}){searched} in {spec.source}")
        if spec.race is not None:
            print(f"  {race_line(spec, trials)}")
    return 0
