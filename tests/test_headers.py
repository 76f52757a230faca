"""Header handling and client-address resolution, property-tested."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.client_address import ClientAddressResolver
from gateway.proxy.headers import HOP_BY_HOP, client_response_headers, request_id_or_new, upstream_header_lines
from gateway.proxy.routing import Router

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
names = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode).filter(lambda n: n.lower() not in HOP_BY_HOP)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.encode)
hop_names = st.sampled_from(sorted(HOP_BY_HOP)).map(lambda n: n.title())
gateway_set = st.sampled_from([b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Via", b"X-Request-Id"])
header_lists = st.lists(st.tuples(st.one_of(names, hop_names, gateway_set), values), max_size=15)


def parsed(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [tuple(line.rstrip(b"\r\n").split(b": ", 1)) for line in lines]  # type: ignore[misc]


@given(header_lists, st.lists(names, max_size=3))
def test_no_hop_by_hop_or_connection_named_header_goes_upstream(headers, connection_named):
    raw = (*headers, (b"Connection", b", ".join(connection_named) or b"close"))
    lines, _, _ = upstream_header_lines(raw, replace_host=None)
    sent = {name.lower() for name, _ in parsed(lines)}
    assert not sent & HOP_BY_HOP
    assert not sent & {name.lower() for name in connection_named}
    assert not sent & {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via", b"x-request-id"}


@given(header_lists)
def test_end_to_end_headers_keep_their_order_and_bytes(headers):
    lines, _, _ = upstream_header_lines(tuple(headers), replace_host=None)
    dropped = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via",
                            b"x-request-id", b"content-length", b"expect"}
    named = {token.strip().lower() for n, v in headers if n.lower() == b"connection" for token in v.split(b",")}
    expected = [(n, v) for n, v in headers if n.lower() not in dropped and n.lower() not in named]
    assert parsed(lines) == expected


@given(st.lists(values, min_size=1, max_size=4))
def test_repeated_forwarded_for_headers_are_joined_in_order(chain):
    raw = tuple((b"X-Forwarded-For", value) for value in chain)
    _, found, _ = upstream_header_lines(raw, replace_host=None)
    assert found.forwarded_for == b", ".join(chain)


def test_replace_host_drops_the_client_host():
    lines, _, client_host = upstream_header_lines(((b"Host", b"public.example"), (b"A", b"1")), replace_host=b"up:80")
    assert client_host == b"public.example"
    assert parsed(lines) == [(b"A", b"1")]


@given(header_lists, st.lists(names, max_size=3))
def test_response_headers_lose_hop_by_hop_and_connection_named(headers, connection_named):
    raw = [*headers, (b"Connection", b", ".join(connection_named) or b"keep-alive")]
    result, _ = client_response_headers(raw)
    kept = {name.lower() for name in result}
    assert not kept & {name.decode() for name in HOP_BY_HOP}
    assert not kept & {name.decode().lower() for name in connection_named}


def test_response_content_length_is_taken_out_for_reframing():
    headers, length = client_response_headers([(b"Content-Length", b"42"), (b"ETag", b'"x"')])
    assert length == 42
    assert list(headers.items()) == [("ETag", '"x"')]


@given(st.text(max_size=200))
def test_request_ids_are_always_safe_to_echo(value):
    result = request_id_or_new(value)
    assert 1 <= len(result) <= 128
    assert all(c.isascii() and c.isprintable() and c != " " for c in result)


def test_a_request_id_with_a_trailing_newline_is_replaced():
    # The example hypothesis found: a "$" anchor matches before a final newline.
    assert request_id_or_new("abc\n") != "abc\n"
    assert request_id_or_new("abc") == "abc"


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@given(ips, st.lists(ips, max_size=5))
def test_untrusted_peer_is_the_client_whatever_it_claims(peer, chain):
    resolver = ClientAddressResolver([ipaddress.ip_network("10.0.0.0/8")])
    if ipaddress.ip_address(peer) in ipaddress.ip_network("10.0.0.0/8"):
        return
    assert resolver.resolve(peer, ", ".join(chain)) == peer


@given(st.lists(ips, min_size=1, max_size=5), st.integers(min_value=0, max_value=3))
def test_client_is_the_first_untrusted_hop_from_the_right(untrusted_chain, trusted_hops):
    trusted_net = ipaddress.ip_network("10.0.0.0/8")
    chain = [ip for ip in untrusted_chain if ipaddress.ip_address(ip) not in trusted_net]
    if not chain:
        return
    trusted = [f"10.0.0.{i + 1}" for i in range(trusted_hops)]
    resolver = ClientAddressResolver([trusted_net])
    assert resolver.resolve("10.9.9.9", ", ".join(chain + trusted)) == chain[-1]


def test_garbage_hop_stops_the_walk_at_the_last_trusted_address():
    resolver = ClientAddressResolver([ipaddress.ip_network("10.0.0.0/8")])
    assert resolver.resolve("10.0.0.1", "198.51.100.1, not-an-ip, 10.0.0.2") == "10.0.0.2"
    assert resolver.resolve("10.0.0.1", "[2001:db8::1]:443") == "2001:db8::1"
    assert resolver.resolve("10.0.0.1", "") == "10.0.0.1"


def test_router_prefers_host_then_longest_prefix():
    router = Router([(None, "/", "root"), (None, "/api/", "api"), ("api.example", "/api/", "host-api")])
    assert router.match("api.example:8443", "/api/x") == "host-api"
    assert router.match("API.EXAMPLE", "/api/x") == "host-api"
    assert router.match("api.example", "/other") == "root"
    assert router.match("else.example", "/api/v1") == "api"
    assert Router([(None, "/api/", "api")]).match(None, "/apix") is None
