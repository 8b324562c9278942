"""Request deadlines on a coarse clock: one event-loop timer per 50 ms slot, not one per request.

``asyncio.timeout`` arms a timer per request (a ``Timeout`` object, a ``TimerHandle`` pushed on
the loop's heap, cancelled and left there when the request ends in time, which is nearly always).
At thousands of webhooks a second that is a measurable part of a worker's CPU. Here a request
joins the set of its deadline's slot (the deadline rounded up to the next
:data:`GRAIN_SECONDS`); the slot's one timer cancels whatever is still in its set when it fires.
A request therefore times out between its timeout and :data:`GRAIN_SECONDS` later.

The cancellation is told apart from any other as ``asyncio.timeout`` does it: the task's
``cancelling()`` count is taken when the deadline is armed, and only a cancellation this module
made, with no other one pending, is reported as a timeout (:meth:`Deadlines.expired`).
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

GRAIN_SECONDS: Final = 0.05


class Deadline:
    """One armed deadline: the task it may cancel and its slot."""

    __slots__ = ("task", "slot", "cancelling")

    def __init__(self, task: asyncio.Task[object], slot: int, cancelling: int) -> None:
        self.task = task
        self.slot = slot
        self.cancelling = cancelling


class Deadlines:
    """Deadlines of the requests of one event loop. Use from that loop only."""

    def __init__(self) -> None:
        self._slots: dict[int, set[asyncio.Task[object]]] = {}
        self._fired: set[asyncio.Task[object]] = set()

    def arm(self, seconds: float) -> Deadline:
        """Cancel the current task if it is still armed ``seconds`` from now (to the grain)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None, "a deadline needs a task"
        slot = math.ceil((loop.time() + seconds) / GRAIN_SECONDS)
        tasks = self._slots.get(slot)
        if tasks is None:
            tasks = self._slots[slot] = set()
            loop.call_at(slot * GRAIN_SECONDS, self._expire, slot)
        tasks.add(task)
        return Deadline(task, slot, task.cancelling())

    def disarm(self, deadline: Deadline) -> None:
        """The request is over (in time or not): its slot must not cancel the task any more."""
        tasks = self._slots.get(deadline.slot)
        if tasks is not None:
            tasks.discard(deadline.task)
        self._fired.discard(deadline.task)

    def expired(self, deadline: Deadline) -> bool:
        """Call on ``CancelledError``: whether it is this deadline's own cancellation (then it
        is withdrawn, and the caller reports a timeout) rather than another one (re-raise)."""
        if deadline.task not in self._fired:
            return False
        self._fired.discard(deadline.task)
        return deadline.task.uncancel() <= deadline.cancelling

    def _expire(self, slot: int) -> None:
        for task in self._slots.pop(slot, ()):
            self._fired.add(task)
            task.cancel()
