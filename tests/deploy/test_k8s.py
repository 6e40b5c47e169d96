"""deploy/k8s: every kustomization renders, every object validates offline, and the manifests say
what the design needs (RBAC scope, replicas, probes, non-root, resources, NATS cluster and users).

No API server can run here. Objects are rendered with a small Python loader of the kustomize subset
the files use (tests/deploy/kustomize.py) and, when kubectl is installed, with ``kubectl kustomize``
too (the two must agree). Built-in kinds are validated with ``kubernetes_validate`` (the API's
OpenAPI schemas, strict: unknown fields fail); the ServiceMonitor CRD against
tests/deploy/schemas/servicemonitor.schema.json, a small schema written for these tests.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from trainyard_executor.settings import ExecutorSettings
from trainyard_registry.settings import RegistrySettings
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.natsserver import nats_server_binary
from trainyard_shared.settings import CommonSettings
from trainyard_submission.settings import SubmissionSettings
from trainyard_telemetry.settings import TelemetrySettings
from trainyard_workflow.settings import WorkflowSettings

from .kustomize import Object, key_of, kubectl, render_kubectl, render_python
from .natsconf import ROOT, natsauth

pytestmark = pytest.mark.unit

K8S = ROOT / "deploy" / "k8s"
KUBE_VERSION = "1.30.0"
NAMESPACE = "trainyard"
JOBS_NAMESPACE = "trainyard-jobs"
# what lives in the jobs' namespace: its default deny, and what the executor may do there
IN_JOBS_NAMESPACE = {"NetworkPolicy", "Role", "RoleBinding"}
SERVICES = {
    "submission": SubmissionSettings,
    "scheduler": SchedulerSettings,
    "executor": ExecutorSettings,
    "registry": RegistrySettings,
    "telemetry": TelemetrySettings,
    "workflow": WorkflowSettings,
}
ROOTS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
SERVICEMONITOR_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "servicemonitor.schema.json").read_text()
)
PROMETHEUSRULE_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "prometheusrule.schema.json").read_text()
)
OPERATOR_SCHEMAS = {"ServiceMonitor": SERVICEMONITOR_SCHEMA, "PrometheusRule": PROMETHEUSRULE_SCHEMA}


def rel(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.fixture(scope="module")
def everything() -> list[Object]:
    return render_python(K8S / "overlays" / "dev")


def of_kind(objects: list[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Object], kind: str, name: str, namespace: str = NAMESPACE) -> Object:
    (found,) = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and o["metadata"].get("namespace", namespace) == namespace
    ]
    return found


def workloads(objects: list[Object]) -> list[Object]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# ---------------------------------------------------------------- rendering


def test_the_provision_job_declares_the_streams_as_the_operator(everything):
    """Services bind only; the Job runs trainyard_shared.provision as admin, from admin's Secret."""
    job = named(everything, "Job", "trainyard-provision")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][-3:] == ["python", "-m", "trainyard_shared.provision"]
    env = env_of(container)
    assert env["TRAINYARD_NATS_USER"]["value"] == "admin"
    assert env["TRAINYARD_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "trainyard-nats-user-admin",
        "key": "password",
    }
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # NATS admits it: its clients are the pods part of trainyard
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "trainyard"


def test_there_is_a_kustomization_per_service_and_for_the_whole():
    names = {rel(p) for p in ROOTS}
    assert {f"services/{s}" for s in SERVICES} <= names
    assert {"base", "base/nats", "secrets", "monitoring", "overlays/dev", "overlays/production"} <= names


@pytest.mark.parametrize("root", ROOTS, ids=rel)
def test_every_kustomization_renders(root: Path):
    objects = render_python(root)
    assert objects, f"{rel(root)} renders nothing"
    for obj in objects:
        if obj["kind"] != "Namespace":
            allowed = {NAMESPACE, JOBS_NAMESPACE} if obj["kind"] in IN_JOBS_NAMESPACE else {NAMESPACE}
            assert obj["metadata"].get("namespace") in allowed, key_of(obj)


@pytest.mark.skipif(not kubectl(), reason="kubectl not installed (apt-get install -y kubernetes-client)")
@pytest.mark.parametrize("root", ROOTS, ids=rel)
def test_kubectl_kustomize_renders_the_same_objects(root: Path):
    def canonical(objects: list[Object]) -> list[str]:
        return sorted(json.dumps(o, sort_keys=True) for o in objects)

    assert canonical(render_kubectl(root)) == canonical(render_python(root))


def test_the_whole_is_the_parts_and_a_service_renders_alone(everything):
    parts = [K8S / "base", K8S / "secrets", K8S / "monitoring", *(K8S / "services" / s for s in SERVICES)]
    assert sorted(map(key_of, everything)) == sorted(key_of(o) for p in parts for o in render_python(p))
    for name in SERVICES:
        alone = render_python(K8S / "services" / name)
        kinds = {o["kind"] for o in alone}
        assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds, name
        for obj in alone:  # only its own objects: applying one service never touches another
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] in (name, f"trainyard-{name}"), key_of(
                obj
            )
    production = render_python(K8S / "overlays" / "production")
    assert not of_kind(production, "Secret"), "production must not ship placeholder Secrets"


# ---------------------------------------------------------------- offline validation


@pytest.mark.parametrize("root", [K8S / "overlays" / "dev"], ids=rel)
def test_every_object_validates_against_the_kubernetes_schemas(root: Path):
    checked = 0
    for obj in render_python(root):
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(obj, OPERATOR_SCHEMAS[obj["kind"]])
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 40


def test_the_validation_catches_a_mistake():
    """The guard itself: a misspelt field fails strict validation, and a bad ServiceMonitor fails ours."""
    deployment = named(render_python(K8S / "services" / "telemetry"), "Deployment", "telemetry")
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    monitor = of_kind(render_python(K8S / "monitoring"), "ServiceMonitor")[0]
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICEMONITOR_SCHEMA)
    rule = of_kind(render_python(K8S / "monitoring"), "PrometheusRule")[0]
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, PROMETHEUSRULE_SCHEMA)


def test_the_operators_alert_rules_are_the_ones_compose_loads():
    """deploy/k8s/monitoring/prometheusrules.yaml carries deploy/prometheus/rules/trainyard.yml's
    groups (written twice: a kustomization cannot embed a file in a custom resource)."""
    (rule,) = of_kind(render_python(K8S / "monitoring"), "PrometheusRule")
    compose_rules = yaml.safe_load((K8S.parent / "prometheus" / "rules" / "trainyard.yml").read_text())
    assert rule["spec"]["groups"] == compose_rules["groups"]


# ---------------------------------------------------------------- what the design needs


def test_the_executor_may_touch_only_jobs_pods_logs_services_policies_and_secrets_in_the_jobs_namespace(
    everything,
):
    assert not of_kind(everything, "ClusterRole") and not of_kind(everything, "ClusterRoleBinding")
    (role,) = of_kind(everything, "Role")
    assert role["metadata"]["namespace"] == JOBS_NAMESPACE
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    allowed_resources = {
        ("batch", "jobs"),
        ("", "pods"),
        ("", "pods/log"),
        ("", "services"),
        ("networking.k8s.io", "networkpolicies"),
        ("", "secrets"),  # the per-attempt Secret holding a git credential for the init container
        ("metrics.k8s.io", "pods"),  # the pods' CPU and memory (PodMetrics), read only
        ("", "configmaps"),  # the reporter's files, mounted read-only in job pods: create only
    }
    assert {(g, r) for g, r, _ in granted} == allowed_resources
    assert not any("*" in item for triple in granted for item in triple)
    assert {v for g, r, v in granted if r == "pods/log"} == {"get"}
    assert {v for g, r, v in granted if r == "pods"} <= {"get", "list", "watch"}
    assert {v for g, r, v in granted if g == "metrics.k8s.io"} == {"get"}
    # it writes and removes its own Secrets but can never read one back (nor anyone else's)
    assert {v for g, r, v in granted if r == "secrets"} <= {"create", "patch", "delete"}
    assert {v for g, r, v in granted if r == "configmaps"} == {"create"}
    (binding,) = of_kind(everything, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "trainyard-executor", "namespace": NAMESPACE}
    ]
    for workload in workloads(everything):
        pod = workload["spec"]["template"]["spec"]
        if workload["metadata"]["name"] == "executor":
            assert pod["serviceAccountName"] == "trainyard-executor"
        else:  # nobody else gets an API token
            assert pod.get("automountServiceAccountToken") is False, workload["metadata"]["name"]


def test_replicas(everything):
    replicas = {w["metadata"]["name"]: w["spec"]["replicas"] for w in workloads(everything)}
    assert replicas == {
        "nats": 3,
        "submission": 2,
        "scheduler": 2,
        "executor": 1,
        "registry": 1,
        "telemetry": 1,
        "workflow": 1,
    }
    # one executor id: two pods would share its command consumer, so never two at once
    assert named(everything, "Deployment", "executor")["spec"]["strategy"] == {"type": "Recreate"}


def test_each_scheduler_replica_is_named_by_its_pod(everything):
    (container,) = named(everything, "Deployment", "scheduler")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    variable = SchedulerSettings.model_config["env_prefix"] + "REPLICA_ID"
    assert "replica_id" in SchedulerSettings.model_fields
    assert env[variable]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert not of_kind(everything, "Lease")  # the leader lease lives in the KV bucket


def test_every_container_has_probes_requests_limits_and_runs_as_non_root(everything):
    for workload in workloads(everything):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, (
            name
        )
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), where
            requests = container["resources"]["requests"]
            assert requests.get("cpu") and requests.get("memory"), where
            assert container["resources"]["limits"].get("memory"), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not container["image"].endswith(":latest") and ":" in container["image"], where


def test_the_service_containers_use_the_built_images_and_health_routes(everything):
    for name, settings in SERVICES.items():
        (container,) = named(everything, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"trainyard/{name}:0.1.0"
        port = settings.model_fields["port"].default
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, (name, probe)
        service = named(everything, "Service", name)
        assert service["spec"]["ports"][0]["port"] == port


def test_every_trainyard_variable_is_a_real_setting(everything):
    """A misspelt variable is silently ignored by pydantic-settings; this catches it."""
    common = {CommonSettings.model_config["env_prefix"] + f.upper() for f in CommonSettings.model_fields}
    config = named(everything, "ConfigMap", "trainyard-common")["data"]
    for variable in config:
        assert variable in common or variable == "MLFLOW_TRACKING_URI", variable
    for name, settings in SERVICES.items():
        own = {settings.model_config["env_prefix"] + f.upper() for f in settings.model_fields}
        (container,) = named(everything, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        for variable in env_of(container):
            if variable.startswith("TRAINYARD_"):
                assert variable in common | own, f"{name}: {variable} is no setting"
    executor = env_of(
        named(everything, "Deployment", "executor")["spec"]["template"]["spec"]["containers"][0]
    )
    assert executor["TRAINYARD_EXECUTOR_BACKEND"]["value"] == "kubernetes"
    assert executor["TRAINYARD_EXECUTOR_KUBE_NAMESPACE"]["value"] == JOBS_NAMESPACE
    ExecutorSettings(id=executor["TRAINYARD_EXECUTOR_ID"]["value"], backend="kubernetes")


def test_each_service_connects_as_its_own_nats_user_from_its_own_secret(everything):
    secrets = {s["metadata"]["name"] for s in of_kind(everything, "Secret")}
    auth = natsauth()
    for name in SERVICES:
        (container,) = named(everything, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        # one user per executor id
        user = auth.executor_user(env["TRAINYARD_EXECUTOR_ID"]["value"]) if name == "executor" else name
        assert env["TRAINYARD_NATS_USER"]["value"] == user
        ref = env["TRAINYARD_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"trainyard-nats-user-{user}", "key": "password"} and ref["name"] in secrets
    for secret in of_kind(everything, "Secret"):
        assert all("change-me" in value for value in secret["stringData"].values()), "placeholders only"


def test_the_nats_cluster_has_three_routed_nodes_and_the_generated_users(everything):
    nats = named(everything, "StatefulSet", "nats")
    headless = named(everything, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    config = named(everything, "ConfigMap", "nats-config")["data"]
    auth = natsauth()
    assert config["auth.conf"] == auth.render(auth.Subjects(), auth.K8S_EXECUTORS)
    routes = re.findall(r"nats://([a-z0-9-]+)\.([a-z0-9-]+):6222", config["nats.conf"])
    assert routes == [(f"nats-{i}", headless["metadata"]["name"]) for i in range(3)]
    (server,) = [c for c in nats["spec"]["template"]["spec"]["containers"] if c["name"] == "nats"]
    env = env_of(server)
    for user in auth.users(auth.Subjects(), auth.K8S_EXECUTORS):
        ref = env[auth.password_variable(user)]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"trainyard-nats-user-{user}", "key": "password"}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert {"/etc/nats", "/data"} <= mounts
    assert "store_dir: /data/jetstream" in config["nats.conf"]
    common = named(everything, "ConfigMap", "trainyard-common")["data"]
    assert common["TRAINYARD_STREAM_REPLICAS"] == "3" and common["TRAINYARD_NATS_URL"] == "nats://nats:4222"


def test_nats_server_accepts_the_cluster_config(tmp_path: Path, everything):
    """``nats-server -t``: the real server parses the rendered config (routes resolve at run time)."""
    import os

    config = named(everything, "ConfigMap", "nats-config")["data"]
    for name, text in config.items():
        (tmp_path / name).write_text(text)
    auth = natsauth()
    env = {**os.environ, "POD_NAME": "nats-0"}
    env.update({auth.password_variable(u): "x" for u in auth.users(auth.Subjects(), auth.K8S_EXECUTORS)})
    done = subprocess.run(
        [nats_server_binary(), "-c", str(tmp_path / "nats.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        if expression["operator"] == "Exists" and not present:
            return False
        if expression["operator"] == "In" and labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_ingress_is_denied_by_default_and_opened_per_port(everything):
    policies = of_kind(everything, "NetworkPolicy")
    deny = named(everything, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for workload in workloads(everything):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = {
            p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        opened = {
            port["port"]
            for policy in policies
            if _selects(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])
            for port in rule.get("ports", [])
        }
        assert ports <= opened, f"{workload['metadata']['name']}: ports {ports - opened} unreachable"
    submission = named(everything, "NetworkPolicy", "submission")
    assert "from" not in submission["spec"]["ingress"][0]  # the API is for everyone (behind an Ingress)
    for name in ("scheduler", "executor", "registry", "telemetry", "workflow"):
        (rule,) = named(everything, "NetworkPolicy", name)["spec"]["ingress"]
        assert rule["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]


def test_every_workload_has_a_disruption_budget_that_selects_it(everything):
    budgets = of_kind(everything, "PodDisruptionBudget")
    for workload in workloads(everything):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        (budget,) = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        if workload["spec"]["replicas"] > 1 and workload["kind"] == "Deployment":
            assert budget["spec"] == {**budget["spec"], "minAvailable": 1}
        else:
            assert budget["spec"]["maxUnavailable"] == 1


def test_the_service_monitors_scrape_every_service_and_nats(everything):
    monitors = of_kind(everything, "ServiceMonitor")
    services = of_kind(everything, "Service")
    scraped: set[str] = set()
    for monitor in monitors:
        endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
        for service in services:
            if _selects(monitor["spec"]["selector"], service["metadata"]["labels"]):
                assert endpoint_ports <= {p["name"] for p in service["spec"]["ports"]}, service["metadata"][
                    "name"
                ]
                scraped.add(service["metadata"]["name"])
    assert set(SERVICES) | {"nats-headless"} <= scraped


def test_only_job_pods_marked_as_fetching_reach_nats_and_the_executor_holds_the_fetcher_password(everything):
    """A job pod whose init container fetches its packed workdir or steps' outputs (kube_fetch)
    reaches NATS' client port, marked by the executor; any other job pod does not. The executor
    gets the fetcher's password from its own Secret (it copies it into each such attempt's)."""
    from trainyard_executor.backends.kube_fetch import FETCH_LABEL

    (rule, *_) = named(everything, "NetworkPolicy", "nats")["spec"]["ingress"]
    jobs = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert jobs == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": JOBS_NAMESPACE}},
            "podSelector": {"matchLabels": {FETCH_LABEL: "true"}},
        }
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 4222}]
    env = env_of(named(everything, "Deployment", "executor")["spec"]["template"]["spec"]["containers"][0])
    ref = env["TRAINYARD_EXECUTOR_KUBE_FETCH_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "trainyard-nats-user-fetcher", "key": "password"}
    assert env["TRAINYARD_EXECUTOR_KUBE_FETCH_IMAGE"]["value"].startswith("trainyard/executor:")
