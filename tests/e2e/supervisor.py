"""Run the real services (``python -m ingest|processor|workers``) as subprocesses for a test.

A ``Supervisor`` owns every process a test starts: it starts them with the test's environment,
appends each incarnation's output to one log file per service (a marker line per start), kills
them with SIGKILL or stops them with SIGTERM, and on teardown stops whatever is left. Its
``report()`` is what failure messages append: who is alive, who exited with which code, and the
tail of every log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Services log to files the tests read; LOG_FORMAT=json makes them greppable line by line.
SERVICE_MODULES = ("ingest", "processor", "workers")


class ServiceExited(AssertionError):
    """A service the test expects to be running has exited on its own."""


class Service:
    """One logical service (``ingest-a``, ``workers``…) that may be started many times."""

    def __init__(self, name: str, module: str, *, args: Iterable[str] = (),
                 env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.exit_codes: list[int] = []

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start a new incarnation; the previous one must be gone."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== {self.name} start #{self.starts} at {time.time():.3f} ===\n".encode())
            log.flush()
            # A new session so SIGKILL/SIGTERM reach only this service, never the test runner.
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def kill(self) -> None:
        """``kill -9`` of the whole service — its process group, so helpers it forked (RQ's
        scheduler) die with it, as in a container kill: no cleanup, no goodbye; its database
        sessions and locks die with it."""
        if self.process is None or not self.alive:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)
        self.kills += 1
        self._reap()

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        try:
            # The group id is the service's pid (``start_new_session``): only its own processes.
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self, timeout: float = 15.0, *, signalled: bool = False) -> int | None:
        """SIGTERM (once: a second one may mean "stop now" to a service) and wait for the clean
        exit; SIGKILL after ``timeout``. Returns the exit code."""
        if self.process is None:
            return None
        if self.alive:
            if not signalled:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        self._signal_group(signal.SIGKILL)  # leftovers of a clean exit (none expected)
        self._reap()
        return code

    def restart(self) -> None:
        self.kill()
        self.start()

    def _reap(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            self.exit_codes.append(self.process.returncode)
            self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def status(self) -> str:
        if self.alive:
            state = f"running (pid {self.pid})"
        elif self.process is not None:
            state = f"EXITED with code {self.process.returncode}"
        else:
            state = "stopped"
        return f"{self.name}: {state}, starts={self.starts}, kills={self.kills}"


class Supervisor:
    """All services of one test, sharing a base environment and a log directory."""

    def __init__(self, *, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.services: dict[str, Service] = {}
        # Extra state shown by ``report()`` (the queue's contents, say): name → describe().
        self.probes: dict[str, Callable[[], str]] = {}

    def add(self, name: str, module: str, *, args: Iterable[str] = (),
            env: Mapping[str, str] | None = None, start: bool = True) -> Service:
        """Register (and by default start) a service; ``env`` overrides the base environment."""
        if module not in SERVICE_MODULES:
            raise ValueError(f"unknown service module {module!r}")
        if name in self.services:
            raise ValueError(f"service {name!r} already exists")
        service = Service(name, module, args=args, env={**self.env, **(env or {})},
                          log_path=self.log_dir / f"{name}.log")
        self.services[name] = service
        if start:
            service.start()
        return service

    def run(self, name: str, *argv: str, timeout: float = 120.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a one-shot command (``scripts/replay.py …``) with the services' environment;
        its output is appended to ``<name>.log`` and returned."""
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, env={**self.env, **(env or {})},
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout)
        with (self.log_dir / f"{name}.log").open("a") as log:
            log.write(f"=== {' '.join(argv)} → exit {result.returncode} ===\n"
                      f"{result.stdout}{result.stderr}")
        return result

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def running(self) -> list[Service]:
        return [s for s in self.services.values() if s.alive]

    def assert_running(self, *names: str) -> None:
        """Raise ``ServiceExited`` naming any of ``names`` (default: all) that died on its own."""
        for service in (self.services[n] for n in names) if names else self.services.values():
            if service.process is not None and not service.alive:
                raise ServiceExited(f"{service.name} exited with code {service.process.returncode}"
                                    f"\n{self.report()}")

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every running service (in parallel) and return their exit codes."""
        running = self.running()
        for service in running:
            assert service.process is not None
            service.process.send_signal(signal.SIGTERM)
        return {service.name: service.terminate(signalled=True) for service in running}

    def kill_all(self) -> None:
        for service in self.services.values():
            service.kill()

    def report(self, lines: int = 25) -> str:
        parts = ["services:"] + [f"  {s.status()}" for s in self.services.values()]
        for name, probe in self.probes.items():
            try:
                parts.append(f"{name}: {probe()}")
            except Exception as error:  # a report must never hide the original failure
                parts.append(f"{name}: unavailable ({error!r})")
        for service in self.services.values():
            parts.append(f"--- last {lines} log lines of {service.name} ({service.log_path}) ---")
            parts.append(service.log_tail(lines) or "(empty)")
        return "\n".join(parts)


def child_env(**overrides: str) -> dict[str, str]:
    """The test runner's environment minus what could leak into a service (``.env``-style
    variables of the developer's shell), plus ``overrides``."""
    inherited = {key: value for key, value in os.environ.items()
                 if key in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV"}}
    return {**inherited, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **overrides}
