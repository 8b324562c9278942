"""Figures: value, baseline, ratio, bar, PASS/FAIL — printed one per line, or collected as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    bar: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.bar is None:
            return None
        return self.value >= self.bar if self.higher_is_better else self.value <= self.bar

    def line(self) -> str:
        parts = [f"{self.name:<44} {self.value:>12,.2f} {self.unit:<8}"]
        if self.baseline is not None:
            parts.append(f"baseline {self.baseline:>12,.2f}  ratio {self.ratio or 0:>5.2f}x")
        if self.bar is not None:
            op = ">=" if self.higher_is_better else "<="
            parts.append(f"bar {op} {self.bar:,.2f}  {'PASS' if self.passed else 'FAIL'}")
        if self.note:
            parts.append(f"({self.note})")
        return "  ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}
