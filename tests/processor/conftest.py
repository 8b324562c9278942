"""Fixtures: an in-process ``Processor`` on the test database and Redis, driven step by step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from core.db import create_pool
from processor.service import POOL_SERVER_SETTINGS, Processor


class Harness:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.stop = asyncio.Event()

    async def step(self, *, sweep: bool = True, reload: bool = True) -> None:
        """One full round, as after a wake-up (``reload`` as after a trigger change)."""
        if reload:
            self.processor._registry_stale = True
        await self.processor.step(self.stop, sweep=sweep, reasons={"events", "checkpoints"})


@pytest.fixture
async def harness(db_url: str, redis_url: str) -> AsyncIterator[Harness]:
    pool = await create_pool(db_url, min_size=1, max_size=3, server_settings=POOL_SERVER_SETTINGS)
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    processor = Processor(database_url=db_url, pool=pool, redis_client=client, batch_size=5000,
                          sweep_interval=1.0)
    try:
        yield Harness(processor)
    finally:
        await pool.close()
        client.close()
