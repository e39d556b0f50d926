"""Starting a real `alma-mcp serve --http` process for tests, and a client that sends its token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_http(
    config: Path, token: str | None, extra_args: list[str] | None = None, stderr: int = subprocess.PIPE
) -> tuple[subprocess.Popen, str]:
    """Start the server on a free loopback port; return it once it answers HTTP.

    Pass stderr=subprocess.DEVNULL for a server that logs a lot: an unread pipe fills and blocks it.
    """
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    env.pop("ALMA_MCP_TOKEN", None)
    if token:
        env["ALMA_MCP_TOKEN"] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config), "serve", "--http", "--port", str(port), *(extra_args or [])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            detail = proc.stderr.read().decode()[-2000:] if proc.stderr else f"exit code {proc.returncode}"
            raise RuntimeError(f"server exited: {detail}")
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError("the HTTP server did not start within 60 s") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def authorized_client(url: str, token: str, mode: str = "legacy", timeout: float = 120) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(timeout))
    return Client(streamable_http_client(url, http_client=http), mode=mode)
