"""The simulator config and fault rules: parsing, validation, overrides, key masking."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from simulator.config import (
    HttpFault,
    JobFault,
    SimulatorConfig,
    mask_secret,
    parse_fault_json,
    parse_faults,
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
