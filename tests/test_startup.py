"""The order of a stdio server's start-up: what loads in the background starts before the MCP SDK
is imported, so that its work outside the GIL overlaps that import (bench/perf_breakdown.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Run as the server's own process: the service's warm_up notes whether the SDK was imported when
# it was called, then does its work; stdin is empty, so the server stops after its lifespan.
PROBE = textwrap.dedent(
    """
    import json, sys
    from alma_mcp import service
    from alma_mcp.frontends import cli

    calls = []
    original = service.ALMA.warm_up

    def warm_up(self):
        calls.append({"sdk_imported": "mcp.server" in sys.modules, "service": id(self)})
        return original(self)

    service.ALMA.warm_up = warm_up
    code = cli.main(["--config", sys.argv[2]])
    with open(sys.argv[1], "w") as out:
        json.dump({"code": code, "calls": calls}, out)
    """
)


def test_a_stdio_server_starts_loading_before_it_imports_the_sdk(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"alma:\n  project_id: startup\n  data_dir: {tmp_path / 'data'}\n  allow_undeclared_agents: true\n"
        "  embedding:\n    model: hash-64\n",
        encoding="utf-8",
    )
    report = tmp_path / "report.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), str(config)],
        stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = json.loads(report.read_text())
    assert result["code"] == 0
    calls = result["calls"]
    assert calls, "the server never warmed up"
    assert calls[0]["sdk_imported"] is False, "the model and the indexes waited for the MCP SDK's import"
    assert len({c["service"] for c in calls}) == 1, "the service warmed up early is the one served"


CHROMA_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import overrides

    checks = sys.modules["overrides.overrides"]
    compared = []
    compare = checks.ensure_signature_is_compatible

    def counting(*args, **kwargs):
        compared.append(1)
        return compare(*args, **kwargs)

    checks.ensure_signature_is_compatible = counting
    decorator = overrides.override
    from alma_mcp.embedding.embedder import HashEmbedder
    from alma_mcp.storage.store import MemoryStore

    store = MemoryStore.embedded(Path(sys.argv[1]), "startup", HashEmbedder(64))
    try:
        counted = store.count("knowledge", "helena")  # opens the client
    finally:
        store.close()
    import chromadb.api.rust

    print(json.dumps({
        "signatures_compared": len(compared),
        "decorator_restored": overrides.override is decorator,
        "marked": getattr(chromadb.api.rust.RustBindingsAPI._count, "__override__", False),
        "counted": counted,
    }))
    """
)


def test_opening_the_store_skips_the_override_checks_of_chromas_classes(tmp_path: Path) -> None:
    """Chroma's `@override` decorators compare signatures at import (about 0.4 s of CPU per
    process): opening the store imports chromadb without that check, still marking the methods,
    and leaves the `overrides` package as it found it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    done = subprocess.run(
        [sys.executable, "-c", CHROMA_PROBE, str(tmp_path / "chroma")], capture_output=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result == {"signatures_compared": 0, "decorator_restored": True, "marked": True, "counted": 0}
