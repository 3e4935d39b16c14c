"""Sweeps of pixel-similarity regularization on Ray Tune: check a sweep spec, see its plan, launch it, follow
it, then aggregate and report its results.

Usually, in this order: orchestrator validate SPEC; orchestrator plan SPEC; orchestrator launch SPEC; orchestrator
status results/NAME; orchestrator report results/NAME. docs/running.md walks through a sweep.
"""

# For developers: each subcommand is a module of orchestrator/commands/ with `add_arguments(parser)` and
# `run(args)` (COMMANDS below). Errors a user can cause end here as one line on stderr and exit code 2, never a
# traceback.

from __future__ import annotations

import argparse
import importlib
import sys

from orchestrator.errors import UserError
from orchestrator.spec.overrides import is_override
from pixelreg_core.config import ConfigError

# subcommand -> (module in orchestrator/commands/, one-line help). Modules are imported lazily: `plan` must not pay
# for importing Ray.
COMMANDS = {
    "validate": ("validate", "check a sweep spec and exit"),
    "plan": ("plan", "print the expanded trials and the work estimate; run nothing"),
    "launch": ("launch", "run (or resume) a sweep on Ray Tune"),
    "evaluate": ("evaluate", "run new attacks on the models a sweep folder holds; trains nothing"),
    "migrate": ("migrate", "convert a sweep folder written before models and evaluations were separate"),
    "status": ("status", "progress of a running or finished sweep, from its Parquet files"),
    "aggregate": ("aggregate", "write summary.parquet, best.parquet and figures/"),
    "report": ("report", "write a self-contained HTML report page"),
    "analyze-targets": ("analyze_targets", "correlate a similarity matrix with pixel similarities"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (all of them when None), so `validate` answers without
    importing torch or Ray, which the other commands' modules pull in."""
    parser = argparse.ArgumentParser(prog="orchestrator", description=" ".join(__doc__.split("\n\n")[0].split()),
                                     epilog=__doc__.split("\n\n", 1)[1].strip())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            module = importlib.import_module(f"orchestrator.commands.{module_name}")
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((word for word in words if not word.startswith("-")), ""))
    # KEY=VALUE overrides may also follow the options (`launch SPEC --results R seeds=5`); argparse leaves those
    # over, and they join the ones it took
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and all(is_override(word) for word in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args._module.run(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
