"""ALMA's public methods for what callers used to reach its parts for: the whole store
(`memories`, `count`), loading memories as given (`put`), per-call retrieval settings and modes,
the settings in force, the result cache and the index preload. Each checks its arguments, and a
bad call stores nothing."""

from __future__ import annotations

import pytest

from alma_mcp.config import RetrievalSettings
from alma_mcp.errors import InvalidInput, NotFound
from alma_mcp.models import DomainKnowledge, Heuristic, new_id

pytestmark = pytest.mark.fast

TASK = "how many partitions does the kafka cluster have"


def fact(alma, agent: str, text: str) -> DomainKnowledge:
    return DomainKnowledge(id=new_id("knowledge"), project=alma.config.project, agent=agent, domain="ops", fact=text)


def test_memories_and_count_are_the_whole_store_unscoped(make_fast_alma) -> None:
    alma = make_fast_alma(agents={"ops": {}, "dev": {}}, allow_undeclared_agents=False)
    kafka = alma.add_knowledge("ops", "kafka", "Kafka has twelve partitions")
    redis = alma.add_knowledge("dev", "redis", "Redis evicts with allkeys-lru")
    rule = alma.add_heuristic("ops", "Deploying the billing service", "Use a canary first")
    pref = alma.add_preference("alice", "style", "Short answers", agent="dev")
    alma.forget([redis.id], dry_run=False)

    assert {m.id for m in alma.memories()} == {kafka.id, rule.id, pref.id}
    assert {m.id for m in alma.memories(include_archived=True)} == {kafka.id, redis.id, rule.id, pref.id}
    assert [m.id for m in alma.memories("knowledge", "ops")] == [kafka.id]
    assert [m.id for m in alma.memories(agent="dev")] == [pref.id], "a preference counts as its recorder's"
    assert [m.id for m in alma.memories("preference")] == [pref.id]
    assert (alma.count(), alma.count(include_archived=True)) == (3, 4)
    assert (alma.count("knowledge", "dev"), alma.count("knowledge", "dev", include_archived=True)) == (0, 1)
    assert alma.count("heuristic", "nobody") == 0  # a collection never written
    with pytest.raises(NotFound, match="unknown memory type"):
        alma.memories("lesson")
    with pytest.raises(InvalidInput, match="agent"):
        alma.count("knowledge", "not a name!")


def test_put_stores_memories_as_given_and_refuses_what_is_not_one(fast_alma) -> None:
    first, second = fact(fast_alma, "ops", "Kafka has twelve partitions"), fact(fast_alma, "ops", "Kafka has twelve partitions!")
    fast_alma.put([first, second])  # no merge on write: both stay, as given
    assert {m.id for m in fast_alma.memories("knowledge", "ops")} == {first.id, second.id}
    assert fast_alma.get(first.id).memory == first
    vectors = fast_alma.embedder.embed(["a", "b"])
    with pytest.raises(InvalidInput, match="one row"):
        fast_alma.put([fact(fast_alma, "ops", "one")], vectors)
    with pytest.raises(InvalidInput, match="not \\['dict'\\]"):
        fast_alma.put([{"fact": "a dict"}])  # type: ignore[list-item]
    assert fast_alma.count(include_archived=True) == 2, "a refused put stores nothing"
    third = fact(fast_alma, "dev", "Redis evicts with allkeys-lru")
    fast_alma.put([third], vectors[:1], key_vectors=vectors[:1])
    assert fast_alma.get(third.id).memory == third


def test_retrieve_takes_settings_and_a_mode_for_one_call(fast_alma) -> None:
    fast_alma.add_knowledge("ops", "kafka", "The kafka cluster has twelve partitions")
    fast_alma.add_heuristic("ops", "Sizing kafka partitions", "Count consumers first", confidence=0.9)
    shipped = fast_alma.retrieval_settings("ops")
    assert shipped == fast_alma.config.retrieval_for("ops")
    everything = RetrievalSettings(relevance_floor=0.0, floor_margin=0.0, lexical_floor=1.0, weak_top_k=0)
    nothing = everything.model_copy(update={"relevance_floor": 1.0, "weak_floor": 1.0})
    assert len(fast_alma.retrieve(TASK, "ops", settings=everything)) == 2
    assert len(fast_alma.retrieve(TASK, "ops", settings=nothing)) == 0
    lexical = fast_alma.retrieve(TASK, "ops", settings=everything, mode="lexical")
    assert "The kafka cluster has twelve partitions" in [getattr(m.memory, "fact", None) for m in lexical.all()]
    assert fast_alma.retrieval_settings("ops") == shipped, "a call's settings change nothing after it"
    with pytest.raises(InvalidInput, match="mode 'fuzzy'"):
        fast_alma.retrieve(TASK, "ops", mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="RetrievalSettings"):
        fast_alma.retrieve(TASK, "ops", settings={"relevance_floor": 0.1})  # type: ignore[arg-type]


def test_preload_reads_the_agents_indexes(make_fast_alma) -> None:
    alma = make_fast_alma(agents={"ops": {}, "dev": {"inherit_from": ["ops"]}}, allow_undeclared_agents=False)
    alma.add_knowledge("ops", "kafka", "The kafka cluster has twelve partitions")
    # dev reads the preferences, its own collections and those ops shares: more than its own five.
    assert alma.preload(["dev"]) == alma.preload("dev") > 5
    assert alma.preload() > alma.preload(["ops"])
    with pytest.raises(NotFound):
        alma.preload(["nobody"])


def parts(tmp_path, **settings):  # type: ignore[no-untyped-def]
    from alma_mcp.embedding.embedder import HashEmbedder
    from alma_mcp.ranking.retriever import Retriever
    from alma_mcp.storage.store import MemoryStore

    from helpers import build_config

    config = build_config(tmp_path / "data", **settings)
    embedder = HashEmbedder()
    store = MemoryStore.in_memory(config.project, embedder)
    return config, embedder, store, Retriever(store, embedder, config)


def test_clear_cache_makes_the_next_retrieval_rank_again(tmp_path) -> None:
    from alma_mcp.service import ALMA

    config, embedder, _, retriever = parts(tmp_path)
    alma = ALMA(config, embedder=embedder, retriever=retriever)
    alma.add_knowledge("ops", "kafka", "The kafka cluster has twelve partitions")
    first = alma.retrieve(TASK, "ops")
    misses = retriever.cache_misses
    assert alma.retrieve(TASK, "ops") == first and retriever.cache_misses == misses  # cached
    alma.clear_cache()
    assert alma.retrieve(TASK, "ops") == first and retriever.cache_misses == misses + 1  # ranked afresh
    alma.close()


def test_a_service_built_on_a_retriever_shares_its_store_and_config(tmp_path) -> None:
    from alma_mcp.service import ALMA
    from alma_mcp.storage.store import MemoryStore

    from helpers import build_config

    config, embedder, store, retriever = parts(tmp_path)
    with pytest.raises(InvalidInput, match="another config"):
        ALMA(build_config(tmp_path / "other"), embedder=embedder, retriever=retriever)
    with pytest.raises(InvalidInput, match="not two different stores"):
        ALMA(config, embedder=embedder, store=MemoryStore.in_memory(config.project, embedder), retriever=retriever)
    alma = ALMA(config, embedder=embedder, retriever=retriever)
    assert alma.config is retriever.config, "one config: what the caller changes, both rank by"
    taught = alma.add_heuristic("ops", "Deploying the billing service", "Use a canary first")
    assert isinstance(store.get(taught.id), Heuristic)
    assert retriever.indexes.get("heuristic", "ops").records() == 1, "the retriever's indexes follow the service's writes"
    alma.close()
    alma.add_knowledge("ops", "kafka", "Kafka has twelve partitions")  # after close: the same parts, still following
    assert retriever.indexes.get("knowledge", "ops").records() == 1
    alma.close()
