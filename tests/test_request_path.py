"""Ambiguous request paths: what common upstreams would resolve differently from the prefix match."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.proxy.request_path import ambiguity, routing_form
from gateway.proxy.routing import Router

ROUTER = Router([(None, "/", "public"), (None, "/healthz", "health"), (None, "/api/", "api"), (None, "/a", "a")])


def upstream_views(path: str) -> list[str]:
    """How upstreams in the wild read a path: decoding once or twice (nginx, most frameworks),
    dropping `;params` before or after decoding (Tomcat, Spring), `\\` as `/` (IIS)."""
    once = unquote(path)
    views = [
        path,
        once,
        unquote(once),
        once.replace("\\", "/"),
        "/".join(unquote(segment.partition(";")[0]) for segment in path.split("/")),
        "/".join(segment.partition(";")[0] for segment in once.split("/")),
    ]
    return [re.sub("/{2,}", "/", view) for view in views]  # and merging slashes


def resolves_a_dot_segment(view: str) -> bool:
    return any(segment in (".", "..") for segment in view.split("/"))


PATH_PIECES = st.sampled_from(["/", ".", "..", ";", ";x=1", "%", "2", "e", "E", "f", "5", "c", "3b", "25", "61",
                               "20", "\\", "a", "pi", "api", "healthz", "u002e", "%2e", "%2f", "%5C", "%3b", "%00",
                               "%7E", "%61", "%2D"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(PATH_PIECES, max_size=12).map(lambda pieces: "/" + "".join(pieces)))
@example("/healthz/..;/api/v1/whoami")
@example("/healthz/..%5capi/v1/whoami")
@example("/;/api/v1")
def test_an_accepted_path_resolves_nowhere_else_on_any_upstream(path):
    if ambiguity(path) is not None:
        return
    route = ROUTER.match(None, path)
    # the handler refuses these when they route elsewhere
    if routing_form(path) != path and ROUTER.match(None, routing_form(path)) is not route:
        return
    for view in upstream_views(path):
        assert not resolves_a_dot_segment(view), (path, view)
        assert "\\" not in view, (path, view)
        assert ROUTER.match(None, view) == route, (path, view)


@pytest.mark.parametrize("path", [
    "/healthz/..;/api/v1/whoami", "/healthz/..%5capi/v1/whoami", "/healthz/..%5Capi", "/healthz/%2e%2e/api",
    "/healthz/%2E./api", "/healthz/..%2fapi", "/healthz\\..\\api", "/healthz/..%3b/api", "/healthz/%252e%252e/api",
    "/healthz/%u002e%u002e/api", "/%2561pi/v1", "//api/v1", "/healthz/./x", "/a/%00", "/a/\x01", "/a b", "/é", "api",
    "/healthz/..", "/healthz/.;x=1/api",
])
def test_known_traversals_are_ambiguous(path):
    assert ambiguity(path) is not None


@pytest.mark.parametrize("path", [
    "/", "/api/v1/tickets/1", "/api/v1/file.tar.gz", "/api/v1/a%20b", "/api/v1/%3Fq", "/portal/x;jsessionid=1",
    "/api/...", "/api/.well-known/x", "/api/", "/api/v1/caf%C3%A9", "/api/v1/users/%7Ejohn", "/api/v1/a%2Db%5Fc%2Ed",
])
def test_ordinary_paths_are_accepted(path):
    assert ambiguity(path) is None


def test_parameters_that_hide_a_route_change_the_routing_form():
    assert ROUTER.match(None, routing_form("/;/api/v1")) == "api"
    assert ROUTER.match(None, routing_form("/x%3bi/v1")) == "public"
    assert ROUTER.match(None, routing_form("/%61pi/v1")) == "api"  # an encoded letter, too
