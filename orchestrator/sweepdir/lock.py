"""One launch per sweep folder: `ROOT/<name>/launch.lock` names the launch that holds it.

The lock is a small JSON file: host, pid, the pid's start time, since when, a heartbeat time refreshed every
HEARTBEAT_S seconds, and the processes of the local Ray the launch started (orchestrator.localray.processes).
A second launch on the same folder refuses at once, naming the holder. A lock whose holder is gone is stale and is
taken over, and the processes the dead launch left running are stopped first:

- local path, same host: stale when the holder's pid no longer runs (or now belongs to a process started at
  another time). Taking it is atomic: the new lock is written to a temp file and hard-linked into place, which
  fails if a lock exists; a stale lock is renamed away first, and put back if it changed in between.
- another host (a shared mount) or an object-store URI (s3://...): the pid cannot be checked from here, so the lock
  is stale once its heartbeat is older than STALE_AFTER_S. Object stores have no create-if-absent here, so the
  launch writes its lock, waits a moment, and reads it back: if another launch's lock is there instead, it
  refuses. Two launches starting within that moment on the same URI can still both start; docs/running.md says so.

`status`, `aggregate` and `report` never take the lock: they only read files that are written atomically.
A launch ended by SIGTERM or Ctrl-C unwinds normally (SIGTERM is turned into an exception while the lock is held),
so its Ray is shut down and the lock removed; after SIGKILL the next launch does it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs

from orchestrator.errors import UserError
from orchestrator.localray import processes as local_ray
from pixelreg_core.results import is_uri

LOCK_FILE = "launch.lock"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0
URI_SETTLE_S = 1.0


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _started(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why the holder's lock no longer protects a running launch, or None while it does."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname():
        records = [{"pid": holder.get("pid", -1), "started": holder.get("started", -1)}]
        return None if local_ray.alive(records) else f"pid {holder.get('pid')} on this host no longer runs"
    age = now - float(holder.get("heartbeat", 0))
    return f"no heartbeat for {age:.0f} s" if age > STALE_AFTER_S else None


def held_message(sweep_dir: str, holder: dict[str, Any]) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (f"{sweep_dir} is being run by another launch: pid {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('since')} (heartbeat {age:.0f} s ago); wait for it to end or stop it (kill "
            f"{holder.get('pid')} on that host) and launch again. orchestrator status works meanwhile")


class SweepLock:
    """The lock of one sweep folder, held by this process from `acquire` to `release`."""

    def __init__(self, sweep_dir: str, log: Callable[[str], None] = print):
        from orchestrator.sweepdir.tables import filesystem

        self.sweep_dir = sweep_dir
        self.log = log
        self.fs, self.base = filesystem(sweep_dir)
        self.uri = is_uri(sweep_dir)
        self.path = f"{self.base}/{LOCK_FILE}"
        pid = os.getpid()
        self.info: dict[str, Any] = {"host": socket.gethostname(), "pid": pid, "started": _started(pid),
                                     "since": _now_iso(), "heartbeat": time.time(), "token": uuid.uuid4().hex,
                                     "ray": []}
        self.track = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ file access

    def _read(self, path: str | None = None) -> dict[str, Any] | None:
        path = path or self.path
        try:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(path) as stream:
                return json.loads(stream.read().decode())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: a lock being written, or damaged; judged by its age below

    def _write(self) -> None:
        data = json.dumps(self.info, indent=1).encode()
        if self.uri:
            with self.fs.open_output_stream(self.path) as stream:
                stream.write(data)
            return
        tmp = f"{self.base}/.{LOCK_FILE}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def _ours(self, holder: dict[str, Any] | None) -> bool:
        return bool(holder) and holder.get("token") == self.info["token"]

    # ------------------------------------------------------------------------------------------ acquire

    def acquire(self) -> SweepLock:
        self.fs.create_dir(self.base, recursive=True)
        for _ in range(5):
            if self._try_take():
                self._thread = threading.Thread(target=self._beat, name="sweep-lock-heartbeat", daemon=True)
                self._thread.start()
                return self
        raise UserError(f"{self.sweep_dir}: could not take {LOCK_FILE} (other launches keep taking it); retry")

    def _try_take(self) -> bool:
        holder = self._read()
        if holder is not None:
            if holder == {}:  # unreadable: give a writer a moment, then judge by its heartbeat (none: stale)
                time.sleep(0.5)
                holder = self._read()
                if holder is None:
                    return False
            reason = stale_reason(holder) if holder else "unreadable lock file"
            if reason is None:
                raise UserError(held_message(self.sweep_dir, holder))
            self.log(f"taking over the lock of an earlier launch that is gone ({reason})")
            left = local_ray.stop(holder.get("ray", [])) if holder.get("host") == socket.gethostname() else 0
            if left:
                self.log(f"stopped {left} process(es) of the local Ray that launch left running")
            return self._replace_stale(holder)
        return self._create()

    def _create(self) -> bool:
        if self.uri:
            self._write()
            time.sleep(URI_SETTLE_S)
            holder = self._read()
            if not self._ours(holder):
                raise UserError(held_message(self.sweep_dir, holder or {}))
            return True
        tmp = f"{self.base}/.{LOCK_FILE}.{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            json.dump(self.info, f, indent=1)
        try:
            os.link(tmp, self.path)  # atomic create-if-absent, with the content already complete
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
        return True

    def _replace_stale(self, holder: dict[str, Any]) -> bool:
        if self.uri:
            return self._create()
        aside = f"{self.base}/.{LOCK_FILE}.stale.{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = self._read(aside)
        if moved != holder and moved != {}:  # another launch took it in between: put its lock back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.remove(aside)
            return False
        os.remove(aside)
        return self._create()

    # ------------------------------------------------------------------------------------------ while held

    def track_ray(self) -> None:
        """Record this launch's local Ray processes in the lock (refreshed with every heartbeat)."""
        self.track = True
        self.refresh()

    def refresh(self) -> None:
        with self._write_lock:
            if self.track:
                self.info["ray"] = local_ray.merge(self.info["ray"], local_ray.descendants())
            self.info["heartbeat"] = time.time()
            self._write()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed heartbeat only ages the lock
                self.refresh()

    # ------------------------------------------------------------------------------------------ release

    def release(self) -> None:
        """Stop what is left of this launch's local Ray, then remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.track:
            local_ray.stop(local_ray.merge(self.info["ray"], local_ray.descendants()))
        with contextlib.suppress(Exception):
            if self._ours(self._read()):
                self.fs.delete_file(self.path)


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: every `finally` runs, Ray is shut down, the lock freed


@contextlib.contextmanager
def sweep_lock(sweep_dir: str, log: Callable[[str], None] = print) -> Iterator[SweepLock]:
    """Hold the sweep folder's lock; SIGTERM ends the block with SystemExit instead of killing the process."""
    lock = SweepLock(sweep_dir, log).acquire()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if in_main else None
    try:
        yield lock
    finally:
        try:
            lock.release()
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)


def lock_exists(sweep_dir: str) -> bool:
    from orchestrator.sweepdir.tables import filesystem

    fs, base = filesystem(sweep_dir)
    return fs.get_file_info(f"{base}/{LOCK_FILE}").type == pafs.FileType.File
