"""What a failed attempt leaves behind in a worker process, and how it is freed before the next one runs there.

A caught exception keeps its traceback, the traceback every frame it passed through, and the frames their locals:
the model, the optimizer, the autograd graph, the batch, a seed pack's grouped network. A retried trial
(orchestrator/run/trainable.py), a pack member retried alone, or the next trial of a reused Ray actor would run
beside all of it, and with fractional GPUs (`gpu: 0.25`) every worker would keep its peak memory for good.
`forget_frames` drops an exception's frames (its type and message stay, for the rows and the retry decision);
`release_memory` collects what is then unreachable and hands the CUDA allocator's cached blocks back.

A "sticky" CUDA error (a device-side assert, an illegal memory access) leaves the process's CUDA context unusable:
every later CUDA call in that process fails, so every later trial of a reused actor would fail too.
`sticky_cuda_error` recognises one; the trainable then ends the worker process, and Tune starts the trial again in
a new actor (FailureConfig), from its checkpoint. An out-of-memory error is not sticky: it is retried in place.
"""

from __future__ import annotations

import gc
import traceback

# Messages of the CUDA errors after which the context cannot be used again (cudaErrorAssert, IllegalAddress,
# IllegalInstruction, MisalignedAddress, LaunchFailure, ECCUncorrectable, and the driver's "unknown error").
STICKY_CUDA = ("device-side assert", "illegal memory access", "illegal instruction", "misaligned address",
               "unspecified launch failure", "uncorrectable ecc", "cuda error: unknown error")


def forget_frames(exc: BaseException | None) -> None:
    """Clear the locals of every frame the exception (and its causes and contexts) passed through, and drop the
    tracebacks: the exception stays a type and a message, holding no model, graph or optimizer."""
    for e in chain(exc):
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)
            e.__traceback__ = None


def release_memory() -> None:
    """Collect unreachable objects (reference cycles included) and, where this process uses CUDA, return the
    allocator's cached blocks to the driver, so the next attempt or trial starts from what it needs."""
    import torch  # here: the Tune driver imports this module (run/trainable.py) and needs no torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # a sticky error: the context is gone; the worker is ended (sticky_cuda_error)
            pass


def sticky_cuda_error(exc: BaseException) -> bool:
    """Whether the exception (or one it came from) is a CUDA error that leaves the context unusable."""
    return any(text in str(e).lower() for e in chain(exc) for text in STICKY_CUDA)


def chain(exc: BaseException | None):
    """The exception and every one it came from (causes and contexts), each once."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
