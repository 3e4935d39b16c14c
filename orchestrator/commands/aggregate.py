"""`orchestrator aggregate SWEEP_DIR`: write summary.parquet, best.parquet and figures/ (the work:
`orchestrator.analysis.aggregate`)."""

from __future__ import annotations

import argparse

from orchestrator.analysis.aggregate import DEFAULT_A0, aggregate_sweep, parse_distortions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", help="results folder of one sweep, e.g. results/mnist_grid")
    parser.add_argument("--a0", type=float, default=DEFAULT_A0,
                        help="smallest acceptable clean-accuracy ratio R0/U0 (default 0.9)")
    parser.add_argument("--distortion", action="append", default=[], metavar="ATTACK=EPS",
                        help="distortion D for an attack's RD/UD, e.g. gaussian=0.3 (repeatable; default: "
                             "the papers' values on CIFAR, the largest eps evaluated elsewhere)")
    parser.add_argument("--confirm-seeds", type=int, default=None, metavar="K",
                        help="choose (Th, alpha) on all but the K highest seed ids and report the choice's ratios "
                             "on those K held-out seeds (confirmed_* columns of best.parquet)")
    parser.add_argument("--confidence", type=float, default=None, metavar="P",
                        help="the p_chosen at or above which a choice counts as decided (default: the spec's "
                             "`confidence`, 0.9 when it has none)")
    parser.add_argument("--no-figures", action="store_true", help="write the Parquet files only")
    parser.add_argument("--everything", action="store_true",
                        help="every model and evaluation the folder holds (default: those of its current spec)")


def run(args: argparse.Namespace) -> int:
    distortions = parse_distortions(args.distortion)
    out = aggregate_sweep(args.sweep_dir, a0=args.a0, distortions=distortions, figures=not args.no_figures,
                          confirm_seeds=args.confirm_seeds, everything=args.everything,
                          confidence=args.confidence)
    print(f"{out['trials_ok']} ok trial(s), {out['trials_failed']} failed (left out)")
    for trial_id, error in out["failed"].items():
        print(f"  failed {trial_id}: {error}")
    print(f"wrote {out['summary']} ({out['summary_rows']} rows)")
    print(f"wrote {out['best']} ({out['best_rows']} rows)")
    for line in out["chosen"]:
        print(f"  chosen {line}")
    for line in out["confirmed"]:
        print(f"  confirmed {line}")
    for line in out["epoch_spread"]:
        print(f"  warning: {line}")
    for path in out["figures"]:
        print(f"wrote {path}")
    for name, why in out["skipped_figures"].items():
        print(f"skipped figure {name}: {why}")
    return 0
