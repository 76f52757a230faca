"""What the request path asks of detection, and the answer when a config turns it off: the
handler asks the same questions either way."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.auth.identity import Identity
from gateway.detect.sanctions import Sanctions
from gateway.problems import Problem


class RequestDetection(Protocol):
    observes: bool  # whether forwarded requests are worth queuing (and their bodies hashing)
    sanctions: Sanctions  # empty (falsy) while none are in force: the lookup is skipped

    def refusal(self, identity: Identity | None, client_ip: str, route_class: str,
                headers: Any = ...) -> Problem | None: ...

    def observe_request(self, route_class: str, identity: Identity | None, client_ip: str, method: str,
                        target: str, headers: Any, status: int, body_digest: bytes | None,
                        offered_proof: bool = False) -> None: ...

    def observe_refused(self, route_class: str, identity: Identity, client_ip: str, method: str, target: str,
                        headers: Any, status: int) -> None: ...

    def observe_proof(self, subject: str) -> None:
        """Credit `subject` (see `observation.subject_of`) with proof that a browser loads its pages."""


class DetectionOff:
    """No sanctions, nothing observed."""

    observes = False

    def __init__(self) -> None:
        self.sanctions = Sanctions()  # stays empty

    def refusal(self, identity: Identity | None, client_ip: str, route_class: str,
                headers: Any = None) -> Problem | None:
        return None

    def observe_request(self, route_class: str, identity: Identity | None, client_ip: str, method: str,
                        target: str, headers: Any, status: int, body_digest: bytes | None,
                        offered_proof: bool = False) -> None:
        return None

    def observe_refused(self, route_class: str, identity: Identity, client_ip: str, method: str, target: str,
                        headers: Any, status: int) -> None:
        return None

    def observe_proof(self, subject: str) -> None:
        return None


DETECTION_OFF = DetectionOff()
