"""Config errors: every problem names the file, the key path and the reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    reason: str


def format_path(loc: tuple[int | str, ...]) -> str:
    """('routes', 2, 'upstream') -> 'routes[2].upstream'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class ConfigError(Exception):
    """A config file that cannot be used; `issues` lists every problem found."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [
            f"{self.source}: {issue.path}: {issue.reason}" if issue.path else f"{self.source}: {issue.reason}"
            for issue in self.issues
        ]
