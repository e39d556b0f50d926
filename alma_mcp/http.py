"""Streamable HTTP for teams: bearer token, loopback by default, Origin allow-list, size limits.

The MCP specification asks HTTP servers to validate Origin (DNS rebinding) and to bind to
loopback when local; the SDK's transport security does the Host/Origin checks, and the
middleware here refuses any request without the right bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import HttpSettings
from .errors import ConfigError

log = logging.getLogger("alma_mcp")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerTokenMiddleware:
    """Answers 401 unless the request carries `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        supplied = headers.get(b"authorization", b"")
        scheme, _, value = supplied.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self._token):
            body = b'{"error": "unauthorized: send Authorization: Bearer <token>"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="alma-mcp"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def transport_security(settings: HttpSettings, host: str, port: int) -> TransportSecuritySettings:
    hosts = [f"{name}:*" for name in ("127.0.0.1", "localhost", "[::1]")] + ["127.0.0.1", "localhost", "[::1]"]
    if not is_loopback(host):
        hosts += [host, f"{host}:{port}"]
    hosts += list(settings.allowed_hosts)
    origins = [f"http://{name}:*" for name in ("127.0.0.1", "localhost", "[::1]")]
    origins += [f"http://{name}" for name in ("127.0.0.1", "localhost", "[::1]")]
    origins += list(settings.allowed_origins)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def check_token(settings: HttpSettings, host: str, token: str | None, allow_no_auth: bool = False) -> None:
    """Refuse HTTP without a token, except on loopback with --no-auth. The CLI asks before it opens
    the store, so a refusal leaves nothing behind."""
    if token:
        return
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to serve HTTP on non-loopback host {host!r} without a token: "
            f"set {settings.token_env} to a long random secret"
        )
    if not allow_no_auth:
        raise ConfigError(
            f"set {settings.token_env} to a secret token (clients send 'Authorization: Bearer <token>'), "
            "or pass --no-auth to serve loopback without one"
        )


def build_http_app(
    mcp: MCPServer, settings: HttpSettings, host: str, port: int, token: str | None, allow_no_auth: bool = False
) -> Any:
    """The ASGI app for `alma-mcp serve --http`. Refuses to exist without a token off loopback."""
    check_token(settings, host, token, allow_no_auth)
    if not token:
        log.warning("serving HTTP on %s without a token (--no-auth): any local process can use it", host)
    app = mcp.streamable_http_app(
        streamable_http_path=settings.path,
        max_request_body_size=settings.max_request_bytes,
        transport_security=transport_security(settings, host, port),
        host=host,
    )
    return BearerTokenMiddleware(app, token) if token else app
