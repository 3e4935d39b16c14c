"""The one GPU check: CUDA tests, then benchmark parts (a), (b), (c), in at most 6 minutes on one H100/H200.

    python3 benchmarks/gpu_check.py [--out-dir DIR] [--smoke]

For a machine whose Python has torch, torchvision, pandas, pyarrow, numpy, scipy, pytest, pyyaml and psutil, but no
Ray, Optuna, foolbox, scikit-learn, requests or pydantic: it first installs the wheels brought along in .whl/
(`sh benchmarks/gpu_check_wheels.sh` downloads foolbox and what it imports) into a folder of its own (no network,
nothing else touched), then runs, each step under a time limit, with its log and JSON written under DIR (default
$OUT, else gpu-check/) as it goes:

    check.json   what ran, how long, how it ended (rewritten after every step)
    tests.log    pytest -m gpu over the test files that hold CUDA tests (the Ray one skips: no Ray here; on a
                 CPU, --smoke, they all skip)
    a.log a.json benchmarks/gpu.py --parts a: step time per kernel option, widths 16 and 64
    b.log b.json --parts b: epoch and trial time, attacks on a briefly trained model
    c.log c.json --parts c --runner processes: packing at 1, 4, 8, 16 trials per GPU without Ray (one round)

Eight files, one folder: what a remote runner that returns a few files keeps. The margins hold by construction:
a step's limit is its own or the check's budget left (TOTAL_S), whichever is less; a step runs in a process group
of its own that is killed whole at its limit (the packed-trial test's and (c)'s worker processes too, so none keeps
the GPU busy during the next step); each benchmark part gets a budget MARGIN_S under its limit (--part-budget-s),
saves every figure as soon as it is measured, starts a compile row only with a minute left, and gives each (c)
level at most the budget left. A step that fails or times out is recorded and the next one runs.
--smoke runs the same steps on a CPU at toy sizes (the test suite does, so the check keeps working), with every
package the GPU machine lacks blocked in every process it starts (SMOKE_BLOCKED), as it will be there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
SITE = Path("/tmp/pixelreg-gpu-check-site")

# Seconds per step: 20 + 90 + 70 + 70 + 80 = 330 s, and never more than TOTAL_S in all: each step's limit is the
# smaller of its own and the budget left. With the machine's start (~1-2 min) and the install that is ~7 minutes
# of a 15-minute device budget: a rerun still fits. A benchmark part's own budget is MARGIN_S under its limit (its
# last row or (c) level, capped at the budget left, ends before the kill); the JSON keeps whatever was measured.
LIMITS = {"install": 20, "tests": 90, "a": 70, "b": 70, "c": 80}
TOTAL_S = 330
MARGIN_S = 10
SMOKE_LIMITS = {"install": 60, "tests": 300, "a": 300, "b": 600, "c": 600}
SMOKE_TOTAL_S = 1900
BENCH = {  # benchmarks/gpu.py arguments per part, sized for the limits above
    "a": ["--widths", "16,64", "--steps", "30"],
    "b": ["--b-steps", "60", "--b-test-images", "2000", "--attack-epochs", "1"],
    "c": ["--runner", "processes", "--levels", "1,4,8", "--c-rounds", "1", "--sweep-train-images", "2000",
          "--level-timeout-s", "20"],
}
# What the GPU machine's Python lacks, beyond what the wheels bring (foolbox, eagerpy, GitPython, gitdb, smmap):
# --smoke blocks these in every process it starts, as tests/test_imports.py blocks imports.
SMOKE_BLOCKED = ("ray", "optuna", "sklearn", "requests", "pydantic", "pydantic_core", "mlxtend", "moto", "boto3",
                 "botocore", "s3fs", "tensorboardX")
BLOCKER = """import sys

# What the GPU machine's Python lacks (benchmarks/gpu_check.py --smoke). None in sys.modules is Python's own mark
# of an absent module: `import X` raises ModuleNotFoundError and importlib.util.find_spec(X) returns None, as on a
# machine without X (a finder that raised instead broke find_spec probes, such as gpu.py's choice of runner).
for _name in {blocked!r}:
    sys.modules[_name] = None
"""


def block_absent_packages(env: dict[str, str], folder: Path) -> None:
    """Every Python the check starts (and their children) imports sitecustomize.py from `folder` first: the
    packages the GPU machine lacks are then absent there too."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=SMOKE_BLOCKED))
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")])
SMOKE_BENCH = {"a": [], "b": [], "c": ["--runner", "processes", "--levels", "1,2", "--c-rounds", "1"]}


def cuda_test_files() -> list[str]:
    """The test files that hold CUDA tests (marked gpu): collecting only these keeps a test file that needs a
    package this machine lacks from stopping the collection."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text())


def install_wheels(env: dict[str, str], log) -> str:
    """pip install --no-index the wheels of .whl/ into SITE; put SITE on the children's PYTHONPATH."""
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        return "no .whl/ folder: nothing installed (run sh benchmarks/gpu_check_wheels.sh where pip reaches PyPI)"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMITS["install"] * 2)
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed: {(done.stderr or done.stdout).strip()[-300:]}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SITE), env.get("PYTHONPATH", "")])
    total = sum(w.stat().st_size for w in wheels) / 1e6
    log(f"installed {len(wheels)} wheels ({total:.1f} MB) into {SITE}")
    return f"{len(wheels)} wheels, {total:.1f} MB"


def run_step(name: str, cmd: list[str], log_path: Path, limit: float, env: dict[str, str]) -> dict:
    """One step in a process group of its own, its output in log_path as it comes; at `limit` seconds the whole
    group is killed (the step's own children too), and so is anything of it still running when it exits."""
    started = time.monotonic()
    with open(log_path, "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            status = f"killed at its {limit:g} s limit"
        kill_group(proc)
    return {"step": name, "status": status, "seconds": round(time.monotonic() - started, 1), "log": log_path.name}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the step's process group (its session: start_new_session made the step its leader)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.environ.get("OUT") or "gpu-check",
                        help="where the logs and JSON go (default $OUT, else gpu-check/)")
    parser.add_argument("--smoke", action="store_true", help="the same steps on a CPU at toy sizes")
    parser.add_argument("--skip-install", action="store_true", help="use the packages already importable")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    limits = SMOKE_LIMITS if args.smoke else LIMITS
    total = SMOKE_TOTAL_S if args.smoke else TOTAL_S
    bench = SMOKE_BENCH if args.smoke else BENCH
    env = dict(os.environ, PYTHONUNBUFFERED="1", GIT_PYTHON_REFRESH="quiet",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if args.smoke:
        block_absent_packages(env, Path(tempfile.mkdtemp(prefix="pixelreg-gpu-check-blocked-")))
        summary_blocked = list(SMOKE_BLOCKED)
    summary: dict = {"smoke": args.smoke, "python": sys.version.split()[0], "steps": []}
    if args.smoke:
        summary["blocked"] = summary_blocked
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {line}", flush=True)

    def save() -> None:
        summary["seconds"] = round(time.monotonic() - started, 1)
        (out / "check.json").write_text(json.dumps(summary, indent=2))

    try:
        summary["wheels"] = "skipped" if args.skip_install else install_wheels(env, log)
    except Exception as exc:  # noqa: BLE001 - recorded; the steps then say what is missing
        summary["wheels"] = f"failed: {exc}"
        log(summary["wheels"])
    save()

    device = ["--device", "cpu", "--smoke"] if args.smoke else ["--device", "cuda"]
    files = cuda_test_files()
    steps = [("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs", *files],
              "tests.log")]
    for part in "abc":
        steps.append((part, [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--parts", part, *device,
                             "--out", str(out / f"{part}.json"), *bench[part]], f"{part}.log"))
    for name, cmd, log_name in steps:
        limit = min(limits[name], total - (time.monotonic() - started))  # never past the check's budget
        if limit < MARGIN_S + 5:
            summary["steps"].append({"step": name, "status": "not run: the check's budget was used up", "seconds": 0,
                                     "log": None})
            save()
            continue
        if name in BENCH:  # the part's own budget: a margin under its limit, so it stops before the kill
            cmd = [*cmd, "--part-budget-s", str(round(limit - MARGIN_S))]
        log(f"{name}: starting (limit {limit:.0f} s)")
        result = run_step(name, cmd, out / log_name, limit, env)
        summary["steps"].append(result)
        save()
        log(f"{name}: {result['status']} in {result['seconds']} s -> {out / log_name}")
    ok = all(step["status"] == "ok" for step in summary["steps"])
    log(f"done in {summary['seconds']} s: {'every step ok' if ok else 'some steps did not finish ok'}; "
        f"figures in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
