"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine: the compose
file is parsed with PyYAML (merge keys resolved), its variables interpolated the way Compose
does, and every service checked against the code: commands exist, environment variables are
real settings whose values validate, healthchecks and dependencies are in place."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from core import settings as core_settings
from core.roles import INGEST, PROCESSOR, ROLES, WORKERS, password_variable
from core.settings import BaseServiceSettings, IngestSettings, ProcessorSettings, WorkerSettings
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
APP_IMAGE_SERVICES = {"migrate", "ingest", "processor", "workers"}
LONG_RUNNING = {"timescaledb", "redis", "anvil", "ingest", "processor", "workers", "prometheus",
                "grafana"}
# Variables read outside the settings classes, and by whom (documented in README/operations).
MIGRATION_VARIABLES = {"EVENTS_CHUNK_INTERVAL", *(password_variable(role) for role in ROLES)}
EXTERNAL_IMAGE_VARIABLES = {
    "timescaledb": {"POSTGRES_PASSWORD", "POSTGRES_DB"},
    "grafana": {"GF_SECURITY_ADMIN_PASSWORD", "GF_AUTH_ANONYMOUS_ENABLED", "GF_AUTH_ANONYMOUS_ORG_ROLE",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "GF_ANALYTICS_REPORTING_ENABLED",
                "GF_ANALYTICS_CHECK_FOR_UPDATES"},
}
SETTINGS_FOR = {"ingest": IngestSettings, "processor": ProcessorSettings,
                "workers": WorkerSettings, "migrate": BaseServiceSettings}
EXAMPLE_ENV = {"POSTGRES_PASSWORD": "secret", "RPC_URL": "http://anvil:8545", "CHAIN_ID": "31337",
               "BLOCKHOOK_INGEST_PASSWORD": "ingest-pw", "BLOCKHOOK_PROCESSOR_PASSWORD": "proc-pw",
               "BLOCKHOOK_WORKERS_PASSWORD": "workers-pw"}
SERVICE_ROLES = {"ingest": INGEST, "processor": PROCESSOR, "workers": WORKERS}

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` rules."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name, "")
        if value:
            return value
        if op == ":?":
            raise MissingVariable(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(substitute, text)


def _interpolate_values(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_values(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_values(value, env) for key, value in node.items()}
    return node


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    """Parse (comments dropped, merge keys resolved), then interpolate values, as Compose does."""
    document: dict[str, Any] = _interpolate_values(yaml.safe_load(COMPOSE.read_text()), env)
    return document


def known_settings() -> set[str]:
    classes = [cls for cls in vars(core_settings).values()
               if isinstance(cls, type) and issubclass(cls, BaseServiceSettings)]
    return {name.upper() for cls in classes for name in cls.model_fields}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = load_compose(EXAMPLE_ENV)
    result: dict[str, Any] = compose["services"]
    return result


def test_required_variables_are_enforced() -> None:
    for missing in EXAMPLE_ENV:
        env = {k: v for k, v in EXAMPLE_ENV.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            load_compose(env)
    load_compose(EXAMPLE_ENV)


def test_expected_services_and_pinned_images(services: dict[str, Any]) -> None:
    assert set(services) == LONG_RUNNING | {"migrate"}
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    version = re.fullmatch(r"timescale/timescaledb:(\d+)\.(\d+)\.(\d+)-pg15",
                           services["timescaledb"]["image"])
    assert version, "TimescaleDB pinned to an explicit version on PostgreSQL 15"
    assert (int(version.group(1)), int(version.group(2))) >= (2, 18)
    for name, service in services.items():
        image = service.get("image", "")
        assert re.search(r":v?\d+(\.\d+)+", image), f"{name}: image {image!r} is not pinned"
        assert not image.endswith(":latest")
        if name in APP_IMAGE_SERVICES:
            assert service["build"] == "." and image.startswith("blockhook:")
    assert services["anvil"]["profiles"] == ["dev"]
    # Prometheus and Grafana only with --profile observability (tests/ops/test_observability.py).
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["observability"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:v")
    assert services["grafana"]["image"].startswith("grafana/grafana-oss:")


def _command_exists(command: list[str]) -> bool:
    if command[:2] == ["sh", "-c"]:
        return all(_command_exists(part.split()) for part in command[2].split("&&"))
    if command[:2] == ["python", "-m"]:
        module = command[2]
        return (ROOT / module.replace(".", "/") / "__main__.py").is_file() or \
            (ROOT / f"{module.replace('.', '/')}.py").is_file()
    if command[0] == "python":
        return (ROOT / command[1]).is_file()
    if command[0] == "alembic":
        return (ROOT / "alembic.ini").is_file() and (ROOT / "alembic" / "env.py").is_file()
    return False


def test_every_blockhook_command_exists_in_the_code(services: dict[str, Any]) -> None:
    for name in APP_IMAGE_SERVICES:
        command = services[name]["command"]
        assert isinstance(command, list), f"{name}: exec form, so signals reach the service"
        assert _command_exists(command), f"{name}: {command} does not exist in the repository"
        healthcheck = services[name]["healthcheck"]
        if name != "migrate":
            assert healthcheck["test"][0] == "CMD" and _command_exists(healthcheck["test"][1:])
    assert services["migrate"]["command"] == [
        "sh", "-c", "alembic upgrade head && python scripts/roles.py"]


def test_each_service_connects_with_its_own_role(services: dict[str, Any]) -> None:
    """Least privilege: only the one-shot migration holds the administrator's password; each
    service logs in as its role with the password migrate sets; only workers get the key."""
    for name, role in SERVICE_ROLES.items():
        url = services[name]["environment"]["DATABASE_URL"]
        password = EXAMPLE_ENV[password_variable(role)]
        assert url == f"postgresql://{role}:{password}@timescaledb:5432/blockhook", name
    assert services["migrate"]["environment"]["DATABASE_URL"].startswith("postgresql://postgres:")
    for role in SERVICE_ROLES.values():
        variable = password_variable(role)
        assert services["migrate"]["environment"][variable] == EXAMPLE_ENV[variable]
    holders = {name for name, service in services.items()
               if "BLOCKHOOK_ENCRYPTION_KEY" in service.get("environment", {})}
    assert holders == {"workers"}


def test_every_environment_variable_is_a_known_setting_and_validates(
        services: dict[str, Any]) -> None:
    known = known_settings()
    for name, service in services.items():
        environment: dict[str, str] = service.get("environment", {})
        allowed = known | (MIGRATION_VARIABLES if name == "migrate" else set())
        if name not in APP_IMAGE_SERVICES:
            allowed = EXTERNAL_IMAGE_VARIABLES.get(name, set())
        unknown = set(environment) - allowed
        assert not unknown, f"{name}: unknown variables {sorted(unknown)}"
        if name in SETTINGS_FOR:
            settings_env = {k: str(v) for k, v in environment.items() if k in known}
            try:
                SETTINGS_FOR[name](_env_file=None, **{k.lower(): v for k, v in settings_env.items()})
            except ValidationError as error:  # pragma: no cover - the assertion message
                pytest.fail(f"{name}: {error}")


def test_healthchecks_dependencies_and_restart_policies(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        service = services[name]
        assert service["restart"] in {"unless-stopped", "always"}, name
        assert not service["healthcheck"].get("disable"), name
        assert service["healthcheck"]["test"], name
    assert services["timescaledb"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    for name in ("ingest", "processor", "workers"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["timescaledb"]["condition"] == "service_healthy", name
    for name in ("processor", "workers"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["ingest"]["depends_on"]["anvil"] == {"condition": "service_healthy",
                                                         "required": False}
    # Scalable with --scale workers=N: nothing that two replicas could collide on.
    assert "container_name" not in services["workers"] and "ports" not in services["workers"]


def test_dockerfile_and_dockerignore() -> None:
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")  # backslash continuations
    instructions = [line.split(None, 1) for line in joined.splitlines()]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    users = [arg for keyword, arg in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image runs as a non-root user"
    assert any(keyword == "RUN" and "pip install ." in arg for keyword, arg in instructions)
    for keyword, arg in instructions:
        if keyword == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "node_modules", ".env"} <= ignored


def test_healthcheck_script_against_a_real_service(plain_db_url: str, redis_url: str) -> None:
    """The compose healthcheck, run against a real ``python -m workers``'s metrics endpoint."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": plain_db_url, "REDIS_URL": redis_url,
           "METRICS_PORT": str(port)}
    check = [sys.executable, "scripts/healthcheck.py"]
    assert subprocess.run(check, cwd=ROOT, env=env, capture_output=True, timeout=30).returncode == 1
    service = subprocess.Popen([sys.executable, "-m", "workers"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if subprocess.run(check, cwd=ROOT, env=env, capture_output=True,
                              timeout=30).returncode == 0:
                break
            assert service.poll() is None, service.stderr.read() if service.stderr else ""
        else:
            pytest.fail("the workers' metrics endpoint never answered the healthcheck")
    finally:
        service.terminate()
        assert service.wait(timeout=30) == 0
    disabled = subprocess.run(check, cwd=ROOT, env={**env, "METRICS_PORT": "0"},
                              capture_output=True, text=True, timeout=30)
    assert disabled.returncode == 1 and "METRICS_PORT is 0" in disabled.stderr
