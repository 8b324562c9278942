"""Container healthcheck: ``python scripts/healthcheck.py [--port P]`` exits 0 when the service's
Prometheus endpoint (``http://127.0.0.1:$METRICS_PORT/metrics``) answers 200 within 3 s, else 1
with one line. A service whose loop is wedged still answers here, so this checks the process is
up and serving; lag and backlog are what alerts on the metrics are for."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("METRICS_PORT", "0") or 0))
    args = parser.parse_args(argv)
    if not args.port:
        print("healthcheck: METRICS_PORT is 0 (metrics disabled), nothing to check", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{args.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (fixed local URL)
            if response.status == 200:
                return 0
            print(f"healthcheck: {url} answered {response.status}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as error:
        print(f"healthcheck: {url}: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
