"""What a launch will run: the spec loaded, checked, expanded and preflighted (`make_plan`, writing nothing),
then the sweep folder claimed for it and its trials split into done and to run (`claim`, under the folder's lock)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.localray import mps
from orchestrator.plan.preflight import preflight
from orchestrator.plan.resources import check_resources
from orchestrator.spec.expand import expand, searched_runs
from orchestrator.spec.load import load_spec
from orchestrator.spec.schema import MAX_TRIALS, SweepSpec
from orchestrator.sweepdir.resume import (
    check_files,
    check_writable,
    prepare_sweep_dir,
    spec_fingerprint,
    split_done,
    work,
)
from orchestrator.sweepdir.tables import (
    absolute,
    sweep_dir_for,
)
from pixelreg_core.config import TrialConfig
from pixelreg_core.results import clean_temp


@dataclass
class Plan:
    """What a launch will run, computed and checked; nothing is written and no lock is taken to make it."""

    spec: SweepSpec
    spec_path: Path
    spec_text: str                          # the spec that runs (overrides applied): the claimed folder's spec.yaml
    sweep_dir: str
    configs: list[TrialConfig]              # all expanded configs (grid: the whole sweep; optuna: sources+baselines)
    optuna_units: int = 0                   # run_trial calls the optuna studies will make at most
    mps: str | None = None                  # nvidia-cuda-mps-control to start (--mps), see mps.py
    work: dict[str, list] | None = None     # resume.work: models to train, evaluations to run, models reused
    race: Any = None                        # run.race.Race of a spec with seeds: {start, max}, made by the launch
    overrides: tuple[str, ...] = ()         # the command line's KEY=VALUE overrides (orchestrator.spec.overrides)

    @property
    def command_spec(self) -> str:
        """The spec as the command line gave it: `sweeps/x.yaml seeds=5`."""
        return " ".join([str(self.spec_path), *self.overrides])


def localize(cfg: TrialConfig) -> TrialConfig:
    """Absolute data paths: Tune workers may run in another working directory (or on another machine with the
    same shared layout). Only non-identity fields change, so trial ids stay the same."""
    changes: dict[str, Any] = {}
    if cfg.data_root:
        changes["data_root"] = absolute(cfg.data_root)
    if cfg.fgsm_source:
        changes["fgsm_source"] = absolute(cfg.fgsm_source)
    return cfg.replace(**changes) if changes else cfg


def on_cluster(args: argparse.Namespace) -> bool:
    return bool(args.address or os.environ.get("RAY_ADDRESS"))


def make_plan(args: argparse.Namespace) -> Plan:
    """Load, check, expand and preflight the spec: a UserError for anything a user can get wrong, before the sweep
    folder is touched or Ray starts. Reads only (the spec, the inputs preflight checks)."""
    spec_path = Path(args.spec)
    overrides = tuple(getattr(args, "overrides", None) or ())
    spec = load_spec(spec_path, overrides, getattr(args, "max_trials", MAX_TRIALS))
    if not on_cluster(args):
        check_resources(spec)  # this machine's GPUs, before Ray starts; run_on_ray checks Ray's once it runs
    check_writable(args.results)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError(f"--max-concurrent {args.max_concurrent}: must be >= 1")
    mps_control = mps.check(getattr(args, "mps", False), address=args.address, gpu_per_trial=spec.resources.gpu)
    sweep_dir = sweep_dir_for(args.results, spec.name)
    # No second validation here: load_spec validated every grid point x pair as a TrialConfig, and its attacks
    # (spec.schema); a baseline or source differs from its point only in neutral regularizer fields.
    configs = [localize(c) for c in expand(spec, sweep_dir)]
    preflight(configs, spec_path)  # datasets, matrices, checkpoints, GPUs: present before Ray starts
    optuna_units = searched_runs(spec)
    return Plan(spec=spec, spec_path=spec_path, spec_text=spec.text, sweep_dir=sweep_dir,
                configs=configs, optuna_units=optuna_units, mps=mps_control, overrides=overrides)


def claim(plan: Plan, fresh: bool, log, evaluate_only: bool = False) -> tuple[list[TrialConfig], list[TrialConfig]]:
    """Claim the sweep folder for the plan's spec (wiped first with --fresh) and split its trials into (complete,
    to run); the trials to run lose their stale rows. Call it holding the folder's lock."""
    prepare_sweep_dir(plan.sweep_dir, plan.spec_text, spec_fingerprint(plan.spec), fresh, log=log)
    clean_temp(plan.sweep_dir)  # what a writer killed mid-write left in .tmp/ (we hold the lock: nobody writes now)
    check_files(plan.sweep_dir)  # a damaged file is quarantined now, so the split below redoes what it held
    plan.work = work(plan.configs, plan.sweep_dir)  # before split_done removes the stale rows of models to train
    done, todo = split_done(plan.configs, plan.sweep_dir)
    if evaluate_only:  # `orchestrator evaluate`: stored models only, nothing trained
        untrained = {c.trial_id for c in plan.work["train"]}
        skipped = [c for c in todo if c.trial_id in untrained]
        todo = [c for c in todo if c.trial_id not in untrained]
        plan.work["train"] = []
        if skipped:
            log(f"evaluate: {len(skipped)} model(s) of the spec are not trained yet and are left out "
                f"(`orchestrator launch {plan.command_spec}` trains them)")
    return done, todo
