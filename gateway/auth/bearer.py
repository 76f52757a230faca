"""The one reader of `Authorization: Bearer ...` headers, for the proxy and the admin API."""

from __future__ import annotations


def bearer_token(authorization: str | None) -> str | None:
    """The token of a Bearer credential, or None.

    RFC 7235: the scheme is case-insensitive and one or more spaces separate it from the token.
    """
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
