"""`orchestrator report SWEEP_DIR`: write the self-contained HTML report page (the work:
`orchestrator.analysis.report`)."""

from __future__ import annotations

import argparse

from orchestrator.analysis.aggregate import (
    DEFAULT_A0,
    parse_distortions,
)
from orchestrator.analysis.report import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", help="results folder of one sweep, e.g. results/mnist_grid")
    parser.add_argument("--out", default=None, help="HTML file to write (default: <sweep_dir>/report.html)")
    parser.add_argument("--a0", type=float, default=None,
                        help=f"re-aggregate with this A0 (default: {DEFAULT_A0}, or the last aggregate's)")
    parser.add_argument("--distortion", action="append", default=[], metavar="ATTACK=EPS",
                        help="re-aggregate with this distortion D for an attack (repeatable)")
    parser.add_argument("--confirm-seeds", type=int, default=None, metavar="K",
                        help="re-aggregate choosing on all but the K highest seeds, confirming on those K")
    parser.add_argument("--everything", action="store_true",
                        help="every model and evaluation the folder holds (default: those of its current spec)")


def run(args: argparse.Namespace) -> int:
    path = build_report(args.sweep_dir, out=args.out, a0=args.a0, distortions=parse_distortions(args.distortion),
                        confirm_seeds=args.confirm_seeds, everything=args.everything)
    print(f"wrote {path}")
    return 0
