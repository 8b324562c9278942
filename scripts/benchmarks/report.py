"""Figures: value, baseline, ratio, bar, PASS/FAIL — printed one per line, or collected as JSON.

A figure without a bar is informational (a baseline, a breakdown); ``passed`` is then ``None``.
A value that could not be measured is NaN: it prints as ``n/a``, fails its bar, and is ``null``
in JSON (NaN is not JSON)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    bar: float | None = None
    higher_is_better: bool = True
    note: str = ""
    goal: float | None = None

    @property
    def ratio(self) -> float | None:
        """value / baseline (``None`` without a usable baseline)."""
        if not self.baseline or _finite(self.baseline) is None or _finite(self.value) is None:
            return None
        return self.value / self.baseline

    def _meets(self, threshold: float | None) -> bool | None:
        if threshold is None:
            return None
        if _finite(self.value) is None:
            return False
        return self.value >= threshold if self.higher_is_better else self.value <= threshold

    @property
    def passed(self) -> bool | None:
        return self._meets(self.bar)

    @property
    def goal_met(self) -> bool | None:
        return self._meets(self.goal)

    def line(self) -> str:
        value = "n/a" if _finite(self.value) is None else f"{self.value:,.2f}"
        parts = [f"{self.name:<52} {value:>12} {self.unit:<8}"]
        if self.baseline is not None:
            ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}x"
            baseline = "n/a" if _finite(self.baseline) is None else f"{self.baseline:,.2f}"
            parts.append(f"baseline {baseline:>12}  ratio {ratio:>6}")
        op = ">=" if self.higher_is_better else "<="
        if self.bar is not None:
            parts.append(f"bar {op} {self.bar:,.2f}  {'PASS' if self.passed else 'FAIL'}")
        if self.goal is not None:
            parts.append(f"goal {op} {self.goal:,.2f} {'met' if self.goal_met else 'not met'}")
        if self.note:
            parts.append(f"({self.note})")
        return "  ".join(parts)

    def as_dict(self) -> dict[str, object]:
        record = {**asdict(self), "ratio": self.ratio, "passed": self.passed,
                  "goal_met": self.goal_met}
        for key in ("value", "baseline"):
            record[key] = _finite(record[key])  # type: ignore[arg-type]
        return record


def _number(value: object, unit: str = "") -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def markdown_table(document: dict[str, object]) -> str:
    """The figures of a ``bench.py --json`` result file as a Markdown table (docs/benchmarks.md):
    value, baseline, ratio, bar, PASS/FAIL, goal; then the load average around each subcommand."""
    lines = ["| benchmark | figure | value | baseline | ratio | bar | result | goal |",
             "|---|---|--:|--:|--:|--:|---|---|"]
    loads = []
    results = document.get("results", {})
    assert isinstance(results, dict)
    for name, record in results.items():
        if "error" in record:
            lines.append(f"| {name} | (the subcommand failed: {record['error'][:200]}) | — | — | — "
                         "| — | **ERROR** | — |")
        for figure in record["figures"]:
            op = ">=" if figure["higher_is_better"] else "<="
            unit = figure["unit"]
            verdict = {True: "PASS", False: "**FAIL**", None: "—"}[figure["passed"]]
            goal = "—"
            if figure.get("goal") is not None:
                goal = f"{op} {_number(figure['goal'])} " + ("met" if figure["goal_met"] else "not met")
            bar = "—" if figure["bar"] is None else f"{op} {_number(figure['bar'], unit)}"
            ratio = "—" if figure["ratio"] is None else f"{figure['ratio']:.2f}x"
            lines.append(f"| {name} | {figure['name']} | {_number(figure['value'], unit)} | "
                         f"{_number(figure['baseline'], unit)} | {ratio} | {bar} | {verdict} | "
                         f"{goal} |")
        loads.append(f"{name}: {record['seconds']:.0f} s, load {record['load_before'][0]:.1f} → "
                     f"{record['load_after'][0]:.1f}")
    return "\n".join(lines) + "\n\nLoad average (1 min) before → after each subcommand: " + \
        "; ".join(loads) + ".\n"
