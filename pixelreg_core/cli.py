"""`python -m pixelreg_core train ...`: one trial from the command line, every TrialConfig field a flag.

Example: python -m pixelreg_core train --task MNIST --reg-data MNIST --alpha 4 --th 0.2 --seed 0 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any

from pixelreg_core.config import ConfigError, TrialConfig, field_help


def _parse_optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null"):
            return None
        if kind is bool:  # bool("false") is True: read the word (e.g. --reg-augment false)
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def _flag_type(annotation: Any) -> tuple[str, Any]:
    """('bool' | 'json' | 'value', parser) for a dataclass field annotation (strings under __future__)."""
    hint = eval(annotation, {"Any": Any}) if isinstance(annotation, str) else annotation  # noqa: S307 - own code
    if hint is bool:
        return "bool", None
    origin = typing.get_origin(hint)
    if origin is dict:  # parsed in config_from_args, so that bad JSON is main's one-line error, not argparse's
        return "json", str
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return "value", _parse_optional(inner)
    return "value", hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pixelreg_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train, attack and write one trial's Parquet rows",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output root: tables are written under OUT/<table>/")
    p.add_argument("--config", help="JSON file of TrialConfig fields; flags given on the command line win")
    helps = field_help()
    for f in dataclasses.fields(TrialConfig):
        kind, parse = _flag_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        if kind == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=helps[f.name])
        else:
            p.add_argument(flag, dest=f.name, type=parse, default=None, metavar=f.name.upper(),
                           help=helps[f.name])
    return parser


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    values: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config) as fh:
                values = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError("config", f"cannot read {args.config}: {exc}") from None
    for f in dataclasses.fields(TrialConfig):
        value = getattr(args, f.name)
        if value is not None:
            values[f.name] = json.loads(value) if _flag_type(f.type)[0] == "json" else value
    return TrialConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cfg = config_from_args(args)
        if cfg.alpha == 0:  # an unregularized run is a baseline (or a source model), made as a sweep makes it
            cfg = cfg.unregularized("fgsm_source" if cfg.role == "fgsm_source" else "baseline")
        from pixelreg_core.trial import run_trial  # heavy imports only once the flags are good

        def show(row: dict[str, Any]) -> None:
            sim = "" if row["loss_sim"] is None else f" sim {row['loss_sim']:.4f} r {row['sim_corr']:.3f}"
            print(f"epoch {row['epoch']:3d} lr {row['lr']:.4f} loss {row['loss_cls']:.4f}{sim} "
                  f"valid {row['valid_acc']:.4f} test {row['test_acc']:.4f} {row['seconds']:.1f}s", flush=True)

        row = run_trial(cfg, args.out, on_epoch=show)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"error: attacks: not valid JSON ({exc}); e.g. --attacks '{{\"gaussian\": {{}}}}'", file=sys.stderr)
        return 2
    weights = ", ".join(f"{w:.2f}" for w in row["layer_weights"])
    print(f"trial {row['trial_id']}: clean accuracy {row['clean_acc']:.4f} (epoch {row['best_epoch']}), "
          f"layer weights [{weights}], {row['wall_s']:.1f}s; tables under {args.out}")
    return 0
