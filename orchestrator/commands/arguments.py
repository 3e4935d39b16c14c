"""Arguments several commands share (validate, plan, launch, evaluate), in a module that imports nothing heavy:
`validate` and `plan` must answer without importing Ray or torch."""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The KEY=VALUE overrides after the spec (validate, plan, launch, evaluate): orchestrator.spec.overrides."""
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="change the spec for this run: a dotted key and a YAML value, e.g. seeds=5 "
                             "train.epochs=2 grid.alpha=[1,4] attacks.boundary.images=200; the sweep folder "
                             "records the spec with them applied")


def add_max_trials(parser: argparse.ArgumentParser) -> None:
    """--max-trials (validate, plan, launch, evaluate): the size a spec is refused beyond, counted before expanding."""
    from orchestrator.spec.schema import MAX_TRIALS

    parser.add_argument("--max-trials", type=int, default=MAX_TRIALS, metavar="N",
                        help=f"refuse a spec of more than N trials, counted before anything is expanded (default "
                             f"{MAX_TRIALS:,}: far above any real study, so a typo such as seeds: 100000000 "
                             "stops at once)")
