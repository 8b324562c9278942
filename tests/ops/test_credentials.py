"""No credential in any output: every service and script, at DEBUG, with credential-bearing
``RPC_URL`` (userinfo, a key in the path, a key in the query), ``DATABASE_URL``, ``REDIS_URL``
and ``BLOCKHOOK_ENCRYPTION_KEY``, driven through its error paths — wrong chain, unreachable
node, bad database password (a cluster of our own that checks passwords), Redis refusing the
password, invalid settings — and, for ``make run``, the running pipeline. Every command must
fail (or run) the way it should, and no secret may appear in its stdout or stderr."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.crypto import generate_key
from tests.e2e.redis_server import RedisServer
from tests.support.anvil import Anvil
from tests.support.pgcluster import PgCluster
from tests.support.ports import free_port
from tests.support.rpc_proxy import RpcProxy

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Secrets:
    rpc_password: str = field(default_factory=lambda: "rpcPw" + secrets.token_hex(8))
    rpc_path_key: str = field(default_factory=lambda: "pathKey" + secrets.token_hex(12))
    rpc_query_key: str = field(default_factory=lambda: "queryKey" + secrets.token_hex(8))
    db_password: str = field(default_factory=lambda: "dbPw" + secrets.token_hex(8))
    redis_password: str = field(default_factory=lambda: "redisPw" + secrets.token_hex(8))
    encryption_key: str = field(default_factory=generate_key)

    def values(self) -> list[str]:
        return [self.rpc_password, self.rpc_path_key, self.rpc_query_key, self.db_password,
                self.redis_password, self.encryption_key, self.encryption_key[:16]]

    def rpc_url(self, port: int, scheme: str = "http") -> str:
        return (f"{scheme}://rpcuser:{self.rpc_password}@127.0.0.1:{port}/v2/{self.rpc_path_key}"
                f"?apikey={self.rpc_query_key}")


@dataclass
class Command:
    name: str
    argv: list[str]
    env: dict[str, str]
    returncode: int
    expect: str  # a substring proving the intended path ran
    process: subprocess.Popen[str] | None = None
    output: str = ""


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster(password="admin" + secrets.token_hex(8))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{password}@{host}"


def _base_env(secret: Secrets, log_format: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"RPC_URL", "CHAIN_ID", "START_BLOCK", "MAKEFLAGS"}}
    return {**env, "LOG_LEVEL": "DEBUG", "LOG_FORMAT": log_format, "METRICS_PORT": "0",
            "BLOCKHOOK_ENCRYPTION_KEY": secret.encryption_key, "RPC_TIMEOUT": "2"}


def _start(command: Command) -> None:
    command.process = subprocess.Popen(command.argv, cwd=ROOT, env=command.env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_path=tmp_path / "redis.log", password="other" + secrets.token_hex(8))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_no_credential_reaches_any_output(
        plain_db_url: str, redis_url: str, anvil: Anvil, password_cluster: PgCluster,
        password_redis: RedisServer) -> None:
    secret = Secrets()
    proxy = RpcProxy(anvil.url)
    good_rpc = secret.rpc_url(proxy.port)
    dead_rpc = secret.rpc_url(free_port(), scheme="https")
    good_db = _with_password(plain_db_url, secret.db_password)  # trust: any password works
    bad_db = _with_password(password_cluster.url, secret.db_password)  # checked: refused
    refused_redis = f"redis://:{secret.redis_password}@127.0.0.1:{password_redis.port}/0"
    dead_redis = f"redis://:{secret.redis_password}@127.0.0.1:{free_port()}/0"
    py = sys.executable

    def env(log_format: str = "json", **values: str) -> dict[str, str]:
        return {**_base_env(secret, log_format), "DATABASE_URL": good_db,
                "REDIS_URL": refused_redis, "RPC_URL": good_rpc, **values}

    commands = [
        Command("ingest: wrong chain", [py, "-m", "ingest"], env(CHAIN_ID="999999"), 1,
                "reports chain 31337"),
        Command("ingest: bad database password", [py, "-m", "ingest"],
                env("console", DATABASE_URL=bad_db), 1, "password authentication failed"),
        Command("ingest: invalid RPC_URL", [py, "-m", "ingest"],
                env(RPC_URL=good_rpc.replace("http://", "ftp://")), 2, "RPC_URL"),
        Command("processor: bad database password", [py, "-m", "processor"],
                env(DATABASE_URL=bad_db), 1, "password authentication failed"),
        Command("workers: Redis refuses the password", [py, "-m", "workers", "--burst"],
                env("console"), 1, "cannot connect to Redis"),
        Command("workers: bad database password", [py, "-m", "workers", "--burst"],
                env(DATABASE_URL=bad_db, REDIS_URL=redis_url), 1,
                "password authentication failed"),
        Command("replay: wrong chain", [py, "scripts/replay.py", "--chain-id", "999999",
                                        "--from-block", "0"], env(), 1, "reports chain 31337"),
        Command("replay: bad database password", [py, "scripts/replay.py", "--chain-id",
                                                  "31337", "--from-block", "0"],
                env("console", DATABASE_URL=bad_db), 1, "password authentication failed"),
        Command("status: unreachable node and Redis", [py, "scripts/status.py"],
                env("console", RPC_URL=dead_rpc, REDIS_URL=dead_redis), 0, "node https://"),
        Command("status --json: unreachable node", [py, "scripts/status.py", "--json"],
                env(RPC_URL=dead_rpc, REDIS_URL=dead_redis), 0, '"url": "https://'),
        Command("status: bad database password", [py, "scripts/status.py"],
                env(DATABASE_URL=bad_db), 1, "password authentication failed"),
        Command("retry_failed: bad database password", [py, "scripts/retry_failed.py", "--id",
                                                        "1"],
                env(DATABASE_URL=bad_db), 1, "password authentication failed"),
        Command("rotate_key: bad database password", [py, "scripts/rotate_key.py"],
                env(DATABASE_URL=bad_db), 1, "password authentication failed"),
        Command("roles: bad database password", [py, "scripts/roles.py"],
                env(DATABASE_URL=bad_db, BLOCKHOOK_INGEST_PASSWORD=secret.db_password), 1,
                "password authentication failed"),
        Command("alembic: bad database password", [py, "-m", "alembic", "upgrade", "head"],
                env(DATABASE_URL=bad_db), 1, "password authentication failed"),
        Command("rpc wait: unreachable node", [py, "-m", "scripts.ops.rpc", "wait", dead_rpc,
                                               "--within", "1"], env(), 1, "did not answer"),
        Command("run: bad database password", [py, "scripts/run.py", "--once"],
                env(DATABASE_URL=bad_db), 1, "password authentication failed"),
    ]
    try:
        for command in commands:
            _start(command)
        pipeline = _run_pipeline(env("console", REDIS_URL=redis_url))
        for command in commands:
            assert command.process is not None
            command.output, _ = command.process.communicate(timeout=120)
    finally:
        for command in commands:
            if command.process is not None and command.process.poll() is None:
                os.killpg(command.process.pid, signal.SIGKILL)
        proxy.close()
    commands.append(pipeline)
    problems = []
    for command in commands:
        assert command.process is not None
        leaked = [value for value in secret.values() if value in command.output]
        if leaked:
            problems.append(f"{command.name}: leaked {len(leaked)} secret(s):\n"
                            f"{command.output[-3000:]}")
        elif command.process.returncode != command.returncode or \
                command.expect not in command.output:
            problems.append(f"{command.name}: rc={command.process.returncode} (expected "
                            f"{command.returncode}, with {command.expect!r}):\n"
                            f"{command.output[-3000:]}")
    assert not problems, "\n\n".join(problems)


def _run_pipeline(env: dict[str, str]) -> Command:
    """``make run``'s script against the keyed node: it prints where it points, and ingest,
    processor and workers run at DEBUG until Ctrl-C."""
    command = Command("run: the pipeline against a keyed RPC_URL", [sys.executable,
                                                                     "scripts/run.py"],
                      {**env, "START_BLOCK": "0"}, 0, "pipeline against http://***@127.0.0.1")
    _start(command)
    assert command.process is not None and command.process.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    for line in command.process.stdout:
        lines.append(line)
        if "active: holding the writer lock" in line or time.monotonic() > deadline:
            break
    os.killpg(command.process.pid, signal.SIGINT)
    rest, _ = command.process.communicate(timeout=30)
    command.output = "".join(lines) + rest
    return command
