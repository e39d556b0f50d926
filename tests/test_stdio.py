"""The launch path a host uses: `python -m alma_mcp` as a stdio subprocess.

One test talks raw JSON-RPC to check that stdout carries nothing but protocol messages and
that `initialize` is answered before the embedding model has loaded; the other drives the
server with the SDK's Client across a restart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anyio
import pytest
from mcp import Client, StdioServerParameters
from helpers import server_env, write_config

pytestmark = pytest.mark.slow


def test_stdout_is_protocol_only_and_initialize_is_fast(tmp_path):
    config = write_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(),
        cwd=tmp_path,
    )
    try:
        start = time.perf_counter()
        messages = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw-test", "version": "0"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "alma_retrieve", "arguments": {"agent": "helena", "task": "test the signup form"}},
            },
        ]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(messages[0]) + "\n").encode())
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        initialize_seconds = time.perf_counter() - start
        assert first["id"] == 1 and first["result"]["serverInfo"]["name"] == "alma-mcp"
        for message in messages[1:]:
            proc.stdin.write((json.dumps(message) + "\n").encode())
        proc.stdin.flush()
        replies = {}
        while len(replies) < 2:
            line = proc.stdout.readline()
            assert line, "server closed stdout early"
            reply = json.loads(line)  # every stdout line must be a JSON-RPC message
            assert reply["jsonrpc"] == "2.0"
            if "id" in reply:
                replies[reply["id"]] = reply
        assert {t["name"] for t in replies[2]["result"]["tools"]} >= {"alma_retrieve", "alma_learn"}
        assert replies[3]["result"]["isError"] is False
        # Cold start includes interpreter start-up and imports; the model loads afterwards.
        assert initialize_seconds < 5.0, f"initialize took {initialize_seconds:.2f}s"
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
    stderr = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "Traceback" not in stderr


async def test_learn_restart_and_find_everything(tmp_path):
    config = write_config(tmp_path)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "alma_mcp", "--config", str(config)],
        env=server_env(),
        cwd=str(tmp_path),
    )
    strategy = "Leave the field blank, submit, and assert the inline error message"
    tasks = [
        "Test the signup form validation for an empty email",
        "Test signup form validation when the email is left empty",
        "Check the signup form's validation of a missing email address",
    ]
    with anyio.fail_after(120):
        async with Client(params, mode="legacy") as client:
            fact = await client.call_tool(
                "alma_add_knowledge",
                {"agent": "helena", "domain": "form_testing", "fact": "The signup form posts to /api/v2/users and shows errors under each field"},
            )
            assert not fact.is_error, fact.content
            created = []
            for task in tasks:
                result = await client.call_tool(
                    "alma_learn",
                    {"agent": "helena", "task": task, "outcome": "success", "strategy_used": strategy, "task_type": "form_testing"},
                )
                assert not result.is_error, result.content
                created += result.structured_content["heuristics_created"]
            assert len(created) == 1
            refused = await client.call_tool(
                "alma_learn",
                {"agent": "helena", "task": "Tune the Postgres query planner", "outcome": "success", "strategy_used": "x", "task_type": "database"},
            )
            assert refused.is_error and "can_learn" in refused.content[0].text

        async with Client(params, mode="auto") as client:
            got = await client.call_tool(
                "alma_retrieve", {"agent": "helena", "task": "Verify what the registration form does when no email is typed"}
            )
            assert not got.is_error, got.content
            data = got.structured_content
            assert [h["memory"]["id"] for h in data["heuristics"]] == created
            assert "/api/v2/users" in data["prompt"] and strategy in data["prompt"]
            stats = await client.call_tool("alma_stats", {})
            assert stats.structured_content["agents"]["helena"]["outcome"] == 3


def _run_server(tmp_path, stdin: bytes) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run the stdio server on `stdin` (then its end) to its exit, which must be clean; and its stderr."""
    config = write_config(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "alma_mcp", "--config", str(config)],
        input=stdin,
        capture_output=True,
        env=server_env(),
        cwd=tmp_path,
        timeout=120,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr[-2000:]
    return proc, stderr


def test_a_server_whose_client_leaves_at_once_exits_cleanly(tmp_path):
    """A host may start the server and close its stdin straight away (a probe, a cancelled
    start). The start-up preload of the search indexes is then cut short by the exit: that is no
    failure, and the server must neither crash nor log one."""
    proc, stderr = _run_server(tmp_path, b"")
    assert proc.stdout == b"", "nothing but protocol on stdout"
    assert "Traceback" not in stderr and "could not" not in stderr, stderr[-2000:]


def test_a_client_that_sends_its_requests_and_closes_stdin_gets_every_answer(tmp_path):
    """`printf '...' | alma-mcp`: stdin ends straight after the requests. Every request the server
    took must still be answered before it exits, a quick one (ping, a write) as well as one that
    first loads the model and the store (alma_retrieve), and the unanswerable line (a batch) gets
    no reply and does not hold the exit up."""
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "alma_add_knowledge", "arguments": {"agent": "helena", "domain": "form_testing", "fact": "The deploy script lives in tools/deploy.sh"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "alma_retrieve", "arguments": {"agent": "helena", "task": "where is the deploy script"}}},
        [{"jsonrpc": "2.0", "id": 4, "method": "ping"}],
        {"jsonrpc": "2.0", "id": "last", "method": "ping"},
    ]
    started = time.monotonic()
    proc, stderr = _run_server(tmp_path, "".join(json.dumps(m) + "\n" for m in messages).encode())
    replies = {r["id"]: r for r in (json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip())}
    assert sorted(replies, key=str) == [1, 2, 3, "last"], stderr[-2000:]
    assert not replies[2]["result"]["isError"], replies[2]
    assert not replies[3]["result"]["isError"], replies[3]
    # Not asserted: that the retrieve sees the write. Both reach the MCP SDK, which serves requests
    # concurrently (as JSON-RPC allows); a client that needs a write seen waits for its answer.
    assert "prompt" in replies[3]["result"]["structuredContent"]
    assert "still unanswered" not in stderr
    assert time.monotonic() - started < 60


def test_a_stop_signal_answers_every_request_already_read_before_the_server_exits(tmp_path):
    """SIGTERM while writes are being served: the server takes no more input, answers what it has
    read, and exits 143, without a traceback. A write stored and never answered is one a client
    retries; here every stored write was answered."""
    import signal

    config = write_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server_env(), cwd=tmp_path,
    )
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    subjects = ["invoices", "the cache", "login", "payments", "the search box", "uploads", "emails", "the cart",
                "passwords", "the sitemap", "webhooks", "dark mode", "the CSV export", "refunds", "the API keys",
                "the onboarding tour", "push alerts", "the date picker", "avatars", "the audit trail", "coupons",
                "shipping rates", "the help widget", "two-factor codes", "the changelog", "tax rules", "the footer",
                "video captions", "the status page", "gift cards"]
    facts = {i: f"{subject.capitalize()}: checked by test suite {i * 7} on the night build" for i, subject in enumerate(subjects, 1)}
    writes = [
        {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "alma_add_knowledge", "arguments": {
            "agent": "helena", "domain": "form_testing", "fact": fact}}}
        for i, fact in facts.items()
    ]
    try:
        proc.stdin.write((json.dumps(init) + "\n" + json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n").encode())
        proc.stdin.flush()
        first = proc.stdout.readline()
        assert b'"serverInfo"' in first, first
        warm = {"jsonrpc": "2.0", "id": 100, "method": "tools/call", "params": {"name": "alma_add_knowledge", "arguments": {
            "agent": "helena", "domain": "form_testing", "fact": "The signup form has five fields"}}}
        proc.stdin.write((json.dumps(warm) + "\n").encode())
        proc.stdin.flush()
        assert b'"id":100' in proc.stdout.readline()  # the store and the model are up
        proc.stdin.write("".join(json.dumps(w) + "\n" for w in writes).encode())
        proc.stdin.flush()
        time.sleep(0.3)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = err.decode()
    answered = {json.loads(line)["id"] for line in out.decode().splitlines() if line.strip()}
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr[-3000:]
    assert took < 10, f"SIGTERM took {took:.1f} s"

    from alma_mcp.config import load_config
    from alma_mcp.service import ALMA

    alma = ALMA(load_config(str(config)))
    try:
        stored = {m.fact for m in alma.memories("knowledge", "helena")}
    finally:
        alma.close()
    stored_ids = {i for i, fact in facts.items() if fact in stored}
    assert len(stored_ids) == 30, sorted(set(facts) - stored_ids)  # distinct facts: none merged into another
    assert stored_ids <= answered, f"stored but never answered: {sorted(stored_ids - answered)}"
    assert answered >= set(range(1, 31)), f"read before the signal and not answered: {sorted(set(range(1, 31)) - answered)}"
