"""What the benchmarks read about the processes they start."""

from __future__ import annotations

import math
from pathlib import Path


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a running process in MiB (``VmHWM`` of ``/proc/<pid>/status``);
    NaN once it has exited.

    Not the ``ru_maxrss`` that ``wait4`` reports for a child: Linux carries the parent's peak
    into a child at ``exec`` (a worker started by a benchmark process that had grown to 630 MiB
    "peaked" at 629 MiB), while ``VmHWM`` belongs to the executed program's own memory."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan
