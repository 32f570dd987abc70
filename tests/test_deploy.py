"""deploy/ stays true to the broker: names, ports, flags and health services it really has.

Every file parses; every metric an alert or a dashboard panel queries is one a real broker
exports (scraped after real work); every health service a probe or health check names is one a
real broker serves, with readiness following Redis; every flag and variable the compose file and
the manifests set is one the broker or worker accepts; ports agree with the Dockerfile. With
promtool on PATH the rules, the Prometheus config and the rules' unit tests are checked too.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from broker_service import config
from broker_service.domain import RedeliveryReason, TaskState
from broker_service.loops.readiness import READINESS
from broker_service.metrics import Metrics
from client_sdk import Client, TaskFailedError, chain
from tests.helpers import REPO_ROOT, BrokerFactory, WorkerFactory, eventually
from tests.redis_process import RedisProcess
from worker_sdk import cli as worker_cli
from worker_sdk.examples import add, always_fails

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "conveyor.json"
PROMTOOL = shutil.which("promtool")
BROKER_ENV = {"CONVEYOR_" + f.name.upper() for f in fields(config.Settings)}
# What `conveyor worker` reads from the environment (besides its flags).
WORKER_ENV = set(re.findall(r"CONVEYOR_[A-Z_]+", Path(worker_cli.__file__).read_text()))


# --- reading the files -------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _interpolate(text: str) -> str:
    """Compose's ${VAR:-default} and ${VAR}, with nothing set in the environment."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(_interpolate((DEPLOY / "compose.yaml").read_text()))
    assert isinstance(doc, dict)
    return doc


def _k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/k8s (its components included), by (kind, name)."""
    objects = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") not in ("Kustomization", "Component"):
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


@dataclass(frozen=True)
class Dockerfile:
    exposed: set[int]
    cmd: list[str]
    healthcheck: list[str]
    uid: int


def _dockerfile() -> Dockerfile:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", text, re.M) for p in line.split()}
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    healthcheck = json.loads(re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    uid = int(re.search(r"useradd .*--uid (\d+)", text).group(1))  # type: ignore[union-attr]
    return Dockerfile(exposed, cmd, healthcheck, uid)


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


# --- PromQL ------------------------------------------------------------------------------------

_FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "rate", "irate", "increase",
    "delta", "deriv", "histogram_quantile", "absent", "vector", "scalar", "clamp_min", "clamp_max",
}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LISTS | {"and", "or", "unless", "bool", "offset"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]|[A-Za-z_:][A-Za-z0-9_:]*|\d+(?:\.\d+)?|.')
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


@dataclass
class Query:
    """What one PromQL expression reads: metric selectors (name, matchers) and grouping labels."""

    selectors: list[tuple[str, list[tuple[str, str, str]]]]
    grouping: set[str]
    functions: set[str]


def _parse(expr: str) -> Query:
    tokens = [t for t in _TOKEN.findall(expr) if not t.isspace()]
    query = Query([], set(), set())
    label_list: list[bool] = []  # per open "(": does it hold labels, as in `by (queue, le)`?
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token == "(":
            label_list.append(i > 0 and tokens[i - 1] in _LABEL_LISTS)
        elif token == ")":
            label_list.pop()
        elif not _IDENT.fullmatch(token) or token in _KEYWORDS:
            continue
        elif label_list and label_list[-1]:
            query.grouping.add(token)
        elif following == "(" or following in ("by", "without"):  # sum(...), sum by (...) (...)
            query.functions.add(token)
        else:
            matchers = _MATCHER.findall(following[1:-1]) if following.startswith("{") else []
            query.selectors.append((token, matchers))
    return query


def _alert_rules() -> list[dict[str, Any]]:
    doc = _docs(PROMETHEUS / "alerts.yaml")[0]
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard, dict)
    return dashboard


def _dashboard_exprs() -> list[str]:
    """Every panel query and every template variable's query (label_values(...) unwrapped)."""
    exprs = [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["definition"])
            assert inner, variable["definition"]
            exprs.append(inner.group(1))
    return exprs


def _all_queries() -> Iterator[tuple[str, str]]:
    for rule in _alert_rules():
        yield f"alert {rule['alert']}", rule["expr"]
    for expr in _dashboard_exprs():
        yield "dashboard", expr


# --- every file parses, every alert is complete and unit-tested --------------------------------


def test_every_deploy_file_parses() -> None:
    yaml_files = _yaml_files()
    assert {p.relative_to(DEPLOY).as_posix() for p in yaml_files} >= {
        "compose.yaml", "prometheus/alerts.yaml", "prometheus/prometheus.yml", "k8s/kustomization.yaml"}
    for path in yaml_files:
        assert _docs(path), f"{path} is empty"
    dashboard = _dashboard()
    assert dashboard["uid"] == "conveyor" and dashboard["panels"]
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text())


def test_every_alert_has_a_duration_a_severity_and_text_and_a_firing_and_a_quiet_unit_test() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
    cases: dict[str, list[bool]] = {name: [] for name in names}
    for test in _docs(PROMETHEUS / "alerts.test.yaml")[0]["tests"]:
        for case in test["alert_rule_test"]:
            cases[case["alertname"]].append(bool(case["exp_alerts"]))
    for name, fires in cases.items():
        assert True in fires and False in fires, f"{name}: unit tests fire={fires}"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_the_config_and_the_dashboard_queries_and_the_unit_tests_pass(
    tmp_path: Path,
) -> None:
    assert PROMTOOL is not None

    def promtool(*args: str | Path) -> None:
        done = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"

    promtool("check", "rules", PROMETHEUS / "alerts.yaml")
    promtool("check", "config", PROMETHEUS / "prometheus.yml")
    promtool("test", "rules", PROMETHEUS / "alerts.test.yaml")
    # The dashboard's queries, with Grafana's variables filled in, as recording rules.
    rules = [{"record": f"dashboard:query{i}",
              "expr": expr.replace("$__rate_interval", "5m").replace("$queue", ".*").replace("$instance", ".*")}
             for i, expr in enumerate(_dashboard_exprs())]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", tmp_path / "dashboard.yaml")


def test_the_query_reader_finds_names_matchers_and_grouping_labels() -> None:
    query = _parse('sum by (queue, le) (rate(conveyor_x_bucket{job="conveyor", state=~"a|b"}[5m])) '
                   '> 0 unless on () up{job="conveyor"} == 1')
    assert [name for name, _ in query.selectors] == ["conveyor_x_bucket", "up"]
    assert query.selectors[0][1] == [("job", "=", "conveyor"), ("state", "=~", "a|b")]
    assert query.grouping == {"queue", "le"}
    assert query.functions == {"sum", "rate"}


# --- against a real broker: metric names and health services ---------------------------------


def _exported_names(scrape: str) -> tuple[set[str], dict[str, set[str]]]:
    """Sample names a query may use (by family type), and the label names seen per family."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""],
                "summary": ["_sum", "_count", ""], "untyped": [""]}
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape):
        for suffix in suffixes[family.type]:
            names.add(family.name + suffix)
            labels.setdefault(family.name + suffix, set())
        for sample in family.samples:
            if sample.name in labels:
                labels[sample.name] |= set(sample.labels)
    return names, labels


def _declared_labels() -> dict[str, set[str]]:
    """Label names of each metric as broker_service/metrics.py declares them."""
    declared: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            base = metric._name
            for suffix in ("", "_total", "_bucket", "_sum", "_count"):
                declared[base + suffix] = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
    return declared


def _check_matcher(where: str, name: str, label: str, op: str, value: str, labels: set[str]) -> list[str]:
    if label not in labels | {"job", "instance"}:
        return [f"{where}: {name} has no label {label!r}"]
    wanted = set(value.split("|")) if op == "=~" else {value}
    if label == "state" and (bad := wanted - {s.label for s in TaskState}):
        return [f"{where}: no task state {bad}"]
    if label == "reason" and (bad := wanted - {r.value for r in RedeliveryReason}):
        return [f"{where}: no redelivery reason {bad}"]
    return []


def _check_query(where: str, expr: str, names: set[str], labels: dict[str, set[str]]) -> list[str]:
    """What is wrong with one query: unknown functions, metrics, labels or label values."""
    problems = []
    query = _parse(expr)
    if unknown := query.functions - _FUNCTIONS:
        problems.append(f"{where}: unknown functions {unknown} in {expr!r}")
    allowed_labels = {"job", "instance"}
    for name, matchers in query.selectors:
        if name == "up":  # Prometheus's own, per target
            continue
        if name not in names:
            problems.append(f"{where}: {name} is not exported by the broker")
            continue
        allowed_labels |= labels[name]
        for label, op, value in matchers:
            problems += _check_matcher(where, name, label, op, value, labels[name])
    if extra := query.grouping - allowed_labels:
        problems.append(f"{where}: groups by labels its metrics lack: {extra}")
    return problems


def test_alerts_and_dashboard_query_only_metrics_and_labels_a_real_broker_exports(
    broker_factory: BrokerFactory, worker_factory: WorkerFactory, queue_name: str
) -> None:
    broker = broker_factory(lease_seconds=3, reap_interval_seconds=0.2, promote_interval_seconds=0.1)
    worker = worker_factory("worker_sdk.examples:worker", "--queues", queue_name, broker=broker)
    broker.wait_for_workers(1, watch=[worker])
    # Real work, so the labelled counters and the histograms have samples.
    with Client(broker.address) as client:
        assert client.enqueue(add.with_options(queue=queue_name), 1, 2).result(timeout=15) == 3
        doomed = client.enqueue(always_fails.with_options(queue=queue_name, max_attempts=2, retry_backoff=0.1))
        with pytest.raises(TaskFailedError):
            doomed.result(timeout=15)
        client.enqueue(add.with_options(queue=queue_name, delay=60), 1, 1).cancel()
        once = add.with_options(queue=queue_name, idempotency_key="once")
        assert client.enqueue(once, 1, 1).id == client.enqueue(once, 1, 1).id
        flow = client.submit_workflow(chain(add.s(1, 2).with_options(queue=queue_name),
                                            add.s(4).with_options(queue=queue_name)))
        assert flow.result(timeout=15) == 7
        client.set_queue_limits(queue_name, rate_per_second=2, rate_burst=1)
        paced = [client.enqueue(add.with_options(queue=queue_name), i, i) for i in range(3)]
        assert [h.result(timeout=15) for h in paced] == [0, 2, 4]
    assert broker.metrics_url is not None
    eventually(lambda: f'conveyor_queue_depth{{queue="{queue_name}"' in _scrape(broker.metrics_url or ""),
               timeout=15, interval=0.2)
    names, seen = _exported_names(_scrape(broker.metrics_url))
    assert {"conveyor_tasks_failed_total", "conveyor_task_run_seconds_bucket", "conveyor_queue_depth"} <= names
    assert seen["conveyor_tasks_enqueued_total"] == {"queue"}
    declared = _declared_labels()
    labels = {name: seen.get(name, set()) | declared.get(name, set()) for name in names}

    problems = [p for where, expr in _all_queries() for p in _check_query(where, expr, names, labels)]
    assert not problems, "\n".join(problems)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def _probes() -> dict[str, dict[str, Any]]:
    container = _k8s_objects()[("Deployment", "conveyor-broker")]["spec"]["template"]["spec"]["containers"][0]
    return {kind: container[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def _python_checks() -> dict[str, str]:
    """The Python health checks of the Dockerfile and of each compose broker, by where they are."""
    checks = {"Dockerfile HEALTHCHECK": ["CMD", *_dockerfile().healthcheck]}
    for name, service in _compose()["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if "python" in test:
            checks[f"compose {name}"] = test
    code = {}
    for where, test in checks.items():
        assert test[:3] == ["CMD", "python", "-c"], (where, test)
        code[where] = test[3]
    return code


def _status(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


def test_probes_and_health_checks_ask_services_the_broker_serves_and_readiness_follows_redis(
    broker_factory: BrokerFactory,
) -> None:
    probes = _probes()
    assert probes["readinessProbe"].get("service") == READINESS
    assert probes["livenessProbe"].get("service", "") == ""
    checks = _python_checks()
    assert {"Dockerfile HEALTHCHECK", "compose broker-1", "compose broker-2"} <= set(checks)
    assert any(f"service='{READINESS}'" in code for code in checks.values())

    redis = RedisProcess()
    redis.start()
    try:
        broker = broker_factory(redis_url=redis.url)

        def run_check(code: str) -> int:
            assert "'127.0.0.1:50051'" in code
            done = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:50051", broker.address)],
                                  capture_output=True, timeout=30)
            return done.returncode

        serving = health_pb2.HealthCheckResponse.SERVING
        for kind, probe in probes.items():
            assert _status(broker.address, probe.get("service", "")) == serving, kind
        for where, code in checks.items():
            assert run_check(code) == 0, where

        redis.kill()  # readiness turns NOT_SERVING; liveness stays SERVING
        eventually(lambda: _status(broker.address, READINESS) != serving, timeout=10, interval=0.2)
        assert _status(broker.address, probes["livenessProbe"].get("service", "")) == serving
        for where, code in checks.items():
            assert run_check(code) == (1 if f"service='{READINESS}'" in code else 0), where
    finally:
        redis.close()


# --- compose ----------------------------------------------------------------------------------


def _broker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "CONVEYOR_REDIS_URL" in s.get("environment", {})}


def _seconds(duration: str) -> float:
    value = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)", duration)
    assert value, duration
    return float(value.group(1)) * (60 if value.group(2) == "m" else 1)


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_compose_redis_is_persistent_never_evicts_and_wants_the_password_the_brokers_use() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert _flag(command, "--appendonly") == "yes"
    assert _flag(command, "--maxmemory-policy") == "noeviction"
    password = _flag(command, "--requirepass")
    assert password
    assert re.match(r"redis:7\.", redis["image"])
    assert redis["healthcheck"]["test"] and redis["restart"] and "/data" in redis["volumes"][0]
    for name, service in _broker_services(compose).items():
        url = service["environment"]["CONVEYOR_REDIS_URL"]
        assert url == f"redis://:{password}@redis:6379/0", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_compose_brokers_use_settings_the_broker_accepts_and_stop_after_their_drain() -> None:
    compose = _compose()
    image = _dockerfile()
    brokers = _broker_services(compose)
    assert len(brokers) >= 2
    # No command: the image's CMD runs `conveyor serve` with these flags.
    assert image.cmd[0] == "serve"
    defaults = config.parse(image.cmd[1:])
    assert {_port(defaults.listen), defaults.metrics_port} == image.exposed
    for name, service in brokers.items():
        assert "command" not in service, name
        environment = {k: str(v) for k, v in service["environment"].items()}
        assert set(environment) <= BROKER_ENV, (name, set(environment) - BROKER_ENV)
        settings = config.load(None, environ=environment)
        assert settings.redis_url
        assert _seconds(service["stop_grace_period"]) >= settings.shutdown_grace_seconds + 5, name
        assert service["restart"] in ("always", "unless-stopped", "on-failure"), name
        published = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
        assert published == image.exposed, name
        assert "broker" in service["networks"]["default"]["aliases"], name


def test_compose_worker_runs_the_example_tasks_against_the_brokers_and_outlives_its_grace() -> None:
    compose = _compose()
    worker = compose["services"]["worker"]
    command = worker["command"]
    assert command[0] == "worker"
    args = worker_cli._parser().parse_args(command[1:])
    assert worker_cli.load_worker(args.target) is not None
    assert set(worker["environment"]) <= WORKER_ENV
    host, _, port = worker["environment"]["CONVEYOR_BROKER"].partition(":")
    assert host == "broker" and int(port) == _port(config.parse(_dockerfile().cmd[1:]).listen)
    assert _seconds(worker["stop_grace_period"]) >= args.shutdown_grace + 5
    assert worker["healthcheck"] == {"disable": True}  # the image's check asks a broker
    assert set(worker["depends_on"]) == set(_broker_services(compose))


def test_compose_prometheus_scrapes_every_broker_with_the_alerts_and_grafana_gets_the_dashboard() -> None:
    compose = _compose()
    metrics_port = config.parse(_dockerfile().cmd[1:]).metrics_port
    prometheus = compose["services"]["prometheus"]
    mounts = {Path(src).name: dst for src, dst, *_ in (v.split(":") for v in prometheus["volumes"]) if "/" in src}
    for source in (s.split(":")[0] for s in prometheus["volumes"] + compose["services"]["grafana"]["volumes"]):
        if source.startswith("./"):
            assert (DEPLOY / source).exists(), source
    config_file = mounts["prometheus.yml"]
    assert _flag_value(prometheus["command"], "--config.file") == config_file

    scrape = _docs(PROMETHEUS / "prometheus.yml")[0]
    for rule_file in scrape["rule_files"]:
        assert (PROMETHEUS / rule_file).exists()
        assert mounts[rule_file] == str(Path(config_file).parent / rule_file)
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "conveyor")
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:{metrics_port}" for name in _broker_services(compose)}

    datasource = _docs(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")[0]["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]


def _compose_v2() -> list[str] | None:
    """A Docker Compose v2 command (`docker compose` or `docker-compose`), or None."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and re.search(r"version v?2\.", done.stdout):
            return command
    return None


COMPOSE = _compose_v2()


@pytest.mark.skipif(COMPOSE is None, reason="Docker Compose v2 is not installed")
def test_docker_compose_accepts_the_compose_file() -> None:
    assert COMPOSE is not None
    done = subprocess.run([*COMPOSE, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _flag_value(args: list[str], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(flag + "="))


# --- Kubernetes -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _docs(K8S / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    for component in ("monitoring",):
        listed = _docs(K8S / component / "kustomization.yaml")[0]
        assert listed["kind"] == "Component"
        assert sorted(listed["resources"]) == sorted(p.name for p in (K8S / component).glob("*.yaml")
                                                     if p.name != "kustomization.yaml")
        assert f"#   - {component}" in (K8S / "kustomization.yaml").read_text()


def _pod(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    pod: dict[str, Any] = objects[("Deployment", name)]["spec"]["template"]
    return pod


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_k8s_broker_probes_ports_flags_and_termination_agree_with_the_broker() -> None:
    objects = _k8s_objects()
    image = _dockerfile()
    deployment = objects[("Deployment", "conveyor-broker")]
    assert deployment["spec"]["replicas"] >= 2
    pod = _pod(objects, "conveyor-broker")
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[0] == "serve"
    settings = config.parse(args[1:])
    environment = _env(container)
    assert set(environment) <= BROKER_ENV, set(environment) - BROKER_ENV
    env_settings = config.load(None, environ={k: v for k, v in environment.items() if v})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": _port(settings.listen), "metrics": settings.metrics_port}
    assert set(ports.values()) == image.exposed
    assert settings.metrics_host == "0.0.0.0" and settings.listen.startswith("0.0.0.0:")
    for probe in _probes().values():
        assert probe["port"] == ports["grpc"]
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]

    redis_url = next(e for e in container["env"] if e["name"] == "CONVEYOR_REDIS_URL")["valueFrom"]["secretKeyRef"]
    secret = objects[("Secret", redis_url["name"])]
    assert secret["stringData"][redis_url["key"]].startswith(("redis://", "rediss://"))

    pre_stop = container["lifecycle"]["preStop"]
    sleep = float(pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else pre_stop["exec"]["command"][-1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= sleep + env_settings.shutdown_grace_seconds + 5


def test_k8s_pods_run_as_the_image_user_without_privileges_and_with_resources() -> None:
    objects = _k8s_objects()
    uid = _dockerfile().uid
    for name in ("conveyor-broker", "conveyor-worker"):
        spec = _pod(objects, name)["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == uid, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)


def test_k8s_services_budgets_and_monitor_select_the_pods_and_ports_that_exist() -> None:
    objects = _k8s_objects()
    pods = {name: _pod(objects, name) for kind, name in objects if kind == "Deployment"}

    def selected(selector: dict[str, str]) -> list[str]:
        return [n for n, pod in pods.items() if selector.items() <= pod["metadata"]["labels"].items()]

    broker_ports = {p["name"] for p in pods["conveyor-broker"]["spec"]["containers"][0]["ports"]}
    for (kind, name), obj in objects.items():
        if kind == "Service":
            assert selected(obj["spec"]["selector"]) == ["conveyor-broker"], name
            assert {p["targetPort"] for p in obj["spec"]["ports"]} <= broker_ports, name
        elif kind == "PodDisruptionBudget":
            assert len(selected(obj["spec"]["selector"]["matchLabels"])) == 1, name
    assert objects[("Service", "conveyor-headless")]["spec"]["clusterIP"] == "None"
    assert {n for k, n in objects if k == "PodDisruptionBudget"} == {"conveyor-broker", "conveyor-worker"}
    monitor = objects[("ServiceMonitor", "conveyor")]
    # The job label is the Service's name: the alerts and the dashboard select job="conveyor".
    service = objects[("Service", "conveyor")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert 'job="conveyor"' in (PROMETHEUS / "alerts.yaml").read_text()


def test_k8s_worker_runs_a_real_worker_against_the_service_and_outlives_its_grace() -> None:
    objects = _k8s_objects()
    spec = _pod(objects, "conveyor-worker")["spec"]
    (container,) = spec["containers"]
    assert container["args"][0] == "worker"
    args = worker_cli._parser().parse_args(container["args"][1:])
    assert worker_cli.load_worker(args.target) is not None
    environment = _env(container)
    assert set(environment) <= WORKER_ENV
    host, _, port = environment["CONVEYOR_BROKER"].partition(":")
    service = objects[("Service", host)]
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
    assert spec["terminationGracePeriodSeconds"] >= args.shutdown_grace + 5


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kustomize_builds_the_manifests_with_and_without_the_monitoring_component(tmp_path: Path) -> None:
    assert KUBECTL is not None

    def build(root: Path) -> list[dict[str, Any]]:
        done = subprocess.run([KUBECTL, "kustomize", str(root)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    kinds = sorted(d["kind"] for d in build(K8S))
    assert kinds == sorted(["Namespace", "Secret", "Service", "Service", "Deployment", "Deployment",
                            "PodDisruptionBudget", "PodDisruptionBudget"])
    shutil.copytree(K8S, tmp_path / "k8s")
    kustomization = tmp_path / "k8s" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("# components:\n#   - monitoring",
                                                               "components:\n  - monitoring"))
    built = build(tmp_path / "k8s")
    assert "ServiceMonitor" in {d["kind"] for d in built}
    assert all(d["metadata"].get("namespace") == "conveyor" for d in built if d["kind"] != "Namespace")


def test_readme_deployment_commands_name_files_that_exist() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    for path in set(re.findall(r"deploy/[\w./-]+", section)):
        assert (REPO_ROOT / path.rstrip(".")).exists(), path
    for line in re.findall(r"^(?:docker|kubectl|promtool) .*$", section.replace("\\\n", " "), re.M):
        shlex.split(line)  # every command line is complete (quotes closed)
