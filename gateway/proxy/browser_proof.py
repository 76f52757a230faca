"""The browser-proof link on the request path: planted in the HTML pages of routes that carry one,
and the reserved stylesheet URL it points to, answered by the gateway itself before routing.

The stylesheet's answer is the same whatever the token's worth (a scraper learns nothing from
it), costs no upstream request, no limit and no usage, and is small and constant. Its identity
comes from the login the portal itself reads (a bearer header or the session cookie, which a
browser sends with a same-origin stylesheet fetch)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from gateway.auth.authenticator import Authenticator
from gateway.auth.session_cookie import SessionCookieReader
from gateway.config import GatewayConfig, Route
from gateway.detect.observation import subject_of
from gateway.detect.off import RequestDetection
from gateway.detect.proof import BrowserProofs, PageResult
from gateway.problems import SERVER_NAME, problem_response
from gateway.proxy.client_address import ClientAddressResolver
from gateway.proxy.html_head import head_end, read_head, with_link
from gateway.proxy.request_keys import CLIENT_IP, IDENTITY, REQUEST_ID

PROOF_PATH = "/.well-known/fairgate/proof/"
# The `route` label of these answers in fairgate_requests_total: no route name can look like it.
PROOF_ROUTE = "(browser-proof)"
_SUFFIX = ".css"
_STYLESHEET = b"/* fairgate */\n"
# Validators of the upstream's bytes: a page with a link is another representation, and a 304
# would keep the browser on its cached page whose link was used up.
_VALIDATORS = ("ETag", "Last-Modified")


def page_load(headers: Mapping[str, str]) -> bool:
    """Whether a browser renders this answer as a page and so loads its <head>'s stylesheets.
    A script's fetch (htmx's hx-boost and pjax swap the body only) and a prefetch of a page that
    may never be opened fetch no link; clients that send no Fetch Metadata are taken as page loads."""
    if "HX-Request" in headers or "X-PJAX" in headers:
        return False
    for name in ("Sec-Purpose", "X-Sec-Purpose", "Purpose", "X-Moz"):
        if "prefetch" in headers.get(name, "").lower():
            return False
    destination = headers.get("Sec-Fetch-Dest")
    if destination is not None and destination.lower() not in ("document", "iframe", "frame"):
        return False
    mode = headers.get("Sec-Fetch-Mode")
    return mode is None or mode.lower() in ("navigate", "nested-navigate")


class ProofLinks:
    """One config's proof links: which answers get one, and the fetch that credits it."""

    __slots__ = ("_proofs", "_detection", "_authenticator", "_clients", "_cookie", "_headers", "_classes",
                 "head_within", "crediting")

    def __init__(self, config: GatewayConfig, proofs: BrowserProofs, detection: RequestDetection,
                 authenticator: Authenticator, clients: ClientAddressResolver) -> None:
        settings = config.detection.proof
        scraping = config.detection.scraping
        self._proofs = proofs
        self._detection = detection
        self._authenticator = authenticator
        self._clients = clients
        cookie = config.auth.session_cookie
        self._cookie = SessionCookieReader(cookie) if cookie is not None else None
        self.head_within = settings.head_within
        watched = frozenset(scraping.actions) if scraping.mode != "off" and detection.observes else frozenset()
        self._classes: frozenset[str] = frozenset(settings.classes) & watched
        self.crediting = bool(self._classes)
        self._headers = {"Content-Type": "text/css", "Cache-Control": f"private, max-age={int(settings.ttl)}",
                         "X-Content-Type-Options": "nosniff", "Server": SERVER_NAME}

    def plants_on(self, route: Route) -> bool:
        return route.detect and route.route_class in self._classes

    # -- pages -------------------------------------------------------------------------------

    def tag_for(self, request: BaseRequest, headers: CIMultiDict[str]) -> bytes | None:
        """A fresh link for this 200 answer to a GET, if it is uncompressed HTML (one HMAC pair);
        None leaves the answer as the upstream sent it."""
        content_type = headers.get("Content-Type")
        if content_type is None or content_type.partition(";")[0].strip().lower() != "text/html":
            return None
        if not page_load(request.headers):
            return None  # nothing would fetch the link: never counted as a page offered a proof
        if headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            self._proofs.page(PageResult.COMPRESSED)
            return None
        if "no-transform" in headers.get("Cache-Control", "").lower():
            self._proofs.page(PageResult.NO_TRANSFORM)
            return None
        identity = request.get(IDENTITY)
        subject = subject_of(identity.customer if identity else None, identity.user if identity else None,
                             request[CLIENT_IP], request.headers)
        token = self._proofs.mint(subject)
        return b'<link rel="stylesheet" href="%s%s%s">' % (PROOF_PATH.encode(), token.encode(), _SUFFIX.encode())

    def plant(self, headers: CIMultiDict[str], body: bytes, tag: bytes) -> tuple[bytes, bool]:
        """A whole body with `tag` before its `</head>` (and whether it went in)."""
        return self._planted(headers, body, head_end(body, self.head_within), tag)

    async def plant_streamed(self, headers: CIMultiDict[str], read_chunk: Callable[[], Awaitable[bytes]],
                             tag: bytes) -> tuple[bytes, bool]:
        """The first bytes of a streamed body, read up to its `</head>` (at most head_within and a
        chunk), with `tag` in place; the caller streams the rest as it comes."""
        read, at = await read_head(read_chunk, self.head_within)
        return self._planted(headers, read, at, tag)

    def _planted(self, headers: CIMultiDict[str], body: bytes | bytearray, at: int, tag: bytes) -> tuple[bytes, bool]:
        if at < 0:
            self._proofs.page(PageResult.NO_HEAD)
            return bytes(body), False
        self._proofs.page(PageResult.INJECTED)
        for name in _VALIDATORS:
            headers.popall(name, None)
        return with_link(body, at, tag), True

    # -- the stylesheet fetch ----------------------------------------------------------------

    async def answer(self, request: BaseRequest) -> web.Response:
        request_id = request[REQUEST_ID]
        if request.method not in ("GET", "HEAD"):
            return problem_response(405, "method-not-allowed", "Method Not Allowed",
                                    "A browser-proof stylesheet is only fetched.",
                                    headers={"Allow": "GET, HEAD", "X-Request-Id": request_id},
                                    extra={"request_id": request_id})
        if self.crediting and request.method == "GET":
            await self._credit(request)
        return web.Response(status=200, body=_STYLESHEET, headers={**self._headers, "X-Request-Id": request_id})

    async def _credit(self, request: BaseRequest) -> None:
        path = request.raw_path.partition("?")[0]
        token = path[len(PROOF_PATH):-len(_SUFFIX)] if path.endswith(_SUFFIX) else ""
        peer = request.remote or ""
        forwarded = request.headers.getall("X-Forwarded-For", ())
        client_ip = request[CLIENT_IP] = (
            self._clients.resolve(peer, ", ".join(forwarded)) if forwarded and self._clients.is_trusted(peer) else peer
        )
        headers = request.headers
        # Only a login the page itself already verified: nothing is verified here and no failed
        # login counted (a stale cookie on a page that does not read it must not lock its
        # address out), and an unknown token is whoever it is, not the login a page was minted for.
        session = None if self._cookie is None else self._cookie.login_token(headers, "GET")
        identity = self._authenticator.known(headers.get("Authorization"), session)
        anonymous = subject_of(None, None, client_ip, headers)
        if identity is None:
            subject, alternative = anonymous, None
        else:
            request[IDENTITY] = identity
            # A page on a route that does not read the login (auth: none) was minted for the client.
            subject, alternative = subject_of(identity.customer, identity.user, client_ip, headers), anonymous
        credited = self._proofs.verify(token, subject, alternative)
        if credited is not None:
            self._detection.observe_proof(credited)
