"""Pair sampling for the regularizer: k pairs (i, j) of regularization images per step, uniform over the pairs
whose pixel similarity qualifies for the trial's `range`, without ever building the N x N similarity matrix.

S_pixel[i, j] is one dot product of two unit rows of the embedding E (N x D, `targets.pixel_embeddings`), so a
pair's similarity is computed when the pair is drawn and memory stays O(N * D). The reference design materialised
all N(N-1)/2 pairs (21.5 s and 4.0 GB at N = 5,000, growing as N^2); `PairSampler` prepares in well under a second
at N = 50,000 (benchmarks/bench_targets.py). Pairs are drawn uniformly from the qualifying ones either by rejection
(when they are common) or from a list enumerated once, block by block (when they are rare).

`pair_draw` (`replacement`): with replacement each step draws its k pairs independently; without replacement (the
authors' code: passes over a shuffled list of all qualifying pairs i < j) the pairs follow one shuffled order of
the qualifying pairs, each once per pass, then a new order. The order is never stored: position x of pass p maps to
a pair index by a keyed bijection of [0, M) (`shuffled_index`, a swap-or-not shuffle), and a pair index to (i, j)
by `triangle_pair` (all pairs) or the enumerated list (rare ranges), so memory stays O(N * D) as above. Where pairs
are common but not all qualify, the order of all pairs is walked and the non-qualifying ones skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pixelreg_core.errors import ConfigError
from pixelreg_core.targets.ranges import RANGES, check_thresholds

ESTIMATE_PAIRS = 8192  # random pairs used to estimate how common the qualifying pairs are
ENUMERATE_BELOW = 0.01  # below this qualifying fraction rejection wastes > 100 draws per pair: list them instead,
ENUMERATE_SMALL_LIST = (0.1, 4_000_000)  # and below 10% too while the list stays under 4M pairs (32 MB of int32)
BLOCK_ELEMENTS = 1 << 22  # floats per block of E E^T (16 MB): bounds the memory of enumeration and rejection


def sample_pairs(emb: Tensor, k: int, *, th: float, range: str = "all", generator: torch.Generator | None = None,
                 th2: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """k pairs (i, j), i != j, uniform over the pairs that qualify for `range`, and s = S_pixel[i, j] = <E_i, E_j>.

    A thin wrapper that prepares a `PairSampler` on every call; a training loop should build the sampler once.
    """
    return PairSampler(emb, th=th, range=range, th2=th2).sample(k, generator)


def range_mask(s: Tensor, range: str, th: float, th2: float | None = None) -> Tensor:
    """Which similarities qualify for a range (docs/method.md, "Targets"): a bool tensor shaped like s."""
    a = s.abs()
    if range == "all":
        return torch.ones_like(s, dtype=torch.bool)
    if range == "high":
        return a > th
    if range == "low":
        return a <= th
    if range == "positive":
        return (s > th) | (a <= th)
    if range == "negative":
        return (s < -th) | (a <= th)
    if range == "double":
        return (a > th) | (a < th2)
    raise ConfigError("range", f"is {range!r}; use one of {', '.join(RANGES)}")


_NO_PAIR_FIX = {
    "high": ("|S_pixel| > th", "lower th"),
    "low": ("|S_pixel| <= th", "raise th"),
    "positive": ("S_pixel >= -th", "raise th"),
    "negative": ("S_pixel <= th", "raise th"),
    "double": ("|S_pixel| > th or |S_pixel| < th2", "lower th or raise th2"),
}


def random_pairs(n: int, m: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """m ordered pairs uniform over {(i, j): i != j}: j is drawn from the n-1 others and shifted past i."""
    device = generator.device if generator is not None else torch.device("cpu")
    i = torch.randint(n, (m,), generator=generator, device=device)
    j = torch.randint(n - 1, (m,), generator=generator, device=device)
    j += (j >= i).long()
    return i, j


_MASK31 = (1 << 31) - 1
SHUFFLE_ROUNDS = 24  # swap-or-not rounds: each round pairs x with K - x; 24 mix any domain up to 2^62 well enough


def _mix31(v: Tensor) -> Tensor:
    """A 31-bit integer hash of non-negative int64 values (< 2^62), in int64 arithmetic that cannot overflow: every
    product is of two values below 2^31. Statistical mixing for a shuffle, not cryptography."""
    h = (v ^ (v >> 31)) & _MASK31
    h = (h * 0x5BD1E995) & _MASK31
    h = h ^ (h >> 15)
    h = (h * 0x27D4EB2D) & _MASK31
    return h ^ (h >> 13)


def shuffled_index(g: Tensor, count: int, seed: int, rounds: int = SHUFFLE_ROUNDS) -> Tensor:
    """Position g (int64, >= 0) of an endless sequence of passes over [0, count) -> the index found there.

    Pass p = g // count is the permutation pi_p of [0, count) evaluated at x = g % count; pi_p is a swap-or-not
    shuffle (Hoang, Morris and Rogaway 2012) keyed by (seed, p): in round r, x and its partner K_r - x (mod count)
    swap when a keyed hash of the larger of the two says so. Each round is an involution, so pi_p is a bijection
    for any count, with a fixed number of steps (no cycle walking, so no data-dependent loop and no host read).
    """
    passes, x = g // count, g % count
    base = _mix31(passes * 0x9E3779B1 + (seed & _MASK31))
    for r in range(rounds):
        key = _mix31(base + (2 * r + 1) * 0x61C88647)
        partner_key = (_mix31(key + 0x2545F491) << 31) | _mix31(key + 0x1B873593)
        partner = (partner_key - x) % count
        bit = (_mix31(torch.maximum(x, partner) ^ key) >> 7) & 1
        x = torch.where(bit.bool(), partner, x)
    return x


def triangle_pair(x: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Index x in [0, n(n-1)/2) of the upper triangle i < j, row by row, -> (i, j). Row i starts at
    s(i) = i (2n - i - 1) / 2; the float64 root is exact enough for n up to ~10^7 and is corrected by one row."""
    t = 2 * n - 1
    i = torch.floor((t - torch.sqrt((t * t - 8 * x).to(torch.float64))) / 2).to(torch.int64).clamp(0, n - 2)

    def start(row: Tensor) -> Tensor:
        return row * (2 * n - row - 1) // 2

    i = torch.where(start(i) > x, i - 1, i)
    i = torch.where(start(i + 1) <= x, i + 1, i)
    return i, x - start(i) + i + 1


WINDOW_STEPS = 256  # draws whose positions are computed at once: shuffled_index's ~1,400 operators once per 256
WINDOW_MAX = 1 << 18  # but at most this many positions (2 MB of int64) where a draw takes many (rare ranges)


def pair_rows(n: int) -> Callable[[Tensor], Tensor]:
    """A `PairOrder` decode for the order of all pairs i < j of n items: indices -> [2, m] rows (i; j)."""
    return lambda x: torch.stack(triangle_pair(x, n))


class PairOrder:
    """Where a trial stands in its passes over a shuffled order of M items (pair indices): the position is a
    device tensor, advanced on the device, so drawing from it never reads back to the host. The one piece of
    state a without-replacement draw has; `state_dict` saves it in the per-epoch checkpoint.

    `shuffled_index` costs ~1,400 small operators (24 rounds) whatever the number of positions, each one a kernel
    launch on a GPU, which made it half of a regularized step's operators (benchmarks/bench_ops.py). The positions
    a trial will draw are known ahead (they follow the position), so the order is evaluated once for a window of
    the next `WINDOW_STEPS` draws (at most WINDOW_MAX positions) and each draw slices it: the same indices, a few
    operators per draw. `decode` (e.g. `pair_rows`: index -> (i, j)) is applied to the window once too, so a draw
    gets its pairs ready. The window is a cache only: the position alone is the state, and a restored position
    starts a fresh window."""

    def __init__(self, count: int, seed: int, device: torch.device,
                 decode: Callable[[Tensor], Tensor] | None = None):
        self.count, self.seed, self.decode = int(count), int(seed), decode
        self.position = torch.zeros((), dtype=torch.int64, device=device)
        self._forget_window()

    def _forget_window(self) -> None:
        self._start: Tensor | None = None  # the position where the window starts (device)
        self._indices: Tensor | None = None  # the order (decoded) at positions _start, _start + 1, ... (last dim)
        self._used = 0  # positions drawn since _start: exact, or an upper bound once an advance was a tensor
        self._exact = True  # whether _used is exact (then a draw is a slice, else a gather at the position)

    def window(self, m: int) -> Tensor:
        """The next m indices of the order, decoded (positions along the last dimension); the position does not
        move: `advance` does."""
        if self._indices is None or self._used + m > self._indices.shape[-1]:
            self._start = self.position
            g = self.position + torch.arange(max(m, min(m * WINDOW_STEPS, WINDOW_MAX)), device=self.position.device)
            x = shuffled_index(g, self.count, self.seed)
            self._indices, self._used, self._exact = x if self.decode is None else self.decode(x), 0, True
        if self._exact:
            return self._indices[..., self._used:self._used + m]
        offsets = (self.position - self._start) + torch.arange(m, device=self.position.device)
        return self._indices.index_select(-1, offsets)

    def advance(self, steps: Tensor | int, at_most: int | None = None) -> None:
        """Move the position by `steps`: an int, or a device tensor of at most `at_most` (read on no host)."""
        self.position = self.position + steps
        if isinstance(steps, Tensor):
            if at_most is None:
                raise ValueError("a tensor advance needs its bound (at_most)")
            self._used, self._exact = self._used + at_most, False
        else:
            self._used += steps

    def state_dict(self) -> dict[str, Tensor]:
        return {"position": self.position.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "position" in state:
            self.position = state["position"].to(self.position.device, torch.int64).reshape(())
            self._forget_window()


class PairSampler:
    """Draws pairs uniformly from those that qualify for a range, with O(N * D) memory and cheap steps.

    Preparation (once): estimate the qualifying fraction from a seeded sample of random pairs. If it is at least
    `enumerate_below`, steps use vectorised rejection sampling (uniform over ordered pairs i != j, keep the
    qualifying ones: uniform over the qualifying pairs, at ~1/fraction draws per pair). If it is smaller,
    rejection would waste too many draws per step, so the qualifying pairs are listed once by scanning E E^T in
    row blocks of the upper triangle (few pairs by construction, so the list is small) and steps draw from it.
    Why these thresholds (measured on 2 CPU cores, MNIST 28x28): a rejection draw costs ~4.5 us (two gathered rows),
    a dot product inside the blockwise matmul ~0.02 us. Below 1% qualifying, rejection needs > 100 draws per pair
    (~10 ms per k=16 step at 1%, 55 ms at 0.15%), while the scan is paid once (0.3 s at N = 5,000, ~16 s at
    N = 50,000) and a short list. Up to 10% the scan is also taken when the expected list is small (N = 5,000).
    `mode` says which path was taken; `fraction` is the (estimated or, when enumerated, exact) qualifying share.
    """

    def __init__(self, emb: Tensor, *, th: float, range: str = "all", th2: float | None = None, seed: int = 0,
                 enumerate_below: float | None = None, estimate_pairs: int = ESTIMATE_PAIRS,
                 replacement: bool = True, order_seed: int = 0):
        check_thresholds(range, th, th2)
        self.replacement = replacement
        if emb.dim() != 2:
            raise ValueError(f"embeddings must be (N, D); got shape {tuple(emb.shape)}")
        self.n = int(emb.shape[0])
        if self.n < 2:
            raise ConfigError("reg_images", f"is {self.n}; pairs need N >= 2 regularization images")
        self.emb, self.range, self.th, self.th2 = emb, range, th, th2
        self.max_batch = max(64, BLOCK_ELEMENTS // max(1, int(emb.shape[1])))
        self._i: Tensor | None = None
        self._j: Tensor | None = None
        self.order: PairOrder | None = None
        total = self.n * (self.n - 1) // 2
        if range == "all":
            self.mode, self.fraction = "all", 1.0
            if not replacement:
                self.order = PairOrder(total, order_seed, emb.device, pair_rows(self.n))
            return
        i, j = random_pairs(self.n, estimate_pairs, torch.Generator().manual_seed(seed))
        hits = int(self.qualifies(self.similarity(i, j)).sum())
        self.fraction = hits / estimate_pairs
        if enumerate_below is None:
            top, list_pairs = ENUMERATE_SMALL_LIST
            enumerate_below = max(ENUMERATE_BELOW, min(top, list_pairs / (self.n * (self.n - 1) / 2)))
        if hits > 0 and self.fraction >= enumerate_below:
            self.mode = "rejection"
        else:
            self._enumerate()
        if not replacement and self.mode == "rejection":
            self.order = PairOrder(total, order_seed, emb.device, pair_rows(self.n))
        elif not replacement:  # the list's positions, decoded to its pairs
            self.order = PairOrder(int(self._i.numel()), order_seed, emb.device,
                                   lambda x: torch.stack([self._i[x], self._j[x]]).long())

    def similarity(self, i: Tensor, j: Tensor) -> Tensor:
        """S_pixel[i, j] as the dot product of rows; the one definition every path uses, so paths agree exactly."""
        i, j = i.to(self.emb.device), j.to(self.emb.device)
        if i.numel() <= self.max_batch:
            return (self.emb[i] * self.emb[j]).sum(dim=-1)
        chunks = [(self.emb[a] * self.emb[b]).sum(dim=-1)  # chunked: gathered rows cost D floats per pair
                  for a, b in zip(i.split(self.max_batch), j.split(self.max_batch), strict=True)]
        return torch.cat(chunks)

    def _row_dots_in(self, i: Tensor, j: Tensor, rows_a: Tensor, rows_b: Tensor) -> Tensor:
        """`similarity(i, j)` computed in preallocated row buffers (same arithmetic, no heap churn)."""
        out = []
        for a, b in zip(i.split(self.max_batch), j.split(self.max_batch), strict=True):
            ga, gb = rows_a[:a.numel()], rows_b[:b.numel()]
            torch.index_select(self.emb, 0, a, out=ga)
            torch.index_select(self.emb, 0, b, out=gb)
            out.append(ga.mul_(gb).sum(dim=-1))
        return torch.cat(out) if out else i.new_zeros(0, dtype=self.emb.dtype)

    def qualifies(self, s: Tensor) -> Tensor:
        return range_mask(s, self.range, self.th, self.th2)

    def _enumerate(self) -> None:
        """List the qualifying pairs i < j once, tile by tile over the upper triangle of E E^T.

        Tiles are screened with a matmul and a small tolerance, then the survivors are re-checked with the row-dot
        definition of `similarity`, so the list matches exactly what `sample` returns. Every large temporary has
        the same size in every tile and the pairs found go into one growing buffer: with many small kept pieces
        between large freed temporaries glibc's heap fragmented and the peak memory tripled at N = 50,000.
        """
        emb, n, device = self.emb, self.n, self.emb.device
        tile = min(n, max(256, math.isqrt(BLOCK_ELEMENTS)))
        tol = 1e-4  # matmul and row dot products may differ in the last bits: screen a slightly wider range
        grows_with_th = self.range in ("low", "positive", "negative")
        loose_th = self.th + tol if grows_with_th else self.th - tol
        loose_th2 = None if self.th2 is None else self.th2 + tol
        s_buf = torch.empty(tile * tile, dtype=emb.dtype, device=device)
        rows_a = torch.empty(self.max_batch, emb.shape[1], dtype=emb.dtype, device=device)
        rows_b = torch.empty_like(rows_a)
        found = _GrowingPairs(device)
        for r0 in range(0, n, tile):
            r1 = min(n, r0 + tile)
            for c0 in range(r0, n, tile):
                c1 = min(n, c0 + tile)
                s = s_buf[:(r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch.matmul(emb[r0:r1], emb[c0:c1].T, out=s)
                near = range_mask(s, self.range, loose_th, loose_th2)
                if c0 == r0:
                    near.triu_(1)  # diagonal tile: only i < j
                a, b = torch.nonzero(near, as_tuple=True)
                a, b = a + r0, b + c0
                keep = self.qualifies(self._row_dots_in(a, b, rows_a, rows_b))
                found.append(a[keep], b[keep])
        self._i, self._j = found.pairs()
        count = int(self._i.numel())
        if count == 0:
            rule, fix = _NO_PAIR_FIX[self.range]
            th2 = f", th2={self.th2}" if self.range == "double" else ""
            raise ConfigError("th", f"no pair of the {self.n} regularization images has {rule} (range {self.range}, "
                                    f"th={self.th}{th2}); {fix}, or use range all")
        self.mode = "enumerated"
        self.fraction = count / (self.n * (self.n - 1) / 2)

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """k pairs (i, j) as int64 on the embeddings' device, i != j, and their S_pixel."""
        if k < 1:
            raise ConfigError("reg_pairs", f"is {k}; k must be >= 1")
        if self.order is not None:
            i, j = self._draw_in_order(k)
        elif self.mode == "enumerated":
            i, j = self._draw_listed(k, generator)
        elif self.mode == "all":
            i, j = random_pairs(self.n, k, generator)
        else:
            i, j = self._draw_rejection(k, generator)
        i, j = i.to(self.emb.device, torch.long), j.to(self.emb.device, torch.long)
        return i, j, self.similarity(i, j)

    def _draw_in_order(self, k: int) -> tuple[Tensor, Tensor]:
        """The next k qualifying pairs (i < j) of the shuffled order, without a host read.

        all: the next k pair indices. enumerated: the next k positions of the list. rejection: a window of
        candidates from the order of all pairs, enough that fewer than k qualify with negligible probability (as
        in `_draw_rejection_on_device`); the first k qualifying ones are taken and the position moves just past
        the k-th, so no qualifying pair of a pass is skipped or repeated. Should fewer qualify, they are reused in
        turn and the whole window is consumed."""
        order = self.order
        if self.mode in ("all", "enumerated"):
            i, j = order.window(k)
            order.advance(k)
            return i, j
        m = math.ceil(3 * k / self.fraction) + 32
        i, j = order.window(m)
        keep = self.qualifies(self.similarity(i, j))
        first = torch.sort((~keep).to(torch.uint8), stable=True).indices  # qualifying positions first, in order
        hits = keep.sum()
        pick = first[torch.arange(k, device=i.device) % hits.clamp(min=1)]
        order.advance(torch.where(hits >= k, first[k - 1] + 1, torch.full_like(hits, m)), at_most=m)
        return i[pick], j[pick]

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.order is None else self.order.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.order is not None:
            self.order.load_state_dict(state)

    def _draw_listed(self, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        device = generator.device if generator is not None else torch.device("cpu")
        pick = torch.randint(int(self._i.numel()), (k,), generator=generator, device=device).to(self._i.device)
        swap = torch.randint(2, (k,), generator=generator, device=device).bool().to(self._i.device)
        a, b = self._i[pick], self._j[pick]  # random orientation: the same law as rejection over ordered pairs
        return torch.where(swap, b, a), torch.where(swap, a, b)

    def _draw_rejection(self, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        if self.emb.device.type != "cpu":
            return self._draw_rejection_on_device(k, generator)
        got_i, got_j, need = [], [], k
        while need > 0:
            m = min(self.max_batch, math.ceil(need / self.fraction * 1.2) + 8)
            i, j = random_pairs(self.n, m, generator)
            keep = self.qualifies(self.similarity(i, j)).to(i.device)
            i, j = i[keep][:need], j[keep][:need]  # candidates are i.i.d.: the first accepted ones are uniform
            got_i.append(i)
            got_j.append(j)
            need -= int(i.numel())
        return torch.cat(got_i), torch.cat(got_j)


    def _draw_rejection_on_device(self, k: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Rejection sampling without a host read (on a GPU the loop above reads a count per round, a sync).

        One round of a fixed number of candidates, enough that fewer than k qualify with negligible probability
        (3 k / fraction + 32: for k = 16 about 48 expected hits, P(< 16) ~ 1e-8); the first k qualifying ones in
        draw order are kept (a stable sort of the rejection flags). Should fewer qualify, the qualifying ones are
        reused in turn, so every pair still qualifies (none at all has probability ~ e^-48)."""
        m = math.ceil(3 * k / self.fraction) + 32
        i, j = random_pairs(self.n, m, generator)
        i, j = i.to(self.emb.device), j.to(self.emb.device)
        keep = self.qualifies(self.similarity(i, j))
        first = torch.sort((~keep).to(torch.uint8), stable=True).indices  # qualifying positions first, in order
        hits = keep.sum().clamp(min=1)
        pick = first[torch.arange(k, device=i.device) % hits]
        return i[pick], j[pick]


class _GrowingPairs:
    """int32 (i, j) columns in one buffer that doubles when full: few, large allocations (see `_enumerate`)."""

    def __init__(self, device: torch.device, capacity: int = 1 << 16):
        self.buf = torch.empty(2, capacity, dtype=torch.int32, device=device)
        self.count = 0

    def append(self, i: Tensor, j: Tensor) -> None:
        m = int(i.numel())
        if self.count + m > self.buf.shape[1]:
            bigger = torch.empty(2, max(2 * self.buf.shape[1], self.count + m), dtype=torch.int32,
                                 device=self.buf.device)
            bigger[:, :self.count] = self.buf[:, :self.count]
            self.buf = bigger
        self.buf[0, self.count:self.count + m] = i
        self.buf[1, self.count:self.count + m] = j
        self.count += m

    def pairs(self) -> tuple[Tensor, Tensor]:
        kept = self.buf[:, :self.count].clone()  # release the spare capacity
        return kept[0], kept[1]
