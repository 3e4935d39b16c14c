"""What a launch would do with the sweep folder as it is: train, evaluate or reuse each model, as the lines
`plan` and `launch` print (the folder's state: orchestrator.sweepdir.resume)."""

from __future__ import annotations

from orchestrator.sweepdir.resume import legacy_layout, refuse_legacy, work
from orchestrator.sweepdir.tables import read_text
from pixelreg_core.config import TrialConfig


def work_line(todo: dict[str, list]) -> str:
    """`to train: 2 models; to evaluate: 12 (model, attack) on 10 stored models (boundary 10, ...); reused: 8`."""
    from collections import Counter

    evaluations = todo["evaluate"]
    per_attack = Counter(name for _, name in evaluations)
    stored = len({cfg.trial_id for cfg, _ in evaluations})
    attacks = ", ".join(f"{name} {n}" for name, n in per_attack.items())
    return (f"to train: {len(todo['train'])} model(s); to evaluate: {len(evaluations)} (model, attack) on "
            f"{stored} stored model(s){' (' + attacks + ')' if attacks else ''}; reused as they are: "
            f"{len(todo['reused'])} model(s)")


def folder_lines(trials: list[TrialConfig], sweep_dir: str) -> list[str]:
    """What a launch would train, evaluate and reuse, given what the sweep folder already holds."""
    if read_text(sweep_dir, "fingerprint") is None and not legacy_layout(sweep_dir):
        return [f"{sweep_dir}/ holds nothing yet: launch trains and evaluates every model above"]
    if legacy_layout(sweep_dir):
        try:
            refuse_legacy(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - the refusal's own line, shown as a note
            return [f"note: {exc}"]
    return [f"{sweep_dir}/ already holds part of this study; launch would do this: "
            + work_line(work(trials, sweep_dir))]
