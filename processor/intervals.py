"""Which closed integer intervals contain a point: built once per trigger registry load,
queried once per event.

``stab(x)`` returns every item whose interval ``[low, high]`` holds ``x``. A bound of ``None``
is unbounded (``value >= N`` is ``[N, None]``). Integers of any size compare exactly (Python
ints; the unbounded ends are ±inf floats, which compare exactly with ints too).

Two layouts, chosen at build:

- **segments**: the endpoints cut the line into elementary segments, each with the tuple of
  intervals covering it; a stab is one bisect, O(log n). Used while the tuples hold at most a
  few times n items in all — disjoint or little-overlapping ranges, the usual shape of
  per-user value bands;
- **centred tree** otherwise (many nested intervals, e.g. thousands of ``value >= N``
  thresholds, would make the segment tuples quadratic): one node per level, O(log n) levels
  (the centres are medians of the endpoints), O(log n + k) for k results.

Why our own: the tree is static, the query is a point stab on integers, and the items are
returned as a list for the caller to extend; a general mutable interval library (balanced
insert/delete, set results, half-open float-ish bounds) would be both heavier and slower here.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# Nodes with at most this many intervals are scanned, not split: fewer levels to walk.
_LEAF_SIZE = 8
# The segment layout may hold this many items per interval (plus a little) before the tree wins.
_SEGMENT_BUDGET = 4

_Interval = tuple[float, float, T]  # (low, high, item); ints or ±inf


class _Node(Generic[T]):
    """Intervals containing ``centre``, sorted by low (ascending) and by high (descending);
    ``left`` holds those entirely below the centre, ``right`` those entirely above."""

    __slots__ = ("centre", "lows", "by_low", "neg_highs", "by_high", "left", "right", "leaf")

    def __init__(self, intervals: list[_Interval[T]]) -> None:
        self.leaf: list[_Interval[T]] | None = None
        self.left: _Node[T] | None = None
        self.right: _Node[T] | None = None
        ends = sorted(end for low, high, _ in intervals for end in (low, high)
                      if not math.isinf(end))
        if len(intervals) <= _LEAF_SIZE or not ends:
            self.leaf = intervals
            return
        self.centre = ends[len(ends) // 2]
        here, below, above = [], [], []
        for interval in intervals:
            low, high, _ = interval
            if high < self.centre:
                below.append(interval)
            elif low > self.centre:
                above.append(interval)
            else:
                here.append(interval)
        by_low = sorted(here, key=lambda interval: interval[0])
        by_high = sorted(here, key=lambda interval: -interval[1])
        self.lows = [interval[0] for interval in by_low]
        self.by_low = [interval[2] for interval in by_low]
        self.neg_highs = [-interval[1] for interval in by_high]
        self.by_high = [interval[2] for interval in by_high]
        self.left = _Node(below) if below else None
        self.right = _Node(above) if above else None


def _segments(intervals: list[_Interval[T]]) -> tuple[list[float], list[tuple[T, ...]]] | None:
    """Cut points and, per segment, the items covering it; ``None`` past the size budget.
    Segment ``k`` is ``[cuts[k-1], cuts[k])`` (open-ended at both extremes): integer intervals
    ``[low, high]`` are the half-open ``[low, high + 1)``."""
    starts: dict[float, list[int]] = {}
    ends: dict[float, list[int]] = {}
    active: dict[int, T] = {}
    for number, (low, high, item) in enumerate(intervals):
        if math.isinf(low):
            active[number] = item
        else:
            starts.setdefault(low, []).append(number)
        if not math.isinf(high):
            ends.setdefault(high + 1, []).append(number)
    cuts = sorted(starts.keys() | ends.keys())
    segments = [tuple(active.values())]
    budget = _SEGMENT_BUDGET * len(intervals) + 64
    held = len(segments[0])
    for cut in cuts:
        for number in ends.get(cut, ()):
            del active[number]
        for number in starts.get(cut, ()):
            active[number] = intervals[number][2]
        segments.append(tuple(active.values()))
        held += len(active)
        if held > budget:
            return None
    return cuts, segments


class IntervalIndex(Generic[T]):
    """Items keyed by closed integer intervals; ``stab(x)`` → the items whose interval holds x."""

    def __init__(self, intervals: Iterable[tuple[int | None, int | None, T]]) -> None:
        normalised: list[_Interval[T]] = [
            (-math.inf if low is None else low, math.inf if high is None else high, item)
            for low, high, item in intervals]
        # Empty intervals (low > high) can never hold a point.
        kept = [interval for interval in normalised if interval[0] <= interval[1]]
        self.size = len(kept)
        self._root: _Node[T] | None = None
        self._cuts: list[float] = []
        self._segments: list[tuple[T, ...]] | None = None
        segmented = _segments(kept)
        if segmented is not None:
            self._cuts, self._segments = segmented
        elif kept:
            self._root = _Node(kept)

    @property
    def layout(self) -> str:
        return "segments" if self._segments is not None else "tree"

    def stab(self, x: int) -> Sequence[T]:
        if self._segments is not None:
            return self._segments[bisect_right(self._cuts, x)]
        found: list[T] = []
        node = self._root
        while node is not None:
            leaf = node.leaf
            if leaf is not None:
                found.extend(item for low, high, item in leaf if low <= x <= high)
                break
            centre = node.centre
            if x < centre:  # every interval here reaches the centre: those starting <= x hold x
                count = bisect_right(node.lows, x)
                if count:
                    found.extend(node.by_low[:count])
                node = node.left
            elif x > centre:  # ... and those ending >= x
                count = bisect_right(node.neg_highs, -x)
                if count:
                    found.extend(node.by_high[:count])
                node = node.right
            else:
                found.extend(node.by_low)
                break
        return found
