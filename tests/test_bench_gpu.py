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
