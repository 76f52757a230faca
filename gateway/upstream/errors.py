"""What can go wrong talking to an upstream.

    UpstreamError
    ├── UpstreamUnavailable   connection refused / DNS / reset before an answer  -> 502
    │   └── UpstreamClosed    the upstream closed the connection mid-exchange    -> 502
    ├── UpstreamProtocolError the upstream's answer is not valid HTTP/1.1        -> 502
    └── UpstreamTimeout       connect or read timeout                            -> 504
"""

from __future__ import annotations


class UpstreamError(Exception):
    pass


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamClosed(UpstreamUnavailable):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass
