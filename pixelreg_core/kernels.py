"""The kernel options of a trial (amp, channels_last, cudnn_benchmark, tf32, fused_sgd, compile): how each is
switched on and scoped to the trial. None changes what is computed beyond float rounding; train.py calls them."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pixelreg_core.config import ConfigError, TrialConfig
from pixelreg_core.model import PairResNet


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when enabled (`amp`); otherwise no context at all, so off is exactly float32."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# channels_last on CPU: the narrowest stage (`width` channels) and the smallest feature map (the input side after
# the three stride-2 stages) it is allowed at. A CPU channels-last backward has corrupted the heap ("corrupted
# double-linked list") at width 4 on 28 x 28 and at width 8 on 8 x 8 digits, whose last stage is 1 x 1. It does not
# reproduce with torch 2.14.1, but nothing explains why it stopped, so the layout stays away from both shapes.
# Where it is allowed, its gradients differ from the plain layout's by float reassociation only, and the
# quickstart's shape (width 8, 28 x 28: last map 4 x 4) gains from it (docs/performance.md).
CPU_CHANNELS_LAST_MIN_WIDTH = 8


CPU_CHANNELS_LAST_MIN_MAP = 2


def smallest_feature_map(side: int) -> int:
    """The side of the last stage's feature map for an input side (three stride-2 3 x 3 convolutions, padding 1)."""
    for _ in range(3):
        side = (side + 1) // 2
    return side


def uses_channels_last(cfg: TrialConfig, device: torch.device, image_side: int | None = None) -> bool:
    """Whether `channels_last` acts: on CUDA whenever asked; on CPU only at widths >= CPU_CHANNELS_LAST_MIN_WIDTH
    with a last feature map of at least CPU_CHANNELS_LAST_MIN_MAP (`image_side`: the input's smaller side; None
    keeps it off on CPU); elsewhere never. Where it does not act the numbers are exactly the plain ones."""
    if not cfg.channels_last:
        return False
    if device.type == "cuda":
        return True
    return bool(device.type == "cpu" and image_side is not None and cfg.width >= CPU_CHANNELS_LAST_MIN_WIDTH
                and smallest_feature_map(image_side) >= CPU_CHANNELS_LAST_MIN_MAP)


def tf32_switches() -> list[tuple[Any, str, Any, Any]]:
    """Where TF32 is switched, as (owner, attribute, value for on, value for off): cuDNN's convolutions and cuBLAS
    matmuls. torch >= 2.9 has the `fp32_precision` API; there, reading the legacy `allow_tf32` after
    anything (torch, a library, a user) set the new one raises ("a mix of the legacy and new APIs"), so the new
    API is used wherever torch offers it and the legacy flags only where it does not."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision") and hasattr(matmul, "fp32_precision"):
        return [(cudnn.conv, "fp32_precision", "tf32", "ieee"), (matmul, "fp32_precision", "tf32", "ieee")]
    return [(cudnn, "allow_tf32", True, False), (matmul, "allow_tf32", True, False)]


def tf32_enabled() -> tuple[bool, bool]:
    """(convolutions, matmuls) run in TF32 on CUDA now, read through the API `tf32_switches` uses."""
    return tuple(getattr(owner, name) == on for owner, name, on, _ in tf32_switches())


def check_device_support(cfg: TrialConfig, device: torch.device) -> None:
    """One line (ConfigError) before anything runs, for a kernel option this CUDA machine cannot run: `amp` on a
    GPU without bf16 (autocast would fail or run emulated), `compile` without the C compiler and Python headers
    that Triton builds its kernels with at run time (a bare image fails the compile with a long, unclear error)."""
    if device.type != "cuda":
        return
    if cfg.amp and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp", f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; set amp false")
    if cfg.compile != "none":
        missing = compile_toolchain_missing()
        if missing:
            raise ConfigError("compile", f"{missing}, or set compile none")


def compile_toolchain_missing() -> str:
    """What `compile` on CUDA lacks here, or "": inductor's Triton kernels are built at run time with a C compiler
    and the Python headers (Python.h)."""
    include = sysconfig.get_paths().get("include") or ""
    if not any(shutil.which(cc) for cc in (os.environ.get("CC") or "cc", "gcc", "clang")):
        return "torch.compile on CUDA needs a C compiler (cc, gcc or clang) at run time for Triton; install one"
    if not Path(include, "Python.h").is_file():
        return f"torch.compile on CUDA needs Python.h (in {include}) at run time for Triton; install the Python headers"
    return ""


@contextlib.contextmanager
def kernel_settings(cfg: TrialConfig, device: torch.device) -> Iterator[None]:
    """The process-wide kernel flags for the trial only (a Ray worker runs many trials and must find them as they
    were): cudnn.benchmark, and TF32 for convolutions and matmuls. On CUDA `tf32` sets every TF32 switch, so off
    is plain float32 everywhere: torch's own defaults are TF32 on for cuDNN convolutions and off for matmuls. The
    flags act on CUDA only; on other devices they are left as they are. trial.py and pack/trial.py hold them for
    the whole trial (the untrained model's evaluation, the epochs, every attack and the FGSM cache), so a trial's
    accuracies are all of one arithmetic; train() holds them too, for callers that train without a trial."""
    check_device_support(cfg, device)
    switches = tf32_switches() if device.type == "cuda" else []
    before = [getattr(owner, name) for owner, name, _, _ in switches]
    benchmark_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark and device.type == "cuda")
    for owner, name, on, off in switches:
        setattr(owner, name, on if cfg.tf32 else off)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark_before
        for (owner, name, _, _), value in zip(switches, before, strict=True):
            setattr(owner, name, value)


def make_optimizer(cfg: TrialConfig, model: PairResNet, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; `fused_sgd` asks for torch's single fused kernel (off: torch's default, which is the
    multi-tensor `foreach` kernels on CUDA and a per-parameter loop on CPU; both compute the same update)."""
    extra: dict[str, Any] = {"fused": True} if cfg.fused_sgd else {}
    try:
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0, **extra)
    except RuntimeError as err:
        raise ConfigError("fused_sgd", f"torch has no fused SGD for {device.type} ({err}); set fused_sgd false"
                          ) from err


class _FallbackWatch(logging.Handler):
    """Catches dynamo's own warning that it hit a recompile limit (after which that code runs eager, silently), and
    inductor's that it skipped CUDA graphs (`reduce-overhead` then runs without them, silently too)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(text in message for text in ("recompile_limit", "cache_size_limit", "skipping cudagraphs")):
            self.hits.append(message.splitlines()[0])


@contextlib.contextmanager
def compile_session(cfg: TrialConfig) -> Iterator[None]:
    """One trial's torch.compile state: fresh at its start, freed at its end, and a one-line warning if dynamo
    gave up compiling.

    dynamo keeps every compiled graph of a function, guarded on the values it was traced with (`xa is None`,
    `sim_layer`, `amp`, `arctanh`, the model object): a Ray worker that runs trial after trial (`reuse_actors`)
    would add entries until dynamo's recompile limit (8), then run the step eager without a word, and would keep
    every finished trial's graphs and CUDA-graph memory pools. `torch._dynamo.reset()` before and after the trial
    gives each trial one compile of its own. Within a trial the step's shapes are fixed: train_epoch runs the one
    batch of another size (the epoch's last, 59,400 % 64 = 8 images on MNIST) eager instead of compiling a second
    graph (and a second CUDA graph) for it."""
    if cfg.compile == "none":
        yield
        return
    import torch._dynamo
    from torch._dynamo.utils import counters

    watch = _FallbackWatch()
    logs = [logging.getLogger(name) for name in ("torch._dynamo", "torch._inductor")]
    torch._dynamo.reset()
    skips_before = counters["inductor"]["cudagraph_skips"]
    for log in logs:
        log.addHandler(watch)
    try:
        yield
    finally:
        for log in logs:
            log.removeHandler(watch)
        skipped_graphs = counters["inductor"]["cudagraph_skips"] > skips_before or any(
            "cudagraphs" in hit for hit in watch.hits)
        torch._dynamo.reset()
        if skipped_graphs:
            print(f"warning: compile: trial {cfg.trial_id}: torch.compile skipped CUDA graphs ({cfg.compile}); "
                  "the numbers are right, the speed is not reduce-overhead's", file=sys.stderr, flush=True)
        elif watch.hits:
            print(f"warning: compile: trial {cfg.trial_id}: torch.compile gave up and ran the step eager from then "
                  f"on ({watch.hits[0][:200]}); the numbers are right, the speed is not compile's",
                  file=sys.stderr, flush=True)
