"""The real-service test harness.

- Postgres: ``TEST_DATABASE_URL`` or ``DATABASE_URL`` names a server; each session creates its own
  database there, migrates it with the real ``alembic`` command and drops it at the end. Each test
  starts from empty tables.
- TimescaleDB: ``TIMESCALE_DATABASE_URL`` names a server with TimescaleDB preloaded; otherwise,
  when the extension files are installed, a throwaway cluster of our own is started with the
  preload. Tests using ``db_url`` run on both backends (``[plain]``, ``[timescale]`` in the id).
  With ``CI=true`` the TimescaleDB variants must run; elsewhere they skip with a reason.
- Redis: ``REDIS_URL``'s server on db index 13, flushed per test.
- Without these variables, and with a Docker engine, testcontainers starts the services;
  with neither, the session fails saying what to set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.support import databases
from tests.support.anvil import Anvil
from tests.support.pgcluster import TIMESCALE_LIBRARY, PgCluster, timescale_cluster

REDIS_TEST_DB = int(os.environ.get("REDIS_TEST_DB", "13"))


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url.replace("postgres://", "postgresql://", 1)
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("timescale/timescaledb:2.18.2-pg15", driver=None) as container:
            yield container.get_connection_url()
        return
    pytest.fail("no Postgres: set DATABASE_URL (or TEST_DATABASE_URL), e.g. "
                "postgresql://postgres@127.0.0.1:5432/postgres, or run a Docker engine", pytrace=False)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if _docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        return
    pytest.fail("no Redis: set REDIS_URL, e.g. redis://127.0.0.1:6379/0, or run a Docker engine",
                pytrace=False)


def _migrated_database(server_url: str) -> Iterator[str]:
    url = databases.create_database(server_url)
    try:
        databases.alembic(url, "upgrade", "head")
        yield url
    finally:
        databases.drop_database(url)


@pytest.fixture(scope="session")
def plain_database(postgres_server_url: str) -> Iterator[str]:
    yield from _migrated_database(postgres_server_url)


@pytest.fixture(scope="session")
def timescale_server_url() -> Iterator[str]:
    url = os.environ.get("TIMESCALE_DATABASE_URL")
    if url:
        yield url
        return
    if not TIMESCALE_LIBRARY.is_file():
        reason = (f"TimescaleDB is not installed ({TIMESCALE_LIBRARY} missing; run "
                  "../shared/timescaledb/install or set TIMESCALE_DATABASE_URL)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " — required with CI=true", pytrace=False)
        pytest.skip(reason)
    cluster = timescale_cluster()
    try:
        yield cluster.url
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def timescale_database(timescale_server_url: str) -> Iterator[str]:
    yield from _migrated_database(timescale_server_url)


@pytest.fixture
def plain_db_url(plain_database: str) -> str:
    """A migrated plain-Postgres database with empty tables."""
    databases.truncate_all(plain_database)
    return plain_database


@pytest.fixture(params=["plain", "timescale"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database with empty tables, on each backend in turn."""
    url: str = request.getfixturevalue(f"{request.param}_database")
    databases.truncate_all(url)
    return url


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    parts = urlsplit(redis_server_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_TEST_DB}", parts.query, ""))
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    node = Anvil()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway cluster of our own that the test may stop, restart or kill."""
    cluster = PgCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()
