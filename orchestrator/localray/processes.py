"""The local Ray a launch starts: loopback only, and nothing of it left running when the launch ends.

Loopback. Ray 2.60's gRPC servers (GCS, raylet, object manager, every worker) listen on 127.0.0.1 only when the
node's IP is 127.0.0.1, and on every interface otherwise (GrpcServer's `listen_to_localhost_only`); the dashboard
agent and the runtime-env agent follow the same node IP. `ray.init(_node_ip_address="127.0.0.1")` alone is not
enough on Linux: `services.resolve_ip_for_localhost` turns 127.0.0.1 back into the machine's routable IP unless
`ray_constants.ENABLE_RAY_CLUSTER` is false, which the environment variable RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
sets (read when Ray is imported; Ray's child processes read it too). `loopback()` sets both for a local start.
tests/test_local_ray.py lists the listening sockets of every process of a real launch's Ray and finds only
127.0.0.1.

Leftovers. A driver killed with SIGKILL takes the GCS and raylet with it (Ray's fate sharing), but Ray 2.60's
DashboardAgent and RuntimeEnvAgent survive, re-parented to init, and ignore SIGTERM. So the launch records the
processes of the Ray it started (pid and start time, refreshed while it runs) next to its lock; whoever ends the
launch, or the next launch finding the stale lock, stops exactly those processes: a pid is only signalled while its
start time still matches the record, so a reused pid or another engineer's Ray is never touched. `ray stop` is
never used (it would stop every Ray session of the machine).
"""

from __future__ import annotations

import os
import re
from typing import Any

LOOPBACK = "127.0.0.1"
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray's Python services run scripts from the installed package: .../site-packages/ray/dashboard/dashboard.py etc.
RAY_SCRIPT = re.compile(r"[/\\]ray[/\\](_private|dashboard|autoscaler|core)[/\\]")


def loopback() -> dict[str, Any]:
    """Make the next local ray.init bind 127.0.0.1 only; returns the ray.init keyword for it."""
    os.environ[CLUSTER_ENV] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray may have been imported before the variable was set
    return {"_node_ip_address": LOOPBACK}


def _is_ray(proc) -> bool:
    """Ray's own processes: gcs_server, raylet, its Python services (run from the ray package) and every
    `ray::` worker or agent (they rename themselves). Other children of the driver are left alone."""
    name = proc.name()
    if name in ("gcs_server", "raylet") or name.startswith("ray::"):
        return True
    return any(RAY_SCRIPT.search(part) for part in proc.cmdline()[:3])


def descendants() -> list[dict[str, Any]]:
    """{pid, started, name} of the Ray processes below this one (the local Ray's GCS, raylet, agents, workers)."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if _is_ray(proc):
                out.append({"pid": proc.pid, "started": proc.create_time(), "name": proc.name()})
        except psutil.Error:
            continue
    return out


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded processes, old and new, one entry per (pid, start time)."""
    seen = {(p["pid"], p["started"]): p for p in old}
    seen.update({(p["pid"], p["started"]): p for p in new})
    return list(seen.values())


def _same_process(record: dict[str, Any]):
    """The live psutil.Process the record names, or None (gone, a zombie, or a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["started"])) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, KeyError, ValueError):
        return None


def alive(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if _same_process(r) is not None]


def stop(records: list[dict[str, Any]], grace: float = 3.0) -> int:
    """SIGTERM the recorded processes that still run, SIGKILL what is left after `grace` s; returns how many were
    running. Only processes whose pid and start time both match a record are signalled."""
    import psutil

    procs = [p for p in (_same_process(r) for r in records) if p is not None and p.pid != os.getpid()]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, survivors = psutil.wait_procs(procs, timeout=grace)
    for proc in survivors:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(survivors, timeout=grace)
    return len(procs)
