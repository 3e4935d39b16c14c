"""Random bytes in each file of a finished sweep folder, one file at a time: no reader may end in a traceback.

    .venv/bin/python scripts/damage.py results/quickstart sweeps/quickstart.yaml [--relaunch-each-kind]

For every file under the folder (the tables' Parquet files, summary/best, checkpoints, spec.yaml, the spec
versions, race.json, figures; the report and Tune's own logs aside), a copy of the folder gets that one file
overwritten with 100 random bytes; then `orchestrator status`, `aggregate`, `report` and `orchestrator.load()` run
on the copy, each in its own process. A run passes when no output holds a traceback and each exits 0 or 2 (2: one
`error:` line, for a file the command cannot do without, such as spec.yaml). With --relaunch-each-kind, for the
first file of each kind that holds results (each table, the compacted tables, a checkpoint, spec.yaml, a spec
version) `orchestrator launch SPEC --results COPY-ROOT` must then end 0 with every model and every (model, attack)
evaluation of the original back. Prints one line per file and a total; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = ("tune/", "report.html", "quarantine/", ".tmp/")
# the kinds of file a relaunch has to restore (the rest, summary, best and figures, `aggregate` writes again)
RELAUNCH_KINDS = ("trials", "epochs", "robustness", "spectrum", "checkpoints", "compact", "spec.yaml", "specs")


# after the relaunch: the copy holds every model and (model, attack) evaluation the original holds
RESTORED = """import orchestrator, sys
a, b = orchestrator.load(sys.argv[1]), orchestrator.load(sys.argv[2])
assert set(a.trials.trial_id) == set(b.trials.trial_id), "models lost"
pairs = lambda r: set(zip(r.robustness.trial_id, r.robustness.attack))
assert pairs(a) == pairs(b), "evaluations lost"
"""


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env)
    return done.returncode, done.stdout + done.stderr


def kind(relative: str) -> str:
    first = relative.split("/")[0]
    return first if "/" in relative else relative


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a finished sweep folder, e.g. results/quickstart")
    parser.add_argument("spec", type=Path, help="the spec it was launched with (for --relaunch-each-kind)")
    parser.add_argument("--relaunch-each-kind", action="store_true")
    parser.add_argument("--per-kind", type=int, default=None, metavar="N",
                        help="damage only the first N files of each kind (each table, checkpoints, ...): files of one "
                             "kind are read by the same code, and a quickstart folder has 144 files")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    files = sorted(str(p.relative_to(args.sweep)) for p in args.sweep.rglob("*") if p.is_file()
                   and not any(part in f"{p.relative_to(args.sweep)}" for part in SKIP))
    if args.per_kind is not None:
        files = [f for f in files if [kind(g) for g in files[:files.index(f)]].count(kind(f)) < args.per_kind]
    kinds_relaunched: set[str] = set()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="damage-") as work:
        for relative in files:
            root = Path(work) / relative.replace("/", "_")
            copy = root / args.sweep.name
            shutil.copytree(args.sweep, copy, ignore=shutil.ignore_patterns("tune"))
            (copy / relative).write_bytes(os.urandom(100))
            results = {}
            for name in ("status", "aggregate", "report"):
                results[name] = run(["-m", "orchestrator.cli", name, str(copy)], env)
            results["load"] = run(["-c", f"import orchestrator; orchestrator.load({str(copy)!r})"], env)
            if args.relaunch_each_kind and kind(relative) in RELAUNCH_KINDS and kind(relative) not in kinds_relaunched:
                kinds_relaunched.add(kind(relative))
                code, out = run(["-m", "orchestrator.cli", "launch", str(args.spec), "--results", str(root),
                                 "--no-dashboard"], env)
                if code == 0:
                    code, out = run(["-c", RESTORED, str(copy), str(args.sweep)], env)
                results["relaunch"] = (code, out)
            bad = {name: (code, out) for name, (code, out) in results.items()
                   if "Traceback" in out or code not in (0, 2) or (name == "relaunch" and code != 0)}
            failures += bool(bad)
            said = "; ".join(f"{name} exit {code}" for name, (code, _) in results.items())
            print(f"{'FAIL' if bad else 'ok  '} {relative}: {said}", flush=True)
            for name, (_, out) in bad.items():
                print(f"     {name}: {out.strip()[-800:]}", flush=True)
            shutil.rmtree(root)
    print(f"{len(files)} files damaged one at a time, {failures} with a traceback or a wrong exit")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
