"""The one rule for keeping secrets out of text: every occurrence becomes ``[redacted]``.

Log lines (``worker.logs``), exception messages of the AMQP helpers (``producers.amqp``),
Segmind's echoes of the API key (``worker.segmind.client``) and the stored reasons of dead
letters (``worker.deadletters.middleware``) all go through ``Redactor``, so a secret looks the same
wherever it was removed and no caller invents its own rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

#: What a secret is replaced with.
REDACTED: Final = "[redacted]"
#: Shorter secrets are not redacted: replacing every occurrence of one to three characters
#: would mangle most text, and where the ``[redacted]`` marks fall would spell the secret
#: out anyway. Real secrets (API keys, passwords) are far longer.
MIN_SECRET_LEN: Final = 4
#: The mark of a text cut short; a secret's beginning left just before it is redacted too.
ELLIPSIS: Final = "…"


class Redactor:
    """Replaces each secret in a text with ``REDACTED`` (a pure function of its secrets).

    The longest secrets are replaced first, so a secret that contains another is redacted
    whole rather than leaving its remainder in the text. A text clipped just inside a
    secret (``"... invalid key sk-ab…"``, as servers and ``shorten`` write) loses that
    beginning too, down to ``MIN_SECRET_LEN`` characters.

    Args:
        secrets: the texts never to show; empty and shorter ones are ignored (see
            ``MIN_SECRET_LEN``).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets: tuple[str, ...] = tuple(
            sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        )

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if text.endswith(ELLIPSIS):
            head = text[: -len(ELLIPSIS)]
            for secret in self.secrets:
                for size in range(min(len(secret) - 1, len(head)), MIN_SECRET_LEN - 1, -1):
                    if head.endswith(secret[:size]):
                        return f"{head[:-size]}{REDACTED}{ELLIPSIS}"
        return text

    def shows_secret(self, text: str) -> bool:
        """Whether ``text`` holds any secret whole."""
        return any(secret in text for secret in self.secrets)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``REDACTED`` (``Redactor(secrets)(text)``)."""
    return Redactor(secrets)(text)
