"""The fast tier: service, learning and scope logic on the in-memory backend with the hash
embedder (no model, no Chroma). `pytest -m fast` runs these and the other fast modules."""

from __future__ import annotations

import numpy as np
import pytest
from mcp import Client

from alma_mcp.storage.backend import CollectionNotFound, InMemoryBackend
from alma_mcp.errors import InvalidInput, NotFound, StorageError
from alma_mcp.frontends.server import create_server
from alma_mcp.storage.store import collection_name

pytestmark = pytest.mark.fast

DEPLOY = "deploy the billing service to staging"


def test_repeated_successes_become_a_heuristic_and_failures_an_anti_pattern(fast_alma) -> None:
    learned = [fast_alma.learn("bot", DEPLOY, "success", "blue-green deploy with a canary", task_type="deploy") for _ in range(3)]
    assert not learned[0].heuristics_created and not learned[1].heuristics_created
    assert learned[2].heuristics_created, "the third success of one strategy is a heuristic (min_occurrences 3)"
    failed = [
        fast_alma.learn("bot", "migrate the orders database", "failure", "migrate at peak hours", task_type="db", error_message="locks")
        for _ in range(2)
    ]
    assert failed[-1].anti_patterns_created
    (heuristic,) = fast_alma.list_memories("bot", "heuristic")
    assert heuristic.strategy == "blue-green deploy with a canary" and heuristic.occurrence_count == 3
    got = fast_alma.retrieve(DEPLOY, "bot")
    assert [m.memory.id for m in got.heuristics] == [heuristic.id]
    assert "blue-green deploy with a canary" in got.prompt


def test_an_agent_reaches_only_its_own_and_shared_memories(make_fast_alma) -> None:
    alma = make_fast_alma(agents={"ops": {"share_with": ["dev"]}, "dev": {}, "qa": {}}, allow_undeclared_agents=False)
    fact = alma.add_knowledge("ops", "kafka", "Kafka has twelve partitions")
    assert alma.get(fact.id, agent="dev").memory.id == fact.id  # shared with dev
    with pytest.raises(NotFound) as denied:
        alma.get(fact.id, agent="qa")
    with pytest.raises(NotFound) as missing:
        alma.get("knowledge-" + "0" * 32, agent="qa")
    assert str(denied.value).replace(fact.id, "ID") == str(missing.value).replace("knowledge-" + "0" * 32, "ID")
    assert [m.memory.id for m in alma.retrieve("how many kafka partitions", "dev").knowledge] == [fact.id]
    assert not alma.retrieve("how many kafka partitions", "qa").knowledge


def test_forget_restore_and_feedback(fast_alma) -> None:
    fact = fast_alma.add_knowledge("bot", "kafka", "Kafka has twelve partitions")
    assert fast_alma.forget(memory_ids=[fact.id], agent="bot").dry_run
    assert fast_alma.forget(memory_ids=[fact.id], agent="bot", dry_run=False).count == 1
    assert not fast_alma.retrieve("how many kafka partitions", "bot").knowledge
    assert [r["id"] for r in fast_alma.restore([fact.id]).model_dump()["restored"]] == [fact.id]
    helped = fast_alma.feedback(fact.id, "helpful", agent="bot")
    assert helped.confidence > fact.confidence
    with pytest.raises(InvalidInput, match="not one of"):
        fast_alma.feedback(fact.id, "great", agent="bot")
    assert [e.action for e in fast_alma.audit_log(memory_id=fact.id)][:2] == ["restore", "archive"]


def test_the_in_memory_backend_keeps_chromas_semantics() -> None:
    backend = InMemoryBackend()
    with pytest.raises(CollectionNotFound):
        backend.get_collection("alma.p.bot.knowledge")
    col = backend.get_or_create_collection("alma.p.bot.knowledge", metadata={"hnsw:space": "cosine"})
    col.upsert(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.6, 0.8]], documents=["A", "B"], metadatas=[{"k": 1, "j": 2}, {"k": 5}])
    col.upsert(ids=["a"], embeddings=[[1.0, 0.0]], metadatas=[{"k": 3}])  # merges, keeps the document
    got = col.get(ids=["a"], include=["metadatas", "documents"])
    assert (got["metadatas"], got["documents"]) == ([{"k": 3, "j": 2}], ["A"])
    col.update(ids=["missing"], metadatas=[{"k": 0}])  # skipped, as Chroma does
    assert col.count() == 2
    assert col.get(where={"$and": [{"k": {"$gte": 3}}, {"j": 2}]}, include=[])["ids"] == ["a"]
    found = col.query(query_embeddings=[[0.0, 1.0]], n_results=5, include=["distances"])
    assert found["ids"] == [["b", "a"]] and np.allclose(found["distances"], [[0.2, 1.0]])
    assert col.get(limit=1, offset=1, include=[])["ids"] == ["b"]
    col.modify(name="alma.p.bot.knowledge2")
    assert [c.name for c in backend.list_collections()] == ["alma.p.bot.knowledge2"]


def test_a_collection_never_written_is_empty_and_a_broken_one_is_an_error(make_fast_store) -> None:
    broken: set[str] = set()
    backend = InMemoryBackend(fault=lambda op, name: RuntimeError("disk I/O error") if name in broken else None)
    alma, store = make_fast_store(backend=backend)
    assert alma.count("knowledge", "bot") == 0
    alma.add_knowledge("bot", "kafka", "Kafka has twelve partitions")
    broken.add(collection_name(alma.config.project, "knowledge", "bot"))
    store.collection_replaced(collection_name(alma.config.project, "knowledge", "bot"))  # no cached handle
    with pytest.raises(StorageError, match="disk I/O error"):
        alma.count("knowledge", "bot")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_backend_failure_reaches_the_client_and_changes_nothing(make_fast_alma, mode: str) -> None:
    failing: set[str] = set()
    backend = InMemoryBackend(fault=lambda op, name: RuntimeError(f"{op} failed: disk is full") if op in failing else None)
    alma = make_fast_alma(backend=backend)
    fact = alma.add_knowledge("bot", "kafka", "Kafka has twelve partitions")
    failing.update({"upsert", "update", "delete"})
    async with Client(create_server(alma=alma), mode=mode) as client:
        learned = await client.call_tool("alma_learn", {"agent": "bot", "task": DEPLOY, "outcome": "success", "strategy_used": "canary"})
        assert learned.is_error and "could not write" in learned.content[0].text and "disk is full" in learned.content[0].text
        forgot = await client.call_tool("alma_forget", {"memory_ids": [fact.id], "agent": "bot", "dry_run": False})
        assert forgot.is_error and "disk is full" in forgot.content[0].text
    failing.clear()
    assert alma.count("outcome", "bot") == 0
    assert alma.get(fact.id).memory == fact
