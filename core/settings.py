"""Configuration from the environment and ``.env`` (docs/reference.md, Configuration), validated eagerly.

One shared base (database, Redis, logging, metrics) and one subclass per service. Build them in
``main()`` with :func:`load_settings`, which turns a validation error into one line and exit 2.
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.db import timeout_settings
from core.redact import redact_url, redact_urls_in

if TYPE_CHECKING:
    # Imported where used: `cryptography` is ~40 ms of start-up that only the services holding
    # webhook secrets need (not ingest).
    from core.crypto import Keyring

_POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg"}


def normalise_database_url(url: str) -> str:
    """Return ``postgresql://…`` for any accepted Postgres URL form; raise ``ValueError`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in _POSTGRES_SCHEMES:
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not postgresql://")
    if not parts.netloc and "host=" not in parts.query:
        raise ValueError("no host given")
    return "postgresql://" + url.split("://", 1)[1]


def _check_http_url(url: str, *, schemes: set[str], what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{what} scheme {parts.scheme or '(none)'!r} is not one of {sorted(schemes)}")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")
    return url


def split_rpc_urls(value: str) -> list[str]:
    """The endpoints of a comma-separated ``RPC_URL`` list, in order."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _check_rpc_urls(value: str, *, what: str) -> str:
    urls = split_rpc_urls(value)
    if not urls:
        raise ValueError(f"{what} lists no endpoint")
    for url in urls:
        _check_http_url(url, schemes={"http", "https"}, what=f"{what} entry {redact_url(url)}")
    if len(set(urls)) != len(urls):
        raise ValueError(f"{what} lists an endpoint twice")
    return ",".join(urls)


Finality = Literal["finalized", "safe"]


class BaseServiceSettings(BaseSettings):
    """What every service reads: where the database and Redis are, how to log, metrics port."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", defer_build=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/blockhook"
    redis_url: str = "redis://127.0.0.1:6379/0"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Per database session, in seconds (0 disables): see core.db.timeout_settings.
    db_statement_timeout: float = Field(default=60.0, ge=0)
    db_lock_timeout: float = Field(default=10.0, ge=0)
    db_idle_in_transaction_timeout: float = Field(default=60.0, ge=0)

    def db_timeouts(self) -> dict[str, str]:
        """The session timeouts as server settings for ``core.db.connect``/``create_pool``."""
        return timeout_settings(statement=self.db_statement_timeout, lock=self.db_lock_timeout,
                                idle_in_transaction=self.db_idle_in_transaction_timeout)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _check_http_url(value, schemes={"redis", "rediss", "unix"}, what="REDIS_URL")


class IngestSettings(BaseServiceSettings):
    """``python -m ingest`` and ``scripts/replay.py``."""

    # One endpoint, or several separated by commas (failover, health-scored routing);
    # RPC_URLS is an alias (set one of the two).
    rpc_url: str = "http://127.0.0.1:8545"
    rpc_urls: str | None = None
    chain_id: int | None = Field(default=None, gt=0)
    start_block: int | None = Field(default=None, ge=0)
    # A depth in blocks, or the node's "finalized"/"safe" block on chains with those tags.
    confirmations: int | Finality = 0
    poll_interval: float = Field(default=1.0, gt=0)
    max_block_range: int = Field(default=2000, ge=1)
    reorg_window: int = Field(default=128, ge=1)
    rpc_timeout: float = Field(default=20.0, gt=0)
    # The largest JSON-RPC reply read, in MiB: bounds memory (docs/ingest.md, "Memory").
    rpc_max_response_mb: int = Field(default=32, ge=1)
    # Ingest only these contracts (comma separated); empty = every log of every block.
    ingest_addresses: str = ""

    @field_validator("rpc_url")
    @classmethod
    def _rpc_url(cls, value: str) -> str:
        return _check_rpc_urls(value, what="RPC_URL")

    @field_validator("rpc_urls")
    @classmethod
    def _rpc_urls(cls, value: str | None) -> str | None:
        return None if value is None else _check_rpc_urls(value, what="RPC_URLS")

    @field_validator("confirmations", mode="before")
    @classmethod
    def _confirmations(cls, value: object) -> object:
        wrong = "must be a number of blocks (>= 0), 'finalized' or 'safe'"
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("finalized", "safe"):
                return text
            try:
                value = int(text)
            except ValueError:
                raise ValueError(wrong) from None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(wrong)
        return value

    @model_validator(mode="after")
    def _one_endpoint_list(self) -> IngestSettings:
        if self.rpc_urls is not None:
            if "rpc_url" in self.model_fields_set and self.rpc_url != self.rpc_urls:
                raise ValueError("RPC_URL and RPC_URLS are both set and differ; set one of them")
            self.rpc_url = self.rpc_urls
        return self

    @property
    def rpc_max_response_bytes(self) -> int:
        return self.rpc_max_response_mb << 20

    @property
    def rpc_endpoints(self) -> list[str]:
        """The JSON-RPC endpoints, in the order given."""
        return split_rpc_urls(self.rpc_url)

    @property
    def rpc_configured(self) -> bool:
        """Whether ``RPC_URL``/``RPC_URLS`` was given (rather than the local default)."""
        return bool({"rpc_url", "rpc_urls"} & self.model_fields_set)

    @field_validator("ingest_addresses")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for address in filter(None, (a.strip() for a in value.split(","))):
            if len(address) != 42 or not address.startswith("0x"):
                raise ValueError(f"INGEST_ADDRESSES entry {address!r} is not a 0x address")
            int(address, 16)
        return value

    @property
    def address_filter(self) -> list[str]:
        return [a.strip().lower() for a in self.ingest_addresses.split(",") if a.strip()]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
KEEP_FOREVER = "forever"


def parse_duration(value: object) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` → a ``timedelta``; ``forever`` → ``None``.
    Raises ``ValueError`` for anything else (a bare number is refused: seconds or days?)."""
    if value is None or isinstance(value, timedelta):
        return value
    text = str(value).strip()
    if text.lower() == KEEP_FOREVER:
        return None
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use e.g. 30d, 12h, 90m, 45s, 2w "
                         f"or {KEEP_FOREVER!r}")
    return timedelta(seconds=float(match.group(1)) * _DURATION_SECONDS[match.group(2).lower()])


def format_duration(value: timedelta | None) -> str:
    """The inverse of :func:`parse_duration`, for logs and status (``30d``, ``forever``)."""
    if value is None:
        return KEEP_FOREVER
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        if seconds >= _DURATION_SECONDS[unit] and seconds % _DURATION_SECONDS[unit] == 0:
            return f"{seconds / _DURATION_SECONDS[unit]:.0f}{unit}"
    return f"{seconds:g}s"


# Nothing is worth pruning younger than this; it also keeps every horizon far beyond the
# processor's short recheck windows (reorg corrections, lost-job sweeps).
MIN_RETENTION = timedelta(hours=1)


class RetentionSettings(BaseServiceSettings):
    """What may be deleted, and when: ``scripts/retention.py``, ``scripts/status.py`` and the
    processor (which runs retention on a schedule). Ages are durations (``30d``, ``12h``) or
    ``forever``. What the pipeline still needs is never deleted, whatever the age (see
    ``retention``)."""

    retention_events: timedelta | None = timedelta(days=30)
    retention_event_batches: timedelta | None = timedelta(days=1)
    retention_deliveries: timedelta | None = timedelta(days=30)
    retention_reorgs: timedelta | None = timedelta(days=90)
    # Seconds between two passes run by the processor; 0 = the processor never runs retention.
    retention_interval: float = Field(default=600.0, ge=0)
    # TimescaleDB with a license that has compression ('timescale'): compress events chunks
    # entirely older than this; ``forever`` = never compress.
    events_compress_after: timedelta | None = timedelta(days=7)
    # The indexer's window (same variable as ingest): its events and blocks are never pruned.
    reorg_window: int = Field(default=128, ge=1)

    @field_validator("retention_events", "retention_event_batches", "retention_deliveries",
                     "retention_reorgs", "events_compress_after", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta | None:
        duration = parse_duration(value)
        if duration is not None and duration < MIN_RETENTION:
            raise ValueError(f"{format_duration(duration)} is shorter than the minimum "
                             f"{format_duration(MIN_RETENTION)}")
        return duration


class ProcessorSettings(RetentionSettings):
    """``python -m processor`` (it also runs retention, see :class:`RetentionSettings`)."""

    processor_batch_size: int = Field(default=5000, ge=1)
    processor_sweep_interval: float = Field(default=2.0, gt=0)


class EncryptionSettings(BaseServiceSettings):
    """The keyring for webhook secrets at rest (:mod:`core.crypto`): ``BLOCKHOOK_ENCRYPTION_KEY``
    (keys separated by commas, the first one current, the others accepted for reading during
    a rotation) or ``BLOCKHOOK_ENCRYPTION_KEY_FILE`` (the same, one key per line). Unset: secrets
    stay unencrypted."""

    blockhook_encryption_key: SecretStr | None = None
    blockhook_encryption_key_file: Path | None = None

    @field_validator("blockhook_encryption_key")
    @classmethod
    def _keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            from core.crypto import parse_keys

            parse_keys(value.get_secret_value())  # ValueError names the position, not the key
            return value
        return None

    @field_validator("blockhook_encryption_key_file")
    @classmethod
    def _key_file(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        try:
            text = value.read_text()
        except OSError as error:
            raise ValueError(f"cannot read {value}: {error.strerror or error}") from None
        from core.crypto import parse_keys

        parse_keys(text)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> EncryptionSettings:
        if self.blockhook_encryption_key is not None and self.blockhook_encryption_key_file:
            raise ValueError("BLOCKHOOK_ENCRYPTION_KEY and BLOCKHOOK_ENCRYPTION_KEY_FILE are both "
                             "set; set one")
        return self

    def keyring(self) -> Keyring | None:
        """The configured keyring, or ``None`` when no key is set."""
        from core.crypto import Keyring

        if self.blockhook_encryption_key is not None:
            return Keyring.from_text(self.blockhook_encryption_key.get_secret_value())
        if self.blockhook_encryption_key_file is not None:
            return Keyring.from_text(self.blockhook_encryption_key_file.read_text())
        return None


class WorkerSettings(EncryptionSettings):
    """``python -m workers``."""

    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_schedule: str = "5,30,120,600,1800,3600,7200"
    webhook_allow_private: bool = False
    worker_batch_size: int = Field(default=50, ge=1)
    # Per endpoint (host:port) and worker process: see workers.endpoints.
    worker_endpoint_concurrency: int = Field(default=10, ge=1)
    worker_circuit_failures: int = Field(default=5, ge=0)
    worker_circuit_probe_interval: float = Field(default=30.0, gt=0)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds") from None
        if not delays or any(d < 0 for d in delays):
            raise ValueError("WEBHOOK_RETRY_SCHEDULE needs at least one non-negative delay")
        return value

    @property
    def retry_delays(self) -> list[float]:
        return [float(part) for part in self.webhook_retry_schedule.split(",") if part.strip()]


S = TypeVar("S", bound=BaseSettings)


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad variable and why, for humans at a terminal."""
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]).upper() or "settings"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}")
    return redact_urls_in("invalid configuration: " + "; ".join(problems))


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings or exit 2 with one line on stderr (no traceback)."""
    try:
        return cls(**overrides)
    except ValidationError as error:
        print(f"blockhook: {describe_validation_error(error)}", file=sys.stderr)
        raise SystemExit(2) from None
