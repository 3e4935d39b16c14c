"""What a machine without Ray, Optuna or foolbox can run: the trainer, a trial with noise attacks, the GPU
benchmark's Ray-free parts, and the collection of the test files that hold the CUDA tests (the GPU check's
`pytest -m gpu`). Each check runs in a fresh interpreter whose imports of those packages fail, as where they are
not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "optuna", "foolbox", "eagerpy", "git")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    for name in list(sys.modules):
        if name.split(".")[0] in {BLOCKED!r}:
            del sys.modules[name]

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Absent())
""")


def run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_the_blocker_blocks(tmp_path):
    done = run_blocked("import foolbox", tmp_path)
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_a_trial_with_noise_attacks_runs_without_ray_optuna_or_foolbox(tmp_path):
    done = run_blocked(f"""
        import torch
        import orchestrator.run.progress, orchestrator.plan.resources, orchestrator.localray.mps
        import orchestrator.spec.load, orchestrator.spec.expand
        from pixelreg_core.config import TrialConfig
        from pixelreg_core.trial import run_trial
        torch.set_num_threads(1)
        cfg = TrialConfig(task="digits", reg_data="digits", width=4, epochs=1, batch_size=32, train_images=96,
                          test_images=32, reg_images=40, valid_fraction=0.1, alpha=2.0, th=0.3, device="cpu",
                          num_threads=1, attacks={{"gaussian": {{"images": 16, "num_eps": 2}}}})
        row = run_trial(cfg, {str(tmp_path)!r})
        assert row["status"] == "ok", row
        mods = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not mods, mods
        print("ok")
    """, tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_the_whole_suite_collects_without_ray_optuna_or_foolbox(tmp_path):
    # `pytest -m gpu tests/` on the GPU machine collects every file first: one module-level `import ray` (once
    # orchestrator/run/progress.py's) would stop the CUDA tests from running at all
    done = run_blocked("""
        import pytest
        sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"]))
    """, tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "error" not in done.stdout.lower(), done.stdout[-3000:]
