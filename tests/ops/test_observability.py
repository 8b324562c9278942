"""The observability profile: Prometheus scrape config and alert rules, the Grafana provisioning and
the "blockhook" dashboard, checked against the real services (there is no Docker engine here).

The real ``python -m ingest|processor|workers`` run against anvil, the local Postgres and Redis,
each with its own ``METRICS_PORT``; traffic makes every labelled series appear (webhooks delivered,
an endpoint answering 500 until its deliveries fail, a dead RPC endpoint beside the live one, a
retention pass). Their real ``/metrics`` are scraped, and every metric, label and label value that
the dashboard's queries and the alert rules name must be there. Then a real Prometheus (Debian's
``prometheus`` package; ``.ci/run`` installs it) scrapes the same services with the rules loaded:
every rule evaluates without error and every dashboard panel returns data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from observability import dashboard
from tests.e2e.chain import TOKEN, TRANSFER, Chain
from tests.e2e.pipeline import wait_until
from tests.e2e.receiver import Receiver
from tests.ops.conftest import OpsPipeline, _build
from tests.ops.promql_refs import references
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus" / "prometheus.yml"
ALERTS = OBSERVABILITY / "prometheus" / "alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "blockhook.json"
PROVISIONING = OBSERVABILITY / "grafana" / "provisioning"
SERVICES = ("ingest", "processor", "workers")
# Labels Prometheus attaches to every scraped series (not in /metrics).
TARGET_LABELS = {"job", "instance"}

Catalogue = dict[str, dict[str, set[str]]]  # sample name → label → values seen


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _targets() -> list[dict[str, Any]]:
    return [target for panel in _dashboard()["panels"] for target in panel.get("targets", [])]


def _expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboard and the rules, named for failure messages."""
    named = {f"panel {panel['title']!r} {t['refId']}": t["expr"]
             for panel in _dashboard()["panels"] for t in panel.get("targets", [])}
    named.update({f"alert {rule['alert']}": rule["expr"] for rule in _rules()})
    return named


def _scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


# ----------------------------------------------------------------- files, without services


def test_dashboard_json_is_what_the_generator_writes() -> None:
    assert DASHBOARD.read_text() == dashboard.render(), (
        "observability/grafana/dashboards/blockhook.json is stale: "
        "run python observability/dashboard.py")


def test_dashboard_schema_essentials_and_provisioning() -> None:
    """What Grafana needs to load the dashboard and show data: a uid and title, panels on the
    24-column grid with unique ids, every query panel with targets (refId, expr) on the
    datasource the provisioning creates, and a dashboard provider whose path is where compose
    mounts the JSON."""
    board = _dashboard()
    assert board["uid"] == "blockhook" and board["title"] == "blockhook"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"} and panel["title"] and panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"] and target["expr"].strip()
    titles = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
    assert [title.split(":")[0] for title in titles] == [
        "Health", "Chains", "Ingest", "Processor", "Deliveries", "Latency", "Storage"]

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "blockhook.yml").read_text())
    [provider] = providers["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["grafana"]["volumes"]
                  if volume.startswith("./"))
    assert mounts["./observability/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./observability/grafana/provisioning"] == "/etc/grafana/provisioning"
    environment = compose["grafana"]["environment"]
    home = Path(environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == provider["options"]["path"] and home.name == DASHBOARD.name


def test_compose_profile_scrape_config_and_rules_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert compose[name]["profiles"] == ["observability"], name
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["prometheus"]["volumes"]
                  if volume.startswith("./"))
    assert mounts == {"./observability/prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml",
                      "./observability/prometheus/alerts.yml": "/etc/prometheus/alerts.yml"}
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]  # relative to the config: /etc/prometheus
    jobs = _scrape_jobs()
    for service in SERVICES:
        [discovery] = jobs[f"blockhook-{service}"]["dns_sd_configs"]
        # Every replica of the compose service, on the port its METRICS_PORT sets.
        assert discovery["names"] == [service] and discovery["type"] == "A"
        assert str(discovery["port"]) == compose[service]["environment"]["METRICS_PORT"]


def test_alert_rules_are_complete_and_documented() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {"BlockhookServiceDown", "BlockhookServiceMissing", "BlockhookIngestLagging",
            "BlockhookNoNewEvents", "BlockhookProcessorBatchStuck", "BlockhookDeliveryFailureRate",
            "BlockhookFailedDeliveriesGrowing"} <= set(names)
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules:
        references(rule["expr"])  # parses
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert f"`{rule['alert']}`" in operations, f"{rule['alert']} is not in docs/operations.md"
    for name, expr in _expressions().items():
        try:
            references(expr)
        except ValueError as error:
            pytest.fail(f"{name}: {expr!r} does not parse: {error}")


def _promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and os.environ.get("CI") == "true":
        pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
    return found


def test_promtool_checks_config_rules_and_rule_tests(tmp_path: Path) -> None:
    """``promtool check config`` (which checks the rules file it names too) and the rules' unit
    tests (observability/prometheus/alerts.test.yml: each alert fires on the series it is for,
    and stays quiet on healthy ones)."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); CI installs it")
    for command in (["check", "config", str(PROMETHEUS_CONFIG)],
                    ["test", "rules", str(OBSERVABILITY / "prometheus" / "alerts.test.yml")]):
        result = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60,
                                cwd=OBSERVABILITY / "prometheus")
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}{result.stderr}"


# ----------------------------------------------------------------- the real services


def _catalogue(expositions: dict[str, str], jobs: dict[str, dict[str, Any]]) -> Catalogue:
    catalogue: Catalogue = defaultdict(lambda: defaultdict(set))
    for text in expositions.values():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = catalogue[sample.name]
                for label, value in sample.labels.items():
                    labels[label].add(value)
                for label in TARGET_LABELS:
                    labels.setdefault(label, set())
    # ``up`` is Prometheus's own, one per target, with the scrape config's job names.
    catalogue["up"]["job"] = set(jobs)
    catalogue["up"]["instance"] = set()
    return catalogue


def _matches(op: str, wanted: str, values: set[str]) -> bool:
    if op in {"=", "!="}:
        return wanted in values
    return any(re.fullmatch(wanted, value) for value in values)


def _missing_references(catalogue: Catalogue) -> list[str]:
    """Every metric, label and label value an expression names that the scrape does not have
    (a ``!=`` or ``!~`` matcher must name a value that exists too: otherwise it is a typo that
    silently matches everything)."""
    missing: list[str] = []
    for name, expr in _expressions().items():
        found = references(expr)
        for selector in found.selectors:
            if selector.metric not in catalogue:
                missing.append(f"{name}: metric {selector.metric} is not exported")
                continue
            labels = catalogue[selector.metric]
            for label, op, value in selector.matchers:
                if label not in labels:
                    missing.append(f"{name}: {selector.metric} has no label {label!r}")
                elif label not in TARGET_LABELS or selector.metric == "up":
                    if not _matches(op, value, labels[label]):
                        missing.append(f"{name}: {selector.metric}{{{label}{op}{value!r}}} "
                                       f"matches none of {sorted(labels[label])}")
        for use in found.label_uses:
            for label in use.labels:
                if not any(label in catalogue.get(metric, {}) or
                           (label == "le" and metric.endswith("_bucket"))
                           for metric in use.metrics):
                    missing.append(f"{name}: {use.clause} ({label}) but no label {label!r} on "
                                   f"{sorted(use.metrics)}")
    return missing


def test_the_reference_check_catches_what_does_not_exist() -> None:
    """The check below is not vacuous: names, labels and values that are not exported fail it."""
    catalogue = _catalogue({"workers": "# TYPE blockhook_workers_endpoint_attempts counter\n"
                                       'blockhook_workers_endpoint_attempts_total{outcome="retry"} 1\n'
                                       "# TYPE blockhook_ingest_head_block gauge\n"
                                       "blockhook_ingest_head_block 7\n"},
                           _scrape_jobs())
    assert "blockhook_workers_endpoint_attempts_total" in catalogue
    problems = "\n".join(_missing_references(catalogue))
    assert "metric blockhook_ingest_lag_blocks is not exported" in problems
    # outcome!="delivered" names a value never seen; "host" is not a label of that scrape.
    assert "matches none of ['retry']" in problems
    assert "by (host) but no label 'host'" in problems
    # chain_id comes from the info metric, which this scrape lacks.
    assert "blockhook_ingest_head_block" not in {line.split(": metric ")[-1].split()[0]
                                                for line in problems.splitlines()
                                                if ": metric " in line}


def _wait_metrics(url: str, *, until: str = "", timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=3).text
            if until in text:
                return text
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} never showed {until!r}; last answer:\n{text[-2000:]}")


class Traffic:
    """The running pipeline with a metrics port per service and the traffic that fills them."""

    def __init__(self, pipeline: OpsPipeline, receiver: Receiver, chain: Chain) -> None:
        self.pipeline = pipeline
        self.receiver = receiver
        self.chain = chain
        self.ports = {service: free_port() for service in SERVICES}
        self.dead_rpc = f"http://127.0.0.1:{free_port()}"
        self.retry_backlog_seen = ""

    def start(self) -> None:
        for service in SERVICES:
            env = {"METRICS_PORT": str(self.ports[service])}
            if service == "ingest":  # a dead endpoint beside the live one: errors per endpoint
                env["RPC_URL"] = f"{self.chain.node.url},{self.dead_rpc}"
            self.pipeline.services.add(service, service, env=env)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}/metrics"

    def send(self, transfers: int) -> None:
        for n in range(transfers):
            self.chain.wait(self.chain.mint(self.chain.token_a, self.chain.accounts[1 + n % 3],
                                            (n + 1) * TOKEN))

    def expositions(self) -> dict[str, str]:
        return {service: httpx.get(self.url(service), timeout=5).text for service in SERVICES}


@pytest.fixture
def traffic(ops_chain: Chain, ops_receiver: Receiver, plain_db_url: str, redis_url: str,
            tmp_path: Path) -> Iterator[Traffic]:
    pipeline = _build(plain_db_url, redis_url, ops_chain, ops_receiver, tmp_path)
    pipeline.env.update({"WEBHOOK_MAX_ATTEMPTS": "2", "WEBHOOK_RETRY_SCHEDULE": "4",
                         "RETENTION_INTERVAL": "1"})
    pipeline.services.env.update(pipeline.env)
    store = pipeline.store
    store.add_hook("observed", signature=TRANSFER, address=ops_chain.token_a.address,
                   url=ops_receiver.url("hooks/ok"))
    store.add_hook("observed-down", signature=TRANSFER, address=ops_chain.token_a.address,
                   url=ops_receiver.url("hooks/down"))
    ops_receiver.script("hooks/down", 500)
    running = Traffic(pipeline, ops_receiver, ops_chain)
    try:
        running.start()
        running.send(4)
        # The 500 endpoint's 4 deliveries wait 4 s for their second attempt: the processor's
        # sweep shows them as the retry backlog meanwhile.
        running.retry_backlog_seen = _wait_metrics(
            running.url("processor"), timeout=30,
            until='blockhook_processor_open_deliveries{state="retrying"} 4.0')

        def settled() -> tuple[bool, str]:
            rows = store.rows("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
            counts = {row["status"]: row["n"] for row in rows}
            return counts == {"delivered": 4, "failed": 4}, f"deliveries by status: {counts}"

        wait_until(settled, timeout=60, what="4 delivered and 4 failed deliveries",
                   supervisor=pipeline.services)
        # The processor's gauges after the traffic (its next sweep) and a retention pass.
        _wait_metrics(running.url("processor"), until="blockhook_processor_table_size_bytes{")
        _wait_metrics(running.url("processor"),
                      until='blockhook_processor_open_deliveries{state="retrying"} 0.0')
        yield running
    finally:
        pipeline.services.stop_all()


def test_every_metric_and_label_the_dashboard_and_rules_use_is_exported(
        traffic: Traffic) -> None:
    catalogue = _catalogue(traffic.expositions(), _scrape_jobs())
    missing = _missing_references(catalogue)
    assert not missing, "referenced but not exported:\n" + "\n".join(missing)
    # The new series carry what the panels show.
    assert catalogue["blockhook_ingest_chain_info"]["chain_id"] == {"31337"}
    assert catalogue["blockhook_workers_endpoint_attempts_total"]["outcome"] == {
        "delivered", "retry", "failed"}
    assert catalogue["blockhook_workers_endpoint_attempts_total"]["host"] == {"127.0.0.1"}
    assert catalogue["blockhook_processor_open_deliveries"]["state"] == {
        "pending", "queued", "retrying"}
    assert len(catalogue["blockhook_ingest_rpc_endpoint_errors_total"]["endpoint"]) == 1


def _values(exposition: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples if sample.name == name}


def test_the_new_series_count_what_happened(traffic: Traffic) -> None:
    """4 transfers, each matched by a trigger whose endpoint answers 200 and one whose endpoint
    answers 500 (2 attempts allowed): exact counts per host and outcome, 4 block → webhook
    observations, nothing left open or unprocessed once settled."""
    scraped = traffic.expositions()
    per_endpoint = _values(scraped["workers"], "blockhook_workers_endpoint_attempts_total")
    assert per_endpoint == {(("host", "127.0.0.1"), ("outcome", outcome)): 4.0
                            for outcome in ("delivered", "retry", "failed")}
    assert _values(scraped["workers"], "blockhook_workers_event_to_webhook_seconds_count") == {
        (): 4.0}
    [to_webhook] = _values(scraped["workers"],
                           "blockhook_workers_event_to_webhook_seconds_sum").values()
    assert 0 < to_webhook < 4 * 60
    assert _values(scraped["ingest"], "blockhook_ingest_chain_info") == {
        (("chain_id", "31337"),): 1.0}
    assert _values(scraped["processor"], "blockhook_processor_open_deliveries") == {
        (("state", state),): 0.0 for state in ("pending", "queued", "retrying")}
    assert _values(scraped["processor"], "blockhook_processor_batch_lag_seconds") == {(): 0.0}
    # While the 500 endpoint's deliveries waited for their retry (seen by the fixture):
    backlog = _values(traffic.retry_backlog_seen, "blockhook_processor_open_deliveries")
    assert backlog[(("state", "retrying"),)] == 4.0


# ----------------------------------------------------------------- a real Prometheus


class Prometheus:
    """Debian's ``prometheus`` binary scraping the test's services every second, with the
    repository's alert rules; job names as in observability/prometheus/prometheus.yml."""

    def __init__(self, binary: str, traffic: Traffic, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(ALERTS, workdir / "alerts.yml")
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": ["alerts.yml"],
                  "scrape_configs": [
                      {"job_name": f"blockhook-{service}",
                       "static_configs": [{"targets": [f"127.0.0.1:{traffic.ports[service]}"]}]}
                      for service in SERVICES]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=self.log, stderr=subprocess.STDOUT)
        _wait_metrics(f"{self.url}/-/ready", until="Ready", timeout=30)

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert reply["status"] == "success", f"{expr}: {reply}"
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def test_a_real_prometheus_evaluates_every_rule_and_panel(traffic: Traffic,
                                                          tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("prometheus not installed (apt-get install prometheus); CI installs it")
    prometheus = Prometheus(binary, traffic, tmp_path / "prometheus")
    try:
        def all_up() -> tuple[bool, str]:
            up = {series["metric"]["job"]: series["value"][1]
                  for series in prometheus.query('up{job=~"blockhook-.*"}')}
            return up == {f"blockhook-{service}": "1" for service in SERVICES}, f"up: {up}"

        wait_until(all_up, timeout=30, what="Prometheus scraping every service")
        # Traffic while Prometheus watches, so rates have samples on both sides of it.
        traffic.receiver.script("hooks/down", 200)
        traffic.send(3)
        time.sleep(3)
        started = time.time()
        rules: list[dict[str, Any]] = []

        def evaluated() -> tuple[bool, str]:
            nonlocal rules
            rules = [rule for group in httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10)
                     .json()["data"]["groups"] for rule in group["rules"]]
            fresh = [rule["name"] for rule in rules
                     if datetime.fromisoformat(rule["lastEvaluation"]).timestamp() > started]
            return len(fresh) == len(rules) > 0, f"evaluated since the traffic: {fresh}"

        wait_until(evaluated, timeout=30, what="every rule evaluated after the traffic")
        assert {rule["name"] for rule in rules} == {rule["alert"] for rule in _rules()}
        broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
        assert not broken, f"rules failing to evaluate: {broken}"
        # Every service is up: neither service alert's condition holds.
        for rule in _rules():
            if rule["alert"] in {"BlockhookServiceMissing", "BlockhookServiceDown"}:
                assert prometheus.query(rule["expr"]) == [], rule["alert"]

        empty = []
        for panel in _dashboard()["panels"]:
            if panel["type"] == "row":
                continue
            if not any(prometheus.query(target["expr"]) for target in panel["targets"]):
                empty.append(panel["title"])
        assert not empty, f"panels with no data on a running pipeline: {empty}"
        if os.environ.get("BLOCKHOOK_DASHBOARD_PNG"):
            _record_screenshot(traffic, prometheus, Path(os.environ["BLOCKHOOK_DASHBOARD_PNG"]),
                               minutes=float(os.environ.get("BLOCKHOOK_DASHBOARD_MINUTES", "8")))
    finally:
        prometheus.stop()


def _record_screenshot(traffic: Traffic, prometheus: Prometheus, out: Path, *,
                       minutes: float) -> None:
    """The docs' screenshot (``BLOCKHOOK_DASHBOARD_PNG=path``): the same pipeline kept busy for
    ``minutes`` — a transfer every 2 s, the second endpoint answering 500 through the middle
    third — then drawn from this Prometheus by observability/render.py."""
    from observability.render import render

    started = time.monotonic()
    duration = minutes * 60
    while (elapsed := time.monotonic() - started) < duration:
        failing = duration / 3 <= elapsed < 2 * duration / 3
        traffic.receiver.script("hooks/down", 500 if failing else 200)
        traffic.send(1)
        time.sleep(2)
    render(prometheus.url, out, minutes=minutes + 1)
