"""Pure retry maths: how a response is classified and when the next attempt is due.

- 2xx → delivered. 408, 429, 5xx, timeouts and connection errors → retry. Any other status
  (other 4xx, 3xx since redirects are not followed, 1xx) → failed at once.
- The n-th retry waits ``WEBHOOK_RETRY_SCHEDULE[n-1]`` seconds (the last entry repeats), plus up
  to 20 % jitter: never earlier than the schedule, so receivers may rely on it. A ``Retry-After``
  longer than that is honoured, capped at :data:`MAX_RETRY_AFTER`.
"""

from __future__ import annotations

import email.utils
import enum
import time
from collections.abc import Sequence
from typing import Final

MAX_RETRY_AFTER: Final = 6 * 3600.0
JITTER: Final = 0.2


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


def classify_status(status: int) -> Verdict:
    """What an HTTP status means for the delivery."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (408, 429) or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.FAILED


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date); ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def retry_delay(*, attempts: int, schedule: Sequence[float], jitter: float,
                retry_after: float | None = None) -> float:
    """Seconds until the next attempt after ``attempts`` attempts (``attempts >= 1``).
    ``jitter`` in ``[0, 1]`` scales the extra delay (``random.random()`` in production)."""
    base = schedule[min(attempts, len(schedule)) - 1]
    delay = base * (1.0 + JITTER * jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def is_exhausted(*, attempts: int, max_attempts: int) -> bool:
    """True when no attempt is left after ``attempts`` attempts."""
    return attempts >= max_attempts
