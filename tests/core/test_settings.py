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


def test_rpc_url_takes_a_list_and_rpc_urls_is_an_alias() -> None:
    settings = IngestSettings(_env_file=None, rpc_url=" http://a:1/v2/k , https://b ")  # type: ignore[call-arg]
    assert settings.rpc_endpoints == ["http://a:1/v2/k", "https://b"] and settings.rpc_configured
    alias = IngestSettings(_env_file=None, rpc_urls="https://b,https://c")  # type: ignore[call-arg]
    assert alias.rpc_endpoints == ["https://b", "https://c"] and alias.rpc_configured
    assert not IngestSettings(_env_file=None).rpc_configured  # type: ignore[call-arg]


def test_bad_endpoint_lists_are_one_line_without_the_key() -> None:
    key = "AbCdEf0123456789AbCdEf0123456789"
    for env, reason in (({"RPC_URL": f"https://ok,ftp://node/v2/{key}"}, "scheme 'ftp'"),
                        ({"RPC_URL": "https://a,https://a"}, "twice"),
                        ({"RPC_URL": "https://a", "RPC_URLS": "https://b"}, "set one of them"),
                        ({"RPC_URL": " , "}, "no endpoint")):
        result = _run_settings(env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert reason in result.stderr and key not in result.stderr


def test_confirmations_is_a_depth_or_a_finality_tag() -> None:
    for value, expected in (("6", 6), ("finalized", "finalized"), (" SAFE ", "safe"), (0, 0)):
        assert IngestSettings(_env_file=None, confirmations=value).confirmations == expected  # type: ignore[call-arg]
    result = _run_settings({"CONFIRMATIONS": "latest"})
    assert result.returncode == 2 and "CONFIRMATIONS: must be a number of blocks" in result.stderr
