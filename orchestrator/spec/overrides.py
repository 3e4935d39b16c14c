"""Command-line overrides of a spec (`seeds=5`, `train.epochs=2`, `grid.alpha=[1,4]`), and the changes between two
spec versions named the same way.

An override is `DOTTED.KEY=VALUE`: the key is a path of mapping keys into the spec as written, the value is YAML
(`[1, 4]` a list, `2` an integer, `null` removes the key). Overrides are applied to the parsed file before it is
validated, so they are checked by the same schema as the file itself; the loader (orchestrator.spec.load) names
the override an error comes from. The spec that runs is the file with its overrides applied: `effective_text`
writes it out as YAML, which is what the sweep folder records in spec.yaml and specs/.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from orchestrator.errors import UserError
from orchestrator.spec.fields import short

KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$")


class Override:
    """One `KEY=VALUE` from the command line: its text, its key path and its parsed value."""

    def __init__(self, text: str, path: tuple[str, ...], value: Any):
        self.text = text
        self.path = path
        self.value = value

    def touches(self, loc: tuple[str | int, ...]) -> bool:
        """Whether an error at field path `loc` lies under this override's key, or above it."""
        keys = tuple(str(part) for part in loc if not isinstance(part, int))
        n = min(len(keys), len(self.path))
        return n > 0 and keys[:n] == self.path[:n]


def is_override(arg: str) -> bool:
    """Whether a command-line word is an override rather than a spec path: `KEY=...` with no '/' in KEY."""
    key, sep, _ = arg.partition("=")
    return bool(sep) and "/" not in key and not arg.startswith("-")


def parse_overrides(texts: list[str] | tuple[str, ...], parse_yaml) -> list[Override]:
    """`KEY=VALUE` strings -> Overrides; `parse_yaml(text, source)` is the spec loader's YAML reader, so a value
    reads exactly as it would in the file. A malformed one is one UserError line naming it."""
    out = []
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not KEY_PATTERN.match(key):
            raise UserError(f"override {text!r}: not KEY=VALUE; write a dotted spec key and a YAML value, "
                            "e.g. seeds=5, train.epochs=2 or grid.alpha=[1,4]")
        out.append(Override(text, tuple(key.split(".")), parse_yaml(raw, f"override {text}")))
    return out


def apply_overrides(data: Any, overrides: list[Override], defaults: dict[str, Any],
                    shorthand: tuple[str, ...] = ()) -> dict[str, Any]:
    """The spec mapping with each override set in turn (a copy; `data` is unchanged). A missing section is
    created, starting from `defaults[key]` where the spec has a non-empty default (attacks: the demo set), so
    `attacks.boundary.images=200` changes one option of the attacks that would run, not the whole set. A
    `shorthand` section written as a bare string (`search: grid`) is read as `{type: grid}` first."""
    out = copy.deepcopy(data) if isinstance(data, dict) else {}
    for override in overrides:
        node = out
        for depth, key in enumerate(override.path[:-1]):
            child = node.get(key)
            if child is None:
                child = copy.deepcopy(defaults.get(key, {})) if depth == 0 else {}
                node[key] = child
            elif depth == 0 and key in shorthand and isinstance(child, str):
                child = node[key] = {"type": child}
            if not isinstance(child, dict):
                where = ".".join(override.path[:depth + 1])
                raise UserError(f"override {override.text}: {where} is {short(child)} in the spec, not a mapping; "
                                f"set {where} as a whole, e.g. {where}={{...}}")
            node = child
        if override.value is None:
            node.pop(override.path[-1], None)
        else:
            node[override.path[-1]] = override.value
    return out


class _SpecDumper(yaml.SafeDumper):
    """Writes strings that the spec loader would read as numbers (1e-3) in quotes, like the loader reads them."""


_SpecDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def effective_text(data: dict[str, Any], source: str, overrides: list[Override]) -> str:
    """The spec that runs, as YAML: the file's keys in its order with the overrides applied, under a comment that
    says where it came from (the file's own comments are not carried over)."""
    header = f"# {source} with overrides: {' '.join(o.text for o in overrides)}\n"
    return header + yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, default_flow_style=None, width=120)


def changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """What differs between two parsed specs, as dotted keys: `seeds: 4 (was 3)`, `train.epochs: 2 (was 6)`,
    `grid.alpha: removed`."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in dict.fromkeys([*after, *before]):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in after:
                out.append(f"{path}: removed")
            elif key not in before:
                out.append(f"{path}: {_flow(after[key])} (new)")
            else:
                out += changes(before[key], after[key], path)
        return out
    if before == after:
        return []
    return [f"{prefix or '(spec)'}: {_flow(after)} (was {_flow(before)})"]


def _flow(value: Any) -> str:
    text = yaml.dump(value, Dumper=_SpecDumper, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("...").strip()  # a scalar document ends with '...'
    return text if len(text) <= 80 else text[:77] + "..."
