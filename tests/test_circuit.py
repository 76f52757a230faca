"""The state store's circuit breaker on an injected clock: one probe when half-open, closed by
its success, and never reopened by answers that belong to an earlier state."""

from __future__ import annotations

from gateway.state.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from tests.support.clock import ManualClock


def opened(clock: ManualClock, failures: int = 3) -> CircuitBreaker:
    breaker = CircuitBreaker(failures, cooldown=2.0, clock=clock)
    tickets = [breaker.allow() for _ in range(failures)]
    for ticket in tickets:
        breaker.failed(ticket)
    assert breaker.state == OPEN
    return breaker


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes():
    clock = ManualClock()
    breaker = opened(clock)
    clock.advance(1.9)
    assert breaker.allow() is None  # still cooling down: fail fast
    clock.advance(0.1)
    probe = breaker.allow()
    assert probe is not None and breaker.state == HALF_OPEN
    assert [breaker.allow() for _ in range(50)] == [None] * 50  # everyone else keeps failing fast
    breaker.succeeded()
    assert breaker.state == CLOSED
    assert all(breaker.allow() is not None for _ in range(50))


def test_a_failed_probe_opens_for_another_cooldown():
    clock = ManualClock()
    breaker = opened(clock)
    clock.advance(2.0)
    breaker.failed(breaker.allow())
    assert breaker.state == OPEN
    clock.advance(1.0)
    assert breaker.allow() is None
    clock.advance(1.0)
    assert breaker.allow() is not None


def test_late_failures_from_before_the_outage_do_not_reopen_a_recovered_circuit():
    clock = ManualClock()
    breaker = CircuitBreaker(3, cooldown=2.0, clock=clock)
    in_flight = [breaker.allow() for _ in range(20)]  # a big batch, admitted while closed
    for ticket in in_flight[:3]:
        breaker.failed(ticket)
    assert breaker.state == OPEN
    clock.advance(2.0)
    assert breaker.allow() is not None  # the probe
    for ticket in in_flight[3:10]:  # slow calls admitted before the circuit opened fail now
        breaker.failed(ticket)
    assert breaker.state == HALF_OPEN  # the probe alone decides
    breaker.succeeded()
    for ticket in in_flight[10:]:
        breaker.failed(ticket)
    assert breaker.state == CLOSED


def test_a_probe_that_never_answers_is_replaced_after_a_cooldown():
    clock = ManualClock()
    breaker = opened(clock)
    clock.advance(2.0)
    lost = breaker.allow()  # its caller went away: no success, no failure
    assert lost is not None
    clock.advance(1.0)
    assert breaker.allow() is None
    clock.advance(1.0)
    second = breaker.allow()
    assert second is not None
    breaker.failed(lost)  # the lost probe's late answer does not count
    assert breaker.state == HALF_OPEN
    breaker.succeeded()
    assert breaker.state == CLOSED


def test_background_writes_never_take_the_probe():
    clock = ManualClock()
    breaker = opened(clock)
    clock.advance(2.0)
    assert breaker.allow(probe=False) is None
    assert breaker.allow() is not None  # the request still probes
