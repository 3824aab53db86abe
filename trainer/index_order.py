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

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_ROUNDS = 4
#: Feistel halves up to this many bits get each round's function tabulated (8 bytes x 2**bits).
ROUND_TABLE_BITS = 16
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
    A round's function depends on the right half only: up to ``ROUND_TABLE_BITS`` bits it is
    tabulated once per call (2**half values, e.g. 2048 for a 2 M-example window), so a round
    is a gather and an xor; wider halves compute it (splitmix64's finalizer) in place.
    """
    index = np.asarray(index, dtype=np.uint64)
    if n <= 1:
        return index.astype(np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    round_keys = [np.uint64(derive_key(key, r)) for r in range(_ROUNDS)]
    if half <= ROUND_TABLE_BITS:
        feistel = _tabulated_feistel(half, round_keys)
    else:
        feistel = _computed_feistel(half, round_keys)
    out = feistel(index)
    walking = np.flatnonzero(out >= np.uint64(n))
    while len(walking):
        out[walking] = stepped = feistel(out[walking])
        walking = walking[stepped >= np.uint64(n)]
    return out.astype(np.int64)


def _round_function(
    right: np.ndarray, round_key: np.uint64, mask: np.uint64, out: np.ndarray, scratch: np.ndarray
) -> None:
    """``out = mix(right ^ round_key) & mask`` on uint64 arrays (``scratch``: same shape)."""
    np.bitwise_xor(right, round_key, out=out)
    _mix_in_place(out, scratch)
    out &= mask


def _tabulated_feistel(
    half: int, round_keys: list[np.uint64]
) -> Callable[[np.ndarray], np.ndarray]:
    """The Feistel network with each round's function looked up in its table (the same
    values as ``_computed_feistel``: halves of ``half`` bits fit int64 indices)."""
    mask = (1 << half) - 1
    rights = np.arange(mask + 1, dtype=np.uint64)
    tables = []
    for rk in round_keys:
        table, scratch = np.empty_like(rights), np.empty_like(rights)
        _round_function(rights, rk, np.uint64(mask), table, scratch)
        tables.append(table.view(np.int64))  # values <= mask: the same bits

    def feistel(x: np.ndarray) -> np.ndarray:
        x = x.view(np.int64)  # values < 2**(2 * half) <= 2**32: the same bits
        left, right = x >> half, x & mask
        for table in tables:  # left, right = right, left ^ f(right)
            f = table[right]
            f ^= left
            left, right = right, f
        left <<= half
        left |= right
        return left.view(np.uint64)

    return feistel


def _computed_feistel(half: int, round_keys: list[np.uint64]) -> Callable[[np.ndarray], np.ndarray]:
    """The Feistel network, each round's function computed in place on two scratch arrays."""
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        f, scratch = np.empty_like(x), np.empty_like(x)
        for rk in round_keys:  # left, right = right, left ^ f(right)
            _round_function(right, rk, mask, f, scratch)
            f ^= left
            left, right, f = right, f, left
        left <<= shift
        left |= right
        return left

    return feistel


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
        if not self.shuffle or start == stop:
            return np.arange(start, stop, dtype=np.int64)
        parts = []
        for w, (a, b) in self._spans(start, stop):
            w_start, w_len = self._window_span(w)
            if w_len <= WINDOW_TABLE_MAX:  # a run of the window's table: a copy, no gather
                parts.append(self._window_examples(w)[a - w_start : b - w_start])
            else:
                parts.append(self.at(np.arange(a, b, dtype=np.int64)))
        return np.concatenate(parts)  # a new array: the tables stay as they are

    def _spans(self, start: int, stop: int) -> list[tuple[int, tuple[int, int]]]:
        """(window, [a, b)) of each window's part of the positions [start, stop), start < stop."""
        first, last = (
            np.searchsorted(self._window_starts, [start, stop - 1], side="right") - 1
        ).tolist()
        bounds = self._window_starts[first + 1 : last + 1].tolist()
        edges = [start, *bounds, stop]
        return [(first + i, (edges[i], edges[i + 1])) for i in range(last - first + 1)]

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
