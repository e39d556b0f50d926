"""A server killed with SIGKILL in the middle of a stream of writes loses no acknowledged write.

The server is the real `alma-mcp serve --http` process; four clients stream writes into it;
after enough acknowledgements it is killed (no shutdown code runs, writes are in flight).
A new server on the same data directory must open cleanly, and every write acknowledged
before the kill must be readable by id and found by search.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client
from serving import authorized_client, serve_http

pytestmark = pytest.mark.slow

WORDS = (
    "invoice ledger webhook cursor gateway shard replica tenant quota token cache schema migration cron parser "
    "socket buffer thread mutex kernel driver codec bitmap glyph sensor drone harbor glacier orchard violin"
).split()


def start(config: Path, token: str) -> tuple[subprocess.Popen, str]:
    return serve_http(config, token, stderr=subprocess.DEVNULL)


def client(url: str, token: str) -> Client:
    return authorized_client(url, token, timeout=60)


async def test_sigkill_mid_stream_loses_no_acknowledged_write(tmp_path):
    config = tmp_path / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "alma:\n  project_id: crash\n  allow_undeclared_agents: true\n"
        "  lifecycle:\n    merge_on_write: false\n",
        encoding="utf-8",
    )
    token = secrets.token_urlsafe(16)
    proc, url = start(config, token)
    acknowledged: dict[str, str] = {}
    kill_after = 40

    async def writer(n: int) -> None:
        rng = random.Random(n)
        try:
            async with client(url, token) as session:
                for i in range(10_000):
                    fact = f"Crash note {n}-{i}: the {' '.join(rng.sample(WORDS, 5))} job uses port {rng.randint(1024, 65535)}"
                    result = await session.call_tool("alma_add_knowledge", {"agent": "helena", "domain": "ops", "fact": fact})
                    if result.is_error:
                        return  # the server went away while answering
                    acknowledged[result.structured_content["id"]] = fact
        except Exception:
            return  # the connection died with the server: the write in flight was never acknowledged

    async def killer() -> None:
        while len(acknowledged) < kill_after:
            await anyio.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)

    with anyio.fail_after(300):
        async with anyio.create_task_group() as group:
            group.start_soon(killer)
            for n in range(4):
                group.start_soon(writer, n)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert len(acknowledged) >= kill_after

    proc, url = start(config, token)
    try:
        with anyio.fail_after(300):
            async with client(url, token) as session:
                health = (await session.call_tool("alma_health", {})).structured_content
                assert health["status"] == "ok"
                stats = (await session.call_tool("alma_stats", {})).structured_content
                assert stats["agents"]["helena"]["knowledge"] >= len(acknowledged)
                for memory_id, fact in acknowledged.items():
                    detail = await session.read_resource(f"alma://memories/{memory_id}?agent=helena")
                    assert fact in detail.contents[0].text
                    found = await session.call_tool(
                        "alma_retrieve", {"agent": "helena", "task": fact, "memory_types": ["knowledge"], "top_k": 3}
                    )
                    assert memory_id in [k["memory"]["id"] for k in found.structured_content["knowledge"]], fact
                # And the store still takes writes after the crash.
                again = await session.call_tool("alma_add_knowledge", {"agent": "helena", "domain": "ops", "fact": "Written after the crash"})
                assert not again.is_error
    finally:
        proc.terminate()
        proc.wait(timeout=20)
