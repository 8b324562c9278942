"""A throwaway PostgreSQL cluster of our own (initdb + pg_ctl as the postgres user), for tests
that restart or kill Postgres or need TimescaleDB preloaded. Never touches the shared server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support.ports import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TIMESCALE_LIBRARY = Path("/usr/lib/postgresql/15/lib/timescaledb.so")


def _as_postgres(*cmd: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return list(cmd)


class PgCluster:
    """``start()``, ``stop()``, ``restart()``, ``kill()``; ``url`` names the ``postgres`` db."""

    def __init__(self, *, settings: dict[str, str] | None = None,
                 password: str | None = None) -> None:
        """``password``: TCP connections must authenticate (SCRAM) with it; without, trust."""
        self.port = free_port()
        self.settings = settings or {}
        self.password = password
        self.root = Path(tempfile.mkdtemp(prefix="bh-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        os.chmod(self.root, 0o777)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        auth = ["--auth=trust"]
        if password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(password + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                                    *auth, "-E", "UTF8", "--no-sync"),
                       check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        userinfo = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql://{userinfo}@127.0.0.1:{self.port}/postgres"

    def _options(self) -> str:
        options = {"port": str(self.port), "listen_addresses": "127.0.0.1",
                   "unix_socket_directories": str(self.root), "fsync": "off",
                   "max_connections": "200", **self.settings}
        return " ".join(f"-c {key}={value}" for key, value in options.items())

    def start(self) -> None:
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l",
                                    str(self.logfile), "-o", self._options(), "-w", "start"),
                       check=True, capture_output=True, timeout=60)
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                                    "-w", "stop"), capture_output=True, timeout=60)

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def timescale_cluster() -> PgCluster:
    cluster = PgCluster(settings={"shared_preload_libraries": "timescaledb",
                                  "timescaledb.telemetry_level": "off"})
    cluster.start()
    return cluster
