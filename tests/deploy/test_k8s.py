"""The Kubernetes manifests in deploy/k8s.

Each resource is validated offline against its schema with strict field validation (an
unknown field fails, as with kubectl's default): the core kinds against the Kubernetes
schemas bundled by ``kubernetes-validate``, KEDA's ScaledObject and prometheus-operator's
ServiceMonitor against their CRDs' schemas in tests/deploy/schemas (README there). Then what
no schema can check: the settings and secrets, the probes, the queue names KEDA watches, the
grace period, the non-root user, and that the pieces select each other.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from producers import wire
from tests.deploy.queries import REPO_ROOT, load_file
from tests.deploy.test_compose import (
    ALL_INTERFACES,
    GRACE_MARGIN_S,
    NON_SETTINGS_VARIABLES,
    longest_step_s,
    settings_env_names,
    settings_from,
)
from tests.deploy.test_image import dockerfile_user, final_stage_env
from worker.store import SENTINEL_PORT, SentinelUrl

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
SCHEMAS_DIR = Path(__file__).with_name("schemas")
#: The Kubernetes version the manifests are checked against (its schemas ship with
#: kubernetes-validate): the oldest minor still widely run that has every API used here.
KUBERNETES_VERSION = "1.30"
#: Files in deploy/k8s that the kustomization does not apply, and why.
NOT_IN_KUSTOMIZATION = {
    "kustomization.yaml": "the kustomization itself",
    "secret.example.yaml": "the user creates the Secret with real values",
    "rabbitmq-cluster.yaml": "applied once the RabbitMQ cluster operator runs",
    "redis-values.yaml": "Helm values of the Redis chart, not a resource",
}
#: Settings that are secrets: never in the ConfigMap, each from this key of the Secret.
SECRET_SETTINGS = {
    "AMQP_URL": "amqp-url",
    "REDIS_URL": "redis-url",
    "REDIS_SENTINEL_PASSWORD": "redis-sentinel-password",
}
#: Secret keys the worker runs without (Sentinels without a password of their own).
OPTIONAL_SECRET_SETTINGS = frozenset({"REDIS_SENTINEL_PASSWORD"})
#: Settings whose ConfigMap value differs from the code's default, and why.
CONFIGMAP_VALUES_THAT_DIFFER = {
    "SEGMIND_API_KEY_FILE": "the key is a file of the mounted Secret",
    "LOG_FORMAT": "JSON lines for the cluster's log collector",
    "AMQP_QUEUE_TYPE": "quorum queues, replicated on the RabbitMQ cluster",
    "LEDGER_MIN_REPLICAS": "a Redis replica holds every record guarding a POST",
}
#: The release name of the Redis chart (README.md, "Deploy"): its Service and Secret.
REDIS_RELEASE = "segmind-redis"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}


def manifest_files() -> list[Path]:
    """The YAML files of deploy/k8s that hold Kubernetes resources."""
    return [
        path
        for path in sorted(K8S_DIR.glob("*.yaml"))
        if path.name not in ("kustomization.yaml", "redis-values.yaml")
    ]


def load_resources(path: Path) -> list[dict[str, Any]]:
    """The resources of one YAML file (empty documents skipped)."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def all_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in manifest_files():
        for resource in load_resources(path):
            yield f"{path.name}:{resource['kind']}/{resource['metadata']['name']}", resource


def resource(kind: str, path: str | None = None) -> dict[str, Any]:
    """The one resource of ``kind`` (in ``path`` when given)."""
    found = [
        r
        for name, r in all_resources()
        if r["kind"] == kind and (path is None or name.startswith(f"{path}:"))
    ]
    assert len(found) == 1, f"{len(found)} resources of kind {kind}"
    return found[0]


def worker_container() -> dict[str, Any]:
    containers = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def configmap_data() -> dict[str, str]:
    data: dict[str, str] = resource("ConfigMap")["data"]
    return data


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its
    properties and has no other rule for more (strict field validation of the API server)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return schema


def validate(manifest: dict[str, Any]) -> None:
    """Validate one resource; raises ``jsonschema.ValidationError`` or
    ``kubernetes_validate.ValidationError`` when it does not fit its schema."""
    crd = CRD_SCHEMAS.get((manifest["apiVersion"], manifest["kind"]))
    if crd is None:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        return
    schema = strict(json.loads((SCHEMAS_DIR / crd).read_text(encoding="utf-8")))
    jsonschema.Draft202012Validator(schema).validate(manifest)


RESOURCES = dict(all_resources())


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_resource_matches_its_schema(name: str) -> None:
    manifest = RESOURCES[name]
    if manifest["apiVersion"] == "rabbitmq.com/v1beta1":
        # The RabbitmqCluster CRD embeds a whole pod template (hundreds of kilobytes): its
        # schema is not vendored; the fields the service relies on are checked below.
        assert manifest["kind"] == "RabbitmqCluster"
        return
    validate(manifest)


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("Deployment", lambda r: r["spec"]["template"]["spec"].update(terminationGrace=1)),
        ("Deployment", lambda r: r["spec"].update(replicas="two")),
        ("ScaledObject", lambda r: r["spec"].update(minReplicas=1)),
        ("ScaledObject", lambda r: r["spec"]["triggers"][0].update(metadata={"value": 100})),
        ("ServiceMonitor", lambda r: r["spec"]["endpoints"][0].update(scheme="ftp")),
        ("ServiceMonitor", lambda r: r["spec"].pop("selector")),
    ],
    ids=[
        "deployment-unknown-field",
        "deployment-wrong-type",
        "scaledobject-unknown-field",
        "scaledobject-metadata-not-string",
        "servicemonitor-bad-enum",
        "servicemonitor-missing-required",
    ],
)
def test_schemas_reject_a_broken_resource(kind: str, mutate: Any) -> None:
    # The validation above is not vacuous: each schema catches a typical mistake.
    broken = copy.deepcopy(resource(kind))
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(broken)


def test_kustomization_applies_every_manifest_and_the_image() -> None:
    kustomization = load_file(K8S_DIR / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {path.name for path in K8S_DIR.glob("*.yaml")}
    assert listed == present - set(NOT_IN_KUSTOMIZATION)
    assert set(NOT_IN_KUSTOMIZATION) <= present
    (image,) = kustomization["images"]
    assert image["name"] == worker_container()["image"]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert image["newTag"] == project["project"]["version"]


def test_every_setting_is_in_the_configmap_or_the_secret() -> None:
    data = configmap_data()
    secrets = {"SEGMIND_API_KEY"} | set(SECRET_SETTINGS)
    assert settings_env_names() - set(data) == secrets
    assert set(data) - settings_env_names() == NON_SETTINGS_VARIABLES
    assert not secrets & set(data), "a secret in the ConfigMap"
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values are strings"
    configured = settings_from(data).model_dump()
    defaults = settings_from({}).model_dump()
    differ = {name.upper() for name in configured if configured[name] != defaults[name]}
    assert differ == set(CONFIGMAP_VALUES_THAT_DIFFER), sorted(differ)


def test_secrets_come_from_the_secret() -> None:
    container = worker_container()
    configmap = resource("ConfigMap")["metadata"]["name"]
    assert container["envFrom"] == [{"configMapRef": {"name": configmap}}]
    secret = resource("Secret", "secret.example.yaml")
    env = {item["name"]: item for item in container["env"]}
    for name, key in SECRET_SETTINGS.items():
        ref = env[name]["valueFrom"]["secretKeyRef"]
        expected: dict[str, Any] = {"name": secret["metadata"]["name"], "key": key}
        if name in OPTIONAL_SECRET_SETTINGS:
            expected["optional"] = True
        assert ref == expected, name
    # The API key: a file of the mounted Secret, named by SEGMIND_API_KEY_FILE.
    key_file = Path(configmap_data()["SEGMIND_API_KEY_FILE"])
    pod = resource("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == key_file.parent]
    assert mount["readOnly"] is True
    source = volumes[mount["name"]]["secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    (item,) = source["items"]
    assert item["path"] == key_file.name
    assert {item["key"], *SECRET_SETTINGS.values()} == set(secret["stringData"])
    assert "SEGMIND_API_KEY" not in env


def test_probes_use_the_health_endpoints_on_the_metrics_port() -> None:
    container = worker_container()
    (port,) = container["ports"]
    assert port["containerPort"] == int(configmap_data()["METRICS_PORT"])
    assert configmap_data()["METRICS_HOST"] == ALL_INTERFACES
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert check["port"] in (port["name"], port["containerPort"]), probe


def test_metrics_are_scraped_with_the_job_name_the_rules_use() -> None:
    service = resource("Service")
    monitor = resource("ServiceMonitor")
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (service_port,) = service["spec"]["ports"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] == "/metrics"
    assert service_port["targetPort"] == worker_container()["ports"][0]["name"]
    # The rules (deploy/prometheus/rules.yml) select job="segmind-queue".
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    shipped = load_file(REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml")
    assert job == shipped["scrape_configs"][0]["job_name"] == "segmind-queue"


def test_keda_watches_the_queues_the_settings_name() -> None:
    scaled = resource("ScaledObject")
    deployment = resource("Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    data = configmap_data()
    queues = {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]}
    requests_queue, polls_queue = data["REQUESTS_QUEUE"], data["POLLS_QUEUE"]
    assert queues == {requests_queue, polls_queue, wire.delay_queue(polls_queue)}
    env = {item["name"] for item in worker_container()["env"]}
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["metadata"]["hostFromEnv"] in env
        assert float(trigger["metadata"]["value"]) > 0
    # A delayed poll becomes due only in a running worker: never scale to zero.
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]


def test_termination_grace_period_exceeds_the_longest_step() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    step_s = longest_step_s(settings_from(configmap_data()))
    assert pod["terminationGracePeriodSeconds"] >= step_s + GRACE_MARGIN_S
    assert "--shutdown-timeout-s" not in worker_container()["args"]


def test_worker_runs_as_the_image_user_on_a_read_only_root() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    security = pod["securityContext"]
    uid, gid = dockerfile_user()
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
    container = worker_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The metrics directory is on a writable emptyDir.
    env = {item["name"]: item.get("value") for item in container["env"]}
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir == Path(final_stage_env()["PROMETHEUS_MULTIPROC_DIR"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [
        Path(m["mountPath"])
        for m in container["volumeMounts"]
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    ]
    assert any(metrics_dir.is_relative_to(path) for path in writable)
    resources = container["resources"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_disruptions_and_rollouts_keep_workers() -> None:
    pdb = resource("PodDisruptionBudget")
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    rollout = resource("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0


def test_rabbitmq_and_redis_come_from_their_operator_and_chart() -> None:
    cluster = resource("RabbitmqCluster")
    assert cluster["spec"]["replicas"] >= 3
    assert cluster["spec"]["persistence"]["storage"]
    config = cluster["spec"]["rabbitmq"]["additionalConfig"].splitlines()
    # Every delay of the service stays under the broker's consumer_timeout.
    assert "consumer_timeout = 1800000" in config
    values = load_file(K8S_DIR / "redis-values.yaml")
    config = values["commonConfiguration"].splitlines()
    assert "appendonly yes" in config
    assert "appendfsync always" in config
    assert "maxmemory-policy noeviction" in config
    # With Sentinel, every Redis pod (the primary too) takes the replica settings.
    assert values["replica"]["persistence"]["enabled"] is True
    assert values["auth"]["enabled"] is True


def test_queues_are_quorum_queues_on_the_cluster() -> None:
    config = resource("RabbitmqCluster")["spec"]["rabbitmq"]["additionalConfig"].splitlines()
    assert "default_queue_type = quorum" in config
    settings = settings_from(configmap_data())
    assert settings.amqp_queue_type == "quorum"
    assert settings.amqp_delivery_limit == 20
    # KEDA's hostFromEnv takes one URL: the operator's Service, which reaches every node.
    amqp_url = resource("Secret", "secret.example.yaml")["stringData"]["amqp-url"]
    assert ";" not in amqp_url
    assert amqp_url.split("@", 1)[1].startswith(
        f"{resource('RabbitmqCluster')['metadata']['name']}:"
    )


def test_redis_is_replicated_behind_the_sentinels_the_worker_asks() -> None:
    values = load_file(K8S_DIR / "redis-values.yaml")
    assert values["architecture"] == "replication"
    sentinel = values["sentinel"]
    assert sentinel["enabled"] is True
    assert sentinel["quorum"] == 2
    pods = values["replica"]["replicaCount"]
    assert pods >= 3, "one primary, two replicas, three Sentinels"
    stringdata = resource("Secret", "secret.example.yaml")["stringData"]
    parsed = SentinelUrl.parse(stringdata["redis-url"])
    # The chart's Service <release> serves the Sentinels on their default port.
    assert parsed.sentinels == ((REDIS_RELEASE, SENTINEL_PORT),)
    assert parsed.service == sentinel["masterSet"]
    # Bitnami's Sentinels take the servers' password (auth.sentinel).
    assert values["auth"]["sentinel"] is True
    assert stringdata["redis-sentinel-password"] == parsed.password
    # The ledger waits for replicas that exist, and goes on with one of them down.
    settings = settings_from(configmap_data())
    assert 1 <= settings.ledger_min_replicas <= pods - 2
    assert settings.ledger_replica_timeout_s == 1
