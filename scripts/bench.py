"""Benchmarks (never timed tests): ``python scripts/bench.py {ingest,processor,deliver,latency,replay,recovery,all}
[--json]``. Each subcommand starts what it needs (anvil devnet, a throwaway database), runs the
services' real code paths and a raw baseline on the same data in the same run, and prints one line
per figure: value, baseline, ratio, bar, PASS/FAIL."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchmarks.report import Figure  # noqa: E402

SUBCOMMANDS = ("ingest", "processor", "deliver", "latency", "replay", "recovery")


def _machine() -> dict[str, object]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", choices=(*SUBCOMMANDS, "all"))
    parser.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    parser.add_argument("--backend", choices=("plain", "timescale", "both"), default="both",
                        help="storage backend for ingest/processor")
    args = parser.parse_args()
    selected = SUBCOMMANDS if args.which == "all" else (args.which,)
    results: dict[str, list[dict[str, object]]] = {}
    for name in selected:
        module = importlib.import_module(f"scripts.benchmarks.{name}")
        figures: list[Figure] = module.run(backend=args.backend)
        results[name] = [figure.as_dict() for figure in figures]
        for figure in figures:
            print(figure.line(), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps({"machine": _machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
