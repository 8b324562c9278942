"""Service start-up imports: rich (``core/__init__.py``), SQLAlchemy (``retention.inventory``
imports the schema where it lists tables) and eth-abi/eth-utils (``core.abi`` decodes and parses
plain types itself, ``core.keccak`` hashes signatures) stay out of every service process, and
console logs still carry whole tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT)


@pytest.mark.parametrize("service", ["ingest", "processor", "workers"])
def test_no_service_imports_what_its_start_does_not_use(service: str) -> None:
    result = _python(f"import sys, {service}.__main__; print(sorted({{m.split('.')[0] for m in "
                     "sys.modules} & {'rich', 'sqlalchemy', 'eth_abi', 'eth_utils'}))")
    assert result.stdout.strip() == "[]"


def test_console_logs_render_exceptions_as_plain_tracebacks_and_scripts_still_get_rich() -> None:
    result = _python(
        "import sys, core, structlog\n"
        "from core.logging import configure_logging\n"
        "configure_logging(level='INFO', fmt='console', service='t')\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    structlog.get_logger('t').exception('failed')\n"
        "print('rich' in sys.modules)\n"
        "from rich.console import Console\n"
        "print(Console is not None)\n")
    assert result.stdout.split() == ["False", "True"]
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: boom" in result.stderr and "failed" in result.stderr
