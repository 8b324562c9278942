"""``python -m workers`` as a real subprocess, in its own process group (RQ forks a scheduler
child; ``kill()`` takes both down, like a container runtime would)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, *, db_url: str, redis_url: str, burst: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="bh-worker-", suffix=".log")[1])
        environment = {
            **os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
            "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_RETRY_SCHEDULE": "0.5",
            "METRICS_PORT": "0", "LOG_LEVEL": "INFO", **(env or {})}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers", *(["--burst"] if burst else [])],
                cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group (worker and its scheduler child)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def close(self) -> None:
        self.kill()
        deadline = time.monotonic() + 5
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.log_path.unlink(missing_ok=True)
