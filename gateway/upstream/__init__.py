"""The upstream client: pooled HTTP/1.1 connections on asyncio protocols with httptools."""

from gateway.upstream.connection import ResponseHead
from gateway.upstream.errors import (
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.upstream.pool import Exchange, UpstreamPool

__all__ = [
    "Exchange",
    "ResponseHead",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]
