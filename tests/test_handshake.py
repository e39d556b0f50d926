"""`initialize` answered over stdio before the server is imported (alma_mcp/frontends/handshake.py): the
early answer must be the one the MCP SDK gives, and the session must go on as usual after it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from alma_mcp.frontends import handshake
from alma_mcp.frontends.cli import DEFAULT_CONFIG_PATH, _serves_stdio


def test_fixed_parts_match_the_sdk_and_the_config():
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

    from alma_mcp.config import DEFAULT_CONFIG_PATH as CONFIG_DEFAULT

    assert handshake.HANDSHAKE_VERSIONS == tuple(HANDSHAKE_PROTOCOL_VERSIONS)
    assert DEFAULT_CONFIG_PATH == CONFIG_DEFAULT


@pytest.mark.parametrize(
    ("argv", "stdio"),
    [
        ([], True),
        (["serve"], True),
        (["--config", "c.yaml", "--log-level", "WARNING"], True),
        (["-vv", "serve", "--config=c.yaml"], True),
        (["serve", "--http"], False),
        (["serve", "--help"], False),
        (["--version"], False),
        (["--config", "c.yaml", "search", "a task"], False),
        (["init"], False),
    ],
)
def test_only_a_stdio_server_answers_early(argv, stdio):
    assert _serves_stdio(argv) is stdio


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 2025, "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}}},
        [{"jsonrpc": "2.0", "id": 1, "method": "initialize"}],
    ],
)
def test_anything_but_a_plain_initialize_is_left_to_the_sdk(message):
    assert handshake.early_answer(message) is None


async def test_a_different_sdk_answer_is_reported(caplog):
    class Early:
        answer = {"jsonrpc": "2.0", "id": 7, "result": {"protocolVersion": "2025-06-18"}}

        def sent(self, text: str) -> None:
            pass

    class Wire:
        def __init__(self) -> None:
            self.written: list[str] = []

        async def write(self, text: str) -> None:
            self.written.append(text)

    wire = Wire()
    answers = handshake._Answers(Early(), wire)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="alma_mcp"):
        await answers.write(json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"protocolVersion": "2025-11-25"}}) + "\n")
        await answers.write(json.dumps({"jsonrpc": "2.0", "id": 8, "result": {}}) + "\n")
    assert "differs" in caplog.text
    assert [json.loads(t)["id"] for t in wire.written] == [8], "the SDK's answer to the early-answered request is held back"


def _session(tmp_path: Path, requested: str, early: bool) -> tuple[dict, dict, str]:
    """Spawn the server, initialize asking for `requested`, then call alma_health."""
    tmp_path.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"alma:\n  project_id: handshake\n  data_dir: {tmp_path / 'data'}\n  allow_undeclared_agents: true\n"
        "  embedding:\n    model: hash-64\n",
        encoding="utf-8",
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", ALMA_EARLY_INITIALIZE="1" if early else "0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": requested, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "alma_health", "arguments": {}}},
    ]
    try:
        # All at once, as a pipelining client may: nothing after the first line may be lost.
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages).encode())
        proc.stdin.flush()
        replies = [json.loads(proc.stdout.readline()) for _ in range(2)]
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 0, stderr[-2000:]
    assert proc.stdout.read() == b"", "one answer per request, nothing else on stdout"
    return replies[0], replies[1], stderr


@pytest.mark.slow
@pytest.mark.parametrize("requested", ["2025-06-18", "1999-01-01"])
def test_the_early_answer_is_the_sdks(tmp_path, requested):
    early_init, early_health, early_log = _session(tmp_path / "early", requested, early=True)
    sdk_init, sdk_health, _ = _session(tmp_path / "sdk", requested, early=False)
    assert early_init == sdk_init
    assert early_init["result"]["protocolVersion"] == (requested if requested in handshake.HANDSHAKE_VERSIONS else "2025-11-25")
    assert early_health["id"] == 2 and early_health["result"]["isError"] is False
    assert sdk_health["result"]["isError"] is False
    assert "differs" not in early_log and "Traceback" not in early_log, early_log[-2000:]


def test_lines_replay_the_first_then_the_wire():
    """The first line again, then what its read brought along, then the wire: nothing lost or
    reordered, a line split across reads joined, a last line without newline kept."""
    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe()
    os.write(write_end, b'{"a": 1}\n{"b": 2}\n{"part')
    early = handshake.EarlyStdio((read_end, out_write))
    assert early._first_read.wait(30)  # the first read took all three: the rest waits in its buffer
    os.write(write_end, 'ial": 3}\n{"d": "é"}\n{"e": 5}'.encode())
    os.close(write_end)
    early._pumping.set()  # as `run` does

    async def collect() -> list[str]:
        return [line async for line in handshake._Lines(early)]

    try:
        assert anyio.run(collect) == ['{"a": 1}\n', '{"b": 2}\n', '{"partial": 3}\n', '{"d": "é"}\n', '{"e": 5}']
        assert early.answer is None and early.answered_early == []  # not an initialize: all left to the SDK
    finally:
        for fd in (read_end, out_read, out_write):
            os.close(fd)


def test_a_call_worked_out_early_after_the_sdk_took_over_is_left_to_the_sdk():
    """An early answer is sent only while the SDK is not serving; one finished later is dropped and
    the request passed on, so the wire never carries two answers to one request."""
    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe()
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    os.write(write_end, (json.dumps(initialize) + "\n").encode())
    early = handshake.EarlyStdio((read_end, out_write))
    try:
        assert early._first_read.wait(30) and early.answer is not None
        calls = []

        def slow(message):  # the SDK takes over while this one is worked out
            calls.append(message["id"])
            early._sdk_running = message["id"] == 3
            return {"content": [], "isError": False}

        early._answerer = slow
        assert early._answered(b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call"}\n') is True
        assert early._answered(b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call"}\n') is False
        assert early._answered(b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call"}\n') is False  # SDK up: not even tried
        assert calls == [2, 3] and early.answered_early == [2]
        os.close(out_write)
        out_write = -1
        sent = [json.loads(line) for line in os.read(out_read, 65536).decode().splitlines()]
        assert [m["id"] for m in sent] == [1, 2]
    finally:
        for fd in (read_end, write_end, out_read, out_write):
            if fd >= 0:
                os.close(fd)


def test_lines_and_replies_pass_without_a_thread_hand_off_each(monkeypatch):
    """Once the first line is in, each line reaches the SDK by the reader waking the event loop,
    and each reply is written from the loop: no worker thread per line, write or flush (anyio's
    to_thread and file wrapper took one each, a wake-up apiece on every call)."""
    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe()
    os.write(write_end, b'{"first": 0}\n')
    early = handshake.EarlyStdio((read_end, out_write))
    assert early._first_read.wait(30)
    early._pumping.set()
    hand_offs = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(func, *args, **kwargs):
        hand_offs.append(func)
        return await real_run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)

    async def serve() -> list[str]:
        lines = handshake._Lines(early)
        wire = handshake._Answers(early, handshake._Wire(out_write))
        got = []
        async for line in lines:
            got.append(line)
            await wire.write(line)
            await wire.flush()
            if len(got) < 20:
                await anyio.sleep(0.001)
                os.write(write_end, json.dumps({"n": len(got)}).encode() + b"\n")  # arrives while the loop waits
            else:
                os.close(write_end)
        return got

    try:
        got = anyio.run(serve)
        assert got == ['{"first": 0}\n', *(json.dumps({"n": n}) + "\n" for n in range(1, 20))]
        assert os.read(out_read, 65536).decode() == "".join(got), "every reply written at once, in order"
        assert len(hand_offs) == 1, "only the wait for the first line runs on a worker thread"
    finally:
        for fd in (read_end, out_read, out_write):
            os.close(fd)
