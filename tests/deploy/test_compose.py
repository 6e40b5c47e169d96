"""docker-compose.yml and the configs it mounts (NATS, Prometheus, Grafana, Logstash, OpenTelemetry).

``docker-compose config -q`` (Compose 1.29, Debian's package; and ``docker compose`` v2 where it is
installed) validates the file with every profile. The rest reads the file as data and checks that it
agrees with the code: users and passwords with deploy/nats, ports with the services' settings,
scrape targets with the services, mounted paths with the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from trainyard_executor.settings import ExecutorSettings
from trainyard_registry.settings import RegistrySettings
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_submission.settings import SubmissionSettings
from trainyard_telemetry.settings import TelemetrySettings
from trainyard_workflow.settings import WorkflowSettings

from .natsconf import ROOT, natsauth

pytestmark = pytest.mark.unit

COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {
    "submission": SubmissionSettings,
    "scheduler": SchedulerSettings,
    "executor": ExecutorSettings,
    "registry": RegistrySettings,
    "telemetry": TelemetrySettings,
    "workflow": WorkflowSettings,
}
PROFILES = ["--profile", "tracing", "--profile", "logging"]
DEFAULT = re.compile(r"^\$\{(?P<var>[A-Z0-9_]+):-(?P<default>[^}]*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def default_of(value: str) -> str:
    """``${VAR:-default}`` -> default (what compose uses when VAR is unset)."""
    match = DEFAULT.match(str(value))
    return match["default"] if match else str(value)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: default_of(str(v)) for k, v in (service.get("environment") or {}).items()}


def setting_port(name: str) -> int:
    return int(SERVICES[name].model_fields["port"].default)


# ---------------------------------------------------------------- the compose tools accept the file


def _compose_v1() -> str | None:
    return shutil.which("docker-compose")


def _compose_v2() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    done = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(
    not _compose_v1(), reason="docker-compose not installed (apt-get install -y docker-compose)"
)
@pytest.mark.parametrize("profiles", [[], PROFILES], ids=["default", "all-profiles"])
def test_docker_compose_1_29_validates_the_file(profiles):
    done = subprocess.run(
        [_compose_v1(), "-f", str(COMPOSE), *profiles, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not _compose_v2(), reason="no Compose v2 plugin (docker compose) on this machine")
def test_docker_compose_v2_validates_the_file():
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), *PROFILES, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- the file agrees with the code


def test_each_service_is_its_own_nats_user_with_the_password_nats_expects(compose):
    nats_env = compose["services"]["nats"]["environment"]
    auth = natsauth()
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        # one user per executor id: the compose executor's
        user = auth.executor_user(env["TRAINYARD_EXECUTOR_ID"]) if name == "executor" else name
        assert env["TRAINYARD_NATS_USER"] == user
        variable = auth.password_variable(user)
        # the service's password is the same expression as the server's variable (same default)
        assert env["TRAINYARD_NATS_PASSWORD"] == nats_env[variable], name
        assert env["TRAINYARD_NATS_URL"] == "nats://nats:4222"
    assert set(nats_env) == {auth.password_variable(user) for user in auth.users(auth.Subjects())}


def test_the_provision_step_declares_the_streams_as_the_operator(compose):
    """Services bind only; the one-shot provision service declares, as admin (trainyard_shared.provision)."""
    provision = compose["services"]["provision"]
    assert provision["entrypoint"][-3:] == ["python", "-m", "trainyard_shared.provision"]
    env = provision["environment"]
    assert env["TRAINYARD_NATS_USER"] == "admin"
    assert (
        env["TRAINYARD_NATS_PASSWORD"]
        == compose["services"]["nats"]["environment"]["TRAINYARD_NATS_PASSWORD_ADMIN"]
    )
    assert provision["restart"] == "on-failure" and "nats" in provision["depends_on"]


def test_the_nats_server_runs_the_deploy_config_with_jetstream(compose):
    nats = compose["services"]["nats"]
    assert nats["command"][:2] == ["-c", "/etc/nats/nats.conf"]
    assert "./deploy/nats:/etc/nats:ro" in nats["volumes"]
    assert (ROOT / "deploy/nats/nats.conf").exists() and (ROOT / "deploy/nats/auth.conf").exists()


def test_services_use_the_built_images_listen_on_all_interfaces_and_publish_on_loopback(compose):
    for name in SERVICES:
        svc = compose["services"][name]
        assert default_of(svc["image"].split(":", 1)[1]) == "0.1.0" and svc["image"].startswith(
            f"trainyard/{name}:"
        )
        env = env_of(svc)
        upper = name.upper()
        port = setting_port(name)
        assert env[f"TRAINYARD_{upper}_HOST"] == "0.0.0.0"
        assert int(env[f"TRAINYARD_{upper}_PORT"]) == port
        assert f"127.0.0.1:{port}:{port}" in svc["ports"]
    for name, svc in compose["services"].items():
        for published in svc.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"{name} publishes {published} beyond loopback"


def test_the_executor_runs_jobs_as_docker_containers_through_the_socket(compose):
    executor = compose["services"]["executor"]
    env = env_of(executor)
    assert env["TRAINYARD_EXECUTOR_BACKEND"] == "docker"
    assert "/var/run/docker.sock:/var/run/docker.sock" in executor["volumes"]
    # job containers bind-mount host paths: the data dir is the same path inside and outside
    data = env["TRAINYARD_DATA_DIR"]
    assert any(default_of_path(v) == f"{data}:{data}" for v in executor["volumes"])
    ExecutorSettings(backend=env["TRAINYARD_EXECUTOR_BACKEND"], id=env["TRAINYARD_EXECUTOR_ID"])


def default_of_path(volume: str) -> str:
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", volume)


def test_third_party_parts_are_official_images_and_optional_parts_are_in_profiles(compose):
    official = {
        "prometheus": "prom/prometheus:",
        "grafana": "grafana/grafana:",
        "otel-collector": "otel/opentelemetry-collector-contrib:",
        "jaeger": "jaegertracing/",
        "elasticsearch": "docker.elastic.co/elasticsearch/",
        "logstash": "docker.elastic.co/logstash/",
        "kibana": "docker.elastic.co/kibana/",
        "nats-exporter": "natsio/prometheus-nats-exporter:",
    }
    for name, prefix in official.items():
        assert compose["services"][name]["image"].startswith(prefix), name
        assert not compose["services"][name]["image"].endswith(":latest"), f"{name}: pin a version"
    profiles = {name: svc.get("profiles", []) for name, svc in compose["services"].items()}
    assert profiles["otel-collector"] == profiles["jaeger"] == ["tracing"]
    assert profiles["logstash"] == profiles["elasticsearch"] == profiles["kibana"] == ["logging"]


def test_every_mounted_repository_path_exists(compose):
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


# ---------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_every_service_on_its_port(compose):
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for sc in jobs["trainyard"]["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{setting_port(name)}" for name in SERVICES}
    assert jobs["trainyard"].get("metrics_path", "/metrics") == "/metrics"
    exporter = compose["services"]["nats-exporter"]
    assert {"nats-exporter:7777"} == {t for sc in jobs["nats"]["static_configs"] for t in sc["targets"]}
    assert "7777" in exporter["command"]


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool not installed (apt-get install -y prometheus)"
)
def test_promtool_accepts_the_prometheus_config():
    done = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(ROOT / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- Grafana


def test_grafana_provisions_the_dashboard_on_the_datasource_it_names(compose):
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/trainyard.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]
    import json

    boards = {p.name: json.loads(p.read_text()) for p in (ROOT / "deploy/grafana/dashboards").glob("*.json")}
    assert {"trainyard.json", "training-job.json"} <= set(boards)  # the folder is provisioned whole
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    for board in boards.values():
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        for variable in board.get("templating", {}).get("list", []):
            assert variable["datasource"]["uid"] == source["uid"], variable["name"]
    dashboard = boards["trainyard.json"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("state", "per second", "latency", "submit to start"):
        assert topic in titles, f"no panel about {topic}"


# ---------------------------------------------------------------- OpenTelemetry collector


def test_the_collector_receives_otlp_http_and_sends_to_jaeger(compose):
    config = yaml.safe_load((ROOT / "deploy/otel/collector.yaml").read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for name in pipeline[kind]:
            assert name in config[kind], f"pipeline names {kind[:-1]} {name}, which is not defined"
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert env_of(compose["services"]["jaeger"])["COLLECTOR_OTLP_ENABLED"] == "true"
    assert (
        "./deploy/otel/collector.yaml:/etc/otelcol/config.yaml:ro"
        in compose["services"]["otel-collector"]["volumes"]
    )
    # the services' exporter is off unless the variable is set (tracing_enabled)
    assert compose["x-trainyard-common"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${TRAINYARD_OTLP_ENDPOINT:-}"


def test_the_logstash_pipeline_listens_where_the_services_ship(compose):
    pipeline = (ROOT / "deploy/logstash/pipeline/trainyard.conf").read_text()
    common = compose["x-trainyard-common"]
    port = common["LOGSTASH_PORT"]
    assert common["LOGSTASH_TRANSPORT"] == "tcp"
    tcp = re.search(r"tcp\s*\{(?P<body>[^}]*)\}", pipeline)
    assert tcp and f"port => {port}" in tcp["body"] and "codec => json_lines" in tcp["body"]
    assert (
        "./deploy/logstash/pipeline:/usr/share/logstash/pipeline:ro"
        in compose["services"]["logstash"]["volumes"]
    )
