"""`orchestrator evaluate SPEC`: run the spec's attacks on the models a sweep folder already holds; train nothing.

Add an attack to a finished sweep's spec (or change an attack's options) and run this: each stored model's best
weights (`checkpoints/<trial_id>.pt`) are evaluated by every (model, attack) the folder lacks, through Ray like
training trials (packed, resumable, under the sweep's lock), one row set per (model, attack). Models of the spec
that are not trained yet are left out and named; `orchestrator launch SPEC` trains them (and evaluates them too).
It is `launch` with training switched off: the same flags (but --fresh: it never deletes), the same folder, the same
resume.
"""

from __future__ import annotations

import argparse

from orchestrator.commands import launch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    launch.add_arguments(parser, fresh=False)


def run(args: argparse.Namespace) -> int:
    args.evaluate_only = True
    return launch.run(args)
