"""Key vectors (the embedding of a memory's condition, pattern, fact, task or preference) are
made when the memory is written and stored with it, on every write path, so a warm retrieval
embeds the task and nothing else. Memories stored before that still work, and `reindex` fills
their key vectors in. Real model, real embedded Chroma, real MCP client."""

from __future__ import annotations

from typing import Any, Sequence

import anyio
import numpy as np
import pytest
from mcp import Client

from alma_mcp.embedding.embedder import HashEmbedder
from alma_mcp.models import DomainKnowledge, key_text, new_id
from alma_mcp.service import ALMA
from alma_mcp.frontends.server import create_server
from alma_mcp.storage.store import KEY_CHECK, KEY_VECTOR, MemoryStore, collection_name

from helpers import build_config, teach_playwright


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed (a query served from the
    query LRU is not counted: nothing is embedded)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += list(texts)
        return self.inner.embed(texts)

    def embed_query(self, text: str) -> np.ndarray:
        cached = self.inner.cache.get(text)
        if cached is not None:
            return cached
        vector = self.embed([text])[0]
        self.inner.cache.put(text, vector)
        return vector


class CallCounter(CountingEmbedder):
    """CountingEmbedder that also keeps each call's texts apart (one list per encoder call)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super().embed(texts)


def test_a_taught_memory_is_embedded_in_one_encoder_call_each_distinct_text_once(tmp_path) -> None:
    counting = CallCounter(HashEmbedder())
    config = build_config(tmp_path / "data")
    store = MemoryStore.in_memory(config.project, counting)
    alma = ALMA(config, embedder=counting, store=store)
    try:
        alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC every night.")
        # The fact with its domain (the memory's text) and the fact alone (its key field): one call.
        assert counting.calls == [["billing: Invoices are generated at 02:00 UTC every night.",
                                   "Invoices are generated at 02:00 UTC every night."]]
        counting.calls.clear()

        # Two memories with one text, and a key field that is another memory's whole text: each
        # distinct text goes to the encoder once, and every memory still gets its own row.
        def knowledge(domain: str, fact: str) -> DomainKnowledge:
            return DomainKnowledge(id=new_id("knowledge"), project=config.project, agent="victor", domain=domain, fact=fact)

        twins = [knowledge("ops", "Deploys freeze on Fridays."), knowledge("ops", "Deploys freeze on Fridays."),
                 knowledge("ops", "ops: Deploys freeze on Fridays.")]
        vectors = store.embed(twins)  # the store's batch, as every write path makes it
        assert counting.calls == [["ops: Deploys freeze on Fridays.", "ops: ops: Deploys freeze on Fridays.", "Deploys freeze on Fridays."]]
        assert vectors.shape == (3, counting.dim)
        expected = HashEmbedder().embed([m.text() for m in twins])
        assert np.allclose(vectors, expected)
        assert np.allclose(store.key_vectors(twins), HashEmbedder().embed([key_text(m) for m in twins]))
        assert len(counting.calls) == 1, "the key vectors were kept from the same call"
    finally:
        alma.close()


def stored_keys(store: MemoryStore) -> dict[str, tuple[Any, np.ndarray | None]]:
    """id -> (memory, its stored key vector or None), for every memory (archived too)."""
    out = {}
    for agent, kind in store.scopes():
        for hit in store.iter_hits(kind, None if agent == "_" else agent, include_archived=True):
            out[hit.memory.id] = (hit.memory, hit.key_vector)
    return out


def assert_keys_match_model(store: MemoryStore, embedder: Any, atol: float = 2e-3) -> int:
    """Every stored memory has a key vector, and it is the model's embedding of its key text
    (float16 storage: equal to about 1e-3)."""
    found = stored_keys(store)
    assert found
    memories = [m for m, _ in found.values()]
    expected = embedder.embed([key_text(m) for m in memories])
    for (memory, vector), want in zip(found.values(), expected):
        assert vector is not None, f"{memory.id} has no stored key vector"
        assert vector.shape == want.shape and np.allclose(vector, want, atol=atol), memory.id
    return len(found)


def strip_key_vectors(store: MemoryStore) -> None:
    """Make the store look as an older alma-mcp left it: no key vector fields at all."""
    for agent, kind in store.scopes():
        col = store.client.get_collection(collection_name(store.project, kind, None if agent == "_" else agent))
        ids = col.get(include=[])["ids"]
        col.update(ids=ids, metadatas=[{KEY_VECTOR: None, KEY_CHECK: None} for _ in ids])
        store._bump(col.name)  # noqa: SLF001 - retrieval caches must see the change


def test_every_taught_and_learned_memory_is_stored_with_its_key_vector(make_parts, real_embedder) -> None:
    alma, alma_store, alma_retriever = make_parts()
    teach_playwright(alma)
    alma.add_preference("alice", "reporting", "Keep reports short: five bullet points at most.")
    for task in ("Test the signup form with an empty email", "Test the signup form when the email is empty",
                 "Test signup form validation for a blank email field"):
        alma.learn("helena", task, "success", "Submit blank and assert the inline error", task_type="testing")
    assert {m.type for m, _ in stored_keys(alma_store).values()} == {"heuristic", "anti_pattern", "knowledge", "preference", "outcome"}
    assert_keys_match_model(alma_store, real_embedder)


def test_a_warm_retrieval_embeds_only_the_task(make_parts, real_embedder) -> None:
    counting = CountingEmbedder(real_embedder)
    alma, alma_store, alma_retriever = make_parts(embedder=counting)
    teach_playwright(alma)
    fresh, fresh_store, fresh_retriever = make_parts(embedder=counting)  # another process on the same store: no key cache at all
    counting.texts.clear()
    task = "My Playwright test is flaky right after the page navigates (key vector test)"
    result = fresh.retrieve(task, "helena")
    assert result.heuristics, "the lesson about flaky navigation is found"
    assert counting.texts == [task], "only the task is embedded; memories' keys come from the store"
    assert fresh_retriever.keys.embedded == 0


def test_merge_on_write_and_a_changed_key_keep_key_vectors_right(make_parts, real_embedder) -> None:
    alma, alma_store, alma_retriever = make_parts()
    alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC every night.")
    # Taught again almost verbatim: merged into one active memory, both records written.
    alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC every night!")
    active = [m for m, _ in stored_keys(alma_store).values() if not m.archived]
    assert len(active) == 1
    assert_keys_match_model(alma_store, real_embedder)

    # A path that rewrites metadata only (update_metadata) with a changed key text leaves the
    # old key vector behind: it is recognised as stale and the key is embedded on first sight.
    edited = active[0]
    edited.fact = "Credit notes are issued on the first Monday of each month."  # type: ignore[attr-defined]
    alma_store.update_metadata([edited])  # a store-level write: no service call rewrites text this way
    memory, vector = stored_keys(alma_store)[edited.id]
    assert vector is None, "a key vector made from another key text is not used"


def test_memories_stored_without_key_vectors_still_work_and_reindex_fills_them(make_parts, tmp_path, real_embedder) -> None:
    data = tmp_path / "data"
    alma, alma_store, alma_retriever = make_parts(data_dir=data)
    teach_playwright(alma)
    task = "Playwright test flaky after navigation"
    with_keys = alma.retrieve(task, "helena")
    strip_key_vectors(alma_store)
    assert all(v is None for _, v in stored_keys(alma_store).values())

    older, older_store, older_retriever = make_parts(data_dir=data)
    without = older.retrieve(task, "helena")
    assert older_retriever.keys.embedded > 0, "keys of old memories are embedded on first sight"
    assert [m.memory.id for m in without.all()] == [m.memory.id for m in with_keys.all()]
    assert [m.similarity for m in without.all()] == pytest.approx([m.similarity for m in with_keys.all()], abs=2e-3)

    report = older.reindex()
    assert report.re_embedded == 0 and report.keys_filled == len(stored_keys(older_store))
    assert_keys_match_model(older_store, real_embedder)
    assert older.reindex().keys_filled == 0, "a second run has nothing to fill"
    later, later_store, later_retriever = make_parts(data_dir=data)
    assert [m.memory.id for m in later.retrieve(task, "helena").all()] == [m.memory.id for m in with_keys.all()]
    assert later_retriever.keys.embedded == 0


def test_reindex_with_another_model_re_embeds_key_vectors(make_parts, tmp_path) -> None:
    data = tmp_path / "data"
    first, first_store, first_retriever = make_parts(data_dir=data)
    teach_playwright(first)
    second, second_store, second_retriever = make_parts(data_dir=data, embedder=HashEmbedder(256), embedding={"model": "hash-256"})
    assert second.reindex().re_embedded == len(stored_keys(second_store))
    assert assert_keys_match_model(second_store, HashEmbedder(256), atol=1e-3) == 6  # 256-dimensional now


def test_import_keeps_key_vectors_with_and_without_embeddings(make_parts, tmp_path, real_embedder) -> None:
    source, source_store, source_retriever = make_parts(data_dir=tmp_path / "source")
    teach_playwright(source)
    source.add_preference("alice", "reporting", "Keep reports short: five bullet points at most.")
    plain, vectors = tmp_path / "plain.jsonl", tmp_path / "vectors.jsonl"
    source.export(plain)
    source.export(vectors, with_embeddings=True)
    assert "key_embedding_b64" in vectors.read_text() and "key_embedding_b64" not in plain.read_text()

    # With vectors: nothing at all is embedded, and the keys arrive as they were.
    counting = CountingEmbedder(real_embedder)
    target, target_store, target_retriever = make_parts(data_dir=tmp_path / "with", embedder=counting)
    counting.texts.clear()
    assert target.import_memories(vectors).added == 7
    assert counting.texts == []
    original = stored_keys(source_store)
    for memory_id, (_, vector) in stored_keys(target_store).items():
        assert np.allclose(vector, original[memory_id][1], atol=1e-3)

    # Without vectors: texts and keys are embedded (one batch), and are right.
    other, other_store, other_retriever = make_parts(data_dir=tmp_path / "without")
    assert other.import_memories(plain).re_embedded == 7
    assert_keys_match_model(other_store, real_embedder)


def test_key_vectors_are_used_through_a_real_mcp_client(make_parts, real_embedder) -> None:
    counting = CountingEmbedder(real_embedder)
    alma, alma_store, alma_retriever = make_parts(embedder=counting)
    teach_playwright(alma)
    keys = alma_retriever.keys
    keys.embedded = 0

    async def main() -> None:
        async with Client(create_server(alma=alma), mode="legacy") as client:
            counting.texts.clear()
            task = "Checkout test with the Stripe card iframe keeps failing (mcp key test)"
            result = await client.call_tool("alma_retrieve", {"task": task, "agent": "helena"})
            assert not result.is_error
            assert result.structured_content["heuristics"]
            assert counting.texts == [task]

    anyio.run(main)
    assert keys.embedded == 0


def test_a_facts_key_counts_twice_key_weight_in_its_similarity(alma: Any, real_embedder: Any) -> None:
    """A fact's key is the statement itself; its whole text only adds the domain before it."""
    fact = alma.add_knowledge("helena", "contracts - bills and subscriptions", "Miso the cat is insured with Petplan")
    lesson = alma.add_heuristic("helena", "Paying the vet for the cat", "Claim it back from the insurer the same week")
    task = "which company covers the cat's vet bills"
    query = real_embedder.embed_query(task)
    why = {c.id: c for c in alma.explain(task, "helena").candidates}
    weight = alma.config.retrieval_for("helena").key_weight
    for memory, share in ((fact, 2 * weight), (lesson, weight)):
        text, key = real_embedder.embed([memory.text(), key_text(memory)]) @ query
        assert abs(key - text) > 0.05, "the test needs a key that differs from the text"
        assert why[memory.id].similarity == pytest.approx((1 - share) * text + share * key, abs=2e-3)
