"""What a User-Agent says: an automation family (from the configured lists) and a device
(browser family + platform), both cached since a fleet of clients repeats few strings."""

from __future__ import annotations

import re
from functools import lru_cache

from gateway.config.detection import UserAgentLists

_BROWSERS = (("edg/", "Edge"), ("opr/", "Opera"), ("firefox/", "Firefox"), ("chrome/", "Chrome"),
             ("crios/", "Chrome"), ("safari/", "Safari"))
_PLATFORMS = (("android", "Android"), ("iphone", "iOS"), ("ipad", "iOS"), ("windows", "Windows"),
              ("mac os x", "macOS"), ("cros", "ChromeOS"), ("linux", "Linux"))
_PRODUCT = re.compile(r"^[A-Za-z0-9._-]+")


class AgentClassifier:
    """Automation family of a user agent, or None for a browser-like or allow-listed one."""

    def __init__(self, lists: UserAgentLists) -> None:
        self._allow = tuple(item.lower() for item in lists.allow)
        self._families = tuple(
            (family, tuple(item.lower() for item in items))
            for family, items in (("headless", lists.headless), ("crawler", lists.crawlers),
                                  ("scanner", lists.scanners), ("library", lists.libraries))
        )
        self.family = lru_cache(maxsize=4096)(self._family)
        self.allowed = lru_cache(maxsize=4096)(self._allowed)

    def _allowed(self, agent: str) -> bool:
        lowered = agent.lower()
        return any(item in lowered for item in self._allow)

    def _family(self, agent: str) -> str | None:
        if not agent:
            return "library"  # no user agent at all: nobody's browser
        lowered = agent.lower()
        if any(item in lowered for item in self._allow):
            return None
        for family, items in self._families:
            if any(item in lowered for item in items):
                return family
        return None


@lru_cache(maxsize=4096)
def device_of(agent: str) -> str:
    """Browser family and platform, e.g. 'Firefox/Linux'; versions are ignored on purpose, so an
    update does not make a new device. Non-browsers are named by their product token."""
    lowered = agent.lower()
    browser = next((name for marker, name in _BROWSERS if marker in lowered), None)
    if browser is None:
        match = _PRODUCT.match(agent)
        return match.group(0).lower() if match else "unknown"
    platform = next((name for marker, name in _PLATFORMS if marker in lowered), "other")
    return f"{browser}/{platform}"
