"""Benchmarks (never timed tests): ``python scripts/bench.py
{ingest,processor,deliver,latency,replay,recovery,retention,backtest,refire,all} [--json] [--backend plain|timescale|both]``.

Each subcommand starts what it needs (anvil devnet, a throwaway database or cluster, a
redis-server of its own), runs the services' real code paths and a raw baseline on the same data
in the same run, and prints one line per figure: value, baseline, ratio, bar, PASS/FAIL. With
``--json`` the lines go to stderr and stdout carries one JSON document: the machine (cores,
memory, versions), and per subcommand its figures, its wall time and the load average before and
after it (the machine may be shared: a figure taken at load 4 on 2 cores is not one taken idle).
``python scripts/bench.py all --json > bench.json`` writes the committed result file;
``python scripts/bench.py --table bench.json`` prints it as the Markdown table of
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.benchmarks.report import Figure, markdown_table  # noqa: E402

SUBCOMMANDS = ("ingest", "processor", "deliver", "latency", "replay", "recovery", "retention",
               "backtest", "refire")


def _command_output(*argv: str) -> str | None:
    try:
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the figures were taken on: a figure means little without it."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(), "memory_gib": round(memory, 1), "cpu": cpu_model,
        "python": platform.python_version(), "kernel": platform.release(),
        "postgres": _command_output("/usr/lib/postgresql/15/bin/postgres", "--version"),
        "redis": _command_output("redis-server", "--version"),
        "commit": _command_output("git", "rev-parse", "--short", "HEAD"),
    }


def run_subcommand(name: str, backend: str, *, lines_to: Any) -> dict[str, Any]:
    """Run one benchmark module; print its figure lines to ``lines_to``; return its record.

    A subcommand that raises is recorded with its ``error`` (traceback on ``lines_to``) and no
    figures, so that ``all`` goes on and the figures of the others are not lost."""
    module = importlib.import_module(f"scripts.benchmarks.{name}")
    load_before, started = _load(), time.monotonic()
    figures: list[Figure] = []
    error = None
    try:
        # Benchmarks print progress and skips; with --json stdout must carry the JSON alone.
        with contextlib.redirect_stdout(lines_to):
            figures = module.run(backend=backend)
    except Exception as raised:
        traceback.print_exc(file=lines_to)
        error = f"{type(raised).__name__}: {raised}"
    seconds, load_after = time.monotonic() - started, _load()
    for figure in figures:
        print(figure.line(), file=lines_to, flush=True)
    print(f"[{name}: {seconds:.0f} s; load average (1/5/15 min) before {load_before}, "
          f"after {load_after}{'; FAILED: ' + error if error else ''}]", file=lines_to, flush=True)
    record = {"seconds": round(seconds, 1), "load_before": load_before, "load_after": load_after,
              "figures": [figure.as_dict() for figure in figures]}
    if error is not None:
        record["error"] = error
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", choices=(*SUBCOMMANDS, "all"))
    parser.add_argument("--json", action="store_true",
                        help="print results as JSON on stdout (figure lines go to stderr)")
    parser.add_argument("--backend", choices=("plain", "timescale", "both"), default="both",
                        help="storage backend(s) to measure, side by side (default both; "
                             "deliver ignores it)")
    parser.add_argument("--table", metavar="RESULT_JSON",
                        help="print a result file's figures as a Markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())), end="")
        return
    if args.which is None:
        parser.error("choose a benchmark (or --table RESULT_JSON)")
    selected = SUBCOMMANDS if args.which == "all" else (args.which,)
    lines_to = sys.stderr if args.json else sys.stdout
    taken_at = datetime.now(UTC).isoformat(timespec="seconds")
    described = machine()  # before the run: the commit measured, not one made meanwhile
    results = {name: run_subcommand(name, args.backend, lines_to=lines_to) for name in selected}
    if args.json:
        document = {"taken_at": taken_at, "backend": args.backend, "machine": described,
                    "results": results}
        print(json.dumps(document, indent=2, allow_nan=True))
    failed = [name for name, record in results.items() if "error" in record]
    if failed:
        raise SystemExit(f"bench.py: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
