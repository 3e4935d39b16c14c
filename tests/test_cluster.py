"""A sweep on a two-node Ray cluster: trials spread over both nodes, results equal to a single-node run, a lost
node's trials rerun on the head.

The cluster (tests/two_node_cluster.py) is a head with 1 CPU and a second node with 1 CPU and the custom resource
`pixelreg_node2`, both on this machine and bound to 127.0.0.1 only, with Ray token authentication on (a throwaway
token in RAY_AUTH_TOKEN). Every trial asks for 1 CPU, so one node holds one trial at a time and a phase of two or
more trials must use both nodes: the trials table's `node` column (the Ray node id of the worker) shows it, and the
test fails if trials stop spreading. `orchestrator launch --address` runs as its own process, as a user runs it.

Results are compared with a single-node `orchestrator launch` of the same spec (a local Ray): every table, every
column but the timing ones (`TIMING_COLUMNS`: `wall_s`, `finished_at`, `seconds`, ... and `node`), with the results
root masked in `checkpoint` and `config`. Workers write through the sweep's results root: a local folder (the two
nodes share this machine's disk, as NFS would give them), then an object store (a moto S3 server on 127.0.0.1 in
this process, dummy credentials).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import AWS, TINY_TRAIN

from orchestrator.localray.start import join_error
from pixelreg_core.results import TABLES, TIMING_COLUMNS, read_table

REPO = Path(__file__).resolve().parents[1]


def spec_dict(name: str, **train) -> dict:
    """FGSM source, 2 baselines, 2 points x 2 seeds: 7 trials; the transferred FGSM attack of every trial reads
    the source checkpoint back through the results root, wherever the source ran."""
    return {"name": name, "pairs": [{"task": "digits", "reg_data": "digits"}],
            "grid": {"points": [{"th": 0.3, "alpha": 1.0}, {"th": 0.6, "alpha": 4.0}]}, "seeds": 2,
            "baseline": True, "train": {**TINY_TRAIN, **train},
            "attacks": {"gaussian": {"images": 20, "num_eps": 2}, "fgsm_transfer": {"images": 20, "num_eps": 2}},
            "resources": {"cpu": 1}, "max_failures": 2}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working directory for every launch: relative data roots resolve the same in every run."""
    path = tmp_path_factory.mktemp("cluster")
    spec = spec_dict("clu")
    (path / "clu.yaml").write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The environment of the cluster's nodes and of every launch: this checkout first on the path (the workers
    import the project from it), Ray on loopback only, token authentication with a throwaway token, dummy AWS
    credentials for the moto server."""
    pytest.importorskip("ray")
    out = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    out.update(AWS)
    out.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node address 127.0.0.1 (see two_node_cluster.py)
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_USAGE_STATS_ENABLED": "0"})
    return out


class TwoNodes:
    """Handle on the two_node_cluster.py process: its address, node ids, and `kill_worker()`."""

    def __init__(self, env: dict[str, str], attempts: int = 3):
        # Ray gives a node 30 s to register with the GCS (not configurable); on a busy 2-core machine that can run
        # out, so a failed start is tried again in a fresh process (the failed one took its processes with it).
        for attempt in range(1, attempts + 1):
            self.temp_dir = tempfile.mkdtemp(prefix="pxc", dir="/tmp")  # short: Ray's socket paths are limited
            self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "two_node_cluster.py"),
                                          self.temp_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=env)
            line = self.proc.stdout.readline()
            if line:
                break
            code = self.proc.wait()
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            if attempt == attempts:
                raise RuntimeError(f"the two-node cluster did not start in {attempts} attempts (exit {code})")
        info = json.loads(line)
        self.address, self.head, self.worker = info["address"], info["head"], info["worker"]

    def kill_worker(self) -> float:
        """SIGKILL every process of the second node; returns when it is gone (time.time())."""
        self.proc.stdin.write("kill-worker\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "killed"
        return time.time()

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its nodes die with it: the cluster process registered their shutdown at exit
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(env):
    nodes = TwoNodes(env)
    yield nodes
    nodes.stop()


def launch(spec: Path, results: str, env: dict[str, str], *extra: str, stream=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "orchestrator.cli", "launch", str(spec), "--results", results,
           "--no-dashboard", "--progress-every", "1", *extra]
    return subprocess.Popen(cmd, cwd=spec.parent, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def run_launch(spec: Path, results: str, env: dict[str, str], *extra: str) -> str:
    proc = launch(spec, results, env, *extra)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "every trial ok" in out, out
    return out


def sweep_of(root: str, name: str) -> str:
    base, sep, query = root.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def content(sweep: str) -> dict[str, pd.DataFrame]:
    """Every table of a sweep without timing and node, the sweep's location masked, rows in a fixed order."""
    base = sweep.partition("?")[0]
    out = {}
    for table in TABLES:
        frame = read_table(sweep, table).drop(columns=list(TIMING_COLUMNS.get(table, ())))
        for column in ("checkpoint", "config"):
            if column in frame:
                frame[column] = frame[column].map(
                    lambda s: None if s is None else re.sub(r"\?[^\"]*", "", s.replace(base, "<SWEEP>")))
        out[table] = frame.sort_values(list(frame.columns.drop("layer_weights", errors="ignore"))) \
            .reset_index(drop=True)
    return out


def assert_same_content(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(a[table], b[table], check_exact=True, obj=table)


@pytest.fixture(scope="module")
def single_node(workdir, env) -> dict[str, pd.DataFrame]:
    """The same spec on one local Ray (this launch starts it), the reference for the cluster runs."""
    root = str(workdir / "single")
    run_launch(workdir / "clu.yaml", root, env)
    return content(sweep_of(root, "clu"))


def check_spread_and_complete(sweep: str, cluster: TwoNodes) -> pd.DataFrame:
    trials = read_table(sweep, "trials")
    assert len(trials) == 7 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"ok"}, trials[["role", "error"]]
    assert set(trials["node"]) == {cluster.head, cluster.worker}, trials[["role", "node"]]
    base = sweep.partition("?")[0]
    assert all(c.startswith(f"{base}/checkpoints/") for c in trials["checkpoint"])
    return trials


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_sweep_spreads_over_two_nodes_and_equals_a_single_node_run(workdir, env, cluster, single_node):
    root = str(workdir / "cluster")
    out = run_launch(workdir / "clu.yaml", root, env, "--address", cluster.address)
    assert f"connected to Ray at {cluster.address}: 2 CPU" in out
    assert "2 trial(s) at a time" in out
    check_spread_and_complete(sweep_of(root, "clu"), cluster)
    assert_same_content(content(sweep_of(root, "clu")), single_node)
    # nothing under the nodes' own Ray folders (session dirs, Tune's trial working dirs): every file went
    # through the results root
    local = [p for p in Path(cluster.temp_dir).rglob("*") if p.suffix in (".parquet", ".pt", ".npy")]
    assert not local, local


@pytest.mark.slow
def test_a_driver_without_the_token_gets_one_line_naming_the_fix(workdir, env, cluster):
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    proc = launch(workdir / "clu.yaml", str(workdir / "no-token"), no_token, "--address", cluster.address)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    error = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and f"--address {cluster.address}: cannot join" in error[0], out
    assert "set RAY_AUTH_MODE=token" in error[0]
    assert "Traceback" not in out


def test_a_trial_run_without_ray_names_this_machine(tmp_path):
    import platform

    import torch

    from pixelreg_core.config import TrialConfig
    from pixelreg_core.trial import run_trial

    threads = torch.get_num_threads()
    cfg = TrialConfig(task="digits", reg_data="digits", width=4, epochs=1, batch_size=32, train_images=64,
                      test_images=32, reg_images=40, attacks={"gaussian": {"images": 16, "num_eps": 1}},
                      device="cpu", num_threads=1)
    run_trial(cfg, tmp_path)
    assert torch.get_num_threads() == threads
    assert list(read_table(tmp_path, "trials")["node"]) == [platform.node() or None]
    run_trial(cfg, tmp_path / "again", node="ray-node-id")  # (tmp_path holds this model now: not trained again)
    assert list(read_table(tmp_path / "again", "trials")["node"]) == ["ray-node-id"]


def test_join_error_names_the_token_only_when_auth_is_off():
    cause = RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                         '  File "node.py", line 996, in _init_gcs_client\n'
                         "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is "
                         "missing or incorrect.\n")
    exc = ConnectionError("Failed to connect to Ray cluster at 10.0.0.10:6379")
    exc.__cause__ = cause
    line = join_error("10.0.0.10:6379", exc, None)
    assert line.startswith("--address 10.0.0.10:6379: cannot join that Ray cluster (Failed to connect")
    assert "InvalidAuthToken" in line and "Traceback" not in line and "\n" not in line
    assert "RAY_AUTH_MODE=token" in line
    assert "RAY_AUTH_MODE" not in join_error("10.0.0.10:6379", exc, "token")


@pytest.mark.slow
def test_sweep_on_an_object_store_from_both_nodes(workdir, env, cluster, single_node, s3_root):
    out = run_launch(workdir / "clu.yaml", s3_root, env, "--address", cluster.address)
    assert "2 trial(s) at a time" in out
    sweep = sweep_of(s3_root, "clu")
    check_spread_and_complete(sweep, cluster)
    assert_same_content(content(sweep), single_node)


@pytest.mark.slow
def test_a_lost_node_reruns_its_trials_on_the_head(workdir, env, cluster, capsys):
    """Runs last: it kills the second node. Trials are longer here (2 epochs on 600 images) so that the kill lands
    while the second node runs one."""
    spec = workdir / "lossy.yaml"
    spec.write_text(yaml.safe_dump(spec_dict("lossy", train_images=600, epochs=2)))
    root = str(workdir / "lossy")
    proc = launch(spec, root, env, "--address", cluster.address)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.time(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 300
    while not any("running 2" in line for _, line in lines):  # both nodes busy: one trial is on the second node
        assert proc.poll() is None and time.time() < deadline, "".join(line for _, line in lines)
        time.sleep(0.2)
    killed_at = cluster.kill_worker()
    proc.wait(timeout=300)
    reader.join(timeout=10)
    out = "".join(line for _, line in lines)
    assert proc.returncode == 0, out
    assert "every trial ok" in out, out

    sweep = sweep_of(root, "lossy")
    trials = read_table(sweep, "trials")
    assert len(trials) == 7 and trials["trial_id"].is_unique  # nothing lost, nothing duplicated
    assert set(trials["status"]) == {"ok"}, trials[["role", "error"]]
    for table, per_trial in (("epochs", 2), ("robustness", None)):
        counts = read_table(sweep, table).groupby("trial_id").size()
        assert set(counts.index) == set(trials["trial_id"])
        assert per_trial is None or set(counts) == {per_trial}
    # the progress line names Tune's trial (trial_digits-digits_th0.3_a1_s1...); its Tune folder is <name>_<trial_id>
    retried_names = {m.group(1): t for t, line in lines if (m := re.search(r"retrying (\S+) after", line))}
    assert retried_names, out  # the kill hit a running trial
    by_name = dict(p.parent.name.rsplit("_", 1) for p in Path(sweep, "tune").rglob("params.json"))
    retried = {by_name[name]: t for name, t in retried_names.items()}
    node = dict(zip(trials["trial_id"], trials["node"], strict=True))
    assert {node[t] for t in retried} == {cluster.head}
    with capsys.disabled():  # what a node loss costs, for the README
        for trial_id, noticed in retried.items():
            done = os.path.getmtime(Path(sweep, "trials", f"{trial_id}.parquet"))
            wall = float(trials.loc[trials["trial_id"] == trial_id, "wall_s"].iloc[0])
            print(f"\nnode loss: trial {trial_id} retry noticed {noticed - killed_at:.1f} s after the kill; "
                  f"rerun on the head from {done - wall - killed_at:.1f} s (when the head had a free slot) to "
                  f"{done - killed_at:.1f} s after it")
