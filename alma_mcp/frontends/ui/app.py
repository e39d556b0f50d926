"""The review page's web app: static files and a small JSON API over `ALMA`.

Who may use it: the page binds to loopback, and every API call must carry a key (`ALMA_UI_KEY`
when it is set, which another host than loopback requires, else a secret made at each launch),
handed to the browser in the URL's fragment, which browsers never send to a server or put in a
Referer. The `serve --http` tokens are never the key: one of them acts as every agent, and the
page's address is printed and may be opened by a browser.
Every request's Host must name this server and any Origin must be this page's own, so a web
page elsewhere can neither read the API through DNS rebinding nor post to it (CSRF): a
cross-site request cannot set the key header, and one that could is refused by its Origin.
Memory text is untrusted: the page renders it with textContent only, under a strict
Content-Security-Policy (no inline script).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import secrets
from pathlib import Path
from urllib.parse import quote
from typing import TYPE_CHECKING, Any, Callable, Sequence, get_args

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import AlmaError, ConfigError, InvalidInput, NotFound
from ...storage.audit import AuditAction
from ..http import LOOPBACK_NAMES, MIN_TOKEN_CHARS, is_loopback
from . import views

if TYPE_CHECKING:
    from ...service import ALMA

log = logging.getLogger("alma_mcp")

STATIC = Path(__file__).parent / "static"
KEY_HEADER = "x-alma-key"
MAX_BODY = 256 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


KEY_ENV = "ALMA_UI_KEY"
"""The environment variable of a fixed key for the page (needed to serve it off loopback)."""


def launch_key(key: str | None, host: str) -> str:
    """The key API calls must carry: `key` (ALMA_UI_KEY) when set, else a fresh secret (loopback
    only). Off loopback the key must be at least MIN_TOKEN_CHARS long, as a `serve --http` token."""
    if not is_loopback(host):
        if not key:
            raise ConfigError(
                f"refusing to serve the review page on non-loopback host {host!r} without a key: "
                f"set {KEY_ENV} to a long random secret (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if len(key) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"refusing to serve the review page on non-loopback host {host!r}: {KEY_ENV} is {len(key)} "
                f"characters long; use at least {MIN_TOKEN_CHARS} random ones"
            )
    return key or secrets.token_urlsafe(32)


def _host_names(host: str, port: int, allowed: Sequence[str]) -> set[str]:
    """The Host headers the page answers to: the loopback names and the bound host with the port
    (and without it on port 80, as browsers send it), and alma.http.allowed_hosts (`name:*` for
    any port)."""
    names = set(LOOPBACK_NAMES) | {host}
    hosts = {f"{n}:{port}" for n in names} | {f"[{n}]:{port}" for n in names if ":" in n and not n.startswith("[")}
    if port == 80:
        hosts |= {h.rsplit(":", 1)[0] for h in hosts}
    return hosts | {h.replace(":*", f":{port}") for h in allowed}


class Guard:
    """Host and Origin checks on every request, security headers on every response."""

    def __init__(
        self, app: ASGIApp, host: str, port: int, allowed_hosts: Sequence[str] = (), allowed_origins: Sequence[str] = ()
    ) -> None:
        self.app = app
        self.hosts = _host_names(host, port, allowed_hosts)
        self.origins = {f"http://{h}" for h in self.hosts} | set(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        if headers.get("host") not in self.hosts:
            await _refuse(421, "wrong Host: open the page by the address alma-mcp ui printed", scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and origin not in self.origins:
            await _refuse(403, "cross-origin requests are refused", scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, secured)


async def _refuse(status: int, error: str, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"error": error}, status_code=status)(scope, receive, send)


def _whole(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; InvalidInput naming it otherwise."""
    text = request.query_params.get(name) or ""
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(f"{name} is {text[:20]!r}: use a whole number from {low} to {high}")
    return value


def build_app(alma: "ALMA", key: str, host: str, port: int) -> ASGIApp:
    def api(handler: Callable[..., Any], write: bool = False) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not hmac.compare_digest(request.headers.get(KEY_HEADER, "").encode(), key.encode()):
                return JSONResponse({"error": "missing or wrong key: open the URL alma-mcp ui printed"}, status_code=401)
            if write and request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return JSONResponse({"error": "send JSON (Content-Type: application/json)"}, status_code=415)
            body: Any = None
            if write:
                raw = await request.body()
                if len(raw) > MAX_BODY:
                    return JSONResponse({"error": f"request body over {MAX_BODY} bytes"}, status_code=413)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
                if not isinstance(body, dict):
                    return JSONResponse({"error": "send a JSON object"}, status_code=400)
            try:
                result = await anyio.to_thread.run_sync(lambda: handler(request, body) if write else handler(request))
            except NotFound as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except AlmaError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except (TypeError, ValueError, KeyError) as exc:
                return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
            return JSONResponse(result)

        return endpoint

    def q(request: Request, name: str) -> str | None:
        value = request.query_params.get(name)
        return value or None

    def overview(request: Request) -> Any:
        return views.overview(alma)

    def memories(request: Request) -> Any:
        agent, kind = q(request, "agent"), q(request, "type") or "heuristic"
        archived = request.query_params.get("archived") == "1"
        if agent is None:
            raise InvalidInput("agent is missing: say which agent to show")
        limit = _whole(request, "limit", 500, 1, 5000)
        return [views.summary(m) for m in alma.list_memories(agent, kind, limit=limit, include_archived=archived)]

    def memory(request: Request) -> Any:
        return views.memory_page(alma, request.path_params["memory_id"])

    def learning(request: Request) -> Any:
        agent = q(request, "agent")
        if agent is None:
            raise InvalidInput("agent is missing: say which agent to show")
        return views.learning(alma, agent)

    def audit(request: Request) -> Any:
        limit = _whole(request, "limit", 200, 1, 10000)
        action = q(request, "action")
        if action is not None and action not in get_args(AuditAction):
            raise InvalidInput(f"action is {action[:20]!r}: use one of {', '.join(get_args(AuditAction))}")
        entries = alma.audit_log(limit, q(request, "memory_id"), action, q(request, "agent"))
        return [e.model_dump(mode="json", exclude={"snapshot"}) for e in entries]

    def search(request: Request, body: dict[str, Any]) -> Any:
        top_k = body.get("top_k")
        if top_k not in (None, "") and not (isinstance(top_k, int) or (isinstance(top_k, str) and top_k.isdigit())):
            raise InvalidInput(f"top_k is {str(top_k)[:20]!r}: use a whole number from 1 to 50")
        return views.search(alma, str(body.get("task") or ""), str(body.get("agent") or ""),
                            body.get("user_id") or None, body.get("task_type") or None,
                            int(top_k) if top_k not in (None, "") else None)

    def edit(request: Request, body: dict[str, Any]) -> Any:
        changes = body.get("changes")
        if not isinstance(changes, dict):
            raise InvalidInput("changes is missing: send {\"changes\": {field: new text}}")
        m = alma.edit(request.path_params["memory_id"], changes, str(body.get("reason") or "edited on the review page"))
        return views.summary(m)

    def wrong(request: Request, body: dict[str, Any]) -> Any:
        return views.summary(alma.mark_wrong(request.path_params["memory_id"], str(body.get("reason") or "")))

    def archive(request: Request, body: dict[str, Any]) -> Any:
        return alma.forget(memory_ids=[request.path_params["memory_id"]], dry_run=False, call="review page").model_dump(mode="json")

    def restore(request: Request, body: dict[str, Any]) -> Any:
        return alma.restore([request.path_params["memory_id"]]).model_dump(mode="json")

    def merge(request: Request, body: dict[str, Any]) -> Any:
        m = alma.merge(str(body.get("survivor") or ""), str(body.get("other") or ""),
                       str(body.get("reason") or "merged on the review page"))
        return views.summary(m)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", index),
        Route("/api/overview", api(overview)),
        Route("/api/memories", api(memories)),
        Route("/api/memory/{memory_id}", api(memory)),
        Route("/api/learning", api(learning)),
        Route("/api/audit", api(audit)),
        Route("/api/search", api(search, write=True), methods=["POST"]),
        Route("/api/memory/{memory_id}/edit", api(edit, write=True), methods=["POST"]),
        Route("/api/memory/{memory_id}/wrong", api(wrong, write=True), methods=["POST"]),
        Route("/api/memory/{memory_id}/archive", api(archive, write=True), methods=["POST"]),
        Route("/api/memory/{memory_id}/restore", api(restore, write=True), methods=["POST"]),
        Route("/api/merge", api(merge, write=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    http = alma.config.alma.http
    return Guard(Starlette(routes=routes), host, port, http.allowed_hosts, http.allowed_origins)


def serve(alma: "ALMA", host: str, port: int, key: str, announce: Callable[[str], None]) -> None:
    """Run the page until interrupted; `announce` gets the URL to open (the key in its fragment).
    Port 0 takes a free port: the socket is bound here, so the URL names the real one."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    app = build_app(alma, key, host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    announce(f"http://{shown}:{port}/#key={quote(key, safe='')}")
    anyio.run(lambda: server.serve(sockets=[sock]))
