"""Index snapshots (alma_mcp/indexes/snapshot.py): retrieval answered from files beside the store
before Chroma is imported, only while they are current, scoped as the store is, and ignored
when damaged."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from alma_mcp.indexes import snapshot
from alma_mcp.service import ALMA, CHROMA_DEFER_EXPIRED
from helpers import server_env, teach_playwright

TASK = "Write a Playwright test for the login form's validation errors"


# -- the file format (pure logic) -------------------------------------------------------
def _sample(name: str = "alma.p.helena.knowledge") -> snapshot.Snapshot:
    metas = [{"json": json.dumps({"n": i}), "archived": False, "agent": "helena"} for i in range(3)]
    vectors = np.arange(3 * 4, dtype=np.float32).reshape(3, 4) / 10
    return snapshot.Snapshot(name, "all-MiniLM-L6-v2", 42, metas, vectors)


def test_a_snapshot_reads_back_as_written(tmp_path: Path) -> None:
    snapshot.write(tmp_path / "snapshots", _sample())
    back = snapshot.read(tmp_path / "snapshots", "alma.p.helena.knowledge", "all-MiniLM-L6-v2")
    assert back is not None
    assert (back.name, back.model, back.generation, back.metas) == ("alma.p.helena.knowledge", "all-MiniLM-L6-v2", 42, _sample().metas)
    assert np.array_equal(back.vectors, _sample().vectors)
    assert snapshot.saved_generation(tmp_path / "snapshots", "alma.p.helena.knowledge", "all-MiniLM-L6-v2") == 42
    assert snapshot.read(tmp_path / "snapshots", "alma.p.helena.knowledge", "another-model") is None


def test_a_snapshot_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        snapshot.write(tmp_path / "snapshots", _sample())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "snapshots").stat().st_mode) == 0o700
    assert stat.S_IMODE(snapshot.path_of(tmp_path / "snapshots", "alma.p.helena.knowledge").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["alma.p.helena.knowledge.snap"]  # no temporary left


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) - 7],  # truncated
        lambda data: data[:-20] + bytes([data[-20] ^ 0x01]) + data[-19:],  # one bit of a record flipped
        lambda data: data.replace(b'"generation":42', b'"generation":43'),  # the header altered
        lambda data: b"garbage\n" + data,
        lambda data: b"",
    ],
    ids=["truncated", "bit-flip", "header", "prefix", "empty"],
)
def test_a_damaged_snapshot_is_logged_removed_and_ignored(
    tmp_path: Path, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "snapshots"
    snapshot.write(folder, _sample())
    path = snapshot.path_of(folder, "alma.p.helena.knowledge")
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="alma_mcp"):
        found = snapshot.read(folder, "alma.p.helena.knowledge", "all-MiniLM-L6-v2")
    assert found is None
    assert "corrupt" in caplog.text
    assert not path.exists()


def test_a_snapshot_of_another_collection_is_not_used(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    snapshot.write(folder, _sample("alma.p.bob.knowledge"))
    os.replace(snapshot.path_of(folder, "alma.p.bob.knowledge"), snapshot.path_of(folder, "alma.p.helena.knowledge"))
    assert snapshot.read(folder, "alma.p.helena.knowledge", "all-MiniLM-L6-v2") is None


# -- the service: answers, staleness, scope ------------------------------------------------
def _snapshot_retrievals(alma: ALMA) -> int:
    return int(alma.health()["snapshot_retrievals"])


def _answer(result: Any) -> dict[str, Any]:
    return json.loads(result.model_dump_json())


@pytest.mark.slow
def test_a_retrieval_from_snapshots_equals_the_stores(make_alma: Callable[..., ALMA], tmp_path: Path) -> None:
    data = tmp_path / "data"
    teacher = make_alma(data_dir=data)
    teach_playwright(teacher)
    teacher.add_preference("ana", "style", "Keep Playwright tests short, one assertion each")
    teacher.learn("helena", TASK, "success", "assert the inline errors, then post the bad payload")
    assert teacher.save_snapshots() == 5  # helena's four collections and the preferences
    teacher.close()

    quick = make_alma(data_dir=data)
    served = quick.retrieve(TASK, "helena", user_id="ana")
    explained = quick.explain(TASK, "helena", user_id="ana")
    assert _snapshot_retrievals(quick) == 1

    normal = make_alma(data_dir=data)
    normal.save_snapshots()  # opens the store; every snapshot is current, none is rewritten
    project = normal.config.project
    os.unlink(snapshot.path_of(data / "snapshots", f"alma.{project}.helena.heuristic"))  # the store answers
    expected = normal.retrieve(TASK, "helena", user_id="ana")
    assert _snapshot_retrievals(normal) == 0
    assert _answer(served) == _answer(expected)
    assert served.heuristics and served.preferences and served.prompt
    assert explained.model_dump() == normal.explain(TASK, "helena", user_id="ana").model_dump()


@pytest.mark.slow
def test_ratings_of_what_snapshots_served_move_the_same_floors(make_alma: Callable[..., ALMA], tmp_path: Path) -> None:
    data = tmp_path / "data"
    teacher = make_alma(data_dir=data, retrieval={"calibrate_from_feedback": True})
    teach_playwright(teacher)
    teacher.save_snapshots()
    teacher.close()

    alma = make_alma(data_dir=data, retrieval={"calibrate_from_feedback": True})
    served = alma.retrieve(TASK, "helena")
    assert _snapshot_retrievals(alma) == 1 and served.heuristics
    for item in served.heuristics:
        alma.feedback(item.memory.id, "harmful", agent="helena")  # counted by the store's retriever
    saved = json.loads((data / "feedback_calibration.json").read_text())
    assert len(saved["ratings"]["helena"]) == len(served.heuristics), "ratings of what the snapshots served were dropped"


@pytest.mark.slow
def test_a_write_by_another_process_makes_the_snapshot_stale(make_alma: Callable[..., ALMA], tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = make_alma(data_dir=data)
    teach_playwright(first)
    first.save_snapshots()
    first.close()

    reader = make_alma(data_dir=data)
    assert reader.retrieve(TASK, "helena").heuristics
    assert _snapshot_retrievals(reader) == 1

    # Another service on the same directory: to the shared write counters, another process.
    writer = make_alma(data_dir=data)
    fact = writer.add_knowledge("helena", "testing", "The login form's validation errors render in a div with role=alert.")
    writer.close()

    after = reader.retrieve(TASK, "helena")
    assert _snapshot_retrievals(reader) == 1, "a stale snapshot answered"
    assert fact.id in {k.memory.id for k in after.knowledge}


@pytest.mark.slow
def test_snapshots_serve_only_what_the_store_would(make_alma: Callable[..., ALMA], tmp_path: Path) -> None:
    data = tmp_path / "data"
    agents = {"helena": {}, "bob": {}}
    teacher = make_alma(data_dir=data, agents=agents, allow_undeclared_agents=False)
    teach_playwright(teacher)
    teacher.add_preference("ana", "style", "Playwright login tests: one assertion per test")
    teacher.save_snapshots()
    teacher.close()

    quick = make_alma(data_dir=data, agents=agents, allow_undeclared_agents=False)
    other = quick.retrieve(TASK, "bob", user_id="ben")
    assert _snapshot_retrievals(quick) == 1
    assert not other.all() and not other.prompt  # neither helena's lessons nor ana's preferences
    own = quick.retrieve(TASK, "helena", user_id="ana")
    assert own.heuristics and own.preferences


# -- a real stdio server and the one-shot CLI ------------------------------------------------
def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"alma:\n  project_id: snap\n  data_dir: {tmp_path / 'data'}\n  allow_undeclared_agents: true\n", encoding="utf-8"
    )
    return config


def _teach(tmp_path: Path, real_embedder: Any) -> None:
    from alma_mcp.config import load_config

    alma = ALMA(load_config(_config(tmp_path)), embedder=real_embedder)
    try:
        teach_playwright(alma)
    finally:
        alma.close()


class _Server:
    """`python -m alma_mcp` over stdio, spoken to in raw JSON-RPC."""

    def __init__(self, config: Path, early: bool = True) -> None:
        env = server_env() | ({} if early else {"ALMA_EARLY_INITIALIZE": "0"})  # 0: the SDK answers everything
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alma_mcp", "--config", str(config), "--log-level", "DEBUG"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=config.parent,
        )
        self._id = 0
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}})
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        self._send({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, "the server closed its stdout"
            reply = json.loads(line)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.result(tool, arguments)["structuredContent"]

    def result(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = self.request("tools/call", {"name": tool, "arguments": arguments})
        assert result["isError"] is False, result
        return result

    def close(self) -> str:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        return self.proc.stderr.read().decode()


FIRST_FROM_SNAPSHOT = "first retrieval answered from the saved index snapshots (chromadb imported: no)"
FIRST_LATE = "first retrieval answered from the saved index snapshots (chromadb imported: yes)"
BEFORE_THE_SDK = "request 2 (tools/call) answered before the MCP SDK was up"


@pytest.mark.slow
def test_a_server_answers_its_first_retrieve_from_snapshots_before_importing_chroma(tmp_path: Path, real_embedder: Any) -> None:
    _teach(tmp_path, real_embedder)
    config = _config(tmp_path)
    arguments = {"agent": "helena", "task": TASK}

    cold = _Server(config, early=False)  # no snapshot yet: the store and the SDK answer; the server saves them as it closes
    expected = cold.result("alma_retrieve", arguments)
    assert cold.call("alma_health", {})["snapshot_retrievals"] == 0
    log = cold.close()
    assert "answered from the saved index snapshots" not in log and "before the MCP SDK was up" not in log
    assert sorted(p.name for p in (tmp_path / "data" / "snapshots").iterdir()) == ["alma.snap._.preference.snap"] + [
        f"alma.snap.helena.{kind}.snap" for kind in ("anti_pattern", "heuristic", "knowledge", "outcome")
    ]

    warm = _Server(config)
    answered = warm.result("alma_retrieve", arguments)
    assert warm.call("alma_health", {})["snapshot_retrievals"] == 1
    log = warm.close()
    # Chroma is imported after the first retrieval, or once the deferral runs out on a machine too
    # loaded to answer within it: only then may the first answer find it imported.
    assert FIRST_FROM_SNAPSHOT in log or (CHROMA_DEFER_EXPIRED in log and FIRST_LATE in log), log[-3000:]
    assert BEFORE_THE_SDK in log, log[-3000:]
    assert "Traceback" not in log
    assert answered == expected  # the early answer is the SDK's, field for field (the prompt's JSON text too)
    assert answered["structuredContent"]["heuristics"]

    # No snapshot (a first start): answered early all the same, from the store.
    shutil.rmtree(tmp_path / "data" / "snapshots")
    first = _Server(config)
    from_store = first.result("alma_retrieve", arguments)
    log = first.close()
    assert BEFORE_THE_SDK in log and "answered from the saved index snapshots" not in log, log[-3000:]
    assert from_store == expected


@pytest.mark.slow
def test_without_structured_retrieve_results_the_early_answer_is_the_sdks_text_alone(tmp_path: Path, real_embedder: Any) -> None:
    """`retrieve_structured: false` (for clients that hand the model a result's JSON instead of its
    text): alma_retrieve has no output schema and answers with the prompt alone, early or not."""
    _teach(tmp_path, real_embedder)
    config = _config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8") + "  retrieve_structured: false\n", encoding="utf-8")
    arguments = {"agent": "helena", "task": TASK}
    cold = _Server(config, early=False)
    tools = {t["name"]: t for t in cold.request("tools/list", {})["tools"]}
    assert "outputSchema" not in tools["alma_retrieve"] and "outputSchema" in tools["alma_explain"]
    expected = cold.result("alma_retrieve", arguments)
    cold.close()
    assert set(expected) == {"content", "isError"}, expected
    [block] = expected["content"]
    assert block["text"].startswith("## Memory from earlier runs (alma-mcp)") and "```memory-data" in block["text"]
    warm = _Server(config)
    answered = warm.result("alma_retrieve", arguments)
    log = warm.close()
    assert BEFORE_THE_SDK in log, log[-3000:]
    assert answered == expected


@pytest.mark.slow
def test_a_server_falls_back_to_the_store_when_snapshots_are_stale_or_corrupt(tmp_path: Path, real_embedder: Any) -> None:
    from alma_mcp.config import load_config

    _teach(tmp_path, real_embedder)
    config = _config(tmp_path)
    alma = ALMA(load_config(config), embedder=real_embedder)
    try:
        alma.save_snapshots()
        fact = alma.add_knowledge("helena", "testing", "The login form's validation errors render in a div with role=alert.")
    finally:
        alma.close()

    stale = _Server(config)
    answer = stale.call("alma_retrieve", {"agent": "helena", "task": TASK})
    assert stale.call("alma_health", {})["snapshot_retrievals"] == 0
    stale.close()
    assert fact.id in {k["memory"]["id"] for k in answer["knowledge"]}

    # That server saved current snapshots as it closed; now one is damaged.
    path = snapshot.path_of(tmp_path / "data" / "snapshots", "alma.snap.helena.heuristic")
    data = path.read_bytes()
    path.write_bytes(data[:-40] + b"x" * 40)
    damaged = _Server(config)
    again = damaged.call("alma_retrieve", {"agent": "helena", "task": TASK})
    assert damaged.call("alma_health", {})["snapshot_retrievals"] == 0
    log = damaged.close()
    assert "is corrupt" in log and "Traceback" not in log
    assert again == answer
    assert snapshot.read(path.parent, "alma.snap.helena.heuristic", "all-MiniLM-L6-v2") is not None  # saved again


CLI_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from alma_mcp.frontends import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["--config", sys.argv[1], "search", sys.argv[2], "--agent", "helena", "--json"])
    print(json.dumps({"code": code, "chromadb": "chromadb" in sys.modules, "result": json.loads(out.getvalue())}))
    """
)


@pytest.mark.slow
def test_the_cli_search_answers_from_snapshots_without_importing_chroma(tmp_path: Path, real_embedder: Any) -> None:
    _teach(tmp_path, real_embedder)
    config = _config(tmp_path)

    def search() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-c", CLI_PROBE, str(config), TASK], capture_output=True, env=server_env(), timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    first = search()  # no snapshots: Chroma is opened, and the snapshots saved for the next search
    assert first["code"] == 0 and first["chromadb"] is True
    second = search()
    assert second["code"] == 0 and second["chromadb"] is False
    assert second["result"] == first["result"] and second["result"]["heuristics"]


@pytest.mark.slow
def test_a_purge_deletes_the_purged_memories_snapshot_at_once(make_alma: Callable[..., ALMA], tmp_path: Path) -> None:
    data = tmp_path / "data"
    alma = make_alma(data_dir=data)
    secret = alma.add_knowledge("helena", "ops", "The staging database password is hunter2-staging.")
    alma.add_heuristic("helena", "Deploying to staging", "Run the smoke tests first")
    alma.save_snapshots()
    folder = data / "snapshots"
    knowledge = snapshot.path_of(folder, f"alma.{alma.config.project}.helena.knowledge")
    assert b"hunter2" in knowledge.read_bytes()

    alma.forget([secret.id], agent="helena", dry_run=False, purge=True)
    assert not knowledge.exists(), "the purged memory's text stayed on disk in its snapshot"
    assert snapshot.path_of(folder, f"alma.{alma.config.project}.helena.heuristic").exists()  # others untouched
    alma.save_snapshots()
    assert b"hunter2" not in knowledge.read_bytes()


@pytest.mark.slow
def test_a_call_the_snapshots_cannot_answer_is_left_to_the_sdk(tmp_path: Path, real_embedder: Any) -> None:
    """Arguments the tool's schema refuses or the service rejects, and another tool, get the
    SDK's own answers even when they come first, before the SDK is up."""
    from alma_mcp.config import load_config

    _teach(tmp_path, real_embedder)
    config = _config(tmp_path)
    alma = ALMA(load_config(config), embedder=real_embedder)
    try:
        alma.save_snapshots()
    finally:
        alma.close()

    server = _Server(config)
    refused = server.request("tools/call", {"name": "alma_retrieve", "arguments": {"agent": "helena", "task": TASK, "top_k": 0}})
    as_text = server.request("tools/call", {"name": "alma_retrieve", "arguments": {"agent": "helena", "task": TASK, "top_k": "3"}})
    stats = server.request("tools/call", {"name": "alma_stats", "arguments": {"agent": "helena"}})
    log = server.close()
    assert refused["isError"] is True and "top_k" in refused["content"][0]["text"]
    assert as_text["isError"] is False and len(as_text["structuredContent"]["heuristics"]) <= 3  # the SDK converted "3"
    assert stats["isError"] is False
    assert "before the MCP SDK was up" not in log, log[-3000:]
