"""The one redaction rule: what a secret becomes wherever it is removed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.redaction import ELLIPSIS, MIN_SECRET_LEN, REDACTED, Redactor, redact

KEY = "sk-0123456789abcdef"


def test_every_occurrence_becomes_the_placeholder() -> None:
    assert redact(f"key {KEY} and again {KEY}.", [KEY]) == f"key {REDACTED} and again {REDACTED}."


def test_a_secret_containing_another_is_redacted_whole() -> None:
    short, long = "pass-word", "pass-word-and-more"
    assert redact(f"[{long}] [{short}]", [short, long]) == f"[{REDACTED}] [{REDACTED}]"


def test_empty_and_short_secrets_are_ignored() -> None:
    short = "x" * (MIN_SECRET_LEN - 1)
    redactor = Redactor(["", short])
    assert not redactor
    assert redactor(f"text with {short}") == f"text with {short}"


def test_a_secret_clipped_by_an_ellipsis_loses_its_beginning_too() -> None:
    clipped = f"invalid key {KEY[:9]}{ELLIPSIS}"
    assert redact(clipped, [KEY]) == f"invalid key {REDACTED}{ELLIPSIS}"
    # A beginning shorter than a secret may be is not taken for one.
    assert redact(f"invalid key {KEY[:3]}{ELLIPSIS}", [KEY]) == f"invalid key {KEY[:3]}{ELLIPSIS}"


def test_shows_secret_finds_whole_secrets_only() -> None:
    redactor = Redactor([KEY])
    assert redactor.shows_secret(f"x{KEY}y")
    assert not redactor.shows_secret(KEY[:-1])


@given(
    prefix=st.text(max_size=30),
    suffix=st.text(max_size=30),
    secret=st.text(alphabet="abcdef0123456789-", min_size=MIN_SECRET_LEN, max_size=40),
)
def test_no_secret_survives_redaction(prefix: str, suffix: str, secret: str) -> None:
    assert secret not in redact(f"{prefix}{secret}{suffix}", [secret])


@pytest.mark.parametrize("text", ["", "nothing secret here", REDACTED])
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text, [KEY]) == text
