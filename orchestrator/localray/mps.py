"""CUDA MPS for `launch --mps`: many trials on one GPU share it through one MPS server instead of time-slicing.

Without MPS, trials packed onto one GPU (fractional `resources.gpu`) each own a CUDA context and the GPU switches
between them; small kernels from different processes never run at the same time. The MPS control daemon
(`nvidia-cuda-mps-control`, part of the NVIDIA driver utilities) funnels every process's work into one context,
so kernels of different trials overlap. It only helps when trials are small enough to leave the GPU idle between
kernels, which is what packing is for.

The daemon is started only when the user asks (`--mps`), before Ray starts its workers (a process picks MPS up
when it creates its CUDA context), in a pipe/log folder of its own, so it neither needs root nor meets a daemon
someone else runs; the pipe folder is passed to the workers through CUDA_MPS_PIPE_DIRECTORY. It is stopped at the
end of the launch ("quit" on its control pipe), also when the launch fails. Every call to the control binary has a
time limit (`TIMEOUT_S`): a daemon that does not answer ends the launch with one line, not a hang. Leaves GPU
settings (compute mode, clocks) alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator

from orchestrator.errors import UserError

CONTROL = "nvidia-cuda-mps-control"
ENV = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
TIMEOUT_S = 30.0  # start and quit each answer in well under a second on a healthy driver


def check(wanted: bool, *, address: str | None, gpu_per_trial: float) -> str | None:
    """The control binary's path when `--mps` is asked for and can work here; None when not asked. One-line
    UserError otherwise."""
    if not wanted:
        return None
    if address or os.environ.get("RAY_ADDRESS"):
        raise UserError("--mps: starts MPS on this machine only and works with a local Ray; start MPS on every "
                        "node of the cluster yourself (nvidia-cuda-mps-control -d) and drop --mps")
    if gpu_per_trial <= 0:
        raise UserError("--mps: the spec's trials ask for no GPU (resources.gpu is 0); set resources.gpu, e.g. "
                        "0.25, or drop --mps")
    path = shutil.which(CONTROL)
    if path is None:
        raise UserError(f"--mps: {CONTROL} not found on PATH; install the NVIDIA driver utilities or drop --mps")
    return path


@contextlib.contextmanager
def daemon(control: str | None, log: Callable[[str], None] = print) -> Iterator[None]:
    """Run an MPS control daemon for the duration of the block (nothing when `control` is None)."""
    if control is None:
        yield
        return
    folder = tempfile.mkdtemp(prefix="pixelreg-mps-")
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=os.path.join(folder, "pipe"),
               CUDA_MPS_LOG_DIRECTORY=os.path.join(folder, "log"))
    for name in ENV:
        os.makedirs(env[name], exist_ok=True)
    try:
        started = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"--mps: {CONTROL} -d did not return within {TIMEOUT_S:g} s; check the GPU driver or drop "
                        "--mps") from None
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        detail = (started.stderr or started.stdout).strip().splitlines()
        raise UserError(f"--mps: {CONTROL} -d failed (exit {started.returncode}"
                        f"{': ' + detail[0] if detail else ''}); check the GPU driver or drop --mps")
    previous = {name: os.environ.get(name) for name in ENV}
    os.environ.update({name: env[name] for name in ENV})  # Ray's workers inherit the driver's environment
    log(f"CUDA MPS daemon started (pipe {env['CUDA_MPS_PIPE_DIRECTORY']})")
    try:
        yield
    finally:
        try:
            stopped = subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True,
                                     timeout=TIMEOUT_S)
            failure = None if stopped.returncode == 0 else f"exit {stopped.returncode}"
        except subprocess.TimeoutExpired:
            failure = f"no answer within {TIMEOUT_S:g} s"
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        log("CUDA MPS daemon stopped" if failure is None
            else f"warning: stopping the CUDA MPS daemon failed ({failure}); run "
                 f"'echo quit | CUDA_MPS_PIPE_DIRECTORY={env['CUDA_MPS_PIPE_DIRECTORY']} {CONTROL}'")
        shutil.rmtree(folder, ignore_errors=True)
