"""What the request path asks of enforcement, and the answer when a config turns it off: the
handler asks the same questions either way."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.auth.identity import Identity
from gateway.enforce.ladder import Standing
from gateway.limits.policy import CompiledLimit
from gateway.problems import Problem


class RequestEnforcement(Protocol):
    def admit(self, identity: Identity | None) -> Standing | Problem | None: ...

    def throttle_factor(self, standing: Standing | None) -> float: ...

    def warning(self, standing: Standing) -> str: ...

    def limited(self, identity: Identity | None, plan: str | None, limits: tuple[CompiledLimit, ...],
                standing: Standing | None) -> dict[str, Any] | None: ...

    def with_warning(self, problem: Problem, identity: Identity | None) -> Problem: ...


class EnforcementOff:
    """No standings, nothing recorded."""

    def admit(self, identity: Identity | None) -> Standing | Problem | None:
        return None

    def throttle_factor(self, standing: Standing | None) -> float:
        return 1.0

    def warning(self, standing: Standing) -> str:
        return ""

    def limited(self, identity: Identity | None, plan: str | None, limits: tuple[CompiledLimit, ...],
                standing: Standing | None) -> dict[str, Any] | None:
        return None

    def with_warning(self, problem: Problem, identity: Identity | None) -> Problem:
        return problem


ENFORCEMENT_OFF = EnforcementOff()
