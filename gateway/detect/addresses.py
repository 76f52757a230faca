"""Client addresses as the detectors keep them: by network (one office behind NAT counts once),
and only hashed with the deployment's salt, never in clear."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets

from gateway.state.memo import Memo

log = logging.getLogger("fairgate.detect")

# Addresses whose network is remembered (memo_networks on /metrics): the clients seen lately.
NETWORKS_MEMO = 65536
# Values whose salted hash is remembered (memo_hashes): networks, client addresses, agents.
HASHES_MEMO = 65536


def find_network(address: str) -> str:
    """The IPv4 /24 or IPv6 /48 an address belongs to ('' for something that is not an IP)."""
    parts = address.split(".")
    if len(parts) == 4 and all(part.isdigit() and part.isascii() and len(part) <= 3 and int(part) < 256
                               and (part == "0" or part[0] != "0") for part in parts):
        # Dotted IPv4, the common case, without ipaddress (measured: 0.1 ms a miss on a loaded VM).
        return f"{parts[0]}.{parts[1]}.{parts[2]}.0/24"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# One per process: the request path (anonymous subjects) and the analysis both ask for it.
NETWORKS: Memo[str, str] = Memo(find_network, NETWORKS_MEMO)
network_of = NETWORKS.__getitem__  # bound once: a hit is a dict lookup in C


class Hasher:
    """Salted, truncated BLAKE2b: stable within a deployment, useless without the salt."""

    def __init__(self, salt: bytes | None) -> None:
        if salt is None:
            log.warning("detection.hash_salt is not set: a random salt is used, so address hashes differ "
                        "between gateways and restarts")
            salt = secrets.token_bytes(16)
        self.salt = salt[:64]  # what a detection worker is given: its hashes must be the gateway's
        self.hashes: Memo[str, str] = Memo(self._hash, HASHES_MEMO)
        self.hash = self.hashes.__getitem__

    def _hash(self, value: str) -> str:
        return hashlib.blake2b(value.encode(), key=self.salt, digest_size=8).hexdigest()
