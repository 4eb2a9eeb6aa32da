"""Where the API key can come from: the environment or a file, nothing else.

No command-line option and no field of a request can carry it; ``SEGMIND_API_KEY_FILE``
works as Docker and Kubernetes mount secrets (a trailing newline, a symlink chain that is
swapped on rotation); both sources set is an error that stops the worker before it starts,
without showing the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import SecretStr
from typer.testing import CliRunner

from console.cli import app
from producers.catalog import default_catalog
from producers.contract import ErrorCode, RequestRejected, validate_request
from worker.settings import InvalidApiKeyError, Settings

KEY = "sk-security-test-5d2c1f0e9a8b7c6d"
#: Words an option carrying a credential would have in its name.
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential", "auth")


def _commands(group: Any, path: str = "") -> list[tuple[str, Any]]:
    found = [(path, group)]
    # Duck-typed: typer vendors its own click, whose classes are not click's.
    subcommands: dict[str, Any] = getattr(group, "commands", {})
    for name, command in subcommands.items():
        found += _commands(command, f"{path} {name}".strip())
    return found


def test_no_command_line_option_carries_a_credential() -> None:
    commands = _commands(typer.main.get_command(app))
    assert {"worker", "submit", "demo", "simulator"} <= {path for path, _ in commands}
    offending = []
    for path, command in commands:
        if path == "simulator":
            continue  # the local simulator's own made-up key, never Segmind's
        for parameter in command.params:
            names = [parameter.name or "", *getattr(parameter, "opts", [])]
            if any(word in name.lower() for name in names for word in _CREDENTIAL_WORDS):
                offending.append(f"{path}: {names}")
    assert offending == []


@pytest.mark.parametrize("field", ["api_key", "x-api-key", "segmind_api_key", "headers"])
def test_a_request_field_cannot_carry_a_key(field: str) -> None:
    with pytest.raises(RequestRejected) as rejected:
        validate_request({"workflow": "sketch-maker", field: KEY}, default_catalog())
    assert rejected.value.code is ErrorCode.INVALID_REQUEST
    assert field in rejected.value.message
    assert KEY not in rejected.value.message


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\n\n", " \n"])
def test_a_secret_file_with_a_trailing_line_break(tmp_path: Path, ending: str) -> None:
    secret = tmp_path / "segmind_api_key"
    secret.write_bytes(f"{KEY}{ending}".encode())
    assert Settings(segmind_api_key_file=secret).api_key().get_secret_value() == KEY


def test_a_kubernetes_secret_mount_and_its_rotation(tmp_path: Path) -> None:
    """Kubernetes mounts ``<dir>/<key> -> ..data/<key>``, ``..data -> ..<timestamp>``, and
    rotates a secret by writing a new timestamped directory and swapping ``..data``."""
    mount = tmp_path / "secrets"
    first = mount / "..2026_11_21_10_00_00.1"
    first.mkdir(parents=True)
    (first / "api-key").write_text(f"{KEY}\n")
    (mount / "..data").symlink_to(first.name)
    (mount / "api-key").symlink_to("..data/api-key")
    settings = Settings(segmind_api_key_file=mount / "api-key")
    assert settings.api_key().get_secret_value() == KEY

    second = mount / "..2026_11_21_11_00_00.2"
    second.mkdir()
    (second / "api-key").write_text("sk-rotated-key\n")
    swap = mount / "..data_tmp"
    swap.symlink_to(second.name)
    os.replace(swap, mount / "..data")  # atomic, as the kubelet does it

    assert settings.api_key().get_secret_value() == "sk-rotated-key"


def test_a_dangling_secret_symlink_is_a_clear_error(tmp_path: Path) -> None:
    link = tmp_path / "api-key"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(ValueError, match="cannot read SEGMIND_API_KEY_FILE") as raised:
        Settings(segmind_api_key_file=link).api_key()
    assert "No such file" in str(raised.value)


def test_both_sources_set_stops_the_worker_before_it_starts(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY)
    with pytest.raises(InvalidApiKeyError):
        Settings(segmind_api_key=SecretStr(KEY), segmind_api_key_file=secret).api_key()

    result = CliRunner().invoke(
        app,
        ["worker"],
        env={"SEGMIND_API_KEY": KEY, "SEGMIND_API_KEY_FILE": str(secret)},
    )

    assert result.exit_code == 2
    assert "set only one" in result.output
    assert KEY not in result.output
