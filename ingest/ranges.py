"""Pure maths of the poller: how many blocks to ask for next (backoff is ``core.backoff``).

:class:`RangeSizer` sizes ``eth_getLogs`` ranges by the log count they carry, whatever
``MAX_BLOCK_RANGE`` is, because memory and write time grow with the logs of a range, not its
blocks:

- **slow start**: the first range is ``initial`` blocks (one by default), however large the
  maximum: a node without response limits (reth, erigon, geth) would otherwise answer the first
  request with every log of up to ``MAX_BLOCK_RANGE`` blocks at once;
- each success sets the size from the **density** just seen: the blocks that carry about
  ``target_logs`` logs, at most ``growth`` times the blocks just fetched (a density measured on
  few blocks is a weak forecast), never above the maximum;
- a range that carried more than ``target_logs`` logs shrinks the next one to fit;
- a provider's suggested range ("Try with this block range [a, b]") is taken as the new size;
  other limit errors, HTTP 413, replies over ``RPC_MAX_RESPONSE_MB`` and timeouts halve it
  (never below one block). After such a refusal growth is cautious: by half, after
  ``grow_after`` successes in a row (what the provider accepts is a ceiling the density does
  not know about).

Whatever the forecast, the reply size bound of ``ingest.rpc`` caps what one answer may hold: a
range whose density jumped is refused before it is read whole, and halved.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RangeSizer:
    maximum: int
    target_logs: int = 10_000
    initial: int = 1
    growth: int = 4
    grow_after: int = 3
    size: int = field(default=0)
    _streak: int = field(default=0, repr=False)
    _refused: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.maximum < 1:
            raise ValueError("maximum must be >= 1")
        if self.initial < 1 or self.growth < 2 or self.target_logs < 1:
            raise ValueError("initial >= 1, growth >= 2 and target_logs >= 1 are required")
        if not self.size:
            self.size = min(self.maximum, self.initial)

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
        self._refused = True

    def fits(self, blocks: int, logs: int) -> int:
        """How many blocks carry about ``target_logs`` logs at the density of ``logs`` in
        ``blocks`` (the maximum for a range without logs)."""
        if not logs:
            return self.maximum
        return max(1, blocks * self.target_logs // logs)

    def succeeded(self, blocks: int, logs: int) -> None:
        """``blocks`` blocks carrying ``logs`` logs were fetched: size the next range from this
        density, growing at most ``growth`` times (after a refusal: by half, after a run of
        successes)."""
        fits = self.fits(blocks, logs)
        if logs > self.target_logs and blocks > 1:
            self.size = min(self.size, fits)
            self._streak = 0
            return
        if not self._refused:
            # Grown from the blocks actually fetched: a range cut short (at the head, a proven
            # prefix) says nothing about the density of a larger one.
            self.size = max(1, min(self.maximum, fits, blocks * self.growth))
            return
        self._streak += 1
        if self._streak >= self.grow_after and self.size < self.maximum:
            grown = max(self.size + 1, self.size * 3 // 2)
            self.size = max(1, min(self.maximum, grown, max(fits, self.size)))
            self._streak = 0
