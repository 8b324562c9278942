"""Settings: eager validation with one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.settings import IngestSettings, WorkerSettings, normalise_database_url


def _run_settings(env: dict[str, str], cls: str = "IngestSettings") -> subprocess.CompletedProcess[str]:
    code = f"from core.settings import load_settings, {cls}; load_settings({cls})"
    return subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)


def test_bad_database_url_is_one_line_and_non_zero() -> None:
    result = _run_settings({"DATABASE_URL": "mysql://root@localhost/x"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "DATABASE_URL" in result.stderr and "mysql" in result.stderr


def test_several_bad_values_are_named_on_one_line() -> None:
    result = _run_settings({"RPC_URL": "ftp://node", "CONFIRMATIONS": "-1"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "RPC_URL" in result.stderr and "CONFIRMATIONS" in result.stderr


def test_postgres_scheme_is_normalised() -> None:
    assert normalise_database_url("postgres://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ValueError):
        normalise_database_url("http://h/db")


def test_defaults_follow_the_spec(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("DATABASE_URL", "REDIS_URL", "RPC_URL", "CONFIRMATIONS", "POLL_INTERVAL"):
        monkeypatch.delenv(var, raising=False)
    ingest = IngestSettings()
    assert ingest.database_url == "postgresql://postgres@127.0.0.1:5432/blockhook"
    assert ingest.rpc_url == "http://127.0.0.1:8545"
    assert (ingest.confirmations, ingest.poll_interval, ingest.reorg_window) == (0, 1.0, 128)
    workers = WorkerSettings()
    assert (workers.webhook_timeout, workers.webhook_max_attempts) == (10.0, 8)
    assert workers.retry_delays == [5, 30, 120, 600, 1800, 3600, 7200]
    assert workers.webhook_allow_private is False


def test_dotenv_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONFIRMATIONS", raising=False)
    (tmp_path / ".env").write_text("CONFIRMATIONS=7\n")
    assert IngestSettings().confirmations == 7
