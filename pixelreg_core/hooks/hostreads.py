"""Count the points where code reads a device value back to the host (each one a device synchronisation on CUDA).

Used by the tests and `benchmarks/gpu.py` to show on a CPU-only machine that the training step never waits on
the host: on CUDA every such read stalls the Python thread until the GPU has finished all queued work, so a
step that reads even one loss value per step cannot run ahead of the GPU.

What counts as a read:
- every scalar read (`.item()`, `bool(t)`, `float(t)`, `int(t)`, a Python `if` on a tensor, printing one): these
  all end in the operator `aten._local_scalar_dense`, seen by a TorchDispatchMode on any device;
- operators whose output size depends on the data (`nonzero`, boolean-mask indexing and assignment,
  `masked_select`, `unique`): on CUDA they copy a count to the host;
- `.cpu()`, `.tolist()` and `.numpy()` (on CPU tensors these are no-ops or direct reads that bypass the
  dispatcher, so they are counted by wrapping the methods);
- copies between devices (`Tensor.to(device)`, `copy_` from a tensor on another device), kind `transfer`: a
  host-to-device copy from pageable memory synchronises the stream too. On a CPU-only machine every tensor is on
  the CPU and `.to` is a no-op that dispatches nothing, so none is counted there: tests show the count with a
  second device that needs no hardware (`meta`, shapes only).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_DATA_DEPENDENT = ("_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                   "equal")


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _crosses_devices(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a `_to_copy` (Tensor.to) or `copy_` moves data between two devices."""
    if name == "copy_":
        dst, src = args[0], args[1] if len(args) > 1 else None
        return isinstance(src, torch.Tensor) and src.device != dst.device
    target = kwargs.get("device")
    return target is not None and torch.device(target) != args[0].device


class HostReads(TorchDispatchMode):
    """`with HostReads() as reads: ...` then `reads.total` and `reads.by_kind` (a Counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_kind: Counter[str] = Counter()
        self._patched: list[tuple[str, object]] = []

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        name = func.overloadpacket.__name__
        if name in _DATA_DEPENDENT:
            self.by_kind[name] += 1
        elif name in ("index", "index_put", "index_put_") and _has_bool_index(args):
            self.by_kind["boolean_mask"] += 1  # on CPU the nonzero inside is not dispatched; on CUDA it syncs
        elif name in ("_to_copy", "copy_") and _crosses_devices(name, args, kwargs or {}):
            self.by_kind["transfer"] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostReads:
        for method in ("cpu", "tolist", "numpy"):
            original = getattr(torch.Tensor, method)
            self._patched.append((method, original))
            setattr(torch.Tensor, method, self._counting(method, original))
        return super().__enter__()

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        super().__exit__(*exc)
        for method, original in reversed(self._patched):
            setattr(torch.Tensor, method, original)
        self._patched.clear()

    def _counting(self, method: str, original):  # noqa: ANN001, ANN202
        def wrapper(tensor, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.by_kind[method] += 1
            return original(tensor, *args, **kwargs)
        return wrapper


@contextlib.contextmanager
def count_host_reads() -> Iterator[HostReads]:
    with HostReads() as reads:
        yield reads
