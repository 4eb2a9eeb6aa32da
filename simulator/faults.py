"""The active fault rules of a simulator, and how requests and jobs consume them.

The rules themselves (``HttpFault``, ``JobFault``, ``OutputFault``) are config models in
``simulator.config``; ``FaultBook`` holds the first two and ``OutputFaultBook`` the
third, each in the order they were added, counting down each rule's ``count``. They do
no locking: their owner (``simulator.state.SimulatorState``) is called from the HTTP
layer's event loop thread only.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulator.config import Endpoint, Fault, HttpFault, JobFault, OutputFault


@dataclass
class ActiveFault:
    """A fault rule and how many more times it applies (``None``: unlimited)."""

    rule: Fault
    remaining: int | None

    def to_json(self) -> dict[str, Any]:
        """The rule as given, plus ``remaining``."""
        data = self.rule.model_dump(exclude_defaults=True)
        if isinstance(self.rule, HttpFault):
            data.setdefault("endpoint", self.rule.endpoint)
        data["remaining"] = self.remaining
        return data


class FaultBook:
    """The active fault rules, matched in the order they were added."""

    def __init__(self) -> None:
        self._active: list[ActiveFault] = []

    def add(self, rules: list[Fault]) -> None:
        """Append rules; each applies ``rule.count`` times (``None``: until cleared)."""
        self._active.extend(ActiveFault(rule, rule.count) for rule in rules)

    def clear(self) -> int:
        """Remove every rule; returns how many there were."""
        cleared = len(self._active)
        self._active.clear()
        return cleared

    def snapshot(self) -> list[dict[str, Any]]:
        """The active rules as JSON objects."""
        return [active.to_json() for active in self._active]

    def match_http(
        self, endpoint: Endpoint, workflow_id: str | None, rng: random.Random
    ) -> HttpFault | None:
        """The first HTTP rule matching a request, consumed once; ``None`` if none."""
        rule = self._match(
            lambda r: isinstance(r, HttpFault) and r.endpoint in ("any", endpoint),
            workflow_id,
            rng,
        )
        return rule if isinstance(rule, HttpFault) else None

    def match_job(self, workflow_id: str, rng: random.Random) -> JobFault | None:
        """The first job rule matching a new job of ``workflow_id``, consumed once."""
        rule = self._match(lambda r: isinstance(r, JobFault), workflow_id, rng)
        return rule if isinstance(rule, JobFault) else None

    def _match(
        self, applies: Callable[[Fault], bool], workflow_id: str | None, rng: random.Random
    ) -> Fault | None:
        for active in self._active:
            rule = active.rule
            if not applies(rule):
                continue
            if rule.workflow_id is not None and rule.workflow_id != workflow_id:
                continue
            if self._take(active, rule.probability, rng):
                return rule
        return None

    def _take(self, active: ActiveFault, probability: float, rng: random.Random) -> bool:
        if active.remaining is not None and active.remaining <= 0:
            return False
        # Draw only for real probabilities so p=1 rules keep the RNG sequence unchanged.
        if probability < 1 and rng.random() >= probability:
            return False
        if active.remaining is not None:
            active.remaining -= 1
            if active.remaining == 0:
                self._active.remove(active)
        return True


@dataclass
class ActiveOutputFault:
    """An output fault rule and how many more times it applies (``None``: unlimited)."""

    rule: OutputFault
    remaining: int | None

    def to_json(self) -> dict[str, Any]:
        """The rule as given, plus ``remaining``."""
        data = self.rule.model_dump(exclude_defaults=True)
        data.setdefault("keyname", self.rule.keyname)
        data["remaining"] = self.remaining
        return data


class OutputFaultBook:
    """The active output fault rules, matched in the order they were added."""

    def __init__(self) -> None:
        self._active: list[ActiveOutputFault] = []

    def add(self, rules: list[OutputFault]) -> None:
        """Append rules; each applies ``rule.count`` times (``None``: until cleared)."""
        self._active.extend(ActiveOutputFault(rule, rule.count) for rule in rules)

    def clear(self) -> int:
        """Remove every rule; returns how many there were."""
        cleared = len(self._active)
        self._active.clear()
        return cleared

    def snapshot(self) -> list[dict[str, Any]]:
        """The active rules as JSON objects."""
        return [active.to_json() for active in self._active]

    def match(self, keyname: str) -> OutputFault | None:
        """The first rule for a download of ``keyname``, consumed once; ``None`` if none."""
        for active in self._active:
            if active.rule.keyname not in ("*", keyname):
                continue
            if active.remaining is not None:
                active.remaining -= 1
                if active.remaining <= 0:
                    self._active.remove(active)
            return active.rule
        return None
