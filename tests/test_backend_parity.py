"""The in-memory backend answers as Chroma does for everything the store asks (so the fast tier
tests the same logic the real store runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alma_mcp.embedding.embedder import HashEmbedder
from alma_mcp.models import DomainKnowledge
from alma_mcp.storage.store import MemoryStore


def _exercise(store: MemoryStore) -> list[object]:
    """The same writes and reads on a store; what it answered, in comparable form."""
    facts = [
        DomainKnowledge(id=f"knowledge-{i:032x}", project="p", agent="bot", domain="ops", fact=text)
        for i, text in enumerate( ("Kafka has twelve partitions", "Redis evicts with allkeys-lru", "The canteen closes at three"))
    ]
    seen: list[object] = [store.count("knowledge", "bot"), store.list("knowledge", "bot")]
    store.put(facts)
    facts[1].archived = True
    store.update_metadata([facts[1]])
    vector = store.embedder.embed_query("how many kafka partitions")
    hits = store.query("knowledge", "bot", vector, 3)
    seen += [
        store.count("knowledge", "bot"),
        store.count("knowledge", "bot", include_archived=False),
        sorted(m.id for m in store.list("knowledge", "bot")),
        sorted(m.id for m in store.list("knowledge", "bot", include_archived=True)),
        [hit.memory.id for hit in hits],
        np.round([hit.similarity for hit in hits], 4).tolist(),
        store.get(facts[0].id) == facts[0],
        store.scopes(),
        store.delete([facts[2]]),
        store.count("knowledge", "bot"),
    ]
    return seen


def test_the_in_memory_backend_answers_as_chroma_does(tmp_path: Path) -> None:
    embedder = HashEmbedder()
    chroma = MemoryStore.embedded(tmp_path / "chroma", "p", embedder)
    try:
        real = _exercise(chroma)
    finally:
        chroma.close()
    fake = _exercise(MemoryStore.in_memory("p", embedder))
    assert fake == real
