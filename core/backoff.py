"""The one backoff formula: exponential, capped, with jitter; a server's ``Retry-After`` wins."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float = 0.25, cap: float = 30.0,
                  retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter (between half and all of the step) for ``attempt``
    (1-based); a server's ``Retry-After`` is a floor (honoured, not undercut by jitter),
    capped at ``cap``."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class Backoff:
    """:func:`backoff_delay` with the attempt counted for the caller; ``reset()`` on success."""

    def __init__(self, *, base: float = 0.2, cap: float = 10.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, base=self.base, cap=self.cap)

    def reset(self) -> None:
        self.attempt = 0
