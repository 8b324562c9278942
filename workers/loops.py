"""Background threads of a worker process (the retry promoter, the secret sealer) that cannot die
silently.

A :class:`BackgroundLoop` runs ``step()`` every ``interval`` seconds. An exception from a step
is logged with its traceback and the loop carries on at the next interval (a Redis or database
outage, a job deleted under the promoter's feet, a bug hit by one row). If the thread ends
anyway while nobody asked it to stop (``SystemExit``, ``MemoryError``, a bug in the loop
itself), ``on_death`` is called: the worker's ``main`` then stops the process with a non-zero
exit so its supervisor restarts it (:func:`workers.__main__.main`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class BackgroundLoop:
    """Subclasses implement :meth:`step` (or override :meth:`serve` for a loop of their own)."""

    name = "background-loop"

    def __init__(self, *, interval: float,
                 on_death: Callable[[str], None] | None = None) -> None:
        self.interval = interval
        self.on_death = on_death
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"blockhook-{self.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` when asked to stop."""
        return self._stop.wait(seconds)

    def step(self) -> None:  # pragma: no cover - subclasses implement it
        raise NotImplementedError

    def serve(self) -> None:
        """Call :meth:`step` every ``interval`` until stopped, surviving its exceptions."""
        while not self.wait(self.interval):
            self.run_step()

    def run_step(self) -> None:
        try:
            self.step()
        except Exception:
            log.exception("background loop step failed; continuing", loop=self.name)

    def _run(self) -> None:
        try:
            self.serve()
        except BaseException:
            log.exception("background loop crashed", loop=self.name)
        finally:
            if not self._stop.is_set():
                log.error("background loop ended unexpectedly", loop=self.name)
                if self.on_death is not None:
                    self.on_death(self.name)
