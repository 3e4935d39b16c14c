"""`benchmarks/gpu.py --smoke` runs every part end to end on a CPU and writes the documented JSON (no timing
assertions: the figures of a smoke run mean nothing, the structure must hold)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 2 minutes on 2 cores (two real Ray launches in part c)
def test_gpu_benchmark_smoke_writes_every_part(tmp_path):
    out = tmp_path / "tmp.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu",
                           "--runner", "ray", "--out", str(out)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"facts", "smoke", "a_step", "b_epoch", "c_sweep", "d_extrapolated"} <= set(report)
    assert report["smoke"] is True and report["facts"]["torch"] and "cuda" in report["facts"]
    rows = report["a_step"]["rows"]
    variants = {r["variant"] for r in rows}
    assert {"plain", "amp", "channels_last", "fused_sgd", "cudnn_benchmark", "tf32", "compile",
            "compile_reduce_overhead", "all", "all_reduce_overhead"} <= variants
    assert all("compile_s" in r and r["width"] == 4 for r in rows)
    for regularized in (False, True):
        plain = next(r for r in rows if r["regularized"] is regularized and r["variant"] == "plain")
        assert plain["step_s"] > 0 and plain["images_per_s"] > 0
    assert all(r["step_s"] is not None or r["note"] for r in rows)  # every row has a figure or says why not
    assert report["a_step"]["cpu_target"]["target_s"] == 0.76
    for task in ("MNIST", "CIFAR10"):
        shape = report["b_epoch"][task]
        for label in ("regularized", "baseline"):
            assert shape[label]["epoch_s"] > 0 and shape[label]["trial_s"] > shape[label]["epoch_s"]
        assert set(shape["attacks"]) == {"trained", "gaussian", "uniform", "salt_pepper", "fgsm_transfer",
                                         "boundary"}
        assert shape["attacks"]["trained"]["epochs"] == 1  # attacked after training, not untrained
    sweep = report["c_sweep"]["rows"]
    assert [(r["mode"], r["trials_per_gpu"]) for r in sweep] == [("plain", 1), ("plain", 2), ("pack", 2)]
    assert all(r["error"] is None and r["trials"] == 4 and r["failed"] == 0 and r["trials_per_hour"] > 0
               for r in sweep)
    assert report["c_sweep"]["sweep"]["runner"] == "ray"
    assert all(r["gpu_util_pct"] == "n/a" for r in sweep)  # no GPU here
    d = report["d_extrapolated"]
    assert d["mnist_grid"]["trials"] == 176 and d["cifar10_paper"]["trials"] == 29
    assert d["mnist_grid"]["wall_h"] > 0
    assert "(d) extrapolated sweep wall time" in done.stdout


@pytest.mark.slow  # a few minutes on 2 shared cores: four trial processes
def test_part_c_without_ray_records_failed_trials_and_keeps_every_level(tmp_path):
    """The GPU check's path: (c) as plain processes. Every trial fails once (an injected fault after epoch 1):
    level 1 (one trial) is recorded with its failure, not dropped, and level 2 (that trial, its fault spent, and
    one more, which fails) runs on; then the same two trials as one seed pack (pack: 2) in one process."""
    out = tmp_path / "c.json"
    plan = {"dir": str(tmp_path / "marks"), "faults": [{"trial": "*", "epoch": 1, "kind": "raise"}]}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PIXELREG_FAULTS=json.dumps(plan))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu",
                           "--parts", "c", "--runner", "processes", "--levels", "1,2", "--c-rounds", "1",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["c_sweep"]["rows"]
    assert [(r["mode"], r["trials_per_gpu"]) for r in rows] == [("plain", 1), ("plain", 2), ("pack", 2)]
    first, second, packed = rows
    assert first["trials"] == 0 and first["failed"] == 1 and "InjectedFault" in first["errors"][0]
    assert second["trials"] == 1 and second["failed"] == 1  # the spent fault's trial ran on
    assert packed["trials"] == 2 and packed["failed"] == 0  # both faults spent: the seed pack of two trains
    assert all(r["gpu_util_pct"] == "n/a" for r in rows)


@pytest.mark.slow  # several minutes on 2 shared cores: every benchmark part at toy size plus the test step
def test_the_gpu_check_dry_runs_on_cpu_and_writes_its_eight_files(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--skip-install",
                           "--out-dir", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.json", "a.log", "b.json", "b.log", "c.json", "c.log", "check.json", "tests.log"]
    summary = json.loads((out / "check.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["tests", "a", "b", "c"]
    assert all(s["status"] == "ok" for s in summary["steps"])
    assert "skipped" in (out / "tests.log").read_text()  # the CUDA tests ran their skip on this CPU
    assert json.loads((out / "c.json").read_text())["c_sweep"]["sweep"]["runner"] == "processes"


def test_the_gpu_sampler_reads_the_gpu_cuda_visible_devices_selects():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu import visible_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert visible_gpu(None) == ("index", 0) and visible_gpu("") == ("index", 0)
    assert visible_gpu("3,1") == ("index", 3)  # cuda:0 is physical GPU 3: NVML's index 3, not 0
    assert visible_gpu("GPU-5e1c2d,GPU-77") == ("uuid", "GPU-5e1c2d")
    assert visible_gpu("MIG-abc") == ("uuid", "MIG-abc")


def _gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check


def test_the_dry_run_blocks_what_the_gpu_machine_lacks_in_every_process_it_starts(tmp_path):
    gpu_check = _gpu_check()
    env = dict(os.environ)
    gpu_check.block_absent_packages(env, tmp_path / "blocked")
    code = ("import subprocess, sys\n"
            "for name in ('sklearn', 'requests', 'pydantic', 'ray'):\n"
            "    try:\n        __import__(name)\n    except ModuleNotFoundError:\n        print('absent', name)\n"
            "import importlib.util\n"
            "print('spec', importlib.util.find_spec('ray'))\n"  # a probe answers as on a machine without it
            "import torch, yaml, numpy\n")
    done = subprocess.run([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                           f"{code!r}])"], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split("\n")[:5] == ["absent sklearn", "absent requests", "absent pydantic", "absent ray",
                                           "spec None"], done.stdout + done.stderr[-2000:]


def test_a_step_at_its_limit_is_killed_with_its_children(tmp_path):
    # the packed-trial test and (c)'s levels start processes of their own: killed with the step, none keeps the
    # GPU busy while the next step is timed
    gpu_check = _gpu_check()
    pid_file = tmp_path / "child.pid"
    code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(120)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    result = gpu_check.run_step("x", [sys.executable, "-c", code], tmp_path / "x.log", 5, dict(os.environ))
    assert result["status"] == "killed at its 5 s limit"
    child = int(pid_file.read_text())
    import time

    for _ in range(50):  # the kill is delivered at once; reaping by init may take a moment
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{child}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the step's child {child} outlived the step")
