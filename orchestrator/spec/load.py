"""Loading a sweep spec: YAML file -> `SweepSpec` (orchestrator.spec.schema), every mistake one line.

Every error leaves here as `UserError("<file>: <field path>: <what is wrong>; <what is allowed>")`; the CLI prints
it as one line with exit code 2. YAML is read with `yaml.safe_load` semantics only (nothing in a spec is ever
executed), duplicate keys are refused, and pydantic's errors are rewritten into the same one-line form.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import UserError
from orchestrator.spec.fields import SpecFieldError, format_path, short
from orchestrator.spec.overrides import Override, apply_overrides, effective_text, parse_overrides
from orchestrator.spec.schema import MAX_TRIALS, SweepSpec, _Kinded


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML keeps the last one silently) and reads 1e-3 as a
    number (YAML 1.1 wants a dot: '1e-3' would otherwise be a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass: constructs plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}: {where}invalid YAML ({problem}); fix the syntax there") from None


def parse_spec(data: Any, source: str = "<spec>", overrides: list[Override] | tuple[Override, ...] = (),
               max_trials: int = MAX_TRIALS) -> SweepSpec:
    """A parsed YAML document (or any mapping) -> SweepSpec, or UserError naming source + field path. With
    `overrides` (already applied to `data`), an error under an override's key names that override instead."""
    if data is None:
        raise UserError(f"{source}: is empty; a spec is a mapping with at least name, pairs and grid")
    if not isinstance(data, dict):
        raise UserError(f"{source}: the spec must be a mapping of fields (name, pairs, grid, ...), "
                        f"not a {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data, context={"max_trials": max_trials})
    except SpecFieldError as exc:
        raise UserError(f"{_where(source, overrides, exc.path)}: {exc}") from None
    except ValidationError as exc:
        loc, message = _pydantic_message(exc)
        raise UserError(f"{_where(source, overrides, loc)}: {message}") from None
    spec._source = source
    return spec


def _where(source: str, overrides: list[Override] | tuple[Override, ...], loc: tuple[str | int, ...]) -> str:
    """What an error at `loc` is blamed on: the last override under whose key it lies, else the file (and the
    overrides applied to it)."""
    blamed = next((o for o in reversed(overrides) if o.touches(loc)), None)
    if blamed is not None:
        return f"override {blamed.text}"
    if overrides:
        return f"{source} (with overrides {' '.join(o.text for o in overrides)})"
    return source


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              max_trials: int = MAX_TRIALS) -> SweepSpec:
    """Read and validate a sweep spec file, with command-line overrides (`train.epochs=2`) applied. Every mistake is
    one UserError line naming the file (or the override) and the field. `spec.text` is the spec that runs: the
    file's text, or with overrides the effective spec written out (orchestrator.spec.overrides)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{source}: no such file; give the path of a sweep spec such as "
                        "sweeps/quickstart.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: cannot read it ({exc.__class__.__name__}: {exc}); give a readable "
                        "UTF-8 YAML file") from None
    data = parse_yaml(text, source)
    if overrides:
        if data is not None and not isinstance(data, dict):
            parse_spec(data, source)  # the file's own refusal
        parsed = parse_overrides(overrides, parse_yaml)
        data = apply_overrides(data or {}, parsed, section_defaults(), shorthand=_kinded_sections())
        text = effective_text(data, source, parsed)
        spec = parse_spec(data, source, parsed, max_trials)
    else:
        spec = parse_spec(data, source, max_trials=max_trials)
    spec._text = text
    return spec


def section_defaults() -> dict[str, Any]:
    """The spec sections whose default is a non-empty mapping (attacks: the demo set), for overrides into them."""
    out = {}
    for name, field in SweepSpec.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, dict) and default:
            out[name] = default
    return out


def _kinded_sections() -> tuple[str, ...]:
    """The sections a bare string may stand for (`search: grid` is `search: {type: grid}`)."""
    return tuple(name for name, field in SweepSpec.model_fields.items()
                 if isinstance(field.annotation, type) and issubclass(field.annotation, _Kinded))


def _pydantic_message(exc: ValidationError) -> tuple[tuple[str | int, ...], str]:
    """The first pydantic error: its field path, and '<path>: <what is wrong>; <what is allowed>'."""
    errors = exc.errors()
    # a misspelt key also makes the right one "missing": the unknown key is the cause, so it is reported first
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    path = format_path(loc)
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "should be")
    if kind == "extra_forbidden":
        allowed = _model_at(loc[:-1])
        names = ", ".join(allowed.model_fields) if allowed else "see docs/spec.md"
        return loc, f"{path}: unknown key; allowed keys: {names}"
    if kind == "missing":
        return loc, f"{path}: is required; {_REQUIRED_HINTS.get(loc[-1], 'add it')}"
    if kind == "value_error":
        return loc, f"{path}: {msg}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"{path}: got {short(err.get('input'))}; should be a mapping"
    return loc, f"{path}: got {short(err.get('input'))}; {msg}"


_REQUIRED_HINTS = {
    "name": "name the sweep (letters, digits, '-', '_'); results go to <results>/<name>/",
    "pairs": "list the dataset pairs, e.g. pairs: [{task: MNIST, reg_data: MNIST}]",
    "task": "name the classification dataset, e.g. MNIST",
    "reg_data": "name the regularization dataset, e.g. MNIST",
}


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class a pydantic error location points into (for listing its allowed keys)."""
    model: type[BaseModel] | None = SweepSpec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
