"""Tenants' policies: weights, daily caps, credit reservations and rate shares, from a file
read again when it changes (no restart).

``TENANTS_FILE`` names a TOML file::

    [default]              # every tenant not listed below (all optional)
    weight = 1             # its share of the turns when submits wait for the rate
    daily_cap_usd = 0      # its spend per UTC day, in USD (0: no cap)

    [tenants.acme]
    weight = 3
    daily_cap_usd = 50
    reserve_usd = 20       # credits the other tenants leave untouched, for acme
    rate_share = 0.5       # at most half the fleet's rate (0: no cap)

Without the file every tenant has weight 1 and no cap. ``TenantsFile`` looks at the file's
modification time at most every ``RELOAD_S`` and parses it again when it changed; a file
that turns unreadable or invalid keeps the last good table in force (and is logged).
"""

from __future__ import annotations

import re
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from producers.contract import TENANT_PATTERN, shorten

log = structlog.get_logger(__name__)

#: How often the file's modification time is looked at.
RELOAD_S: Final = 5.0


class TenantPolicy(BaseModel):
    """What one tenant may use.

    Attributes:
        weight: its share of the turns when submits wait for the rate (default 1).
        daily_cap_usd: its spend per UTC day (0: no cap): over it, its new submits wait,
            then end REJECTED ``budget_exhausted``, unpaid.
        reserve_usd: credits kept for it: the other tenants' submits wait rather than
            bring the balance under the fleet's floor plus every other reservation.
        rate_share: the largest share of the fleet's rate its submits take (0: none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(default=1.0, gt=0, le=1000)
    daily_cap_usd: float = Field(default=0.0, ge=0)
    reserve_usd: float = Field(default=0.0, ge=0)
    rate_share: float = Field(default=0.0, ge=0, le=1)


class _TenantsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: TenantPolicy = Field(default_factory=TenantPolicy)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)

    @field_validator("tenants")
    @classmethod
    def _names(cls, value: dict[str, TenantPolicy]) -> dict[str, TenantPolicy]:
        for name in value:
            if not re.fullmatch(TENANT_PATTERN, name):
                raise ValueError(f"{shorten(name, 80)!r} is not a tenant name ({TENANT_PATTERN})")
        return value


class TenantsFileError(ValueError):
    """The tenants file cannot be read or is not a valid table."""


@dataclass(frozen=True)
class TenantTable:
    """Every tenant's policy.

    Attributes:
        default: the policy of a tenant not listed.
        tenants: the listed tenants' policies.
    """

    default: TenantPolicy = field(default_factory=TenantPolicy)
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)

    def policy(self, tenant: str) -> TenantPolicy:
        """``tenant``'s policy."""
        return self.tenants.get(tenant, self.default)

    def reserved_for_others(self, tenant: str) -> float:
        """The credits reserved for tenants other than ``tenant`` (USD)."""
        return sum(p.reserve_usd for name, p in self.tenants.items() if name != tenant)

    def capped(self) -> dict[str, float]:
        """The listed tenants with a daily cap, and their caps (USD)."""
        return {name: p.daily_cap_usd for name, p in self.tenants.items() if p.daily_cap_usd}


def parse_tenants(text: str) -> TenantTable:
    """The table a tenants file holds.

    Raises:
        TenantsFileError: not TOML, or not a valid table (unknown keys, bad values, a bad
            tenant name).
    """
    try:
        document = _TenantsDocument.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise TenantsFileError(f"not TOML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TenantsFileError(f"{where}: {first['msg']}") from None
    return TenantTable(default=document.default, tenants=document.tenants)


class TenantsFile:
    """The tenants file, read again when it changes.

    Args:
        path: the file (``None``: no file, every tenant has the default policy).
        clock: a monotonic clock (seconds).

    Raises:
        TenantsFileError: the file cannot be read or is invalid when first read (a worker
            does not start on a broken file; later breakage keeps the last good table).
    """

    def __init__(self, path: Path | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._checked_at = clock()
        self._stamp: tuple[int, int] | None = None
        self._table = TenantTable()
        if path is not None:
            self._stamp, self._table = self._read(path)

    def table(self) -> TenantTable:
        """The current table (the file is looked at again at most every ``RELOAD_S``)."""
        if self.path is None:
            return self._table
        with self._lock:
            now = self.clock()
            if now - self._checked_at < RELOAD_S:
                return self._table
            self._checked_at = now
            try:
                stamp = _stamp(self.path)
                if stamp != self._stamp:
                    self._stamp, self._table = self._read(self.path)
                    log.info("tenants.reloaded", tenants=len(self._table.tenants))
            except TenantsFileError as exc:
                log.warning("tenants.reload_failed", reason=str(exc))
            return self._table

    def policy(self, tenant: str) -> TenantPolicy:
        """``tenant``'s current policy."""
        return self.table().policy(tenant)

    @staticmethod
    def _read(path: Path) -> tuple[tuple[int, int], TenantTable]:
        try:
            stamp = _stamp(path)
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TenantsFileError(f"{path}: {type(exc).__name__}: {exc}") from None
        try:
            return stamp, parse_tenants(text)
        except TenantsFileError as exc:
            raise TenantsFileError(f"{path}: {exc}") from None


def _stamp(path: Path) -> tuple[int, int]:
    try:
        status = path.stat()
    except OSError as exc:
        raise TenantsFileError(f"{path}: {type(exc).__name__}: {exc}") from None
    return status.st_mtime_ns, status.st_size
