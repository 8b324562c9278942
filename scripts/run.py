"""``make run``: prepare the database and run the whole pipeline in the foreground under honcho.

    python scripts/run.py            # demo without RPC_URL, the pipeline against RPC_URL otherwise
    python scripts/run.py --once     # the scripted demo as a smoke test: exit 0 once verified

Steps: create the database named by ``DATABASE_URL`` if absent, ``alembic upgrade head``, set
the roles' passwords given as ``BLOCKHOOK_<ROLE>_PASSWORD`` (``scripts/roles.py``), check that
each service's role can log in, check Redis, then start the processes of ``Procfile`` (``RPC_URL`` set: ingest, processor, workers
against that chain and the triggers in the database) or ``Procfile.demo`` (no ``RPC_URL``: an
anvil devnet, the demo receiver, ingest, processor, workers and the demo's transactions), with
prefixed coloured logs. Ctrl-C (or SIGTERM) stops every process and exits 0 once they are down.

Least privilege: ingest, processor and workers connect as ``blockhook_ingest``,
``blockhook_processor`` and ``blockhook_workers`` (``DATABASE_URL`` with the user replaced, and
the role's password when one is given); ``DATABASE_URL``'s own user only creates, migrates and
seeds the database.

``--once`` always uses its own devnet on free ports. It exits 0 when the receiver has verified
every expected signed webhook, non-zero otherwise — the first process to stop decides, and a
last line names it with its reason — within ``--timeout`` seconds plus shutdown.

The demo resets the devnet chain's ingested data (chain 31337) in the database at start: a new
anvil begins at genesis with new block hashes, so the old checkpoint would be meaningless.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from honcho.environ import parse_procfile  # noqa: E402
from honcho.manager import Manager  # noqa: E402
from honcho.printer import Message, Printer  # noqa: E402
from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from core import roles  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.redact import redact_url, redact_urls_in  # noqa: E402
from core.settings import IngestSettings, load_settings  # noqa: E402
from scripts.demo import plan  # noqa: E402
from scripts.ops.database import ensure_database, migrate, reset_devnet_chain  # noqa: E402
from scripts.roles import apply_passwords, passwords_from_environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ANVIL_IN_NODE_MODULES = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
DEFAULT_ANVIL_PORT = 8545
DEFAULT_RECEIVER_PORT = 9000
# Interrupted by the user: honcho's return codes for SIGINT / SIGTERM.
INTERRUPTED = {130, 143}


# Honcho pads process names to the longest ("processor"); our own lines line up with them.
NAME_WIDTH = 9


def _say(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {'run':<{NAME_WIDTH}} | {message}", flush=True)


def _port(preferred: int | None) -> int:
    """``preferred`` when nothing listens there, else a free port from the OS."""
    if preferred is not None:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _anvil_binary() -> str:
    for candidate in (os.environ.get("ANVIL_BIN"), str(ANVIL_IN_NODE_MODULES)):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ConfigError("no anvil binary: run `make install` (npm @foundry-rs/anvil-linux-amd64) "
                      "or set ANVIL_BIN")


def _check_redis(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except RedisError as error:
        raise ConfigError(f"cannot reach Redis at {redact_url(redis_url)}: {error}") from error
    finally:
        client.close()


SERVICE_ROLES = {"ingest": roles.INGEST, "processor": roles.PROCESSOR, "workers": roles.WORKERS}


def service_database_urls(database_url: str) -> dict[str, str]:
    """Each service's ``DATABASE_URL``: its own role, with the password given in the
    environment (and set on the role here), if any. Raises ``ConfigError`` with one line when
    a role cannot log in."""
    passwords = passwords_from_environment()
    try:
        if passwords:
            apply_passwords(database_url, passwords)
    except psycopg.Error as error:
        raise ConfigError(f"cannot set the roles' passwords: {_first_line(error)}") from error
    urls = {}
    for service, role in SERVICE_ROLES.items():
        url = roles.role_url(database_url, role, passwords.get(role))
        try:
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.OperationalError as error:
            raise ConfigError(f"{service} cannot log in as {role} ({_first_line(error)}): set "
                              f"{roles.password_variable(role)}") from error
        urls[service] = url
    return urls


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RecordingPrinter(Printer):
    """Honcho's printer, also remembering each process's last line and which one stopped first
    (honcho reports that as a system line), so ``--once`` can end with the reason."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.last_line: dict[str, str] = {}
        self.first_stopped: str | None = None

    def write(self, message: Message) -> None:
        super().write(message)
        text = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) \
            else str(message.data)
        lines = [line for line in text.splitlines() if line.strip()]
        if message.name == "system":
            if self.first_stopped is None and lines and " stopped (rc=" in lines[0]:
                self.first_stopped = lines[0].split(" stopped", 1)[0]
        elif lines and message.name:
            self.last_line[message.name] = lines[-1]


def demo_environment(base: dict[str, str], *, once: bool, timeout: float,
                     database_url: str) -> dict[str, str]:
    """Prepare the demo (devnet data reset, trigger seeded) and return the processes' env."""
    anvil_binary = _anvil_binary()  # before touching the database: fail with nothing changed
    anvil_port = _port(None if once else DEFAULT_ANVIL_PORT)
    receiver_port = _port(None if once else DEFAULT_RECEIVER_PORT)
    secret = plan.new_secret()
    reset_devnet_chain(database_url, plan.DEVNET_CHAIN_ID)
    plan.seed_trigger(database_url, plan.DemoTrigger(
        receiver_url=f"http://127.0.0.1:{receiver_port}/webhooks/demo", secret=secret))
    expected = len(plan.expected_values())
    # The demo's devnet replaces any endpoint list of the environment (RPC_URLS too).
    inherited = {key: value for key, value in base.items() if key != "RPC_URLS"}
    return {
        **inherited,
        "ANVIL_BIN": anvil_binary,
        "ANVIL_PORT": str(anvil_port),
        "RECEIVER_PORT": str(receiver_port),
        "DEMO_SECRET": secret,
        "RPC_URL": f"http://127.0.0.1:{anvil_port}",
        "CHAIN_ID": str(plan.DEVNET_CHAIN_ID),
        "START_BLOCK": "0",  # the devnet is new: ingest it from genesis
        "POLL_INTERVAL": "0.2",
        "CONFIRMATIONS": "0",
        "WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "WEBHOOK_RETRY_SCHEDULE": "1,2,5,10",
        # anvil mines a block per transaction: quiet logs, immediate receipts. ANVIL_ARGS in the
        # environment (e.g. "--block-time 1" for a chain that moves on its own) is passed on.
        "ANVIL_ARGS": base.get("ANVIL_ARGS", ""),
        "RECEIVER_ARGS": f"--exit-after {expected}" if once else "",
        "DEMO_ARGS": f"--once --timeout {timeout:.0f}" if once else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make run ARGS=… (python scripts/run.py)",
        description="Create and migrate the database, then run the pipeline under honcho: the "
                    "local demo without RPC_URL, the pipeline against RPC_URL otherwise.")
    parser.add_argument("--once", action="store_true",
                        help="run the scripted demo; exit 0 once a signed webhook was verified")
    parser.add_argument("--timeout", type=float, default=45.0,
                        help="--once: seconds the demo may take before failing (default 45)")
    args = parser.parse_args(argv)

    settings = load_settings(IngestSettings)
    demo = args.once or not settings.rpc_configured
    base = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
    }
    try:
        if ensure_database(settings.database_url):
            _say(f"created database {settings.database_url.rsplit('/', 1)[-1]}")
        migrate(settings.database_url)
        _say("schema migrated (alembic upgrade head)")
        database_urls = service_database_urls(settings.database_url)
        _say("services connect as " + ", ".join(f"{service}={role}"
                                                 for service, role in SERVICE_ROLES.items()))
        _check_redis(settings.redis_url)
        if demo:
            if args.once and settings.rpc_configured:
                _say("--once ignores RPC_URL: the smoke test runs on its own devnet")
            env = demo_environment(base, once=args.once, timeout=args.timeout,
                                   database_url=settings.database_url)
            procfile = ROOT / "Procfile.demo"
            _say(f"demo: anvil on {env['RPC_URL']}, receiver on port {env['RECEIVER_PORT']}, "
                 f"trigger {plan.TRIGGER_NAME!r}")
        else:
            env = base
            procfile = ROOT / "Procfile"
            endpoints = ", ".join(redact_url(url) for url in settings.rpc_endpoints)
            _say(f"pipeline against {endpoints} with the triggers in the database")
    except ConfigError as error:
        print(f"run: {redact_urls_in(str(error))}", file=sys.stderr)
        return 1

    printer = RecordingPrinter()
    manager = Manager(printer=printer)
    for name, command in parse_procfile(procfile.read_text()).processes.items():
        process_env = {**env, "DATABASE_URL": database_urls[name]} if name in database_urls \
            else env
        manager.add_process(name, command, env=process_env, cwd=str(ROOT))
    manager.loop()
    code = manager.returncode if manager.returncode is not None else 1

    if code in INTERRUPTED and not args.once:
        _say("stopped")
        return 0
    if args.once:
        if code == 0 and printer.first_stopped == "receiver":
            _say("once: OK, signed webhooks received and verified")
            return 0
        who = printer.first_stopped or "?"
        reason = printer.last_line.get(who, "no output")
        _say(f"once: FAILED, {who} stopped first (rc={code}): {reason}")
        return code or 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
