"""One forwarded request as the detectors see it, taken on the request path at the cost of a
few attribute reads; everything else is worked out later, off the path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The route class of a browser proof: not a request of the upstream's, a credit for `subject`.
PROOF = "proof"


@dataclass(slots=True)  # not frozen: its __init__ is on the request path, and frozen costs a setattr per field
class Observation:
    at: float
    route_class: str
    customer: str | None
    user: str | None
    session: str | None
    client_ip: str
    method: str
    target: str  # path and query, as sent
    headers: Mapping[str, str]  # the request's (read off the path)
    status: int  # the upstream's answer, or the gateway's own when `refused`
    body_digest: bytes | None  # of a buffered request body; None for none or a streamed one
    # Whom scores and sightings are kept for: "user:CUSTOMER/USER", or "address:IP" when anonymous.
    subject: str = ""
    refused: bool = False  # the gateway answered itself (sanction, suspension, limit): counts for sharing only
    offered_proof: bool = False  # an HTML answer into which the gateway put a browser-proof link

    def __post_init__(self) -> None:
        if not self.subject:
            self.subject = subject_of(self.customer, self.user, self.client_ip, self.headers)


def subject_of(customer: str | None, user: str | None, client_ip: str, headers: Mapping[str, str]) -> str:
    """Whom detection keeps scores, sightings and browser proofs for."""
    return f"user:{customer}/{user}" if user is not None else f"address:{client_ip}"
