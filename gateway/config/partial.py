"""What is left of a config once its invalid keys are cut out, so that the cross-reference
checks (routes to upstreams, customers to plans, ...) run in the same pass as the field
errors: `check-config` then lists every problem at once instead of one kind per run."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.config.errors import ConfigIssue, format_path
from gateway.config.model import GatewayConfig

Loc = tuple[int | str, ...]  # where an error is: keys and list indexes, as pydantic gives them

_ROUNDS = 64  # validations at most: one per route cut, and a few more
_PATH_PART = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")
# Whole list items that may be cut when a required key of theirs is missing or invalid.
_CUTTABLE_LISTS = frozenset({("routes",)})
# A route's invalid name or prefix stands in as a unique placeholder, so its other keys (its
# upstream above all) are still checked. Nothing refers to either.
_PLACEHOLDERS = {"name": "invalid-route-{n}", "path_prefix": "/invalid-route-{n}/"}


class Salvage:
    """A copy of the raw config that invalid keys are cut from; list items cut keep their
    original index for messages."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.data = copy.deepcopy(raw)
        self._origins: dict[int, list[int]] = {}  # id(list) -> original index of each item left

    def config(self, errors: list[tuple[Loc, str, str]]) -> GatewayConfig | None:
        """Cut each (loc, type, message) error's key and validate again; None when it cannot be done."""
        for _ in range(_ROUNDS):
            for loc, kind, message in sorted(errors, key=lambda error: _order(error[0]), reverse=True):
                cut = self._cut(loc, kind, message)
                if cut is None:
                    return None
                if cut == "item":
                    break  # later errors may point into the shifted list: validate again first
            try:
                return GatewayConfig.model_validate(self.data)
            except ValidationError as exc:
                errors = [(clean_loc(error["loc"]), error["type"], error["msg"]) for error in exc.errors()]
        return None

    def original(self, path: str) -> str:
        """'routes[1].upstream' as it was numbered in the file."""
        parts: list[Any] = []
        node: Any = self.data
        for index, key in _PATH_PART.findall(path):
            if index:
                position = int(index)
                origins = self._origins.get(id(node))
                parts.append(f"[{origins[position] if origins else position}]")
                node = node[position] if isinstance(node, list) and position < len(node) else None
            else:
                parts.append(f".{key}" if parts else key)
                node = node.get(key) if isinstance(node, dict) else None
        return "".join(parts)

    def _cut(self, loc: Loc, kind: str, message: str) -> str | None:
        """Cut what the error is about: "key" or "item" (a whole list item); None if nothing can be."""
        key, sep, _ = message.removeprefix("Value error, ").partition(": ")
        if kind == "value_error" and sep and key.isidentifier():
            loc = (*loc, key)  # a section's own check names the key it rejects
        parent = self._walk(loc[:-1])
        if kind != "missing" and isinstance(parent, dict) and loc and loc[-1] in parent:
            if len(loc) == 3 and loc[0] == "routes" and loc[2] in _PLACEHOLDERS:
                parent[loc[2]] = _PLACEHOLDERS[loc[2]].format(n=loc[1])
            else:
                del parent[loc[-1]]
            return "key"
        # A required key: only a whole list item can go, if it is one of those that may.
        for depth in range(len(loc) - 1, 0, -1):
            index = loc[depth]
            if isinstance(index, int) and loc[:depth] in _CUTTABLE_LISTS:
                items = self._walk(loc[:depth])
                if isinstance(items, list) and index < len(items):
                    origins = self._origins.setdefault(id(items), list(range(len(items))))
                    del items[index]
                    del origins[index]
                    return "item"
        return None

    def _walk(self, loc: Loc) -> Any:
        node: Any = self.data
        for part in loc:
            if isinstance(node, dict):
                node = node.get(part)  # a missing key ends the walk at None, as a None value does
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                return None
        return node


def clean_loc(loc: Loc) -> Loc:
    # pydantic appends the tag of the union member it tried (e.g. 'function-after[...]').
    return tuple(part for part in loc if not (isinstance(part, str) and "[" in part))


def _order(loc: Loc) -> tuple[tuple[int, int, str], ...]:
    # Deeper and later items first, so cutting one never shifts another still to be cut.
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in loc)


def reference_issues(raw: dict[str, Any], errors: list[ErrorDetails],
                     check: Callable[[GatewayConfig], Iterable[ConfigIssue]]) -> list[ConfigIssue]:
    """Cross-reference issues of what is valid in `raw`, numbered as in the file."""
    salvage = Salvage(raw)
    config = salvage.config([(clean_loc(error["loc"]), error["type"], error["msg"]) for error in errors])
    if config is None:
        return []

    flawed = {format_path(clean_loc(error["loc"])) for error in errors}
    issues: list[ConfigIssue] = []
    for issue in check(config):
        path = salvage.original(issue.path)
        if path not in flawed:  # a key already reported is judged on what stood in for it
            issues.append(type(issue)(path, issue.reason))
    return issues
