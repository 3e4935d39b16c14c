"""Running a race (`seeds: {start, max}`): one Tuner fed by a searcher that decides again after every finished trial.

Round 0 asks for the source models and the first `start` seeds of every setting and baseline. After each trial
finishes, orchestrator.analysis.race.next_round looks at every finished result and names the arms (settings,
baselines) that get one more seed; their next seeds join the Tuner's queue at once, so a slot never waits for a
round to end. An arm with a seed still running gets no second one, and no arm gets more than `max`. When nothing is
queued or running and no arm grows, the race has stopped: decided, or at `max`.

The state is the folder, as for every sweep: which seeds each round asked for is written to race.json
(orchestrator.sweepdir.racelog) before they start, and which finished is in the trials table. A relaunch (after a
SIGKILL too) first finishes what the recorded rounds asked for and did not finish, then decides again: nothing is
lost and no seed is asked for twice.

Which seeds a race trains can depend on which trial finished first (the decision sees the results there are);
every decision is written down, and the final choice is the paper's rule on the stored results as always.
"""

from __future__ import annotations

from typing import Any

from orchestrator.analysis import race as rules
from orchestrator.analysis import racelog
from orchestrator.analysis.aggregate import DEFAULT_A0, split_trials
from orchestrator.run.tune import Runner, trial_name, tune_params, varying
from orchestrator.spec.expand import race_start
from orchestrator.spec.schema import SweepSpec
from orchestrator.sweepdir.tables import read_table
from pixelreg_core.config import TrialConfig


class Race:
    """The race's bookkeeping in the driver: which configs each arm has, which were asked for, which are queued
    or running. No Ray here: the searcher (make_searcher) calls it."""

    def __init__(self, spec: SweepSpec, configs: list[TrialConfig], sweep_dir: str, todo: list[TrialConfig], log):
        self.spec, self.sweep_dir, self.log = spec, sweep_dir, log
        self.configs = {c.trial_id: c for c in configs}
        order = {seed: i for i, seed in enumerate(spec.seed_list)}
        self.arms: dict[tuple, list[TrialConfig]] = {}
        for c in configs:
            if c.role in ("trial", "baseline"):
                self.arms.setdefault(rules.arm_of(c), []).append(c)
        for arm in self.arms.values():
            arm.sort(key=lambda c: order[c.seed])
        self.record = racelog.read(sweep_dir) or racelog.empty()
        if not self.record["rounds"]:
            first = race_start(spec, configs)
            self.record = racelog.add_round(sweep_dir, self.record, [c.trial_id for c in first],
                                            self._seeds_of(first), "start")
        self.asked = racelog.asked(self.record)
        self.queue = [c for c in todo if c.trial_id in self.asked]  # asked and not finished (a relaunch too)
        self.running: set[str] = set()
        self.stopped: str | None = None
        self.on_grow = lambda n: None  # the launch's progress line counts the trials a round adds

    def _seeds_of(self, cfgs: list[TrialConfig]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for c in cfgs:
            if c.role in ("trial", "baseline"):
                out.setdefault(rules.label(rules.arm_of(c)), []).append(c.seed)
        return out

    def pop(self) -> TrialConfig | None:
        if not self.queue:
            return None
        cfg = self.queue.pop(0)
        self.running.add(cfg.trial_id)
        return cfg

    def finished(self, trial_id: str) -> None:
        self.running.discard(trial_id)
        self.decide()

    def busy_arms(self) -> set[tuple]:
        return {rules.arm_of(self.configs[t]) for t in self.running | {c.trial_id for c in self.queue}
                if self.configs[t].role in ("trial", "baseline")}

    def decide(self) -> None:
        """One decision on every finished result: queue the next seed of each arm that grows; record it."""
        trials = read_table(self.sweep_dir, "trials")
        trials = trials[trials["trial_id"].isin(self.configs)]
        robustness = read_table(self.sweep_dir, "robustness")
        robustness = robustness[robustness["trial_id"].isin(self.configs)]
        ok, _ = split_trials(trials)
        sels = rules.selections(ok, robustness, DEFAULT_A0, self.spec.race_attacks())
        tried = {arm: sum(c.trial_id in self.asked for c in cfgs) for arm, cfgs in self.arms.items()}
        busy = self.busy_arms()
        step = rules.next_round(sels, tried, busy, self.spec.race.max, DEFAULT_A0, self.spec.confidence)
        verdicts = {rules.selection_label(k): rules.verdict_record(v) for k, v in step.verdicts.items()}
        new = []
        for arm in step.grow:
            nxt = next((c for c in self.arms.get(arm, []) if c.trial_id not in self.asked), None)
            if nxt is not None:
                new.append(nxt)
        if new:
            open_ = {k: v for k, v in verdicts.items() if not v["decided"]}
            self.record = racelog.add_round(self.sweep_dir, self.record, [c.trial_id for c in new],
                                            self._seeds_of(new), open_)
            self.asked |= {c.trial_id for c in new}
            self.queue += new
            self.on_grow(len(new))
            self.log(f"race round {len(self.record['rounds']) - 1}: one more seed for "
                     + ", ".join(f"{rules.label(rules.arm_of(c))} (seed {c.seed})" for c in new))
        elif not busy and step.stopped:
            self.stopped = step.stopped
            racelog.finish(self.sweep_dir, self.record, step.stopped, verdicts)

    def done(self) -> bool:
        """Nothing queued or running, and the last decision grew nothing."""
        if self.queue or self.running:
            return False
        if self.stopped is None:
            self.decide()
        return not self.queue and self.stopped is not None


def make_searcher(state: Race, params: dict[str, dict[str, Any]]):
    """A Tune Searcher that hands out the race's queue and lets it decide after each finished trial."""
    from ray.tune.search import Searcher

    class RaceSearcher(Searcher):
        def __init__(self):
            super().__init__()
            self.tune_ids: dict[str, str] = {}  # Tune's trial id -> ours

        def suggest(self, trial_id: str):
            cfg = state.pop()
            if cfg is None:
                return Searcher.FINISHED if state.done() else None
            self.tune_ids[trial_id] = cfg.trial_id
            return dict(params[cfg.trial_id])

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            ours = self.tune_ids.pop(trial_id, None)
            if ours is not None:
                state.finished(ours)

    return RaceSearcher()


def run_race(runner: Runner, state: Race) -> None:
    """The whole race in one Tuner (the launch's `trials` phase for a spec with seeds: {start, max})."""
    from ray import tune

    from orchestrator.run.trainable import train_one

    configs = list(state.configs.values())
    extra = varying(configs)
    params = {p["trial_id"]: p for p in tune_params(configs)}
    names = {tid: trial_name(p, extra) for tid, p in params.items()}
    by_id = {c.trial_id: c.to_dict() for c in configs}
    trainable = tune.with_parameters(train_one, configs=by_id, sweep_dir=runner.sweep_dir, threads=runner.threads,
                                     retries=runner.retries)
    runner.progress.total = runner.progress.already_done + len(state.queue)

    def grown(n: int) -> None:
        runner.progress.total += n

    state.on_grow = grown
    tuner = tune.Tuner(
        runner.with_resources(trainable),
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(state, params), num_samples=len(configs), reuse_actors=True,
            max_concurrent_trials=runner.max_concurrent or runner.slots,
            trial_name_creator=lambda t: names[t.config["trial_id"]],
            trial_dirname_creator=lambda t: f"{names[t.config['trial_id']]}_{t.config['trial_id']}"),
        run_config=runner.run_config("race"))
    tuner.fit()
    runner.check_disk()
