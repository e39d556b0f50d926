"""The same behaviour on both backends: the embedded store and a real Chroma server.

A session fixture starts `chroma run --path DIR --port PORT` on loopback (the `chroma` command
installed next to this Python, as in CI), waits for its heartbeat with a deadline, and stops
it at the end. Every behaviour test runs once per backend, through the real MCP client.
Each test uses its own project id, so tests sharing the server never see each other's data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from mcp import Client

from alma_mcp.config import AlmaConfig, parse_config
from alma_mcp.errors import StorageError
from alma_mcp.frontends.server import create_server
from alma_mcp.ranking.retriever import Retriever
from alma_mcp.service import ALMA
from alma_mcp.storage.store import MemoryStore
from serving import free_port, stop

pytestmark = [pytest.mark.slow, pytest.mark.chroma_server]

BACKENDS = ["embedded", "chroma-http"]


def chroma_command() -> str:
    beside = Path(sys.executable).parent / "chroma"
    if beside.exists():
        return str(beside)
    found = shutil.which("chroma")
    if found is None:
        pytest.fail("the `chroma` command is not installed next to this Python (pip install chromadb)")
    return found


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A real Chroma server on loopback for the whole session."""
    path = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = open(path / "server.log", "wb")
    proc = subprocess.Popen(
        [chroma_command(), "run", "--path", str(path / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"chroma run exited: {(path / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("the Chroma server did not answer its heartbeat within 60 s")
        time.sleep(0.1)
    yield {"host": "127.0.0.1", "port": port}
    stop(proc)
    log.close()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, real_embedder) -> Callable[..., ALMA]:
    """make(**alma_settings) -> ALMA on this test's backend; one project per test."""
    project = f"t{uuid.uuid4().hex[:12]}"
    made: list[ALMA] = []

    watched: list[Retriever] = []

    def config(alma: dict[str, Any]) -> AlmaConfig:
        alma.setdefault("project_id", project)
        alma.setdefault("allow_undeclared_agents", True)
        alma.setdefault("data_dir", str(tmp_path / "data"))
        if request.param == "chroma-http":
            server = request.getfixturevalue("chroma_server")
            alma.setdefault("storage", "chroma-http")
            alma.setdefault("chroma_http", {"host": server["host"], "port": server["port"], "headers": {"X-Team": "qa"}})
        return parse_config({"alma": alma})

    def make(**alma: Any) -> ALMA:
        service = ALMA(config(alma), embedder=real_embedder)
        made.append(service)
        return service

    def make_watched(**alma: Any) -> tuple[ALMA, Retriever]:
        """A service on a retriever the test holds, to watch its indexes follow the store."""
        settings = config(alma)
        if request.param == "chroma-http":
            store = MemoryStore.http(settings.alma.chroma_http, settings.project, real_embedder)
        else:
            store = MemoryStore.embedded(settings.data_dir / "chroma", settings.project, real_embedder)
        watched.append(Retriever(store, real_embedder, settings))
        made.append(ALMA(settings, embedder=real_embedder, retriever=watched[-1]))
        return made[-1], watched[-1]

    make.kind = request.param  # type: ignore[attr-defined]
    make.watched = make_watched  # type: ignore[attr-defined]
    yield make
    for service in made:
        service.close()
    for retriever in watched:
        retriever.close()
        retriever.indexes.close()
        retriever.store.close()


def ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text if result.content else result
    return result.structured_content


async def test_teach_then_retrieve_and_scope(backend):
    alma = backend()
    assert alma.stats()["storage"].startswith("chroma-http" if backend.kind == "chroma-http" else "chroma (embedded")
    async with Client(create_server(alma=alma), mode="legacy") as client:
        taught = ok(
            await client.call_tool(
                "alma_add_knowledge",
                {"agent": "helena", "domain": "auth", "fact": "The login API answers 422 with a field-errors array on invalid input"},
            )
        )
        got = ok(await client.call_tool("alma_retrieve", {"agent": "helena", "task": "What does the sign-in endpoint return for bad input?"}))
        assert [k["memory"]["id"] for k in got["knowledge"]] == [taught["id"]]
        assert "422" in got["prompt"]
        other = ok(await client.call_tool("alma_retrieve", {"agent": "victor", "task": "What does the sign-in endpoint return?"}))
        assert other["knowledge"] == [] and other["prompt"] == ""


async def test_outcomes_become_a_heuristic(backend):
    alma = backend(agents={"helena": {"can_learn": ["form_testing"], "min_occurrences_for_heuristic": 3}})
    strategy = "Submit the form with the field blank and assert the inline error next to the field"
    tasks = [
        "Test the login form validation for an empty email field",
        "Test the login form validation when the email field is empty",
        "Test login form validation with an empty e-mail field",
    ]
    async with Client(create_server(alma=alma), mode="legacy") as client:
        reports = [
            ok(await client.call_tool("alma_learn", {"agent": "helena", "task": t, "outcome": "success", "strategy_used": strategy, "task_type": "form_testing"}))
            for t in tasks
        ]
        created = [h for r in reports for h in r["heuristics_created"]]
        assert len(created) == 1
        got = ok(await client.call_tool("alma_retrieve", {"agent": "helena", "task": "Check what the login form does with a blank email"}))
        assert [h["memory"]["id"] for h in got["heuristics"]] == created
        assert strategy in got["prompt"]


async def test_feedback_forget_and_stats(backend):
    alma = backend()
    fact = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    alma.add_preference("alice", "communication", "Keep test reports to five bullet points")
    async with Client(create_server(alma=alma), mode="legacy") as client:
        fed = ok(await client.call_tool("alma_feedback", {"memory_id": fact.id, "signal": "helpful", "agent": "victor"}))
        assert fed["helpful"] == 1
        stats = json.loads((await client.read_resource("alma://stats")).contents[0].text)
        assert stats["agents"]["victor"]["knowledge"] == 1 and stats["preferences"] == 1
        dry = ok(await client.call_tool("alma_forget", {"agent": "victor", "memory_ids": [fact.id]}))
        assert dry["dry_run"] is True and dry["count"] == 1
        assert alma.stats()["agents"]["victor"]["knowledge"] == 1
        ok(await client.call_tool("alma_forget", {"agent": "victor", "memory_ids": [fact.id], "dry_run": False}))
        assert alma.stats()["agents"]["victor"]["knowledge"] == 0


def test_preferences_are_per_user(backend):
    alma = backend()
    alma.add_preference("alice", "code_style", "Use tabs for indentation in Go files")
    alma.add_preference("bob", "code_style", "Use four spaces for indentation in Go files")
    got = alma.retrieve("Format this Go file with the right indentation", "helena", user_id="alice")
    assert [p.memory.preference for p in got.preferences] == ["Use tabs for indentation in Go files"]


def test_a_second_service_on_the_same_store_sees_writes(backend):
    """Two services on one store (two processes in real life): B's cached retrieval follows A's write
    at once on the embedded store, within `change_check_seconds` on a Chroma server."""
    a = backend()
    b, watched = backend.watched()
    task = "Which port does the billing webhook gateway listen on?"
    a.add_knowledge("helena", "ops", "The cron parser runs every night at 02:00")
    assert b.retrieve(task, "helena").knowledge == []
    taught = a.add_knowledge("helena", "ops", "The billing webhook gateway listens on port 8443")
    deadline = time.monotonic() + (0.0 if backend.kind == "embedded" else 10.0)
    while True:
        ids = [k.memory.id for k in b.retrieve(task, "helena").knowledge]
        if taught.id in ids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert taught.id in ids
    # B followed by catching up with the records A wrote, not by reading the collection again.
    indexes = watched.indexes
    assert indexes.catch_ups >= 1
    reads = indexes.full_reads
    a.forget(memory_ids=[taught.id], dry_run=False)  # archived by A
    deadline = time.monotonic() + (0.0 if backend.kind == "embedded" else 10.0)
    while taught.id in [k.memory.id for k in b.retrieve(task, "helena").knowledge] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert taught.id not in [k.memory.id for k in b.retrieve(task, "helena").knowledge]
    assert indexes.full_reads == reads and taught.id in indexes.get("knowledge", "helena").archived


def test_tenant_and_database_isolate(chroma_server, tmp_path, real_embedder):
    """`chroma_http.database` is honoured: memories in one database are invisible from another."""
    import chromadb

    admin = chromadb.AdminClient(chromadb.Settings(chroma_api_impl="chromadb.api.fastapi.FastAPI",
                                                   chroma_server_host=chroma_server["host"],
                                                   chroma_server_http_port=chroma_server["port"],
                                                   anonymized_telemetry=False))
    database = f"db{uuid.uuid4().hex[:8]}"
    admin.create_database(database, "default_tenant")
    settings = {"project_id": "isolation", "storage": "chroma-http", "allow_undeclared_agents": True, "data_dir": str(tmp_path)}
    team = ALMA(parse_config({"alma": {**settings, "chroma_http": {**chroma_server, "database": database}}}), embedder=real_embedder)
    default = ALMA(parse_config({"alma": {**settings, "chroma_http": dict(chroma_server)}}), embedder=real_embedder)
    team.add_knowledge("helena", "ops", "The staging database is rebuilt every Monday")
    assert team.stats()["agents"]["helena"]["knowledge"] == 1
    assert "helena" not in default.stats()["agents"]
    assert database in team.stats()["storage"]


def test_unreachable_server_is_a_clear_error(tmp_path, real_embedder):
    config = parse_config(
        {"alma": {"storage": "chroma-http", "chroma_http": {"host": "127.0.0.1", "port": free_port()}, "data_dir": str(tmp_path)}}
    )
    with pytest.raises(StorageError, match="cannot reach the Chroma server at 127.0.0.1"):
        ALMA(config, embedder=real_embedder).stats()  # opens the store
