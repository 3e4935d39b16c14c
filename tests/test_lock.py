"""The sweep folder's lock without Ray: refusal naming the holder, stale takeover that stops what the dead launch
left, --fresh keeping the lock, and staleness by heartbeat where the pid cannot be checked."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator.errors import UserError
from orchestrator.localray import processes as local_ray
from orchestrator.sweepdir.lock import LOCK_FILE, STALE_AFTER_S, SweepLock, stale_reason, sweep_lock
from orchestrator.sweepdir.resume import prepare_sweep_dir


def dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


def test_a_second_launch_is_refused_naming_the_holder_and_the_lock_goes_at_the_end(tmp_path):
    sweep = str(tmp_path / "s")
    with sweep_lock(sweep, log=lambda line: None) as held:
        record = json.loads((tmp_path / "s" / LOCK_FILE).read_text())
        assert record["pid"] == held.info["pid"] and record["host"] == socket.gethostname()
        with pytest.raises(UserError) as refused:
            SweepLock(sweep, log=lambda line: None).acquire()
        message = str(refused.value)
        assert f"pid {record['pid']}" in message and socket.gethostname() in message and record["since"] in message
    assert not (tmp_path / "s" / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_after_stopping_the_processes_it_recorded(tmp_path):
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    pid, started = dead_pid()
    (tmp_path / "s").mkdir()
    record = {"host": socket.gethostname(), "pid": pid, "started": started, "since": "earlier", "heartbeat": 0,
              "token": "old", "ray": [{"pid": leftover.pid, "started": psutil.Process(leftover.pid).create_time(),
                                       "name": "ray::DashboardAgent"}]}
    (tmp_path / "s" / LOCK_FILE).write_text(json.dumps(record))
    lines: list[str] = []
    try:
        lock = SweepLock(str(tmp_path / "s"), log=lines.append).acquire()
        assert leftover.wait(timeout=10) is not None  # stopped
        assert any("taking over" in line for line in lines) and any("stopped 1" in line for line in lines)
        assert json.loads((tmp_path / "s" / LOCK_FILE).read_text())["token"] == lock.info["token"]
        lock.release()
    finally:
        leftover.kill()


def test_a_reused_pid_is_not_signalled():
    me = psutil.Process()
    assert local_ray.alive([{"pid": me.pid, "started": me.create_time()}])
    assert local_ray.stop([{"pid": me.pid, "started": me.create_time() - 100}]) == 0  # another start time: not ours


def test_fresh_keeps_the_lock_and_deletes_the_rest(tmp_path):
    sweep = tmp_path / "s"
    with sweep_lock(str(sweep), log=lambda line: None):
        (sweep / "trials").mkdir()
        (sweep / "trials" / "x.parquet").write_bytes(b"")
        prepare_sweep_dir(str(sweep), "name: s\n", "abc", fresh=True, log=lambda line: None)
        assert (sweep / LOCK_FILE).exists() and not (sweep / "trials").exists()


def test_another_hosts_lock_is_stale_only_after_its_heartbeat_stops():
    now = time.time()
    other = {"host": "elsewhere", "pid": 1, "heartbeat": now - 10}
    assert stale_reason(other, now) is None
    assert "no heartbeat" in stale_reason({**other, "heartbeat": now - STALE_AFTER_S - 1}, now)
