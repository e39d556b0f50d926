"""`alma-mcp serve --http` as a real process: the SDK client with a bearer token, and the guards.

The MCP client passes headers through its own httpx2 client:
`Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers={"Authorization": ...})))`.
Status codes are checked with plain HTTP requests: 401 without (or with a wrong) token, 403
for a foreign Origin, 421 for a foreign Host, 413 for a body over the limit.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import anyio
import httpx
import pytest

from alma_mcp.config import HttpSettings
from alma_mcp.errors import ConfigError
from alma_mcp.frontends.http import build_http_app
from alma_mcp.frontends.server import create_server
from serving import authorized_client, free_port, serve_http, stop

pytestmark = pytest.mark.slow

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def start_http_server(root: Path, token: str | None, extra_args: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start `alma-mcp serve --http` on a free loopback port; return it once it answers HTTP."""
    config = root / ".alma" / "config.yaml"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "alma:\n  project_id: http-test\n  allow_undeclared_agents: true\n  http:\n    max_request_bytes: 65536\n",
            encoding="utf-8",
        )
    return serve_http(config, token, extra_args)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, str]]:
    token = secrets.token_urlsafe(24)
    proc, url = start_http_server(tmp_path_factory.mktemp("http"), token)
    yield url, token
    stop(proc)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sdk_client_with_bearer_token_teaches_and_retrieves(server, mode):
    url, token = server
    with anyio.fail_after(180):
        async with authorized_client(url, token, mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"alma_retrieve", "alma_learn"} <= names
            taught = await client.call_tool(
                "alma_add_knowledge",
                {"agent": f"helena-{mode}", "domain": "billing", "fact": "Invoices are generated at 02:00 UTC every night"},
            )
            assert not taught.is_error
            got = await client.call_tool("alma_retrieve", {"agent": f"helena-{mode}", "task": "When are invoices generated?"})
            assert not got.is_error
            assert [k["memory"]["id"] for k in got.structured_content["knowledge"]] == [taught.structured_content["id"]]
            stats = json.loads((await client.read_resource("alma://stats")).contents[0].text)
            assert stats["agents"][f"helena-{mode}"]["knowledge"] == 1


def test_without_token_401(server):
    url, _ = server
    response = httpx.post(url, json=INIT, headers=MCP_HEADERS)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_wrong_token_401(server):
    url, token = server
    for value in (f"Bearer {token}x", f"Basic {token}", token, "Bearer wrong"):
        response = httpx.post(url, json=INIT, headers={**MCP_HEADERS, "Authorization": value})
        assert response.status_code == 401, value


def test_right_token_initializes(server):
    url, token = server
    response = httpx.post(url, json=INIT, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert "alma-mcp" in response.text


def test_foreign_origin_403_and_loopback_origin_allowed(server):
    url, token = server
    auth = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    assert httpx.post(url, json=INIT, headers={**auth, "Origin": "http://evil.example"}).status_code == 403
    assert httpx.post(url, json=INIT, headers={**auth, "Origin": "http://127.0.0.1:3000"}).status_code == 200


def test_foreign_host_header_rejected(server):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    url, token = server
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}", "Host": "evil.example"}
    assert httpx.post(url, json=INIT, headers=headers).status_code == 421


def test_body_over_limit_413(server):
    url, token = server
    big = dict(INIT, params={**INIT["params"], "padding": "x" * 70_000})
    response = httpx.post(url, json=big, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"})
    assert response.status_code == 413


def test_refuses_non_loopback_without_token(alma):
    mcp = create_server(alma=alma)
    with pytest.raises(ConfigError, match="non-loopback"):
        build_http_app(mcp, HttpSettings(), "0.0.0.0", 8765, token=None, allow_no_auth=True)
    with pytest.raises(ConfigError, match="ALMA_MCP_TOKEN"):
        build_http_app(mcp, HttpSettings(), "127.0.0.1", 8765, token=None)
    assert build_http_app(mcp, HttpSettings(), "0.0.0.0", 8765, token="s3cret-token-value-" + "x" * 20) is not None


def test_cli_refuses_to_serve_without_token(tmp_path):
    """It refuses before it opens the store: no data folder is left behind (with no config file the
    store would go to ~/.alma-mcp/data, here under a HOME of the test's own)."""
    home = tmp_path / "home"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HOME=str(home))
    for name in ("ALMA_MCP_TOKEN", "ALMA_CONFIG", "ALMA_DATA_DIR"):
        env.pop(name, None)
    for host in ("0.0.0.0", "127.0.0.1"):
        done = subprocess.run(
            [sys.executable, "-m", "alma_mcp", "serve", "--http", "--host", host, "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 2, done.stderr
        assert "token" in done.stderr
        assert not home.exists(), sorted(str(p) for p in home.rglob("*"))


def test_no_auth_flag_serves_loopback_only(tmp_path):
    proc, url = start_http_server(tmp_path, token=None, extra_args=["--no-auth"])
    try:
        assert httpx.post(url, json=INIT, headers=MCP_HEADERS).status_code == 200
        # Without tokens too, a Host that is not a plain name[:port] is refused: the SDK's prefix
        # match of `localhost:*` would let this one through.
        assert httpx.post(url, json=INIT, headers={**MCP_HEADERS, "Host": "localhost:1@evil.example"}).status_code == 421
    finally:
        stop(proc)
