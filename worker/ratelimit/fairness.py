"""Fair admission: which waiting submit takes the next token. Pure functions, no I/O.

When submits wait for the fleet's rate, tokens go to the tenants in turn, not in arrival
order (start-time fair queueing, the continuous form of deficit round-robin): each tenant
with requests waiting has a virtual *finish* time, and each admitted request moves its
tenant's finish on by ``1 / weight``. A tenant that starts waiting joins at the line's
virtual clock (the finish of the last tenant served), so a tenant that published 10,000
requests an hour ago gains nothing over one that publishes 3 now: their next requests
alternate. Within a tenant, higher priorities go first, then earlier publications
(``rank``).

A request's place in the line (``ahead``) counts the waiting requests whose virtual time
comes before its own. A request may go (ask the bucket for a token) while fewer than
``go_window`` are ahead of it: one at a few calls a minute (strict turns), more at high
rates, where a turn is shorter than a message's round trip through a delay queue. Others
are told to come back about when their turn will come (``slot_wait``), so waiting costs
neither a thread nor a busy loop.

Two safeguards keep the line moving: a request whose turn came and that has not asked
again ``LATE_S`` after it was due does not hold the others back (its message may be stuck
behind a busy worker); one not seen for ``STALE_S`` is dropped from the line (its message
was lost, or it ended without saying so) and takes its place again, by rank, if it asks.
A tenant capped at a share of the rate (``rate_share``) is passed over while its grants
in the last window have used its share.

``worker.ratelimit.admission`` runs these rules in a Redis Lua script for the fleet and in
memory for the local mode; tests hold both to the same scenarios.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from worker.settings import MAX_DELAY_S

#: Requests whose turn is this close may go together (see ``go_window``).
LOOKAHEAD_S: Final = 1.0
#: A request this late back for its turn no longer holds the others back.
LATE_S: Final = 5.0
#: A request not seen this long is dropped from the line (it rejoins if it asks again).
STALE_S: Final = 60.0
#: The shortest and longest waits a request is told (the longest so that it checks its
#: cancel and start deadline now and then).
MIN_WAIT_S: Final = 0.05
MAX_WAIT_S: Final = min(60.0, MAX_DELAY_S)
#: At most this many requests at the head of a tenant's line are passed over as late.
LATE_SKIP_MAX: Final = 16
#: At most this many tenants, the nearest turns first, are looked at per decision.
MAX_TENANTS_SCANNED: Final = 64
#: Ranks: a priority step outweighs any publication time (epoch milliseconds < 1e13).
_PRIORITY_STEP: Final = 1e13


def rank(priority: int | None, queued_at: float) -> float:
    """A request's place within its tenant: higher priority first, then earlier
    publication (``queued_at``, epoch seconds). Lower ranks go first."""
    return (9 - (priority or 0)) * _PRIORITY_STEP + math.floor(queued_at * 1000)


def go_window(rate_per_min: float) -> int:
    """How many requests may be asking for a token at once: those whose turn comes within
    ``LOOKAHEAD_S`` at the current rate, at least one."""
    return max(1, math.floor(rate_per_min * LOOKAHEAD_S / 60.0))


def slot_wait(ahead: int, window: int, rate_per_min: float) -> float:
    """How long a request with ``ahead`` requests before it waits before asking again:
    until about when its turn comes, within [``MIN_WAIT_S``, ``MAX_WAIT_S``]."""
    turns = max(0, ahead - window + 1)
    return min(MAX_WAIT_S, max(MIN_WAIT_S, turns * 60.0 / rate_per_min))


def grants_allowed(rate_share: float, rate_per_min: float, window_s: float) -> int:
    """The grants a tenant capped at ``rate_share`` of the rate may have in a window of
    ``window_s`` (0: not capped); at least one, so a capped tenant still moves."""
    if rate_share <= 0:
        return 0
    return max(1, math.floor(rate_share * rate_per_min * window_s / 60.0))


@dataclass(frozen=True, slots=True)
class TenantLine:
    """One tenant's part of the line, as ``ahead`` needs it.

    Attributes:
        finish: the tenant's virtual finish time (its head's virtual time).
        weight: its weight.
        waiting: its requests in the line that count (not late, not capped).
    """

    finish: float
    weight: float
    waiting: int


def ahead(tag: float, others: Iterable[TenantLine]) -> int:
    """How many requests of ``others`` come before virtual time ``tag``: of a tenant
    whose head is at ``finish``, the ones at ``finish + k / weight < tag``."""
    count = 0
    for line in others:
        if line.waiting <= 0 or line.finish >= tag:
            continue
        count += min(line.waiting, math.ceil((tag - line.finish) * line.weight - 1e-9))
    return count


@dataclass(frozen=True, slots=True)
class Turn:
    """The answer to asking for a turn.

    Attributes:
        go: ask the bucket for a token now.
        wait_s: otherwise, ask again after this long.
        ahead: requests before this one in the line (its queue position).
    """

    go: bool
    wait_s: float
    ahead: int
