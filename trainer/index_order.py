"""The order of an epoch as a stateless function of (seed, epoch): no TensorFlow, NumPy only.

An epoch of ``n`` examples is read in *blocks* of ``block`` consecutive example indices (the
I/O unit: a Parquet row group, a run of TFRecord records). For epoch ``e``:

1. the blocks are permuted (a Feistel permutation keyed by (seed, e));
2. consecutive permuted blocks are grouped into *windows* of ``window_blocks`` blocks;
3. the positions inside each window are permuted (keyed by (seed, e, window)).

Position ``p`` of the epoch maps to one example index in O(1) (plus a binary search over the
blocks); global batch ``b`` is positions ``[b*G, (b+1)*G)``; input pipeline ``r`` of ``W``
takes its contiguous slice of each global batch. Nothing depends on the world size, the rank
or the attempt, so a resume at (e, s) starts at position ``s*G`` without replaying anything,
and a run resumed with another world size still sees each example once per epoch.

One window holding every block (``window_blocks >= blocks``) is a uniform permutation of the
epoch; smaller windows bound what a worker must cache (one window's blocks) at the price of a
local shuffle: a global batch draws from one or two windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROUNDS = 4
#: Windows up to this many examples get their whole permutation computed once (8 bytes each).
WINDOW_TABLE_MAX = 1 << 21
#: Purposes of the keys derived from (seed, epoch): the block order, and each window's order.
_BLOCKS, _WINDOW = 1, 2


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wraps, as intended)."""
    x = (x ^ (x >> np.uint64(30))) * _M1  # uint64 arrays wrap silently
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def derive_key(*parts: int) -> int:
    """A 64-bit key from integers (seed, epoch, purpose, window...): a pure function."""
    key = np.zeros(1, np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            key = _mix(key + _GOLDEN + np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF))
    return int(key[0])


def permute(index: np.ndarray, n: int, key: int) -> np.ndarray:
    """Image of ``index`` (ints in [0, n)) under a bijection of [0, n) chosen by ``key``.

    A balanced 4-round Feistel network on the smallest even number of bits that covers ``n``,
    with cycle walking for values >= n (at most 4x the domain, so a few rounds on average).
    """
    index = np.asarray(index, dtype=np.uint64)
    if n <= 1:
        return index.astype(np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    round_keys = [np.uint64(derive_key(key, r)) for r in range(_ROUNDS)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for rk in round_keys:
            left, right = right, left ^ (_mix(right ^ rk) & mask)
        return (left << np.uint64(half)) | right

    out = feistel(index)
    outside = out >= np.uint64(n)
    while outside.any():
        out[outside] = feistel(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64)


@dataclass(frozen=True)
class EpochOrder:
    """Position -> example index for one epoch (see the module docstring).

    ``shuffle=False`` is the identity (validation). Construction costs O(blocks); a lookup
    costs O(positions looked up).
    """

    examples: int
    seed: int
    epoch: int
    block: int = 1
    window_blocks: int = 0  # 0 = one window over the whole epoch
    shuffle: bool = True
    block_sizes: np.ndarray | None = field(default=None, compare=False)
    """Blocks of their own sizes (e.g. one per Parquet row group), summing to ``examples``;
    None = blocks of ``block`` examples (the last one shorter)."""
    _block_order: np.ndarray = field(init=False, repr=False, compare=False)
    _origin: np.ndarray = field(init=False, repr=False, compare=False)
    _starts: np.ndarray = field(init=False, repr=False, compare=False)
    _window_starts: np.ndarray = field(init=False, repr=False, compare=False)
    _window_tables: dict[int, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.examples < 1 or self.block < 1 or self.window_blocks < 0:
            raise ValueError(f"bad epoch order {self}")
        if self.block_sizes is not None:
            sizes = np.asarray(self.block_sizes, dtype=np.int64)
            if sizes.sum() != self.examples or (sizes < 1).any():
                raise ValueError(f"block sizes do not add up to {self.examples} examples")
        else:
            blocks = -(-self.examples // self.block)
            sizes = np.full(blocks, self.block, dtype=np.int64)
            sizes[-1] = self.examples - (blocks - 1) * self.block
        blocks = len(sizes)
        per_window = self.window_blocks or blocks
        if not self.shuffle or per_window >= blocks:
            order = np.arange(blocks, dtype=np.int64)  # one window: its permutation mixes all
        else:
            order = permute(np.arange(blocks), blocks, derive_key(self.seed, self.epoch, _BLOCKS))
        origin = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes[order])]).astype(np.int64)
        window_starts = starts[np.r_[np.arange(0, blocks, per_window), blocks]]
        object.__setattr__(self, "_block_order", order)
        object.__setattr__(self, "_origin", origin)
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_window_starts", window_starts)

    @property
    def windows(self) -> int:
        return len(self._window_starts) - 1

    def indices(self, start: int, stop: int) -> np.ndarray:
        """Example indices of positions [start, stop) of the epoch."""
        if not 0 <= start <= stop <= self.examples:
            raise ValueError(f"positions [{start}, {stop}) outside [0, {self.examples})")
        return self.at(np.arange(start, stop, dtype=np.int64))

    def _window_examples(self, w: int) -> np.ndarray:
        """Example index of every position of window ``w`` (a window up to WINDOW_TABLE_MAX
        examples: computed whole once, the last two kept; lookups are then one gather)."""
        table = self._window_tables.get(w)
        if table is None:
            if len(self._window_tables) >= 2:
                self._window_tables.pop(next(iter(self._window_tables)))
            w_start, w_len = self._window_span(w)
            shuffled = permute(np.arange(w_len), w_len, self._window_key(w)) + w_start
            table = self._window_tables[w] = self._example_of(shuffled)
        return table

    def _window_span(self, w: int) -> tuple[int, int]:
        start = int(self._window_starts[w])
        return start, int(self._window_starts[w + 1]) - start

    def _window_key(self, w: int) -> int:
        return derive_key(self.seed, self.epoch, _WINDOW, w)

    def _example_of(self, shuffled: np.ndarray) -> np.ndarray:
        """Example indices of block-order positions (after the in-window permutation)."""
        block = np.searchsorted(self._starts, shuffled, side="right") - 1
        return self._origin[self._block_order[block]] + (shuffled - self._starts[block])

    def at(self, pos: np.ndarray) -> np.ndarray:
        """Example indices of the positions ``pos`` (any order, each in [0, examples))."""
        pos = np.asarray(pos, dtype=np.int64)
        if not self.shuffle or not len(pos):
            return pos
        window = np.searchsorted(self._window_starts, pos, side="right") - 1
        first, last = int(window.min()), int(window.max())
        out = np.empty_like(pos)
        for w in [first] if first == last else np.unique(window).tolist():
            at = slice(None) if first == last else window == w
            w_start, w_len = self._window_span(w)
            offsets = pos[at] - w_start
            if w_len <= WINDOW_TABLE_MAX:
                out[at] = self._window_examples(w)[offsets]
            else:
                out[at] = self._example_of(w_start + permute(offsets, w_len, self._window_key(w)))
        return out
