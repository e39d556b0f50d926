"""Streamable HTTP for teams: bearer tokens bound to identities, loopback by default, Origin
allow-list, size limits.

The MCP specification asks HTTP servers to validate Origin (DNS rebinding) and to bind to
loopback when local; the SDK's transport security does the Host/Origin checks. The middleware
here refuses any request without a known bearer token, and hands the handlers the `Caller` that
token names (the agents it may act as, the users it serves). Following the MCP authorization
guidance for a resource server, a 401 carries `WWW-Authenticate: Bearer ... resource_metadata=`
pointing at the OAuth protected-resource metadata (RFC 9728) served at
`/.well-known/oauth-protected-resource{path}`. Tokens are issued out of band (config, not an
authorization server), so the metadata names no authorization server.

A session belongs to the token that opened it: the middleware names each token's principal to the
SDK (`scope["user"]`), whose session manager answers a request carrying another token's session id
as it answers an unknown one (404). A Host header that is not a plain `name[:port]` is refused
(421) before anything reads it, so no part of it reaches a response header.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import HttpSettings, TokenSettings
from ..errors import ConfigError
from ..scope import Caller
from .server import CALLER_KEY, AlmaServer

log = logging.getLogger("alma_mcp")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")
MIN_TOKEN_CHARS = 32
"""Shortest token accepted off loopback (and warned about on it): `secrets.token_urlsafe(24)` is 32."""
METADATA_PATH = "/.well-known/oauth-protected-resource"
NOBODY = Caller(frozenset(), frozenset(), "no token")
WELL_FORMED_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:[0-9]{1,5})?")
"""A Host header the server reads at all: a name or bracketed IPv6 address, and a port."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BoundToken:
    digest: bytes  # SHA-256 of the secret: every comparison is of equal length, in constant time
    caller: Caller
    principal: str = ""  # who the SDK binds sessions to: unique per token, no part of its secret


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _names(values: list[str]) -> frozenset[str] | None:
    return None if "*" in values else frozenset(values)


def read_token_file(path: Path, name: str) -> str:
    """The first line of a token file that only its owner may read or write."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"http.tokens.{name}: cannot read the token file {path}: {exc}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            f"http.tokens.{name}: the token file {path} is readable or writable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600 {path}"
        )
    secret = path.read_text(encoding="utf-8").strip().splitlines()
    if not secret or not secret[0].strip():
        raise ConfigError(f"http.tokens.{name}: the token file {path} is empty")
    return secret[0].strip()


def _secret(token: TokenSettings) -> str:
    if token.file is not None:
        return read_token_file(token.file.expanduser(), token.name)
    value = os.environ.get(token.env or "", "").strip()
    if not value:
        raise ConfigError(f"http.tokens.{token.name}: the environment variable {token.env} is not set")
    return value


def bind_tokens(settings: HttpSettings, legacy: str | None, host: str) -> list[BoundToken]:
    """Every token the server accepts, each with its Caller; refuses weak or duplicate secrets.

    `legacy` is the single token of `token_env` (ALMA_MCP_TOKEN): it acts as every agent and user."""
    named = [(t.name, _secret(t), Caller(_names(t.agents), _names(t.users), f"token {t.name}")) for t in settings.tokens]
    if legacy:
        named.append((settings.token_env, legacy, Caller(name=f"token {settings.token_env}")))
    bound: list[BoundToken] = []
    seen: dict[bytes, str] = {}
    for name, secret, caller in named:
        if len(secret) < MIN_TOKEN_CHARS:
            message = (
                f"the token {name} is {len(secret)} characters long: use at least {MIN_TOKEN_CHARS} random ones "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
            if not is_loopback(host):
                raise ConfigError(f"refusing to serve HTTP on non-loopback host {host!r}: {message}")
            log.warning("%s", message)
        digest = _digest(secret.encode())
        if digest in seen:
            raise ConfigError(f"the tokens {seen[digest]} and {name} are the same secret: give each its own")
        seen[digest] = name
        bound.append(BoundToken(digest, caller, f"{len(bound)}:{name}"))
    return bound


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value
    return b""


class BearerTokenMiddleware:
    """Answers 401 unless the request carries `Authorization: Bearer <token>` of a known token;
    a known one puts its Caller in the request's scope for the handlers. Serves the protected
    resource metadata without a token."""

    def __init__(self, app: ASGIApp, tokens: list[BoundToken], path: str, allowed_hosts: list[str]) -> None:
        self.app = app
        self._tokens = tokens
        self._path = path
        self._allowed_hosts = allowed_hosts

    def _origin(self, scope: Scope) -> str | None:
        """scheme://host as the client dialed it, if its Host is one the server answers to."""
        host = _header(scope, b"host").decode("latin-1")
        if not WELL_FORMED_HOST.fullmatch(host):
            return None
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host not in self._allowed_hosts and f"{name}:*" not in self._allowed_hosts:
            return None
        return f"{scope.get('scheme', 'http')}://{host}"

    def _match(self, supplied: bytes) -> BoundToken | None:
        digest = _digest(supplied)
        found = None
        for token in self._tokens:  # all of them, whatever matches: the time tells nothing
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path", "") in (METADATA_PATH, METADATA_PATH + self._path):
            await self._metadata(scope, send)
            return
        supplied = _header(scope, b"authorization")
        scheme, _, value = supplied.partition(b" ")
        token = self._match(value.strip()) if scheme.lower() == b"bearer" and value.strip() else None
        if token is None:
            await self._unauthorized(scope, send, invalid=bool(supplied))
            return
        scope[CALLER_KEY] = token.caller
        # The SDK's session manager binds a session to the principal that opened it.
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=token.principal, scopes=[]))
        await self.app(scope, receive, send)

    async def _metadata(self, scope: Scope, send: Send) -> None:
        origin = self._origin(scope)
        if origin is None:
            await _respond(send, 421, {"error": "misdirected request: unknown Host"})
            return
        await _respond(
            send,
            200,
            {"resource": origin + self._path, "bearer_methods_supported": ["header"], "resource_name": "alma-mcp"},
        )

    async def _unauthorized(self, scope: Scope, send: Send, invalid: bool) -> None:
        challenge = 'Bearer realm="alma-mcp"'
        if invalid:
            challenge += ', error="invalid_token"'
        origin = self._origin(scope)
        if origin is not None:
            challenge += f', resource_metadata="{origin}{METADATA_PATH}{self._path}"'
        await _respond(
            send,
            401,
            {"error": "unauthorized: send Authorization: Bearer <token>"},
            [(b"www-authenticate", challenge.encode())],
        )


class StrictHost:
    """Answers 421 to a request whose Host header is not a plain `name[:port]` (the SDK's allow-list
    matches `name:*` as a prefix, so `localhost:1@evil.example` would pass it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not WELL_FORMED_HOST.fullmatch(_header(scope, b"host").decode("latin-1")):
            await _respond(send, 421, {"error": "misdirected request: malformed Host header"})
            return
        await self.app(scope, receive, send)


async def _respond(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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


def check_token(settings: HttpSettings, host: str, token: str | None, allow_no_auth: bool = False) -> list[BoundToken]:
    """The tokens the server will accept: `token` (the all-agents token of `settings.token_env`)
    and the bound ones of `settings.tokens`. Refuses HTTP without any off loopback, or with a token
    shorter than MIN_TOKEN_CHARS there, and on loopback without --no-auth. The CLI asks before it
    opens the store, so a refusal leaves nothing behind."""
    tokens = bind_tokens(settings, token, host)
    if not tokens:
        if not is_loopback(host):
            raise ConfigError(
                f"refusing to serve HTTP on non-loopback host {host!r} without a token: "
                f"set {settings.token_env} to a long random secret, or configure http.tokens"
            )
        if not allow_no_auth:
            raise ConfigError(
                f"set {settings.token_env} to a secret token (clients send 'Authorization: Bearer <token>'), "
                "configure http.tokens, or pass --no-auth to serve loopback without one"
            )
    return tokens


def build_http_app(
    mcp: AlmaServer,
    settings: HttpSettings,
    host: str,
    port: int,
    token: str | None,
    allow_no_auth: bool = False,
    tokens: list[BoundToken] | None = None,
) -> Any:
    """The ASGI app for `alma-mcp serve --http` (see `check_token` for what it refuses). `tokens`:
    what `check_token` answered a caller that asked it first with the same arguments (it is then
    not asked again, and its warnings are not repeated)."""
    if tokens is None:
        tokens = check_token(settings, host, token, allow_no_auth)
    if not tokens:
        log.warning("serving HTTP on %s without a token (--no-auth): any local process can use it", host)
    security = transport_security(settings, host, port)
    app = mcp.streamable_http_app(
        streamable_http_path=settings.path,
        max_request_body_size=settings.max_request_bytes,
        transport_security=security,
        host=host,
    )
    if not tokens:
        app.add_middleware(StrictHost)  # still the Starlette app, whose lifespan uvicorn runs
        return app
    mcp.alma_caller = NOBODY
    return StrictHost(BearerTokenMiddleware(app, tokens, settings.path, list(security.allowed_hosts)))
