"""One forwarded request as the detectors see it, taken on the request path at the cost of a
few attribute reads; everything else is worked out later, off the path."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.detect.addresses import network_of
from gateway.state.memo import Memo

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
    # Whom scores and sightings are kept for: "user:CUSTOMER/USER", or "address:NETWORK|PRINT" when anonymous.
    subject: str = ""
    refused: bool = False  # the gateway answered itself (sanction, suspension, limit): counts for sharing only
    offered_proof: bool = False  # an HTML answer into which the gateway put a browser-proof link
    # The User-Agent, read once by the engine off the path (every detector asks for it).
    agent: str = ""

    def __post_init__(self) -> None:
        if not self.subject:
            self.subject = subject_of(self.customer, self.user, self.client_ip, self.headers)


# What the detectors read of a request's headers (the agent and the anonymous fingerprint,
# scraping's browser signals and conditional requests), besides the configured
# `detection.sharing.device_header` and, with a `device_cookie`, Cookie: all a worker process is
# sent of them.
DETECTED_HEADERS = ("User-Agent", "Accept", "Accept-Language", "Accept-Encoding", "Sec-Fetch-Mode",
                    "Sec-Fetch-Dest", "If-None-Match", "If-Modified-Since")

# An Observation as a worker process is sent it: its fields in order, the headers a plain dict.
Row = tuple[float, str, str | None, str | None, str | None, str, str, str, dict[str, str], int, bytes | None,
            str, bool, bool]


def as_row(obs: Observation, header_names: tuple[str, ...]) -> Row:
    headers = obs.headers
    return (obs.at, obs.route_class, obs.customer, obs.user, obs.session, obs.client_ip, obs.method, obs.target,
            {name: value for name in header_names if (value := headers.get(name)) is not None}, obs.status,
            obs.body_digest, obs.subject, obs.refused, obs.offered_proof)


def from_row(row: Row) -> Observation:
    return Observation(*row)


def subject_of(customer: str | None, user: str | None, client_ip: str, headers: Mapping[str, str]) -> str:
    """Whom detection keeps scores, sightings and browser proofs for: a login, or an anonymous
    client as its network (/24, /48: rotating addresses inside a provider's range add up) and a
    short fingerprint of the headers a browser sends alike on every request. The network is in
    clear here (this process only); findings and shared state name it hashed (`Detection.public`)."""
    if user is not None:
        return f"user:{customer}/{user}"
    return ANONYMOUS[client_ip, headers.get("User-Agent", ""), headers.get("Accept-Language", ""),
                     headers.get("Accept-Encoding", "")]


def _anonymous(client: tuple[str, str, str, str]) -> str:
    client_ip, agent, language, encoding = client
    # surrogateescape: aiohttp hands non-UTF-8 header bytes over as surrogates.
    printed = hashlib.blake2b(f"{agent}\n{language}\n{encoding}".encode("utf-8", "surrogateescape"),
                              digest_size=4).hexdigest()
    return f"address:{network_of(client_ip) or client_ip}|{printed}"


# Anonymous clients (address and headers) whose subject is remembered (memo_anonymous on /metrics):
# the request path pays a dictionary lookup for a client it saw lately.
ANONYMOUS_MEMO = 16384
ANONYMOUS: Memo[tuple[str, str, str, str], str] = Memo(_anonymous, ANONYMOUS_MEMO)


def network_part(subject: str) -> str | None:
    """The network of an anonymous subject; None for a login."""
    if not subject.startswith("address:"):
        return None
    return subject[len("address:"):].partition("|")[0]
