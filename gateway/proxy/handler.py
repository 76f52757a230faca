"""The request path: route, check request limits, authenticate, apply fair-use limits,
forward upstream, stream the answer back, account for it afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from itertools import chain
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway.auth.errors import AuthError
from gateway.auth.identity import Identity
from gateway.auth.responses import auth_problem
from gateway.config import Route
from gateway.detect.observation import subject_of
from gateway.detect.off import RequestDetection
from gateway.limits.limiter import NO_LIMITS, Admission
from gateway.limits.shedding import network_key
from gateway.metrics import Metrics
from gateway.problems import IETF_PROBLEM_TYPES, SERVER_NAME, Problem, problem_response
from gateway.proxy.answer import BufferedAnswer, buffered_answer
from gateway.proxy.browser_proof import PROOF_PATH, PROOF_ROUTE
from gateway.proxy.challenge import COOKIE, SECURE_COOKIE, Check
from gateway.proxy.headers import (
    VIA_TOKEN,
    AnswerLines,
    ForwardedFrom,
    client_answer_lines,
    client_response_headers,
    request_id_or_new,
    upstream_header_lines,
)
from gateway.proxy.pages.interstitial import challenge_page
from gateway.proxy.pages.navigation import wants_html
from gateway.proxy.pages.refusal import HEADINGS, refusal_page
from gateway.proxy.request_body import BodyTimeout, BodyTimeouts, next_chunk, read_whole
from gateway.proxy.request_keys import CLIENT_IP, IDENTITY, REQUEST_ID
from gateway.proxy.request_path import ambiguity, routing_form
from gateway.proxy.runtime import RouteTarget, Runtime
from gateway.proxy.websocket import is_websocket_upgrade, proxy_websocket
from gateway.state.store import StoreUnavailable
from gateway.upstream import Exchange, ResponseHead, UpstreamError, UpstreamTimeout

log = logging.getLogger("fairgate.proxy")

# Bodies up to this size are read whole: one write instead of a streaming loop.
_BUFFER_LIMIT = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
# More than a chunk's chunked-encoding framing ("%x\r\n" ... "\r\n") can add.
_FRAMING = 64
_VIA = VIA_TOKEN.decode()
# The forwarding fields the gateway sets on the way upstream, with and without X-Forwarded-Host.
_FORWARDING = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nVia: %s\r\nX-Request-Id: %s\r\n"
_FORWARDING_WITH_HOST = (b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\nVia: %s\r\n"
                         b"X-Request-Id: %s\r\n")
_CHALLENGE = "automation-challenge"
# Where a browser is shown the interstitial; anywhere else a challenge stays problem+json (APIs are for programs).
_INTERSTITIAL_CLASSES = frozenset({"portal", "public"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# The Runtime a request started with: its answers follow that config even if a reload lands meanwhile.
_RUNTIME = web.RequestKey("runtime", Runtime)


class RuntimeSource(Protocol):
    @property
    def current(self) -> Runtime: ...


class BodyTooLarge(Exception):
    pass


class ClientStalled(Exception):
    """The client took none of the response for longer than `server.send_timeout`."""


class Meter:
    """What one request used: body bytes each way and the upstream's time."""

    __slots__ = ("bytes", "bytes_in", "upstream_started", "upstream_seconds", "status", "body_digest", "wants_digest",
                 "offered_proof")

    def __init__(self, wants_digest: bool = False) -> None:
        self.bytes = 0  # both ways: what byte quotas count
        self.bytes_in = 0  # the request body alone
        self.upstream_started = 0.0
        self.upstream_seconds = 0.0
        self.status = 0  # the upstream's answer, once it came
        self.wants_digest = wants_digest  # the detectors compare request bodies
        self.body_digest: bytes | None = None
        self.offered_proof = False  # the answer carried a browser-proof link


class ProxyHandler:
    """The aiohttp low-level handler for the proxy listener."""

    def __init__(
        self,
        runtimes: RuntimeSource,
        metrics: Metrics,
        *,
        scheme: str = "http",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._runtimes = runtimes
        self._metrics = metrics
        self._scheme = scheme.encode("ascii")
        self._sleep = sleep

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._runtimes.current
        metrics = self._metrics
        request_id = request_id_or_new(request.headers.get("X-Request-Id"))
        request[REQUEST_ID] = request_id
        request[_RUNTIME] = runtime
        route_name = "-"
        status = 499  # stays so if the client goes away first
        metrics.in_flight += 1
        try:
            response: web.StreamResponse
            if request.raw_path.startswith(PROOF_PATH):  # the gateway's own, never routed
                route_name = PROOF_ROUTE
                response = await runtime.proof_links.answer(request)
                status = response.status
                return response
            target = self._match(runtime, request)
            if isinstance(target, web.Response):
                response = target
            else:
                route_name = target.route.name
                response = await self._serve(runtime, target, request, request_id)
            status = response.status
            return response
        finally:
            metrics.in_flight -= 1
            metrics.observe(route_name, status, time.perf_counter() - started)

    def _match(self, runtime: Runtime, request: BaseRequest) -> RouteTarget | web.Response:
        path = request.raw_path.partition("?")[0]
        reason = ambiguity(path)
        if reason is not None:
            return self._reject(request, 400, "bad-path", "Bad Request", f"The request path is ambiguous: {reason}.")
        router = runtime.router
        host = request.host if router.by_host else None  # aiohttp parses the Host header on first use
        target = router.match(host, path)
        if target is None:
            return self._reject(request, 404, "no-route", "Not Found", "No route matches this host and path.")
        form = routing_form(path)
        if form != path and router.match(host, form) is not target:
            return self._reject(
                request, 400, "bad-path", "Bad Request",
                "The request path is ambiguous: decoded, or without ';' parameters, it takes another route.",
            )
        route = target.route
        raw_headers = request.raw_headers
        header_bytes = sum(map(len, chain.from_iterable(raw_headers))) + 4 * len(raw_headers)  # ": " and CRLF
        if header_bytes > route.max_header_bytes:
            return self._reject(
                request, 431, "headers-too-large", "Request Header Fields Too Large",
                f"The request headers exceed {route.max_header_bytes} bytes on this route.",
            )
        length = request.content_length
        if length is not None and length > route.max_body:
            return self._reject(
                request, 413, "body-too-large", "Content Too Large",
                f"The request body exceeds {route.max_body} bytes on this route.",
            )
        return target

    def _reject(
        self, request: BaseRequest, status: int, slug: str, title: str, detail: str,
        headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None, type_uri: str | None = None,
    ) -> web.Response:
        self._count_rejection(request, slug)
        request_id = request[REQUEST_ID]
        headers = {**(headers or {}), "X-Request-Id": request_id}
        extra = {**(extra or {}), "request_id": request_id}
        if slug in HEADINGS and wants_html(request.headers):  # a person's browser: a page that explains
            return refusal_page(status, slug, detail, headers, extra, request_id, request[_RUNTIME].appeal)
        return problem_response(status, slug, title, detail, headers=headers, extra=extra, type_uri=type_uri)

    def _count_rejection(self, request: BaseRequest, slug: str) -> None:
        self._metrics.rejected(slug)
        identity = request.get(IDENTITY)
        if identity is not None:
            usage = request[_RUNTIME].usage
            if usage is not None:
                usage.rejected(identity.customer, slug)

    async def _serve(
        self, runtime: Runtime, target: RouteTarget, request: BaseRequest, request_id: str
    ) -> web.StreamResponse:
        peer = request.remote or ""
        route = target.route
        websocket = route.websocket and is_websocket_upgrade(request)
        lines, found, client_host = upstream_header_lines(
            request.raw_headers, replace_host=target.host_header,
            strip=target.strip_headers_websocket if websocket else target.strip_headers,
        )
        clients = runtime.client_addresses
        trusted = clients.is_trusted(peer)
        client_ip = request[CLIENT_IP] = (
            clients.resolve(peer, found.forwarded_for.decode("latin-1")) if trusted and found.forwarded_for else peer
        )

        identity = None
        if route.auth != "none":
            session = target.session_cookie
            try:
                identity = await runtime.authenticator.authenticate(
                    request.headers.get("Authorization"), client_ip,
                    required=route.auth == "required", scopes=route.required_scopes,
                    session_token=None if session is None else session.login_token(request.headers, request.method),
                )
            except AuthError as exc:
                return self._refuse(request, auth_problem(exc))
            if identity is not None:
                request[IDENTITY] = identity
                lines.append(b"%s: %s\r\n" % (runtime.customer_header, identity.customer.encode()))
                lines.append(b"%s: %s\r\n" % (runtime.user_header, identity.user.encode()))
            if session is not None and not session.forwards and (cookie := session.upstream_cookie(request.headers)):
                lines.append(cookie)

        detection, enforcement = runtime.detection, runtime.enforcement
        if detection.sanctions:
            sanctioned = self._sanctioned(runtime, route, identity, client_ip, request,
                                          trusted and (found.proto or b"").lower() == b"https")
            if sanctioned is not None:
                return sanctioned

        standing = enforcement.admit(identity)
        if isinstance(standing, Problem):  # suspended
            _observe_refused(detection, route, identity, client_ip, request, standing.status)
            return self._refuse(request, standing)

        admission = NO_LIMITS
        if runtime.limiter is not None:
            try:
                admission = await runtime.limiter.admit(
                    identity, route, client_ip, request_id,
                    throttle=1.0 if standing is None else enforcement.throttle_factor(standing),
                )
            except StoreUnavailable:
                return self._reject(request, 503, "limits-unavailable", "Service Unavailable",
                                    "Fair-use limits cannot be checked right now.", headers={"Retry-After": "1"})
        extra_headers = admission.headers
        if standing is not None:
            # Warned or throttled: every response says so, and what comes next.
            extra_headers = {**extra_headers, "Fair-Use-Warning": enforcement.warning(standing)}
        if admission.rejected:
            _observe_refused(detection, route, identity, client_ip, request, 429)
            return self._limited(request, admission, extra_headers,
                                 enforcement.limited(identity, admission.plan, admission.rejected, standing))

        gate = target.gate
        anonymous = None if gate is None or identity is not None else network_key(client_ip)
        if gate is not None and not gate.try_enter(admission.priority, anonymous):
            if runtime.limiter is not None:
                runtime.limiter.finish(admission, 0, 0.0)  # gives back any concurrency slot
            return self._reject(
                request, 503, "temporary-reduced-capacity", "Service Unavailable",
                "The service is at capacity; lower-priority traffic is shed first. Retry shortly.",
                headers={"Retry-After": "1", **extra_headers},
                type_uri=IETF_PROBLEM_TYPES["temporary-reduced-capacity"],
            )
        observed = detection.observes and route.detect
        meter = Meter(wants_digest=observed)
        try:
            if admission.delay:
                await self._sleep(admission.delay)
            if target.rate_cap is not None and (capped := await target.rate_cap.admit(route.upstream)):
                return self._refuse(request, capped)
            self._add_forwarding(lines, found, peer, trusted, client_host, request_id, target)
            if websocket:
                return await proxy_websocket(request, target, lines, self._metrics)
            return await self._forward(target, request, request_id, lines, extra_headers, meter,
                                       runtime.body_timeouts, runtime.send_timeout)
        finally:
            if gate is not None:
                gate.leave(anonymous)
            if runtime.limiter is not None:
                runtime.limiter.finish(admission, meter.bytes, meter.upstream_seconds)
            if meter.status and identity is not None and runtime.usage is not None:
                runtime.usage.forwarded(identity.customer, route.cost, meter.bytes_in, meter.bytes - meter.bytes_in,
                                        meter.upstream_seconds, identity.licenses, admission.plan)
            if observed and meter.status:
                detection.observe_request(route.route_class, identity, client_ip,
                                          request.method, request.raw_path,
                                          request.headers, meter.status, meter.body_digest, meter.offered_proof)

    def _sanctioned(self, runtime: Runtime, route: Route, identity: Identity | None, client_ip: str,
                    request: BaseRequest, forwarded_https: bool) -> web.Response | None:
        """The answer to a request a sanction refuses (a page for a person's browser), or None."""
        detection = runtime.detection
        problem = detection.refusal(identity, client_ip, route.route_class, request.headers)
        if problem is None:
            return None
        subject = ""
        if problem.slug == _CHALLENGE:
            subject = subject_of(None if identity is None else identity.customer,
                                 None if identity is None else identity.user, client_ip, request.headers)
            if self._passes(runtime, request, subject):
                return None  # a browser proved itself: spared challenges (never a block) until the pass expires
        _observe_refused(detection, route, identity, client_ip, request, problem.status)
        problem = runtime.enforcement.with_warning(problem, identity)
        if (subject and route.route_class in _INTERSTITIAL_CLASSES and request.method in _SAFE_METHODS
                and wants_html(request.headers)):
            return self._challenge(runtime, request, problem, subject, self._scheme == b"https" or forwarded_https)
        return self._refuse(request, problem)

    def _passes(self, runtime: Runtime, request: BaseRequest, subject: str) -> bool:
        """Whether the request carries a valid challenge pass for `subject`; credits the proof."""
        # Every Cookie header: a front proxy may split HTTP/2's cookie crumbs over several.
        cookies = request.headers.getall("Cookie", ())
        verdict = runtime.challenges.check("; ".join(cookies) if cookies else None, subject)
        if verdict is Check.ABSENT:
            return False
        if verdict is Check.PASSED or verdict is Check.VALID:
            if verdict is Check.PASSED:
                self._metrics.challenges.labels("passed").inc()
            runtime.detection.observe_proof(subject)
            return True
        self._metrics.challenges.labels("failed").inc()
        return False

    def _challenge(self, runtime: Runtime, request: BaseRequest, problem: Problem, subject: str,
                   secure: bool) -> web.Response:
        self._count_rejection(request, problem.slug)
        self._metrics.challenges.labels("issued").inc()
        request_id = request[REQUEST_ID]
        policy = problem.extra.get("policy")
        return challenge_page(runtime.challenges.issue(subject), SECURE_COOKIE if secure else COOKIE, secure,
                              problem.detail,
                              {**problem.headers, "X-Request-Id": request_id}, request_id, runtime.appeal,
                              policy if isinstance(policy, str) else None)

    def _refuse(self, request: BaseRequest, problem: Problem) -> web.Response:
        return self._reject(request, problem.status, problem.slug, problem.title, problem.detail,
                            headers=problem.headers, extra=problem.extra)

    def _add_forwarding(self, lines: list[bytes], found: ForwardedFrom, peer: str, trusted: bool,
                        client_host: bytes | None, request_id: str, target: RouteTarget) -> None:
        # One formatted block (fields in the same order either way): this runs on every request.
        peer_bytes = peer.encode("ascii")
        forwarded_for = found.forwarded_for + b", " + peer_bytes if found.forwarded_for else peer_bytes
        proto = found.proto if trusted and found.proto else self._scheme
        via = found.via + b", " + VIA_TOKEN if found.via else VIA_TOKEN
        forwarded_host = found.host if trusted and found.host else client_host
        request_id_bytes = request_id.encode("ascii")
        if forwarded_host:
            lines.append(_FORWARDING_WITH_HOST % (forwarded_for, proto, forwarded_host, via, request_id_bytes))
        else:
            lines.append(_FORWARDING % (forwarded_for, proto, via, request_id_bytes))
        if target.host_header is not None:
            lines.append(b"Host: %s\r\n" % target.host_header)

    def _limited(self, request: BaseRequest, admission: Admission, headers: Mapping[str, str],
                 warning: dict[str, Any] | None = None) -> web.Response:
        names = [limit.name for limit in admission.rejected]
        retry_after = max(1, math.ceil(admission.retry_after))
        return self._reject(
            request, 429, "quota-exceeded", "Too Many Requests",
            f"The {admission.plan} plan's limit {', '.join(names)} is used up; retry in {retry_after} s.",
            headers={**headers, "Retry-After": str(retry_after)},
            extra={"violated-policies": names, "plan": admission.plan, **(warning or {})},
            type_uri=IETF_PROBLEM_TYPES["quota-exceeded"],
        )

    async def _forward(
        self, target: RouteTarget, request: BaseRequest, request_id: str, lines: list[bytes],
        extra_headers: Mapping[str, str], meter: Meter, timeouts: BodyTimeouts, send_timeout: float,
    ) -> web.StreamResponse:
        route = target.route
        length = request.content_length
        body: bytes | AsyncIterator[bytes] | None = None
        chunked = False
        if request.body_exists and request.headers.get("Expect", "").lower() == "100-continue":
            # The limits passed, so invite the body; the upstream never sees the Expect.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length is None and request.body_exists:
            chunked = True
            body = _limited_body(request, route.max_body, meter, timeouts)
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif length:
            if length <= _BUFFER_LIMIT:
                try:
                    body = await read_whole(request.content, timeouts)
                except BodyTimeout:
                    return await self._body_timed_out(request)
            else:
                body = _limited_body(request, route.max_body, meter, timeouts)
            if isinstance(body, bytes):
                meter.bytes += length
                meter.bytes_in += length
                if meter.wants_digest:
                    meter.body_digest = hashlib.blake2b(body, digest_size=8).digest()
            lines.append(b"Content-Length: %d\r\n" % length)
        elif length == 0 and request.method not in ("GET", "HEAD"):
            lines.append(b"Content-Length: 0\r\n")

        head = b"".join([_wire(f"{request.method} {request.raw_path} HTTP/1.1\r\n"), *lines, b"\r\n"])
        meter.upstream_started = time.perf_counter()
        try:
            exchange = await target.pool.exchange(head, body, chunked=chunked, head_only=request.method == "HEAD")
        except BodyTooLarge:
            return self._reject(
                request, 413, "body-too-large", "Content Too Large",
                f"The request body exceeds {route.max_body} bytes on this route.",
            )
        except BodyTimeout:
            # The upstream had the head and maybe part of the body; its connection is aborted.
            return await self._body_timed_out(request)
        except UpstreamError as exc:
            return self._upstream_failed(request, target, exc, extra_headers)
        # Headers in: the upstream's own time to answer, before any body streams.
        upstream = exchange.head
        self._metrics.observe_upstream(route.upstream, upstream.status, time.perf_counter() - meter.upstream_started)
        meter.status = upstream.status
        answer_lines = _whole_answer_lines(request, upstream, target)
        if answer_lines is not None and (answer_body := exchange.take_body()) is not None:
            # The common answer: small, and it came in the head's packet. No await (no coroutine) for it.
            return _whole_answer(request, exchange, answer_lines, answer_body, extra_headers, request_id, meter)
        return await self._relay(request, exchange, target, request_id, extra_headers, meter,
                                 send_timeout, answer_lines)

    async def _body_timed_out(self, request: BaseRequest) -> web.Response:
        response = self._reject(request, 408, "body-timeout", "Request Timeout",
                                "The request body did not arrive in time.")
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        # aiohttp would linger reading the rest of the body; a client that stalled gets no more time.
        request.protocol.force_close()
        return response

    def _count_upstream_failure(self, request: BaseRequest, target: RouteTarget, exc: UpstreamError) -> None:
        self._metrics.upstream_errors.labels(target.route.upstream, type(exc).__name__).inc()
        log.warning("upstream %s failed: %s", target.route.upstream, exc,
                    extra={"request_id": request[REQUEST_ID], "route": target.route.name})

    def _upstream_failed(self, request: BaseRequest, target: RouteTarget, exc: UpstreamError,
                         extra_headers: Mapping[str, str]) -> web.Response:
        self._count_upstream_failure(request, target, exc)
        if isinstance(exc, UpstreamTimeout):
            return self._reject(request, 504, "upstream-timeout", "Gateway Timeout",
                                "The upstream did not answer in time.", headers=extra_headers)
        return self._reject(request, 502, "upstream-unavailable", "Bad Gateway",
                            "The upstream could not be reached or answered badly.", headers=extra_headers)

    async def _relay(
        self, request: BaseRequest, exchange: Exchange, target: RouteTarget, request_id: str,
        extra_headers: Mapping[str, str], meter: Meter, send_timeout: float, whole: AnswerLines | None,
    ) -> web.StreamResponse:
        """The answer, streamed or read first; `whole` are its lines when it is small enough to
        be written in one piece (`_whole_answer_lines`)."""
        upstream = exchange.head
        status = upstream.status
        links = target.proof_links
        if whole is not None:
            try:
                body = await exchange.read_all()
            except UpstreamError as exc:
                exchange.abort()
                return self._upstream_failed(request, target, exc, extra_headers)
            except BaseException:
                exchange.abort()
                raise
            return _whole_answer(request, exchange, whole, body, extra_headers, request_id, meter)
        headers, length = client_response_headers(upstream.headers)
        if extra_headers:
            headers.update(extra_headers)
        headers["X-Request-Id"] = request_id
        headers.setdefault("Server", SERVER_NAME)  # the upstream's own passes through
        # Every Via field the upstream sent, in order, then ours (as the buffered path does).
        via = ", ".join(headers.getall("Via", ()))
        headers["Via"] = f"{via}, {_VIA}" if via else _VIA
        reason = upstream.reason.decode("utf-8", "replace") or None
        response: web.StreamResponse | None = None
        tag = None
        if links is not None and status == 200 and request.method == "GET":
            tag = links.tag_for(request, headers)
        try:
            if request.method == "HEAD" or status in _NO_BODY_STATUSES:
                exchange.release()
                meter.upstream_seconds = time.perf_counter() - meter.upstream_started
                response = web.StreamResponse(status=status, reason=reason, headers=headers)
                if length is not None and status != 204:
                    response.content_length = length
                await response.prepare(request)
                await response.write_eof()
                return response
            if length is not None and length <= _BUFFER_LIMIT:
                body = await exchange.read_all()
                exchange.release()
                meter.upstream_seconds = time.perf_counter() - meter.upstream_started
                meter.bytes += len(body)
                if tag is not None and links is not None:
                    body, meter.offered_proof = links.plant(headers, body, tag)
                return web.Response(status=status, reason=reason, headers=headers, body=body)
            first = b""
            if tag is not None and links is not None:  # the page's head is held until its </head> shows
                first, meter.offered_proof = await links.plant_streamed(headers, exchange.read_chunk, tag)
                meter.bytes += len(first)
                if meter.offered_proof:
                    meter.bytes -= len(tag)  # the upstream's bytes are the customer's, not the gateway's link
                    length = None if length is None else length + len(tag)
            response = web.StreamResponse(status=status, reason=reason, headers=headers)
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            transport = request.transport
            if first:
                await _send(response, first, send_timeout, transport)
            while chunk := await exchange.read_chunk():
                meter.bytes += len(chunk)
                await _send(response, chunk, send_timeout, transport)
            exchange.release()
            meter.upstream_seconds = time.perf_counter() - meter.upstream_started
            await response.write_eof()
            return response
        except UpstreamError as exc:
            exchange.abort()
            if response is None or not response.prepared:  # nothing of this response sent yet
                return self._upstream_failed(request, target, exc, extra_headers)
            # Part of the body is out: only a broken connection tells the client it is truncated.
            self._count_upstream_failure(request, target, exc)
            if request.transport is not None:
                request.transport.abort()
            return response
        except ClientStalled:
            assert response is not None  # a stall happens only while its body is being sent
            exchange.abort()
            log.info("client %s stopped reading the response; connection closed", request.remote,
                     extra={"request_id": request_id, "route": target.route.name})
            if request.transport is not None:
                request.transport.abort()
            return response
        except BaseException:
            exchange.abort()
            raise


async def _send(response: web.StreamResponse, chunk: bytes, timeout: float,
                transport: asyncio.Transport | None) -> None:
    # aiohttp's write suspends only to drain, and drains only while the transport is paused,
    # which happens when its buffer passes the high-water mark: below it (the chunk and its
    # chunked framing; the head went out at prepare) the write cannot block, and a timeout per
    # chunk (a timer, a context) would cost more than the write.
    if (transport is not None
            and transport.get_write_buffer_size() + len(chunk) + _FRAMING <= transport.get_write_buffer_limits()[1]):
        await response.write(chunk)
        return
    # A client that stops reading would otherwise hold the upstream connection and the
    # in-flight slot for as long as it likes.
    try:
        async with asyncio.timeout(timeout):
            await response.write(chunk)
    except TimeoutError:
        raise ClientStalled() from None


def _whole_answer_lines(request: BaseRequest, upstream: ResponseHead, target: RouteTarget) -> AnswerLines | None:
    """The client's header lines when the answer is to be written in one piece: it has a body
    (not HEAD, 1xx, 204, 304), a Content-Length within the buffer limit, and is not a page that
    may get a browser-proof link. None for every other answer (streamed, or through `Response`)."""
    status = upstream.status
    if request.method == "HEAD" or status < 200 or status in _NO_BODY_STATUSES:
        return None
    if target.proof_links is not None and status == 200 and request.method == "GET":
        return None
    lines = client_answer_lines(upstream.headers)
    if lines.content_length is None or lines.content_length > _BUFFER_LIMIT:
        return None
    return lines


def _whole_answer(request: BaseRequest, exchange: Exchange, lines: AnswerLines, body: bytes,
                  extra_headers: Mapping[str, str], request_id: str, meter: Meter) -> BufferedAnswer:
    exchange.release()
    meter.upstream_seconds = time.perf_counter() - meter.upstream_started
    meter.bytes += len(body)
    head = exchange.head
    return buffered_answer(request, head.status, head.reason, lines, extra_headers, request_id, body)


def _wire(text: str) -> bytes:
    # aiohttp decodes the request line and headers as UTF-8 with surrogateescape; this
    # restores the exact bytes the client sent.
    return text.encode("utf-8", "surrogateescape")


async def _limited_body(request: BaseRequest, limit: int, meter: Meter, timeouts: BodyTimeouts) -> AsyncIterator[bytes]:
    received = 0
    deadline = timeouts.deadline()
    while chunk := await next_chunk(request.content, timeouts, deadline):
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge()
        meter.bytes += len(chunk)
        meter.bytes_in += len(chunk)
        yield chunk


def _observe_refused(detection: RequestDetection, route: Route, identity: Identity | None, client_ip: str,
                     request: BaseRequest, status: int) -> None:
    """A refused request still used the login: the sharing detector counts it (one append)."""
    if identity is not None and detection.observes and route.detect and route.route_class != "asset":
        detection.observe_refused(route.route_class, identity, client_ip, request.method, request.raw_path,
                                  request.headers, status)
