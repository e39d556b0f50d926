"""A real third-party client: the MCP Inspector's CLI lists the tools and calls one.

.ci/run installs the inspector with npm; elsewhere set MCP_INSPECTOR to its
`mcp-inspector` binary, or the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = [
    os.environ.get("MCP_INSPECTOR", ""),
    str(ROOT / ".ci" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"),
    shutil.which("mcp-inspector") or "",
]
INSPECTOR = next((c for c in CANDIDATES if c and Path(c).exists()), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(INSPECTOR is None, reason="MCP Inspector not installed (npm install @modelcontextprotocol/inspector)"),
]


def inspect(tmp_path: Path, *args: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", ALMA_DATA_DIR=str(tmp_path / "data"))
    env.pop("ALMA_CONFIG", None)
    done = subprocess.run(
        [INSPECTOR, "--cli", sys.executable, "-m", "alma_mcp", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_inspector_lists_tools_and_round_trips_a_fact(tmp_path):
    tools = {t["name"] for t in inspect(tmp_path, "--method", "tools/list")["tools"]}
    assert {"alma_retrieve", "alma_learn", "alma_add_knowledge", "alma_forget", "alma_stats", "alma_health"} <= tools

    taught = inspect(
        tmp_path,
        "--method", "tools/call", "--tool-name", "alma_add_knowledge",
        "--tool-arg", "agent=helena", "--tool-arg", "domain=auth",
        "--tool-arg", "fact=The login endpoint answers 422 with a list of field errors",
    )
    assert taught.get("isError") is not True

    prompt = inspect(tmp_path, "--method", "resources/read", "--uri", "alma://agents/helena/prompt?task=login%20endpoint%20errors%20for%20invalid%20input")
    assert "422" in prompt["contents"][0]["text"]
