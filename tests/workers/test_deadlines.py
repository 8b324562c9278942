"""workers.deadlines: a request's deadline cancels it once it is due, reports exactly that as a
timeout, and never swallows another cancellation."""

from __future__ import annotations

import asyncio

import pytest

from workers.deadlines import GRAIN_SECONDS, Deadlines


async def _request(deadlines: Deadlines, due_in: float, takes: float) -> str:
    deadline = deadlines.arm(due_in)
    try:
        await asyncio.sleep(takes)
        return "answered"
    except asyncio.CancelledError:
        if deadlines.expired(deadline):
            return "timed out"
        raise
    finally:
        deadlines.disarm(deadline)


async def test_a_request_past_its_deadline_times_out_within_the_grain() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _request(deadlines, 0.1, 5) == "timed out"
    assert 0.1 <= loop.time() - started <= 0.1 + GRAIN_SECONDS + 0.1
    # the task goes on normally: its cancellation was withdrawn
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def test_a_request_in_time_is_not_cancelled_later() -> None:
    deadlines = Deadlines()
    assert await _request(deadlines, 0.1, 0.01) == "answered"
    await asyncio.sleep(0.1 + 2 * GRAIN_SECONDS)  # the slot's timer fires with nothing in it
    assert await _request(deadlines, 0.2, 0.01) == "answered"


async def test_requests_sharing_a_slot_each_time_out() -> None:
    deadlines = Deadlines()
    results = await asyncio.gather(*(_request(deadlines, 0.1, 5) for _ in range(5)),
                                   _request(deadlines, 0.1, 0.01))
    assert results == ["timed out"] * 5 + ["answered"]


async def test_another_cancellation_is_not_taken_for_a_timeout() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_request(deadlines, 5, 10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_racing_the_deadline_still_cancels() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_request(deadlines, 5, 10))
    await asyncio.sleep(0.01)
    # Both land before the task runs again: the slot's timer and someone else's cancel.
    (slot,) = deadlines._slots
    deadlines._expire(slot)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
