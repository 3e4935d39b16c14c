"""Which of a sweep folder's rows belong to its current spec.

A folder holds a study that grows (orchestrator.sweepdir.resume): models and evaluations of earlier spec versions
stay on disk (a model whose epochs or width changed is simply another model). `status`, `aggregate`, `report` and
`orchestrator.load` work on the models and evaluations of the spec the folder was last launched with
(`spec.yaml`); their `--everything` option (load(everything=True)) takes every row the folder holds.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from orchestrator.spec.expand import expand
from orchestrator.spec.load import parse_spec, parse_yaml
from orchestrator.spec.overrides import changes
from orchestrator.spec.schema import SweepSpec
from pixelreg_core.results import filesystem, join, read_bytes, read_text

SPECS_DIR = "specs"  # every spec version the folder ran: specs/<n>-<fingerprint>.yaml, n from 1
VERSION_FILE = re.compile(r"[0-9]+-[0-9a-f]{16}\.yaml")  # only these are read: never a stray file of specs/


class Selection(NamedTuple):
    models: set[str] | None     # trial ids; None: every model (search optuna samples its own)
    evaluations: set[str]        # eval ids (TrialConfig.eval_id)
    attacks: set[str]            # the spec's attack names


def current_spec(sweep_dir: str) -> SweepSpec | None:
    """The spec the folder was last launched with: spec.yaml, or, where that is missing or damaged, the newest of
    specs/ (the same text: launch writes both); None when neither parses."""
    versions = spec_versions(sweep_dir)
    for name in ["spec.yaml", *(f"{SPECS_DIR}/{v}" for v in versions[-1:])]:
        text = read_text(sweep_dir, name)
        if text is None:
            continue
        try:
            return parse_spec(parse_yaml(text, name), name)
        except Exception:  # noqa: BLE001 - an unreadable spec selects nothing away
            continue
    return None


def current(sweep_dir: str) -> Selection | None:
    """The current spec's models and evaluations; None when the folder has no readable spec.yaml."""
    from pixelreg_core.attacks import source_attacks

    spec = current_spec(sweep_dir)
    if spec is None:
        return None
    try:
        configs = expand(spec, sweep_dir)
    except Exception:  # noqa: BLE001 - an unreadable spec selects nothing away
        return None
    evaluations = set()
    for cfg in configs:
        transferred = set(source_attacks(cfg.attacks))
        evaluations |= {cfg.eval_id(name, name in transferred) for name in cfg.attacks}
    models = None if spec.search.type == "optuna" else {cfg.trial_id for cfg in configs}
    return Selection(models, evaluations, set(spec.attacks))


def restrict(frame: Any, selection: Selection | None, table: str) -> Any:
    """The rows of one table (a DataFrame) that belong to the selection; all of them for None."""
    if selection is None or not len(frame):
        return frame
    keep = frame["trial_id"].isin(selection.models) if selection.models is not None else frame["trial_id"].notna()
    if table in ("robustness", "spectrum"):
        if selection.models is None:  # searched models: their evaluations of the spec's attacks
            keep &= frame["attack"].isin(selection.attacks)
        else:
            keep &= frame["eval_id"].isin(selection.evaluations)
    return frame[keep].reset_index(drop=True)


def spec_versions(sweep_dir: str) -> list[str]:
    """The spec versions kept in the folder, oldest first (file names)."""
    import pyarrow.fs as pafs

    fs, base = filesystem(sweep_dir)
    folder = f"{base}/{SPECS_DIR}"
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(folder)) if VERSION_FILE.fullmatch(i.base_name)]
    return sorted(names, key=lambda n: int(n.split("-", 1)[0]))


def spec_line(sweep_dir: str) -> str | None:
    """`spec: version 2 of 2 (specs/2-<fingerprint>.yaml); since version 1: seeds: 4 (was 3)`: which spec the
    folder's current rows belong to and what changed from the version before (an edit or command-line overrides,
    orchestrator.spec.overrides). None when the folder keeps no spec versions."""
    versions = spec_versions(sweep_dir)
    if not versions:
        return None
    line = f"spec: version {len(versions)} of {len(versions)} ({SPECS_DIR}/{versions[-1]})"
    if len(versions) < 2:
        return line
    texts = [read_bytes(join(sweep_dir, SPECS_DIR, name)) for name in versions[-2:]]
    try:
        before, after = (parse_yaml(t.decode(), name) for t, name in zip(texts, versions[-2:], strict=True))
    except Exception:  # noqa: BLE001 - an unreadable version: say which one is current, not what changed
        return line
    changed = changes(before, after)
    return f"{line}; since version {len(versions) - 1}: {'; '.join(changed) if changed else 'only comments or form'}"
