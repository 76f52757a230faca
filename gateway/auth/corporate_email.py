"""The policy's "only use corporate email addresses": is this address a free-mail one?"""

from __future__ import annotations

from collections.abc import Iterable


class FreeMailDomains:
    __slots__ = ("_domains",)

    def __init__(self, domains: Iterable[str]) -> None:
        self._domains = frozenset(domain.lower().strip(".") for domain in domains)

    def contains(self, email: str | None) -> bool:
        """True for an address at a listed domain or any subdomain of one."""
        if not email or "@" not in email:
            return False
        domain = email.rsplit("@", 1)[1].lower().strip(".")
        while domain:
            if domain in self._domains:
                return True
            _, _, domain = domain.partition(".")
        return False
