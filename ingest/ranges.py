"""Pure maths of the poller: how many blocks to ask for next (backoff is ``core.backoff``).

:class:`RangeSizer` starts at ``MAX_BLOCK_RANGE`` and adapts:

- a provider's suggested range ("Try with this block range [a, b]") is taken as the new size;
- other limit errors, HTTP 413 and timeouts halve it (never below one block);
- dense ranges shrink it so one range carries about ``target_logs`` logs (bounded memory and a
  steady write size, which is what lets fetching overlap writing);
- after ``grow_after`` successes in a row it grows by half, up to the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RangeSizer:
    maximum: int
    target_logs: int = 10_000
    grow_after: int = 3
    size: int = field(default=0)
    _streak: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.maximum < 1:
            raise ValueError("maximum must be >= 1")
        if not self.size:
            self.size = self.maximum

    def span(self, first: int, target: int) -> tuple[int, int]:
        """The next range ``[first, last]``: at most ``size`` blocks, never past ``target``."""
        return first, min(target, first + self.size - 1)

    def shrink(self, first: int, last: int, suggested: tuple[int, int] | None = None) -> None:
        """The provider refused ``[first, last]``: use its suggestion if it starts at ``first``
        and is smaller, else halve."""
        asked = last - first + 1
        if suggested is not None and suggested[0] == first and first <= suggested[1] < last:
            self.size = suggested[1] - first + 1
        else:
            self.size = max(1, min(self.size, asked) // 2)
        self._streak = 0

    def succeeded(self, blocks: int, logs: int) -> None:
        """``blocks`` blocks carrying ``logs`` logs were fetched: adapt to the density, and grow
        back gradually after a run of successes."""
        if logs > self.target_logs and blocks > 1:
            self.size = max(1, blocks * self.target_logs // logs)
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= self.grow_after and self.size < self.maximum:
            dense_cap = (blocks * self.target_logs // logs) if logs else self.maximum
            grown = max(self.size + 1, self.size * 3 // 2)
            self.size = max(1, min(self.maximum, grown, max(dense_cap, self.size)))
            self._streak = 0
