"""Fixtures shared by several test files.

Each section belongs to one part of the project; keep a part's fixtures in its own section.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from pixelreg_core.config import TrialConfig
from pixelreg_core.results import key_values, write_table

# =================================================================================================================
# the run: the fast tier on two worker processes (pytest-xdist; pyproject's addopts say `-n auto`)
# =================================================================================================================
LAUNCH_MODULES = ("tests/test_launch.py", "tests/test_damaged.py")  # the in-process launches on a local Ray


def work_unit(nodeid: str) -> str:
    """What a test runs with on one worker: its module, or "launches" for every test of LAUNCH_MODULES."""
    module = nodeid.split("::")[0]
    return "launches" if module in LAUNCH_MODULES else module


def pytest_xdist_auto_num_workers(config):
    """How many processes `-n auto` starts. The core tests run torch on one thread (`one_thread`), so one process
    leaves a second core idle; two use it (the fast tier's times, one process and two: docs/performance.md). More
    would not help much: the in-process launches, one work unit, are the longest.
    Any other selection runs in one process: the slow tier (`-m slow`), whose launches, kills and clusters each
    use every core; `-m gpu`, whose tests must not share the GPU; `-m float`, a few tests. The environment's
    PYTEST_XDIST_AUTO_NUM_WORKERS decides first."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    if config.option.collectonly or config.option.markexpr != "not slow":
        return 0
    return min(2, os.cpu_count() or 1)


def pytest_xdist_make_scheduler(config, log):
    """A test module is one work unit, run start to end by one worker, so its fixtures (a trained model, a local
    Ray) are made once, as in a one-process run; LAUNCH_MODULES are one unit together, handed out first: the
    longest, and one local Ray at a time (two `ray.init` at once on a fresh machine would both write
    ~/.ray/auth_token). xdist's own `--dist loadgroup` cannot say this: pytest 9 ignores the node ids it renames."""
    if config.option.dist != "load":  # a --dist the user chose
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # the collection's order, launches first (below)
    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    """The launches first (see pytest_xdist_make_scheduler); then the `gpu` marker's promise (pyproject.toml): a
    test marked gpu is skipped where no CUDA device is visible, so no test file writes its own skip."""
    items.sort(key=lambda item: work_unit(item.nodeid) != "launches")  # stable: the rest keep their order
    skip_gpu_tests(items)


# =================================================================================================================
# orchestrator: a hand-made sweep folder (aggregate, figures, report, results, the search objective)
# Rows written with the real Parquet writer, values chosen so every number the aggregator derives is known.
# =================================================================================================================
EPS = [0.0, 0.25, 0.5]
SEEDS = [0, 1, 2]
# name -> (th, alpha, clean accuracy, gaussian accuracy at eps 0.5, fgsm accuracy at eps 0.5, boundary score, seeds)
SETTINGS = {
    "baseline": (0.0, 0.0, 0.98, 0.30, 0.20, 0.010, SEEDS),
    "A": (0.2, 4.0, 0.97, 0.60, 0.35, 0.020, SEEDS),   # the documented winner: RD/UD 2.0, R0/U0 ~0.99
    "B": (0.8, 10.0, 0.80, 0.75, 0.50, 0.030, SEEDS),  # better RD/UD (2.5) but R0/U0 ~0.82 < A0 = 0.9
    "C": (0.4, 1.0, 0.985, 0.25, 0.18, 0.012, SEEDS),  # clean fine, but RD/UD < 1
    "D": (0.6, 4.0, 0.96, 0.50, 0.30, 0.015, [0]),     # acceptable, RD/UD ~1.67, a single seed (SEM NaN)
}
REPEAT_STEP = 0.004  # repeat r adds r * REPEAT_STEP: the per-trial mean over repeats must take it out
CORRUPTIONS = {"gaussian_blur": "low", "contrast": "medium", "shot_noise": "high"}


def config_of(name: str, seed: int, sweep: str = "toy") -> TrialConfig:
    th, alpha = SETTINGS[name][:2]
    if alpha == 0:
        return TrialConfig(sweep=sweep, task="MNIST", reg_data="MNIST", seed=seed, width=4).unregularized()
    return TrialConfig(sweep=sweep, task="MNIST", reg_data="MNIST", th=th, alpha=alpha, seed=seed, width=4)


def accuracy(name: str, attack: str, eps: float, seed: int) -> float:
    """A falling accuracy curve from the clean value to the value at eps 0.5, shifted per seed."""
    _, _, clean, gauss, fgsm = SETTINGS[name][:5]
    floor = {"gaussian": gauss, "fgsm_transfer": fgsm, "uniform": (gauss + clean) / 2}[attack]
    return clean - (clean - floor) * eps / 0.5 + 0.01 * (seed - 1)


def make_results(root: Path, failed: bool = True) -> Path:
    """Write the hand-made sweep under root (= ROOT/<name>) and return root."""
    for name, (_, _, clean, _, _, score, seeds) in SETTINGS.items():
        for seed in seeds:
            write_trial(root, config_of(name, seed), name, clean + 0.01 * (seed - 1), score * (1 + 0.1 * seed))
    if failed:  # a failed seed of the winner, with (stale) robustness rows that must not count
        cfg = config_of("A", 3)
        write_trial(root, cfg, "A", 0.1, 0.5, status="failed")
    return root


def write_trial(root: Path, cfg: TrialConfig, name: str, clean: float, score: float, status: str = "ok") -> None:
    keys = key_values(cfg)
    weights = list(np.roll([0.6, 0.1, 0.1, 0.1, 0.1], int(cfg.th * 5))) if cfg.alpha else None
    write_table(root, "trials", cfg.trial_id, [{
        **keys, "role": cfg.role, "status": status, "error": None if status == "ok" else "RuntimeError: boom",
        "clean_acc": None if status != "ok" else clean, "best_epoch": 1, "epochs": 2, "layer_weights": weights,
        "width": 4, "wall_s": 1.0, "device": "cpu", "config": "{}"}])
    write_table(root, "epochs", cfg.trial_id, [
        {**keys, "epoch": e, "lr": 0.1, "loss_cls": 1.0 / e, "train_acc": 0.5 + 0.2 * e, "test_acc": clean}
        for e in (1, 2)])
    rows = []
    for attack in ("gaussian", "uniform", "fgsm_transfer"):
        for eps in EPS:
            for repeat in (0, 1):
                value = accuracy(name, attack, eps, cfg.seed) + repeat * REPEAT_STEP
                rows.append({**keys, "attack": attack, "variant": "", "group": "", "eps": eps, "repeat": repeat,
                             "metric": "accuracy", "value": value, "images": 100, "failed": 0, "whitebox": False})
    for repeat in (0, 1):
        rows.append({**keys, "attack": "boundary", "variant": "", "group": "", "eps": 0.0, "repeat": repeat,
                     "metric": "boundary_score", "value": score * (1 + 0.2 * repeat), "images": 8, "failed": 1,
                     "whitebox": False})
    for k, (corruption, group) in enumerate(CORRUPTIONS.items()):
        for severity in (1.0, 2.0, 3.0):
            value = clean - 0.05 * severity * (k + 1) * (0.5 if cfg.alpha else 1.0)
            rows.append({**keys, "attack": "corruptions", "variant": corruption, "group": group, "eps": severity,
                         "repeat": 0, "metric": "accuracy", "value": value, "images": 100, "failed": 0,
                         "whitebox": False})
    write_table(root, "robustness", cfg.trial_id, rows)
    radius = np.arange(1, 9, dtype=float)
    tilt = 1.5 + cfg.th if cfg.alpha else 1.0
    write_table(root, "spectrum", cfg.trial_id, [
        {**keys, "attack": "boundary", "radius": r, "power": float(10.0 / r**tilt)} for r in radius])


@pytest.fixture()
def toy_sweep(tmp_path: Path) -> Path:
    """The hand-made sweep (with one failed trial) under tmp_path/toy."""
    return make_results(tmp_path / "toy")


# =================================================================================================================
# core: a tiny trial (scikit-learn digits, width 4, two short epochs); a test states what it changes with tiny(...)
# =================================================================================================================
TINY = dict(task="digits", reg_data="digits", width=4, epochs=2, batch_size=32, train_images=256, test_images=128,
            reg_images=200, valid_fraction=0.1, attacks={"gaussian": {"images": 64}}, device="cpu", num_threads=1)


def tiny(**changes) -> TrialConfig:
    """The tiny trial with `changes`; with alpha 0 it is made unregularized as a sweep makes it (a baseline, or
    the source model with role fgsm_source: TrialConfig.unregularized)."""
    cfg = TrialConfig(**{**TINY, **changes})
    return cfg.unregularized("fgsm_source" if cfg.role == "fgsm_source" else "baseline") if cfg.alpha == 0 else cfg


# the step, pair and kernel tests' trial: regularized at (Th 0.2, alpha 4) with half of TINY's images, a short attack
REGULARIZED = dict(train_images=128, test_images=64, reg_images=100, alpha=4, th=0.2,
                   attacks={"gaussian": {"images": 32, "num_eps": 2}})


def tiny_reg(**changes) -> TrialConfig:
    """tiny() with REGULARIZED, then `changes`."""
    return tiny(**{**REGULARIZED, **changes})


# =================================================================================================================
# orchestrator: a tiny sweep spec (launch, resume, local Ray, MPS, S3, cluster tests)
# =================================================================================================================
TINY_TRAIN = {"width": 4, "epochs": 1, "train_images": 100, "test_images": 40, "reg_images": 40, "batch_size": 32,
              "num_threads": 1}


def tiny_spec(name: str = "tiny", **overrides) -> dict:
    """One regularized point x 2 seeds plus baselines on digits, the Gaussian attack; overrides replace top-level
    keys (train={**TINY_TRAIN, ...} to change the training)."""
    return {"name": name, "pairs": [{"task": "digits", "reg_data": "digits"}],
            "grid": {"th": [0.3], "alpha": [1.0]}, "seeds": [0, 1], "baseline": True,
            "train": dict(TINY_TRAIN), "attacks": {"gaussian": {"images": 20, "num_eps": 2}},
            "resources": {"cpu": 1}, "max_failures": 1, **overrides}


def write_spec(directory: Path, name: str = "tiny", **overrides) -> Path:
    """tiny_spec(name, **overrides) as a YAML file in directory, its file name unique per content (two specs of
    one test never overwrite each other)."""
    spec = tiny_spec(name, **overrides)
    path = Path(directory) / f"{name}-{abs(hash(json.dumps(spec, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# =================================================================================================================
# core: torch on one thread; the `gpu` marker
# =================================================================================================================
def skip_gpu_tests(items):
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@contextlib.contextmanager
def torch_threads(count: int = 1):
    """Torch on `count` threads inside the block, the thread count restored after: the numbers of the core tests
    do not depend on the machine's core count, and two test runs on one machine do not fight over the CPU. For a
    module-scoped fixture; a test uses `one_thread`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture()
def one_thread():
    """Torch on one thread for the test (torch_threads)."""
    with torch_threads(1):
        yield


# =================================================================================================================
# object store: an empty bucket on a local moto S3 server (tests/test_s3.py, tests/test_cluster.py)
# =================================================================================================================
S3_BUCKET = "pixelreg-test"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}  # dummy credentials: the server is moto on 127.0.0.1


@pytest.fixture(scope="module")
def s3_root():
    """ROOT URI of an empty bucket on a moto server at 127.0.0.1, with dummy credentials in the environment
    (set before Ray starts, so its workers inherit them)."""
    import pyarrow.fs as pafs

    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS.items():
            env.setenv(name, value)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            assert host == "127.0.0.1"
            pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                              allow_bucket_creation=True).create_dir(S3_BUCKET)
            yield f"s3://{S3_BUCKET}/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        finally:
            server.stop()


@contextlib.contextmanager
def local_ray():
    """A small local Ray for tests that run trials through Tune in-process: no dashboard, 2 CPUs, or 1 where the
    fast tier runs on two workers (the other worker's tests use the second core; 2 would put three busy
    processes on two cores)."""
    ray = pytest.importorskip("ray")
    cpus = 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()
