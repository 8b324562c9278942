"""The benchmark dispatcher without running a benchmark: its command line, that every subcommand
module imports and exposes ``run(backend)``, and how a figure reports itself (line and JSON).
Benchmarks are never timed tests: nothing here measures anything."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench import SUBCOMMANDS, machine, run_subcommand
from scripts.benchmarks.report import Figure, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "scripts/bench.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_every_subcommand_and_option() -> None:
    result = _bench("--help")
    assert result.returncode == 0, result.stderr
    for name in (*SUBCOMMANDS, "all", "--json", "--backend"):
        assert name in result.stdout


def test_unknown_subcommand_or_backend_is_refused() -> None:
    assert _bench().returncode == 2
    assert _bench("nonsense").returncode == 2
    assert _bench("latency", "--backend", "mysql").returncode == 2


def test_issue_subcommands_are_registered() -> None:
    assert {"ingest", "processor", "deliver", "latency", "replay"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_module_exposes_run_with_backend(name: str) -> None:
    module = importlib.import_module(f"scripts.benchmarks.{name}")
    parameters = inspect.signature(module.run).parameters
    assert "backend" in parameters


def test_machine_description_has_cores_and_memory() -> None:
    described = machine()
    assert isinstance(described["cores"], int) and described["cores"] >= 1
    assert described["memory_gib"] > 0
    json.dumps(described)


def test_figure_line_shows_value_baseline_ratio_bar_and_verdict() -> None:
    fast = Figure("deliveries", 1500.0, "dlv/s", baseline=3000.0, bar=1000.0, goal=2500.0)
    assert fast.ratio == 0.5 and fast.passed is True and fast.goal_met is False
    line = fast.line()
    for part in ("1,500.00", "baseline", "3,000.00", "0.50x", "bar >= 1,000.00", "PASS",
                 "goal >= 2,500.00 not met"):
        assert part in line

    slow = Figure("latency p99", 1300.0, "ms", bar=1200.0, higher_is_better=False)
    assert slow.passed is False and "bar <= 1,200.00  FAIL" in slow.line()
    assert Figure("info", 1.0, "x").passed is None


def test_unmeasured_figure_fails_its_bar_and_is_null_in_json() -> None:
    missing = Figure("commit→enqueue p50", math.nan, "ms", baseline=math.nan, bar=10.0,
                     higher_is_better=False)
    assert missing.passed is False and missing.ratio is None
    assert "n/a" in missing.line() and "FAIL" in missing.line()
    record = json.loads(json.dumps(missing.as_dict(), allow_nan=False))
    assert record["value"] is None and record["baseline"] is None and record["passed"] is False


def test_result_file_renders_as_a_markdown_table(tmp_path: Path) -> None:
    figures = [Figure("latency p99", 1300.0, "ms", baseline=650.0, bar=1200.0,
                      higher_is_better=False),
               Figure("burst", 900.0, "events/s", goal=2500.0)]
    document = {"machine": machine(), "results": {"latency": {
        "seconds": 312.0, "load_before": [2.5, 2.0, 1.5], "load_after": [3.25, 2.0, 1.5],
        "figures": [figure.as_dict() for figure in figures]}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document))
    table = markdown_table(json.loads(path.read_text()))
    assert "| latency | latency p99 | 1,300 ms | 650 ms | 2.00x | <= 1,200 ms | **FAIL** | — |" in table
    assert "| latency | burst | 900 events/s | — | — | — | — | >= 2,500 not met |" in table
    assert "latency: 312 s, load 2.5 → 3.2" in table
    result = _bench("--table", str(path))
    assert result.returncode == 0 and result.stdout == table


def test_a_subcommand_that_raises_is_recorded_and_the_others_keep_their_figures(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``all`` goes on past a subcommand that raises: its record carries the error (and no
    figures), the table shows it, and the figures of the others stay in the result."""
    class Broken:
        @staticmethod
        def run(backend: str) -> list[Figure]:
            raise RuntimeError("deadlock detected")

    class Fine:
        @staticmethod
        def run(backend: str) -> list[Figure]:
            return [Figure("fine figure", 1.0, "s")]

    monkeypatch.setitem(sys.modules, "scripts.benchmarks.broken_bench", Broken)
    monkeypatch.setitem(sys.modules, "scripts.benchmarks.fine_bench", Fine)
    broken = run_subcommand("broken_bench", "plain", lines_to=sys.stderr)
    fine = run_subcommand("fine_bench", "plain", lines_to=sys.stderr)
    assert broken["error"] == "RuntimeError: deadlock detected" and broken["figures"] == []
    assert "Traceback" in capsys.readouterr().err
    table = markdown_table({"results": {"broken_bench": broken, "fine_bench": fine}})
    assert "| broken_bench | (the subcommand failed: RuntimeError: deadlock detected) |" in table
    assert "| fine_bench | fine figure |" in table
