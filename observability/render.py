"""Draw the "blockhook" dashboard as one PNG from a running Prometheus, without Grafana.

    pip install matplotlib
    python observability/render.py --prometheus http://127.0.0.1:9090 --minutes 10 --out dashboard.png

Every panel of ``grafana/dashboards/blockhook.json`` at its grid position, each of its queries
evaluated by Prometheus (``/api/v1/query_range``) over the last ``--minutes``: time series as
lines (stacked where the panel stacks), stat panels as their last value. Used for the screenshot
in docs/operations.md (Grafana itself is not installable from the package registries this
project's machines reach); it is a preview, Grafana remains the dashboard.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "dashboards" / "blockhook.json"
COLOURS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]


def query_range(prometheus: str, expr: str, start: float, end: float,
                step: float) -> list[dict[str, Any]]:
    reply = httpx.get(f"{prometheus}/api/v1/query_range", timeout=30,
                      params={"query": expr, "start": start, "end": end, "step": step}).json()
    if reply.get("status") != "success":
        raise RuntimeError(f"{expr}: {reply}")
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or "value"


def human(value: float, unit: str) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "ops":
        return f"{value:.2f}/s" if abs(value) < 10 else f"{value:,.0f}/s"
    if unit == "s":
        if value and abs(value) < 0.01:
            return f"{value * 1000:.1f} ms"
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.1f} s"
    if unit == "bytes":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= scale:
                return f"{value / scale:.1f} {suffix}"
        return f"{value:.0f} B"
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.2f}"


def render(prometheus: str, out: Path, *, minutes: float, end: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    board = json.loads(DASHBOARD.read_text())
    end = end or time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 240)
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    unit_px = 0.32  # inches per grid unit (Grafana: 24 columns, rows of 30 px)
    dpi = 80
    figure = plt.figure(figsize=(24 * 0.75, height * unit_px), facecolor="#111217", dpi=dpi)
    width_px, height_px = 24 * 0.75 * dpi, height * unit_px * dpi
    for panel in board["panels"]:
        grid = panel["gridPos"]
        if panel["type"] == "row":
            figure.text(6 / width_px, 1 - (grid["y"] + 0.8) / height, panel["title"],
                        color="#d8d9da", fontsize=12, fontweight="bold")
            continue
        # Inside the panel's cell: room for the y tick labels, the x tick labels and the title.
        margin_left = (8 if panel["type"] == "stat" else 58) / width_px
        margin_bottom = (6 if panel["type"] == "stat" else 22) / height_px
        margin_top, margin_right = 24 / height_px, 8 / width_px
        box = [grid["x"] / 24 + margin_left, 1 - (grid["y"] + grid["h"]) / height + margin_bottom,
               grid["w"] / 24 - margin_left - margin_right,
               grid["h"] / height - margin_bottom - margin_top]
        axes = figure.add_axes(box, facecolor="#181b1f")
        axes.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        for spine in axes.spines.values():
            spine.set_color("#2c3235")
        axes.tick_params(colors="#8e8e8e", labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series = [(legend(target["legendFormat"], s["metric"]),
                   [datetime.fromtimestamp(float(t)) for t, _ in s["values"]],
                   [float(v) for _, v in s["values"]])
                  for target in panel["targets"]
                  for s in query_range(prometheus, target["expr"], start, end, step)]
        if panel["type"] == "stat":
            axes.set_xticks([])
            axes.set_yticks([])
            text = "\n".join(f"{human(values[-1], unit)}" + (f"  {name}" if len(series) > 1 else "")
                             for name, _, values in series if values) or "No data"
            axes.text(0.5, 0.45, text, ha="center", va="center", color="#73bf69",
                      fontsize=16 if len(series) <= 1 else 10, fontweight="bold",
                      transform=axes.transAxes)
            continue
        if not series:
            axes.text(0.5, 0.5, "No data", ha="center", va="center", color="#8e8e8e",
                      transform=axes.transAxes)
        for n, (name, times, values) in enumerate(series):
            axes.plot(times, values, color=COLOURS[n % len(COLOURS)], linewidth=1.2, label=name)
        axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda value, _, unit=unit: human(value, unit)))
        axes.grid(color="#2c3235", linewidth=0.5)
        if series:
            axes.legend(loc="upper left", fontsize=6, frameon=False, labelcolor="#d8d9da",
                        ncol=2 if len(series) > 4 else 1)
    figure.savefig(out, dpi=dpi, facecolor=figure.get_facecolor())
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--out", type=Path, default=Path("blockhook-dashboard.png"))
    args = parser.parse_args()
    render(args.prometheus, args.out, minutes=args.minutes)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
