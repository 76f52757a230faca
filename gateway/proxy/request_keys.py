"""Typed per-request values the proxy records for later stages (access log, accounting)."""

from aiohttp import web

from gateway.auth.identity import Identity

REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_IP = web.RequestKey("client_ip", str)
IDENTITY = web.RequestKey("identity", Identity)
