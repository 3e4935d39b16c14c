"""Benchmark: what a race (`seeds: {start, max}`) would have saved on a finished fixed-seed study. Trains nothing.

Reads a finished sweep folder's per-seed results (trials and robustness tables), takes the full sweep's choice per
selection (the paper's rule on every seed: best.parquet's `chosen`), then replays the race offline for many seed
orders: each arm (a setting or the baseline) gets its seeds in a random order, the race starts with `start` of them
everywhere and asks orchestrator.analysis.race.next_round, round by round, which arms get one more seed (the
launch's own rule, synchronous rounds), until every selection is decided or `max` is reached. Prints, per rule, the
trials the race used against the fixed-seed sweep's and how often its final choice (the paper's rule on the seeds
it trained) equals the full sweep's; the naive race of issue 22 (one more seed per round to every setting still in
contention and to the baseline) is replayed beside it.

Usage: python benchmarks/bench_race.py SWEEP_DIR [--orders 200] [--start 3] [--max 10] [--confidence 0.9]
       [--attacks gaussian] [--a0 0.9] [--epsilon E] [--share S]
The recorded study: benchmarks/specs/race_study.yaml, its tables in benchmarks/results/race_study/, its figures in
benchmarks/results/race_replay.txt.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import Counter

import numpy as np

from orchestrator.analysis import race
from orchestrator.analysis.aggregate import DEFAULT_A0, split_trials
from orchestrator.analysis.selection import current, restrict
from pixelreg_core.results import read_table

print = functools.partial(print, flush=True)  # noqa: A001 - the figures appear as they come (a long replay)


def load_selections(sweep_dir: str, a0: float, attacks: list[str] | None) -> list[race.Selection]:
    selection = current(sweep_dir)
    trials = restrict(read_table(sweep_dir, "trials"), selection, "trials")
    robustness = restrict(read_table(sweep_dir, "robustness"), selection, "robustness")
    ok, _ = split_trials(trials)
    return race.selections(ok, robustness, a0, attacks)


def replay(sels: list[race.Selection], order_seed: int, start: int, max_seeds: int, a0: float, level: float,
           epsilon: float, share: float) -> dict:
    """One race on one seed order: the trials it used, its final choices, its rounds and why it stopped."""
    rng = np.random.default_rng(order_seed)
    arms = {}
    for sel in sels:
        for arm, values in [*sel.settings.items(), (sel.baseline_arm, sel.baseline)]:
            if arm not in arms:
                arms[arm] = [int(s) for s in rng.permutation(sorted(values))[:max_seeds]]
    seeds = {arm: order[:start] for arm, order in arms.items()}
    rounds = 0
    while True:
        step = race.next_round(sels, {a: len(s) for a, s in seeds.items()}, set(), max_seeds, a0, level,
                               epsilon=epsilon, share=share, seeds=seeds)
        if step.stopped:
            break
        rounds += 1
        for arm in step.grow:
            seeds[arm] = arms[arm][:len(seeds[arm]) + 1]
    choices = {}
    for sel in sels:
        settings, baseline = sel.arrays(seeds)
        choices[sel.key] = race.paper_choice(settings, baseline, a0)
    return {"trials": sum(len(s) for s in seeds.values()), "choices": choices, "rounds": rounds,
            "stopped": step.stopped}


def run_rule(label: str, sels, full_choice, full_trials, args, epsilon: float, share: float) -> None:
    began = time.perf_counter()
    runs = [replay(sels, o, args.start, args.max, args.a0, args.confidence, epsilon, share)
            for o in range(args.orders)]
    trials = np.array([r["trials"] for r in runs], dtype=float)
    same = np.mean([all(r["choices"][k] == full_choice[k] for k in full_choice) for r in runs])
    stops = Counter(r["stopped"] for r in runs)
    rounds = np.array([r["rounds"] for r in runs], dtype=float)
    print(f"{label}: epsilon {epsilon:g}, share {share:g}")
    print(f"  trials used: mean {trials.mean():.1f} of {full_trials} ({trials.mean() / full_trials:.0%}), "
          f"sd {trials.std(ddof=1):.1f}, min {trials.min():.0f}, max {trials.max():.0f}")
    print(f"  same decision as the full sweep: {same:.1%} of {args.orders} seed orders")
    print(f"  rounds: mean {rounds.mean():.1f}, max {rounds.max():.0f}; stopped: "
          + ", ".join(f"{why} {n}" for why, n in stops.most_common()))
    print(f"  ({time.perf_counter() - began:.0f} s to replay)")


def name(key) -> str:
    if key is None:
        return "no acceptable setting"
    from orchestrator.analysis.curves import GROUP_KEYS

    arm = dict(zip(GROUP_KEYS, key, strict=True))
    return f"Th {arm['th']:g} alpha {arm['alpha']:g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--orders", type=int, default=200, help="seed orders to replay (default 200)")
    parser.add_argument("--start", type=int, default=3)
    parser.add_argument("--max", type=int, default=10)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--a0", type=float, default=DEFAULT_A0)
    parser.add_argument("--attacks", nargs="*", default=None, help="the selections the race decides (default all)")
    parser.add_argument("--epsilon", type=float, default=race.EPSILON)
    parser.add_argument("--share", type=float, default=race.SHARE)
    args = parser.parse_args(argv)

    sels = load_selections(args.sweep_dir, args.a0, args.attacks)
    if not sels:
        raise SystemExit(f"{args.sweep_dir}: no selection with per-seed values")
    full_choice, arms = {}, set()
    for sel in sels:
        settings, baseline = sel.arrays()
        verdict = race.judge(settings, baseline, args.a0, args.confidence)
        full_choice[sel.key] = verdict.chosen
        arms |= {*sel.settings, sel.baseline_arm}
        counts = ", ".join(f"{name(k)}: {len(v)}" for k, v in sel.settings.items())
        print(f"selection {' / '.join(str(k) for k in sel.key[1:5])}: seeds per setting {counts}; "
              f"baseline {len(sel.baseline)}")
        shown = ", ".join(f"{name(k)} {p:.2f}" for k, p in verdict.p_chosen.items() if p >= 0.005)
        print(f"  full sweep chooses {name(verdict.chosen)} (p_chosen {verdict.confidence_of_choice:.2f}: "
              f"{'decided' if verdict.decided else 'undecided'}); p_chosen: {shown}")
    full_trials = sum(min(args.max, len(_values(sels, arm))) for arm in arms)
    print(f"race: start {args.start}, max {args.max}, confidence {args.confidence:g}, A0 {args.a0:g}; "
          f"{args.orders} seed orders; fixed-seed sweep: {full_trials} trials")
    run_rule("this race (orchestrator.analysis.race)", sels, full_choice, full_trials, args, args.epsilon,
             args.share)
    run_rule("naive race (every setting in contention and the baseline, every round)", sels, full_choice,
             full_trials, args, 1e-9, 0.0)


def _values(sels: list[race.Selection], arm) -> dict:
    for sel in sels:
        if arm == sel.baseline_arm:
            return sel.baseline
        if arm in sel.settings:
            return sel.settings[arm]
    return {}


if __name__ == "__main__":
    main()
