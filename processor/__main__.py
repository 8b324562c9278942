"""``python -m processor``: trigger evaluation; any number of instances may run."""

from __future__ import annotations

import asyncio
import gc

import redis
import structlog

from core.cli import run_service
from core.db import create_pool
from core.logging import configure_logging
from core.metrics import serve_metrics
from core.settings import ProcessorSettings, load_settings
from processor.service import POOL_SERVER_SETTINGS, Processor
from retention.policy import RetentionPolicy
from retention.runner import RetentionSchedule

log = structlog.get_logger("processor")


async def main(stop: asyncio.Event) -> None:
    settings = load_settings(ProcessorSettings)
    # What is imported lives as long as the process: keep it out of the cyclic collector's full
    # passes, which would otherwise re-walk it while thousands of triggers compile.
    gc.freeze()
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="processor")
    serve_metrics(settings.metrics_port)
    pool = await create_pool(settings.database_url, min_size=1, max_size=4,
                             server_settings={**POOL_SERVER_SETTINGS, **settings.db_timeouts()})
    # Timeouts keep a dead Redis from hanging the loop: the rows stay pending and are swept.
    redis_client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2,
                                        socket_timeout=5)
    retention = RetentionPolicy.from_settings(settings)
    processor = Processor(database_url=settings.database_url, pool=pool,
                          redis_client=redis_client, batch_size=settings.processor_batch_size,
                          sweep_interval=settings.processor_sweep_interval,
                          retention=RetentionSchedule(retention,
                                                      interval=settings.retention_interval))
    log.info("processor starting", batch_size=settings.processor_batch_size,
             sweep_interval=settings.processor_sweep_interval, retention=retention.describe(),
             retention_interval=settings.retention_interval)
    try:
        await processor.run(stop)
    finally:
        await pool.close()
        redis_client.close()
        log.info("processor stopped")


if __name__ == "__main__":
    run_service("processor", main)
