"""Count the operators a piece of code dispatches (each one a kernel launch on a GPU), by section.

On a GPU every dispatched operator costs a few microseconds of host time to launch whatever its size, so a step
that dispatches thousands of tiny operators is bound by Python and the launcher, not by the GPU. The count is the
same on every device and CPU (it depends on the code path, not on rounding), so a CPU test can bound it.
`benchmarks/bench_ops.py` prints the counts per regularized step; tests/test_paper_options.py bounds the draw's.

    with OpCount() as ops:
        with ops.section("draw"):
            target.sample(16, generator)
        ...
    ops.by_section["draw"], ops.total
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from torch.utils._python_dispatch import TorchDispatchMode


class OpCount(TorchDispatchMode):
    """Every operator dispatched while active, counted under the innermost open section ("other" outside any)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_section: Counter[str] = Counter()
        self.by_op: Counter[str] = Counter()
        self._sections = ["other"]

    @property
    def total(self) -> int:
        return sum(self.by_section.values())

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._sections.append(name)
        try:
            yield
        finally:
            self._sections.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        self.by_section[self._sections[-1]] += 1
        self.by_op[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
