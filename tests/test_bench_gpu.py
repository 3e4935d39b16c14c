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
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"facts", "smoke", "a_step", "b_epoch", "c_sweep", "d_extrapolated"} <= set(report)
    assert report["smoke"] is True and report["facts"]["torch"] and "cuda" in report["facts"]
    rows = report["a_step"]["rows"]
    variants = {r["variant"] for r in rows}
    assert {"plain", "amp", "channels_last", "fused_sgd", "cudnn_benchmark", "compile", "all"} <= variants
    for regularized in (False, True):
        plain = next(r for r in rows if r["regularized"] is regularized and r["variant"] == "plain")
        assert plain["step_s"] > 0 and plain["images_per_s"] > 0
    assert all(r["step_s"] is not None or r["note"] for r in rows)  # every row has a figure or says why not
    assert report["a_step"]["cpu_target"]["target_s"] == 0.76
    for task in ("MNIST", "CIFAR10"):
        shape = report["b_epoch"][task]
        for label in ("regularized", "baseline"):
            assert shape[label]["epoch_s"] > 0 and shape[label]["trial_s"] > shape[label]["epoch_s"]
        assert set(shape["attacks"]) == {"gaussian", "uniform", "salt_pepper", "fgsm_transfer", "boundary"}
    sweep = report["c_sweep"]["rows"]
    assert [r["trials_per_gpu"] for r in sweep] == [1, 2]
    assert all(r["error"] is None and r["trials"] == 4 and r["trials_per_hour"] > 0 for r in sweep)
    assert all(r["gpu_util_pct"] == "n/a" for r in sweep)  # no GPU here
    d = report["d_extrapolated"]
    assert d["mnist_grid"]["trials"] == 176 and d["cifar10_paper"]["trials"] == 29
    assert d["mnist_grid"]["wall_h"] > 0
    assert "(d) extrapolated sweep wall time" in done.stdout
