"""`orchestrator validate SPEC...`: load and expand each spec, print its trial count, run nothing, write nothing.

No resource check: a spec for a GPU cluster validates on a laptop (`launch` checks the GPUs it runs on).
"""

from __future__ import annotations

import argparse

from orchestrator.commands.arguments import add_max_trials
from orchestrator.spec.expand import expand, race_line, role_counts
from orchestrator.spec.load import load_spec
from orchestrator.spec.overrides import is_override
from orchestrator.sweepdir.tables import DEFAULT_ROOT, sweep_dir_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", metavar="SPEC [KEY=VALUE ...]",
                        help="sweep spec YAML file(s), e.g. sweeps/quickstart.yaml, and overrides applied to each, "
                             "e.g. seeds=5 train.epochs=2 (a dotted key and a YAML value)")
    parser.set_defaults(overrides=[])
    add_max_trials(parser)


def run(args: argparse.Namespace) -> int:
    items = [*args.spec, *args.overrides]
    overrides = [item for item in items if is_override(item)]
    paths = [item for item in items if not is_override(item)]
    if not paths:
        from orchestrator.errors import UserError

        raise UserError(f"no spec file among {' '.join(items)}; give the spec first, e.g. "
                        "orchestrator validate sweeps/quickstart.yaml seeds=5")
    for path in paths:
        spec = load_spec(path, overrides, args.max_trials)
        trials = expand(spec, sweep_dir_for(DEFAULT_ROOT, spec.name))
        counts = ", ".join(f"{n} {role}" for role, n in role_counts(trials).items())
        searched = (f" + {spec.search.trials} searched per pair (optuna)" if spec.search.type == "optuna" else "")
        print(f"ok: {len(trials)} trials ({counts}){searched} in {spec.source}")
        if spec.race is not None:
            print(f"  {race_line(spec, trials)}")
    return 0
