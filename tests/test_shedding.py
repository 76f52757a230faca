"""The in-flight gate: plan shares, and the anonymous share that cannot starve logged-in callers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.limits.shedding import InFlightGate

# (enter?, priority, anonymous?)
STEPS = st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.booleans()), max_size=200)


@given(st.integers(1, 50), st.integers(0, 3), st.floats(0.01, 1.0), STEPS)
def test_anonymous_callers_never_take_more_than_their_share(capacity, max_priority, share, steps):
    gate = InFlightGate(capacity, max_priority, share)
    inside: list[bool] = []  # anonymous? of each request in flight
    for enter, priority, anonymous in steps:
        if enter:
            if gate.try_enter(priority, anonymous):
                inside.append(anonymous)
        elif inside:
            gate.leave(inside.pop(0))
        assert gate.in_flight == len(inside) <= capacity
        assert gate.anonymous_in_flight == sum(inside) <= gate.anonymous_capacity
        # The top priority, logged in, always finds room while logged-in callers hold less than the rest.
        logged_in = len(inside) - sum(inside)
        if logged_in < capacity - gate.anonymous_capacity:
            assert gate.in_flight < gate.share(max_priority)


def test_the_anonymous_share_is_rounded_up_and_at_least_one():
    assert InFlightGate(200, 0, 0.1).anonymous_capacity == 20
    assert InFlightGate(5, 0, 0.1).anonymous_capacity == 1
