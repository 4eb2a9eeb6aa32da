"""The simulator config and fault rules (output faults too): parsing, validation, overrides,
key masking."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from simulator.config import (
    DEFAULT_OUTPUTS_URL,
    HttpFault,
    JobFault,
    SimulatorConfig,
    mask_secret,
    parse_fault_json,
    parse_faults,
    parse_output_fault_json,
    parse_output_faults,
)

KEY = "config-test-key-0123456789"


def test_faults_are_classified_by_the_job_key() -> None:
    rules = parse_faults(
        [
            {"endpoint": "poll", "status": 502, "body": "html", "count": 2},
            {"endpoint": "submit", "drop": True},
            {"delay_s": 0.5},
            {"job": "fail", "error_field": "error"},
        ]
    )
    assert [type(rule) for rule in rules] == [HttpFault, HttpFault, HttpFault, JobFault]
    http = rules[0]
    assert isinstance(http, HttpFault)
    assert (http.status, http.body, http.count, http.probability) == (502, "html", 2, 1.0)
    assert [rule.action for rule in rules] == ["502", "drop", None, "job:fail"]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"endpoint": "poll"}, "needs status"),
        ({"status": 500, "drop": True}, "one action"),
        ({"status": 500, "colour": "red"}, "colour"),
        ({"endpoint": "everything", "status": 500}, "endpoint"),
        ({"status": 500, "count": 0}, "count"),
        ({"status": 500, "probability": 2}, "probability"),
        ({"job": "explode"}, "job"),
        ({"status": 204}, "cannot carry a body"),
        ("not an object", "not an object"),
    ],
)
def test_invalid_faults_say_which_and_why(raw: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_faults([{"status": 500}, raw])
    assert "fault 1" in str(info.value)


def test_faults_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="list"):
        parse_faults({"status": 500})


def test_fault_json_from_the_command_line() -> None:
    rule = parse_fault_json('{"endpoint": "credits", "status": 504}')
    assert isinstance(rule, HttpFault)
    assert rule.endpoint == "credits"
    with pytest.raises(ValueError, match="not JSON"):
        parse_fault_json("{status: 504}")


def test_config_faults_accept_both_kinds() -> None:
    config = SimulatorConfig.model_validate(
        {"faults": [{"status": 500, "count": 1}, {"job": "never_finish"}]}
    )
    assert [type(rule) for rule in config.faults] == [HttpFault, JobFault]


def test_overrides_apply_on_a_copy() -> None:
    base = SimulatorConfig(api_key=SecretStr(KEY), rpm=50)
    changed = base.with_overrides({"rpm": 5, "faults": [{"job": "fail"}]})
    assert changed.rpm == 5
    assert isinstance(changed.faults[0], JobFault)
    assert base.rpm == 50
    assert base.faults == []
    assert changed.api_key.get_secret_value() == KEY


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"port": 1}, "cannot change port"),
        ({"rpms": 5}, "rpms"),
        ({"time_scale": 0}, "time_scale"),
        ({"public_url": "ftp://x"}, "public_url"),
        ({"api_key": " "}, "api_key"),
    ],
)
def test_bad_overrides_are_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SimulatorConfig(api_key=SecretStr(KEY)).with_overrides(overrides)


def test_public_url_loses_its_trailing_slash() -> None:
    assert SimulatorConfig(public_url="https://sim.example/").public_url == "https://sim.example"


def test_the_key_never_shows() -> None:
    config = SimulatorConfig(api_key=SecretStr(KEY))
    assert KEY not in repr(config)
    assert KEY not in str(config)
    dumped = config.model_dump(mode="json")
    assert dumped["api_key"] == mask_secret(KEY)
    assert KEY not in str(dumped)
    with pytest.raises(ValueError, match="rpm") as refused:
        config.with_overrides({"rpm": -1, "api_key": KEY})
    assert KEY not in str(refused.value)


def test_mask_secret() -> None:
    assert mask_secret("short-key") == "********"
    assert mask_secret(KEY) == "********6789"
    assert KEY not in mask_secret(KEY)


# ------------------------------------------------------------------ output files


def test_output_faults_by_kind() -> None:
    rules = parse_output_faults(
        [
            {"kind": "status", "status": 503, "count": 2},
            {"kind": "redirect", "location": "http://10.0.0.1/x"},
            {"kind": "size", "keyname": "video", "size": 10**9, "announce_length": False},
            {"kind": "slow", "delay_s": 0.5, "chunk_bytes": 1024},
            {"kind": "truncate"},
        ]
    )
    assert [rule.action for rule in rules] == [
        "output:status", "output:redirect", "output:size", "output:slow", "output:truncate",
    ]  # fmt: skip
    assert [rule.answer_status for rule in rules[:2]] == [503, 302]
    assert rules[2].keyname == "video"
    assert rules[0].keyname == "*"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"kind": "status"}, "needs a status"),
        ({"kind": "status", "status": 302}, "needs a status from 400"),
        ({"kind": "redirect"}, "needs a location"),
        ({"kind": "redirect", "location": "/x", "status": 200}, "status"),
        ({"kind": "redirect", "location": "/x", "status": 304}, "301, 302"),
        ({"kind": "size"}, "needs a size"),
        ({"kind": "size", "size": -1}, "size"),
        ({"kind": "slow"}, "needs delay_s"),
        ({"kind": "slow", "delay_s": 1, "chunk_bytes": 0}, "chunk_bytes"),
        ({"kind": "truncate", "status": 500}, "takes no status"),
        ({"kind": "melt"}, "kind"),
        ({"kind": "truncate", "colour": "red"}, "colour"),
        ("not an object", "not an object"),
    ],
)
def test_invalid_output_faults_say_which_and_why(raw: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_output_faults([{"kind": "truncate"}, raw])
    assert "output fault 1" in str(info.value)


def test_output_faults_must_be_a_list_and_json() -> None:
    with pytest.raises(ValueError, match="list"):
        parse_output_faults({"kind": "truncate"})
    with pytest.raises(ValueError, match="not JSON"):
        parse_output_fault_json("{kind: truncate}")
    assert parse_output_fault_json('{"kind": "truncate", "count": 1}').count == 1


def test_output_faults_and_sizes_as_overrides() -> None:
    base = SimulatorConfig(api_key=SecretStr(KEY), output_faults=[{"kind": "truncate"}])
    kept = base.with_overrides({"rpm": 1})
    assert [rule.kind for rule in kept.output_faults] == ["truncate"]
    changed = base.with_overrides(
        {"output_faults": [{"kind": "slow", "delay_s": 1}], "output_bytes": {"video": 10}}
    )
    assert [rule.kind for rule in changed.output_faults] == ["slow"]
    assert changed.output_bytes == {"video": 10}
    with pytest.raises(ValueError, match="movie"):
        base.with_overrides({"output_bytes": {"movie": 10}})
    with pytest.raises(ValueError, match=">= 0"):
        base.with_overrides({"output_bytes": {"image": -1}})
    with pytest.raises(ValueError, match="output fault 0"):
        base.with_overrides({"output_faults": [{"kind": "slow"}]})


def test_outputs_base() -> None:
    server = "http://127.0.0.1:4321"
    assert SimulatorConfig().outputs_base(server) == DEFAULT_OUTPUTS_URL
    assert SimulatorConfig(serve_outputs=True).outputs_base(server) == f"{server}/outputs"
    assert SimulatorConfig(serve_outputs=True).outputs_base(None) == DEFAULT_OUTPUTS_URL
    explicit = SimulatorConfig(serve_outputs=True, outputs_url="https://cdn.example/o/")
    assert explicit.outputs_base(server) == "https://cdn.example/o"
    with pytest.raises(ValueError, match="http"):
        SimulatorConfig(outputs_url="ftp://cdn.example")
