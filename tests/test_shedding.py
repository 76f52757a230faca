"""The in-flight gate: plan shares, the anonymous share that cannot starve logged-in callers, and
the part of it one network may hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.limits.shedding import InFlightGate, network_key

# (enter?, priority, network of an anonymous caller or None when logged in)
NETWORKS = st.sampled_from([None, "10.0.0", "10.0.1", "2001:db8::/48"])
STEPS = st.lists(st.tuples(st.booleans(), st.integers(0, 3), NETWORKS), max_size=200)


@given(st.integers(1, 50), st.integers(0, 3), st.floats(0.01, 1.0), st.floats(0.01, 1.0), STEPS)
def test_anonymous_callers_never_take_more_than_their_share(capacity, max_priority, share, network_share, steps):
    gate = InFlightGate(capacity, max_priority, share, network_share)
    inside: list[str | None] = []  # the anonymous network (None: logged in) of each request in flight
    for enter, priority, network in steps:
        if enter:
            if gate.try_enter(priority, network):
                inside.append(network)
        elif inside:
            gate.leave(inside.pop(0))
        anonymous = [network for network in inside if network is not None]
        assert gate.in_flight == len(inside) <= capacity
        assert gate.anonymous_in_flight == len(anonymous) <= gate.anonymous_capacity
        assert all(anonymous.count(network) <= gate.network_capacity for network in anonymous)
        # The top priority, logged in, always finds room while logged-in callers hold less than the rest.
        logged_in = len(inside) - len(anonymous)
        if logged_in < capacity - gate.anonymous_capacity:
            assert gate.in_flight < gate.share(max_priority)


def test_the_anonymous_share_is_rounded_up_and_at_least_one():
    assert InFlightGate(200, 0, 0.1).anonymous_capacity == 20
    assert InFlightGate(5, 0, 0.1).anonymous_capacity == 1


def test_one_network_holds_half_the_anonymous_share_and_others_the_rest():
    gate = InFlightGate(200, 0, 0.1, 0.5)
    assert [gate.try_enter(0, "198.51.100") for _ in range(11)] == [True] * 10 + [False]
    assert all(gate.try_enter(0, "203.0.113") for _ in range(10))  # another network still gets in
    assert gate.try_enter(0, None)  # and so does a login


@given(st.ip_addresses())
def test_every_address_has_a_network_and_neighbours_share_it(address):
    key = network_key(str(address))
    assert key
    if address.version == 4:
        neighbour = address + 1 if int(address) & 0xFF != 0xFF else address - 1
        assert network_key(str(neighbour)) == key
