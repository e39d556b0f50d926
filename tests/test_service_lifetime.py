"""The service owns its parts' lifetime: nothing runs before a server's lifespan starts it, and
nothing is left running or open after `close` (which the lifespan calls at its end)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mcp import Client

from alma_mcp.embedding.embedder import HashEmbedder
from alma_mcp.frontends.server import create_server
from alma_mcp.service import ALMA
from alma_mcp.storage.writelock import COUNTER_FILE, open_clients, open_directories

from helpers import build_config


def background_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "alma-preload"}


def mapped(path: Path) -> bool:
    """Whether this process has `path` mapped into memory (the change counters are)."""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def wait_preloaded(alma: ALMA) -> None:
    deadline = time.monotonic() + 60
    while not alma.health()["search_indexes"].startswith("preloaded"):
        assert time.monotonic() < deadline, alma.health()
        time.sleep(0.02)


@pytest.fixture
def service(tmp_path: Path):
    alma = ALMA(build_config(tmp_path / "data", agents={"ops": {}}), embedder=HashEmbedder())
    alma.add_knowledge("ops", "ops", "Kafka has twelve partitions")
    alma.close()
    yield alma
    alma.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_session_starts_the_background_work_and_its_end_stops_it(service: ALMA, mode: str) -> None:
    before = background_threads()
    server = create_server(alma=service)
    assert background_threads() == before, "building the server started a thread"
    async with Client(server, mode=mode) as client:
        wait_preloaded(service)
        assert background_threads() - before, "the session did not start the preload"
        result = await client.call_tool("alma_retrieve", {"task": "how many Kafka partitions", "agent": "ops"})
        assert not result.is_error
    assert background_threads() == before, "the preload/follow thread outlived the session"
    data = service.config.data_dir
    assert Path(data).resolve() not in open_directories(), "the lock registry still holds the directory"
    assert not mapped(data / COUNTER_FILE), "the change counters are still mapped"
    assert not [p for p in open_clients() if p.is_relative_to(Path(data).resolve())], "Chroma's client is still open"

    async with Client(server, mode=mode) as client:  # a later session starts it all again
        wait_preloaded(service)
        result = await client.call_tool("alma_retrieve", {"task": "how many Kafka partitions", "agent": "ops"})
        assert "twelve partitions" in result.content[0].text
    assert background_threads() == before


async def test_two_sessions_share_one_start_and_the_last_one_closes(service: ALMA) -> None:
    before = background_threads()
    server = create_server(alma=service)
    async with Client(server, mode="auto") as first:
        async with Client(server, mode="auto"):
            wait_preloaded(service)
            preload = background_threads() - before
            assert len(preload) == 1
        assert background_threads() - before == preload, "the first session's end closed the service under the other"
        assert not (await first.call_tool("alma_stats", {"agent": "ops"})).is_error
    assert background_threads() == before


def test_close_waits_for_the_follower_and_releases_the_lock_files(service: ALMA) -> None:
    data = Path(service.config.data_dir)
    service.warm_up()
    wait_preloaded(service)
    (preload,) = background_threads()
    assert mapped(data / COUNTER_FILE)
    service.close()
    assert not preload.is_alive(), "close returned before the follower stopped"
    assert not mapped(data / COUNTER_FILE)
    assert data.resolve() not in open_directories()

    # Still usable: the next call opens what it needs again, and close lets go of it again.
    assert service.stats("ops")["total"] == 1
    assert data.resolve() in open_directories()
    service.close()
    assert data.resolve() not in open_directories()


def test_the_lazy_parts_are_made_once_under_concurrent_first_use(service: ALMA, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads make their first calls at once: one store, retriever, learner and life cycle
    is made for all of them, and the learner and the life cycle search the retriever's indexes."""
    import alma_mcp.service as service_module

    made: dict[str, list[object]] = {}
    for name in ("MemoryStore", "Retriever", "Learner", "Lifecycle"):
        real = getattr(service_module, name)
        if name == "MemoryStore":
            opened = real.embedded

            def embedded(*args: object, _opened=opened, **kwargs: object) -> object:
                made.setdefault("MemoryStore", []).append(store := _opened(*args, **kwargs))
                return store

            monkeypatch.setattr(real, "embedded", staticmethod(embedded))
            continue

        class Counted(real):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, _name: str = name, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                made.setdefault(_name, []).append(self)

        monkeypatch.setattr(service_module, name, Counted)
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def first_use(n: int) -> None:
        barrier.wait()
        try:
            service.sweep(dry_run=True)  # the life cycle, so the store and the retriever's indexes
            service.learn("ops", f"restart the consumer {n}", "success", "rolling restart")  # the learner
        except BaseException as exc:  # noqa: BLE001 - reported below, from the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=first_use, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert {name: len(parts) for name, parts in made.items()} == {"MemoryStore": 1, "Retriever": 1, "Learner": 1, "Lifecycle": 1}
    (retriever,), (learner,), (lifecycle,) = made["Retriever"], made["Learner"], made["Lifecycle"]
    assert learner.indexes is retriever.indexes and lifecycle.indexes is retriever.indexes  # type: ignore[attr-defined]


async def test_the_http_app_starts_the_service_with_its_lifespan_and_closes_it_at_the_end(service: ALMA) -> None:
    """`serve --http`: the ASGI app's lifespan (run once by uvicorn) is the service's lifetime."""
    import httpx

    from alma_mcp.frontends.http import build_http_app

    before = background_threads()
    settings = service.config.alma.http
    app = build_http_app(create_server(alma=service), settings, "127.0.0.1", 8765, None, allow_no_auth=True)
    assert background_threads() == before
    async with app.router.lifespan_context(app):
        wait_preloaded(service)
        assert background_threads() - before
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
            reply = await http.post(
                settings.path,
                json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
                headers={"accept": "application/json, text/event-stream", "host": "127.0.0.1:8765"},
            )
            assert reply.status_code == 200, reply.text
    assert background_threads() == before, "the HTTP app's end left the follower running"
    assert Path(service.config.data_dir).resolve() not in open_directories()
