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
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_ROUNDS = 4
#: Windows up to this many examples get their whole permutation computed once (8 bytes each).
WINDOW_TABLE_MAX = 1 << 21
#: Purposes of the keys derived from (seed, epoch): the block order, and each window's order.
_BLOCKS, _WINDOW = 1, 2


def derive_key(*parts: int) -> int:
    """A 64-bit key from integers (seed, epoch, purpose, window...): a pure function."""
    key, scratch = np.zeros(1, np.uint64), np.zeros(1, np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            key += _GOLDEN + np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF)
            _mix_in_place(key, scratch)
    return int(key[0])


def permute(index: np.ndarray, n: int, key: int) -> np.ndarray:
    """Image of ``index`` (ints in [0, n)) under a bijection of [0, n) chosen by ``key``.

    A balanced 4-round Feistel network on the smallest even number of bits that covers ``n``,
    with cycle walking for values >= n (at most 4x the domain, so a few rounds on average).
    The rounds work in place on two scratch arrays (a window's table is 8 bytes x its size).
    """
    index = np.asarray(index, dtype=np.uint64)
    if n <= 1:
        return index.astype(np.int64)
    half = np.uint64(max(1, (int(n - 1).bit_length() + 1) // 2))
    mask = np.uint64((1 << int(half)) - 1)
    round_keys = [np.uint64(derive_key(key, r)) for r in range(_ROUNDS)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        f, scratch = np.empty_like(x), np.empty_like(x)
        for rk in round_keys:  # left, right = right, left ^ (mix(right ^ rk) & mask)
            np.bitwise_xor(right, rk, out=f)
            _mix_in_place(f, scratch)
            f &= mask
            f ^= left
            left, right, f = right, f, left
        left <<= half
        left |= right
        return left

    out = feistel(index)
    walking = np.flatnonzero(out >= np.uint64(n))
    while len(walking):
        out[walking] = stepped = feistel(out[walking])
        walking = walking[stepped >= np.uint64(n)]
    return out.astype(np.int64)


def _mix_in_place(x: np.ndarray, scratch: np.ndarray) -> None:
    """splitmix64's finalizer on a uint64 array, in place (``scratch``: same shape; uint64
    arrays wrap silently, as intended)."""
    for shift, factor in ((_S30, _M1), (_S27, _M2), (_S31, None)):
        np.right_shift(x, shift, out=scratch)
        x ^= scratch
        if factor is not None:
            x *= factor


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
            # the example of each block-order position of the window, in position order: each
            # block's run of positions shifted to where the block lies in the epoch's files
            blocks = self._window_blocks(w)
            shift = self._origin[self._block_order[blocks]] - self._starts[blocks]
            example = np.arange(w_start, w_start + w_len) + np.repeat(
                shift, np.diff(self._starts[blocks.start : blocks.stop + 1])
            )
            table = self._window_tables[w] = example[
                permute(np.arange(w_len), w_len, self._window_key(w))
            ]
        return table

    def _window_blocks(self, w: int) -> slice:
        per_window = self.window_blocks or len(self._block_order)
        return slice(w * per_window, min((w + 1) * per_window, len(self._block_order)))

    def _window_span(self, w: int) -> tuple[int, int]:
        start = int(self._window_starts[w])
        return start, int(self._window_starts[w + 1]) - start

    def _window_key(self, w: int) -> int:
        return derive_key(self.seed, self.epoch, _WINDOW, w)

    def _example_of(self, shuffled: np.ndarray, w: int) -> np.ndarray:
        """Example indices of block-order positions of window ``w`` (after its permutation):
        the block of each is searched among the window's own blocks only."""
        blocks = self._window_blocks(w)
        starts = self._starts[blocks.start : blocks.stop + 1]
        block = blocks.start + np.searchsorted(starts, shuffled, side="right") - 1
        return self._origin[self._block_order[block]] + (shuffled - self._starts[block])

    def at(self, pos: np.ndarray) -> np.ndarray:
        """Example indices of the positions ``pos`` (any order, each in [0, examples))."""
        pos = np.asarray(pos, dtype=np.int64)
        if not self.shuffle or not len(pos):
            return pos
        out = np.empty_like(pos)
        for w, at in self._by_window(pos):
            w_start, w_len = self._window_span(w)
            offsets = pos[at] - w_start
            if w_len <= WINDOW_TABLE_MAX:
                out[at] = self._window_examples(w)[offsets]
            else:
                shuffled = w_start + permute(offsets, w_len, self._window_key(w))
                out[at] = self._example_of(shuffled, w)
        return out

    def _by_window(self, pos: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
        """(window, where in ``pos``) of each window the positions fall in: slices when the
        positions ascend (an input's chunk: steps after steps), masks otherwise."""
        ends = np.array([pos.min(), pos.max()])
        first, last = (np.searchsorted(self._window_starts, ends, side="right") - 1).tolist()
        if first == last:
            return [(first, slice(None))]
        if (pos[1:] >= pos[:-1]).all():
            cuts = np.searchsorted(pos, self._window_starts[first + 1 : last + 1]).tolist()
            bounds = [0, *cuts, len(pos)]
            return [
                (first + i, slice(bounds[i], bounds[i + 1]))
                for i in range(last - first + 1)
                if bounds[i] < bounds[i + 1]
            ]
        window = np.searchsorted(self._window_starts, pos, side="right") - 1
        return [(w, window == w) for w in np.unique(window).tolist()]
