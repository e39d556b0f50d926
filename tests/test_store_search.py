"""The store's nearest-neighbour search: archived memories and other users' preferences are
filtered out without slow Chroma filters, and the record cache reuses records read before but
never hides a write.

Real Chroma and the real model. Two services on one data folder stand for two processes: they
share the folder's lock and change counters exactly as separate processes do.
"""

from __future__ import annotations

import numpy as np
import pytest

from alma_mcp.storage.store import collection_name


def _knowledge_ids(alma, task: str) -> list[str]:
    return [item.memory.id for item in alma.retrieve(task, "helena", memory_types=["knowledge"]).knowledge]


def test_a_repeated_search_reads_records_from_the_cache(parts) -> None:
    alma, store = parts.alma, parts.store
    alma.add_knowledge("helena", "payments", "Stripe test cards: 4242 4242 4242 4242 always succeeds.")
    alma.add_knowledge("helena", "payments", "Stripe card 4000 0000 0000 0002 is always declined.")
    records = store.records
    alma.retrieve("Which Stripe test card numbers succeed or fail?", "helena", memory_types=["knowledge"])
    misses = records.misses
    alma.clear_cache()
    alma.retrieve("Which Stripe card numbers can I use in tests?", "helena", memory_types=["knowledge"])
    assert records.misses == misses, "the second search read records it had already read"
    assert records.hits >= 2


def test_a_write_is_seen_by_the_next_search(alma) -> None:
    kept = alma.add_knowledge("helena", "payments", "Stripe test cards: 4242 4242 4242 4242 always succeeds.")
    gone = alma.add_knowledge("helena", "payments", "Stripe card 4000 0000 0000 0002 is always declined.")
    task = "Which Stripe test card numbers succeed or fail?"
    assert set(_knowledge_ids(alma, task)) == {kept.id, gone.id}

    alma.forget([gone.id], dry_run=False)  # archives: a metadata-only write
    assert _knowledge_ids(alma, task) == [kept.id]

    edited = alma.get(kept.id).memory
    edited.fact = "Stripe test cards: 4242 4242 4242 4242 succeeds, with any future expiry date."
    alma.put([edited])
    found = alma.retrieve(task, "helena", memory_types=["knowledge"]).knowledge
    assert [item.memory.fact for item in found] == [edited.fact]


def test_our_own_writes_keep_the_record_cache_right_without_reading_chroma(parts, monkeypatch) -> None:
    alma, store = parts.alma, parts.store
    # A write of this process updates the kept records in place (as Chroma stores them), so the
    # retrieval after alma_learn or a feedback vote costs no read; what it returns must be exactly
    # what a fresh read of the store gives.
    import chromadb.api.models.Collection as chroma_collection

    task = "Which Stripe test card numbers succeed or fail?"
    kept = alma.add_knowledge("helena", "payments", "Stripe test cards: 4242 4242 4242 4242 always succeeds.")
    gone = alma.add_knowledge("helena", "payments", "Stripe card 4000 0000 0000 0002 is always declined.")
    voted = alma.add_knowledge("helena", "payments", "Stripe card 4000 0000 0000 9995 fails with insufficient funds.")
    alma.retrieve(task, "helena", memory_types=["knowledge"])  # indexes built, records kept
    reads: list = []
    real_get = chroma_collection.Collection.get
    monkeypatch.setattr(chroma_collection.Collection, "get", lambda self, *a, **k: reads.append(k.get("ids")) or real_get(self, *a, **k))

    alma.feedback(voted.id, "helpful", "helena")  # a metadata-only write
    alma.forget([gone.id], dry_run=False)  # archived: metadata only
    added = alma.add_knowledge("helena", "payments", "Stripe card 4000 0000 0000 3220 asks for 3-D Secure authentication.")
    reads.clear()  # the writes read the memories they change; the retrieval must read nothing
    found = {item.memory.id: item.memory for item in alma.retrieve(task, "helena", memory_types=["knowledge"]).knowledge}
    assert reads == [], f"the retrieval after our own writes read from Chroma: {reads}"
    assert kept.id in found and added.id in found and gone.id not in found
    monkeypatch.undo()
    fresh = store.fetch_hits("knowledge", "helena", list(found))  # what the cache holds
    store.records._rows.clear()
    stored = store.fetch_hits("knowledge", "helena", list(found))  # what Chroma holds
    for doc in found:
        assert fresh[doc].memory == stored[doc].memory and found[doc] == stored[doc].memory
        # Chroma's cosine index renormalises what it is given, and a vector read back from it can
        # differ from the one written in the last bit of float32 (1e-8): same vector, all the same.
        assert np.allclose(fresh[doc].vector, stored[doc].vector, rtol=0, atol=1e-6)
        assert np.array_equal(fresh[doc].key_vector, stored[doc].key_vector)  # metadata: exact
    assert stored[voted.id].memory.helpful == 1


def test_retrieval_parses_a_kept_record_once_and_no_caller_can_change_what_it_holds(parts) -> None:
    alma, store = parts.alma, parts.store
    # Retrieval shares one parse of each kept record (it only reads it); the memories it returns,
    # and those every other reader gets (learning changes what it reads), are the caller's own.
    text = "Stripe test cards: 4242 4242 4242 4242 always succeeds."
    fact = alma.add_knowledge("helena", "payments", text)
    task = "Which Stripe test card numbers succeed?"
    returned = alma.retrieve(task, "helena", memory_types=["knowledge"]).knowledge[0].memory
    returned.fact = "changed by the caller"

    first = store.fetch_hits("knowledge", "helena", [fact.id], shared=True)[fact.id]
    second = store.fetch_hits("knowledge", "helena", [fact.id], shared=True)[fact.id]
    assert first.memory is second.memory, "a kept record was parsed again for a shared read"
    assert first.memory.fact == text
    own = store.fetch_hits("knowledge", "helena", [fact.id])[fact.id]
    assert own.memory is not first.memory and own.memory == first.memory
    own.memory.fact = "changed by a reader that may change what it reads"
    own.memory.helpful = 7
    own.vector[:] = 0.0

    alma.clear_cache()
    again = alma.retrieve(task, "helena", memory_types=["knowledge"]).knowledge[0].memory
    assert (again.fact, again.helpful) == (text, 0)
    assert np.any(store.fetch_hits("knowledge", "helena", [fact.id], shared=True)[fact.id].vector)
    assert store.fetch_hits("knowledge", "helena", [fact.id], shared=True)[fact.id].memory.fact == text


def test_another_process_write_is_never_hidden(make_parts, tmp_path) -> None:
    folder = tmp_path / "shared"
    first, first_store, _ = make_parts(data_dir=folder)
    second = make_parts(data_dir=folder).alma
    memory = first.add_knowledge("helena", "payments", "Stripe test cards: 4242 4242 4242 4242 always succeeds.")
    task = "Which Stripe test card numbers succeed?"
    assert _knowledge_ids(first, task) == [memory.id]
    name = collection_name(first_store.project, "knowledge", "helena")
    assert first_store.records._rows[name], "the first search should have kept the record"

    changed = second.get(memory.id).memory
    changed.fact = "Stripe test card 4242 4242 4242 4242 succeeds; use any CVC."
    second.put([changed])  # the other "process"

    found = first.retrieve(task, "helena", memory_types=["knowledge"]).knowledge
    assert [item.memory.fact for item in found] == [changed.fact]


def test_a_users_preferences_skip_archived_ones_even_when_they_crowd_the_nearest(parts) -> None:
    alma, store = parts.alma, parts.store
    kept = alma.add_preference("alice", "style", "Keep commit messages under 72 characters per line.")
    crowd = [
        alma.add_preference("alice", "style", f"Keep commit messages short, variant {i}: at most {50 + i} characters.")
        for i in range(30)
    ]
    alma.add_preference("bob", "style", "Write commit messages in French.")
    alma.forget([m.id for m in crowd], dry_run=False)
    hits = store.query("preference", None, alma.embedder.embed_query("commit message length"), 5, where={"user_id": "alice"})
    assert [hit.memory.id for hit in hits] == [kept.id]
    found = alma.retrieve("How long may a commit message be?", "helena", user_id="alice", memory_types=["preference"])
    assert [item.memory.id for item in found.preferences] == [kept.id]


@pytest.mark.parametrize("vector_search", ["memory", "chroma"])
def test_lexical_hits_beyond_the_nearest_are_read_in_the_same_call(make_parts, monkeypatch, vector_search) -> None:
    # Forty facts close to the task in meaning, and one far from it that quotes the task's error
    # code: the dense search does not return that one, the lexical door must, and reading it must
    # not cost a second round trip to Chroma.
    import chromadb.api.models.Collection as chroma_collection

    alma, store, retriever = make_parts(lifecycle={"merge_on_write": False}, vector_search=vector_search)  # forty near-identical facts stay forty
    for i in range(40):
        alma.add_knowledge("helena", "deploys", f"Deploy pipeline note {i}: the checkout service deploy step {i} needs the release branch green first.")
    far = alma.add_knowledge("helena", "canteen", "The canteen card reader shows ERR_PGW_4711 when its paper roll is empty.")
    task = "The checkout service deploy step fails with ERR_PGW_4711"
    nearest = store.query("knowledge", "helena", alma.embedder.embed_query(task), 25)
    assert far.id not in [hit.memory.id for hit in nearest], "the test needs the fact outside the dense search"

    retriever.indexes.get("knowledge", "helena").lexical  # the BM25 index is built from the store first
    store.flush_journal()  # the writes above in Chroma: the reads counted below are the search's own
    reads = []
    real_get = chroma_collection.Collection.get

    def counted(self, *args, **kwargs):
        reads.append(kwargs.get("ids"))
        return real_get(self, *args, **kwargs)

    monkeypatch.setattr(chroma_collection.Collection, "get", counted)
    store.records._rows.clear()
    alma.clear_cache()
    found = alma.retrieve(task, "helena", memory_types=["knowledge"]).knowledge
    assert far.id in [item.memory.id for item in found]
    assert len(reads) == 1 and far.id in reads[0], reads
