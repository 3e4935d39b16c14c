"""The one GPU check: CUDA tests, then benchmark parts (a), (b), (c), in at most 9 minutes on one H100/H200.

    python3 benchmarks/gpu_check.py [--out-dir DIR] [--smoke]

For a machine whose Python has torch, torchvision, pandas, pyarrow, numpy, scipy, pytest, pyyaml and psutil, but no
Ray, Optuna or foolbox: it first installs the wheels brought along in .whl/ (`sh benchmarks/gpu_check_wheels.sh`
downloads them: 4.3 MiB, 4,478,603 bytes) into a folder of its own (no network, nothing else touched), then runs,
each step under a time limit, with its log and JSON written under DIR (default $OUT, else gpu-check/) as it goes:

    check.json   what ran, how long, how it ended (rewritten after every step)
    tests.log    pytest -m gpu over the test files that hold CUDA tests (the Ray one skips: no Ray here; on a
                 CPU, --smoke, they all skip)
    a.log a.json benchmarks/gpu.py --parts a: step time per kernel option, widths 16 and 64
    b.log b.json --parts b: epoch and trial time, attacks on a briefly trained model
    c.log c.json --parts c --runner processes: packing at 1, 4, 8, 16 trials per GPU without Ray (one round)

Eight files, one folder: what a remote runner that returns a few files keeps. Each benchmark part also gets a
time budget a little under its limit (--part-budget-s), so it marks the rows it had no time for instead of being
killed; its JSON holds every figure measured. A step that fails or times out is recorded and the next one runs.
--smoke runs the same steps on a CPU at toy sizes (the test suite does, so the check keeps working).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
SITE = Path("/tmp/pixelreg-gpu-check-site")

# seconds per step: 20 + 130 + 110 + 100 + 150 = 510 s, under 9 minutes with the start-up around them; (c)'s
# levels start until its budget (limit - 25 s) and each stops at 40 s, so the last one ends inside the limit
LIMITS = {"install": 20, "tests": 130, "a": 110, "b": 100, "c": 150}
SMOKE_LIMITS = {"install": 60, "tests": 300, "a": 300, "b": 600, "c": 600}
BENCH = {  # benchmarks/gpu.py arguments per part, sized for the limits above
    "a": ["--widths", "16,64", "--steps", "30"],
    "b": ["--b-steps", "100", "--b-test-images", "2000", "--attack-epochs", "2"],
    "c": ["--runner", "processes", "--levels", "1,4,8,16", "--c-rounds", "1", "--sweep-train-images", "2000",
          "--level-timeout-s", "40"],
}
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
    """One step in a child process, its output in log_path as it comes; killed at `limit` seconds."""
    started = time.monotonic()
    with open(log_path, "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"killed at its {limit:g} s limit"
    return {"step": name, "status": status, "seconds": round(time.monotonic() - started, 1), "log": log_path.name}


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
    bench = SMOKE_BENCH if args.smoke else BENCH
    env = dict(os.environ, PYTHONUNBUFFERED="1", GIT_PYTHON_REFRESH="quiet",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    summary: dict = {"smoke": args.smoke, "python": sys.version.split()[0], "steps": []}
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
                             "--out", str(out / f"{part}.json"), "--part-budget-s", str(max(10, limits[part] - 25)),
                             *bench[part]], f"{part}.log"))
    for name, cmd, log_name in steps:
        log(f"{name}: starting (limit {limits[name]} s)")
        result = run_step(name, cmd, out / log_name, limits[name], env)
        summary["steps"].append(result)
        save()
        log(f"{name}: {result['status']} in {result['seconds']} s -> {out / log_name}")
    ok = all(step["status"] == "ok" for step in summary["steps"])
    log(f"done in {summary['seconds']} s: {'every step ok' if ok else 'some steps did not finish ok'}; "
        f"figures in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
