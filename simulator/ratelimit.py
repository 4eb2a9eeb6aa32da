"""The simulator's rate limit: fixed windows per caller, and the reset-time header.

``RateWindow`` keeps mutable counts and does no locking: its owner
(``simulator.state.SimulatorState``) is called from the HTTP layer's event loop thread
only.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def format_reset(reset_at: float, fmt: str) -> str:
    """``x-rate-limit-reset-at-utc``: ISO 8601 UTC with milliseconds and ``Z``, or
    epoch seconds (``fmt="epoch"``).
    """
    if fmt == "epoch":
        return f"{reset_at:.3f}"
    moment = datetime.fromtimestamp(reset_at, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RateWindow:
    """Fixed windows of ``window_s`` seconds aligned on the epoch, at most ``rpm``
    allowed requests per window and identity; ``rpm == 0`` is unlimited.

    Refused requests do not count against the window.
    """

    def __init__(self, rpm: int, window_s: float) -> None:
        self.rpm = rpm
        self.window_s = window_s
        self._windows: dict[str, tuple[int, int]] = {}

    def reset_at(self, now: float) -> float:
        """When the window holding ``now`` ends."""
        return (math.floor(now / self.window_s) + 1) * self.window_s

    def hit(self, identity: str, now: float) -> float | None:
        """Count one request; ``None`` if allowed, else when the window resets."""
        if self.rpm <= 0:
            return None
        index = math.floor(now / self.window_s)
        window, used = self._windows.get(identity, (index, 0))
        if window != index:
            used = 0
        if used >= self.rpm:
            return self.reset_at(now)
        self._windows[identity] = (index, used + 1)
        return None
