"""Parse key material: a PEM public key or a JWKS document, into keys by `kid`."""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key


def parse_key_document(text: str) -> dict[str | None, Any]:
    """Keys by kid from a JWKS JSON document or a PEM public key (kid None); ValueError if neither."""
    if text.lstrip().startswith("{"):
        return jwks_keys(text)
    try:
        return {None: load_pem_public_key(text.encode())}
    except (ValueError, TypeError):
        raise ValueError("neither a PEM public key nor a JWKS document") from None


def jwks_keys(text: str) -> dict[str | None, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str | None, Any] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry.get("kid")] = jwt.PyJWK(entry).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue  # a key type this build cannot use; the others still serve
    if not keys:
        raise ValueError("no usable signing keys")
    return keys
