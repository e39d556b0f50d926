"""The search indexes of every collection, read from the store once and kept in step with its
writes, this process's and other processes' (`SearchIndexes`): an incremental BM25 index per
collection and, up to IN_MEMORY_LIMIT records, an exact in-memory copy of its vectors."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from ..models import MemoryBase, strategy_key
from ..storage.store import PREFERENCES, Hit, MemoryStore, collection_name
from .dense import VectorIndex
from .lexical import BM25Index

log = logging.getLogger("alma_mcp")

IN_MEMORY_LIMIT = 200_000
"""`vector_search: auto` searches a collection in memory up to this many records, Chroma beyond.
A scan reads every vector (35,000 take about 2 ms here, 200,000 about 12) where Chroma's HNSW
query costs about 2.5 ms at any size, but HNSW is approximate, and on stores full of near-
duplicates (the benchmark's filler; an agent's many outcomes of one kind of task) it lost the
right memory: at 100,000 per agent it returned 85-88% of the exact 10 nearest, none of them for
some tasks, and dense-only Recall@5 fell to 0.05 against 0.41 exact (bench/README.md, "Retrieval:
recall, false injection, latency"). The limit was 15,000 when speed alone decided it."""

VectorSearch = Literal["auto", "memory", "chroma"]

CATCH_UP_SLACK_SECONDS = 60.0
"""A catch-up with other processes' writes reads the records written since its index was last
synced, less this margin: a write is timed when it starts, by its writer's clock, and may become
visible a little later; a Chroma server's clients may disagree on the time by a little too."""
CATCH_UP_MAX_SHARE = 0.1
"""A catch-up with more changed records than this share of the collection (at least
CATCH_UP_MIN) reads the whole collection instead."""
CATCH_UP_MIN = 2000


def lexical_text(memory: MemoryBase) -> str:
    """What BM25 indexes: the embedded text plus the fields that carry exact strings.

    An outcome's error message or an anti-pattern's alternative is where identifiers live;
    indexing them lexically finds a quoted error without changing what is embedded.
    """
    extra = [
        getattr(memory, name, None)
        for name in ("error_message", "better_alternative", "feedback", "task_type", "strategy_key")
    ]
    return "\n".join([memory.text(), *[value for value in extra if isinstance(value, str) and value]])


@dataclass
class CollectionIndex:
    """What retrieval searches in one collection: its active memories' BM25 index and, when the
    nearest-neighbour search is done in memory (`vector_search`), their vectors. With the ids of
    its archived records, it accounts for every record of the collection, which is how a catch-up
    with another process's writes (SearchIndexes._catch_up) knows it missed none."""

    lexical: BM25Index
    dense: VectorIndex | None
    archived: set[str] = field(default_factory=set)
    synced_at: float = 0.0
    """Wall-clock time at which the read or catch-up that this index has followed since began."""
    reread: bool = False
    """A catch-up found it could not follow: the next refresh reads the whole collection."""

    def records(self) -> int:
        return len(self.lexical) + len(self.archived)


def _owner(memory: MemoryBase) -> str | None:
    """What a search of the in-memory index can be restricted to: a preference's user (every
    read of preferences is), an outcome's strategy (learning groups the outcomes of one)."""
    if memory.type == PREFERENCES:
        return getattr(memory, "user_id", None)
    if memory.type == "outcome":
        return strategy_key(memory.strategy_used)  # type: ignore[attr-defined]
    return None


class SearchIndexes:
    """One CollectionIndex per collection, kept in step with the store's writes.

    An index is built from the store the first time a collection is searched; after that,
    the store's write listener adds, replaces and removes single memories, so a write costs
    microseconds instead of a rebuild. The collection's write generation, which also counts
    other processes' writes, is remembered after every update: when it has moved without this
    process writing, another process wrote, and the index catches up with the records written
    since it was last synced (`_catch_up`, by their write time), unless that is most of the
    collection or records were deleted (the count tells), when it is read again in full.
    """

    def __init__(self, store: MemoryStore, vector_search: VectorSearch = "auto") -> None:
        self.store = store
        self.vector_search = vector_search
        self._indexes: dict[str, CollectionIndex] = {}
        self._synced: dict[str, int | None] = {}
        # Locking. A collection is (re)read under its own build lock, one reader at a time, and that
        # reader may wait for the store (a write under way). Write listeners run inside the
        # store's write lock, so they never wait for a build lock: a write made while the
        # collection is being read is queued in `_reading` and applied by the reader once its
        # index is in place (applying a write twice leaves an index as applying it once).
        # `_lock` guards the dicts only and is never held while waiting for anything.
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._reading: dict[str, list[tuple[Sequence[MemoryBase], bool, int, int, np.ndarray | None]]] = {}
        self._preparing: set[str] = set()
        self._builders: list[threading.Thread] = []  # prepare's readers, which close waits for
        self.catch_ups = 0
        """Times an index followed other processes' writes by catching up (for tests and health)."""
        self.full_reads = 0
        """Times a collection was read in full."""
        if hasattr(store, "add_write_listener"):
            store.add_write_listener(self._on_write)

    def _build_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._building.setdefault(name, threading.Lock())

    def ready(self, memory_type: str, agent: str | None) -> CollectionIndex | None:
        """The collection's index if it is built and follows every write so far; never waits."""
        name = collection_name(self.store.project, memory_type, agent)
        index = self._indexes.get(name)
        if index is not None and self._synced.get(name) == self.store.generation(memory_type, agent):
            return index
        return None

    def prepare(self, memory_type: str, agent: str | None) -> None:
        """Bring the collection's index up to date, unless it is current: at once when a catch-up
        with other processes' writes does it (milliseconds), else by reading the collection in a
        background thread, returning at once. The write path asks for this before it takes the
        write lock, so that a first write to a large collection does not wait seconds for its
        index to be read, and its searches under the lock find the index current."""
        if self.ready(memory_type, agent) is not None:
            return
        name = collection_name(self.store.project, memory_type, agent)
        if name in self._indexes and self._refresh(memory_type, agent, wait=False, full_read=False) is not None:
            return
        with self._lock:
            if name in self._preparing:
                return
            self._preparing.add(name)

        def build() -> None:
            try:
                self.get(memory_type, agent)
            except Exception as exc:  # noqa: BLE001 - the next search reads it again, or reports the failure
                if threading.main_thread().is_alive():  # else cut short by exit: not a failure
                    log.warning("could not read %s for its search index: %s", name, exc)
            finally:
                with self._lock:
                    self._preparing.discard(name)

        # Not a daemon: a daemon thread still inside Chroma when the interpreter finalizes can
        # crash the process (seen: SIGSEGV on exit, tests/test_multiprocess.py); exit waits for
        # this one read instead.
        builder = threading.Thread(target=build, name=f"alma-index-{name}")
        with self._lock:  # started under the lock: close never sees a builder not yet started
            self._builders = [t for t in self._builders if t.is_alive()] + [builder]
            builder.start()

    def close(self) -> None:
        """Wait for the collections `prepare` is reading in the background (the store they read
        is closed next)."""
        with self._lock:
            builders, self._builders = self._builders, []
        for builder in builders:
            if builder is not threading.current_thread():
                builder.join()

    def get(self, memory_type: str, agent: str | None) -> CollectionIndex:
        """The collection's index, brought up to date (caught up, or read) when it is not current.
        May wait for a write under way: not to be called with the store's write lock held (see
        `ready`)."""
        index = self._refresh(memory_type, agent, wait=True, full_read=True)
        assert index is not None
        return index

    def _refresh(self, memory_type: str, agent: str | None, wait: bool, full_read: bool) -> CollectionIndex | None:
        """The current index, or None when that would need waiting for another reader (`wait`
        False) or reading the whole collection (`full_read` False)."""
        index = self.ready(memory_type, agent)
        if index is not None:
            return index
        name = collection_name(self.store.project, memory_type, agent)
        build = self._build_lock(name)
        if not build.acquire(blocking=wait):
            return None
        try:
            index = self.ready(memory_type, agent)
            if index is not None:
                return index
            stale = self._indexes.get(name)
            if stale is None and not full_read:
                return None
            with self._lock:
                self._reading[name] = []  # from here on, writes are queued for this reader
            try:
                generation = self.store.generation(memory_type, agent)  # before reading
                if stale is not None and self._catch_up(stale, memory_type, agent):
                    index = stale
                elif full_read:
                    index = self._read(memory_type, agent)
                else:  # a full read is for a background thread (prepare)
                    with self._lock:
                        del self._reading[name]
                    return None
            except BaseException:
                with self._lock:
                    del self._reading[name]
                raise
            with self._lock:
                self._indexes[name] = index
                self._synced[name] = generation
            while True:  # the writes made while it was read, which it may or may not hold
                with self._lock:
                    writes = self._reading[name]
                    if not writes:
                        del self._reading[name]
                        break
                    self._reading[name] = []
                for memories, deleted, before, after, vectors in writes:
                    if after > generation:  # else the read began after that write: it holds it
                        self._follow(index, name, memories, deleted, before, after, vectors)
            return index
        finally:
            build.release()

    def _read(self, memory_type: str, agent: str | None) -> CollectionIndex:
        in_memory = self.vector_search == "memory" or (
            self.vector_search == "auto" and self.store.count(memory_type, agent) <= IN_MEMORY_LIMIT
        )
        started = time.time()
        memories, vectors = [], []
        archived: set[str] = set()
        if in_memory:
            rows = self.store.read_collection(memory_type, agent, archived)
        else:
            rows = self.store.iter_memories(memory_type, agent, include_archived=True)
        for memory, vector in rows:
            if memory.archived:
                archived.add(memory.id)
                continue
            memories.append(memory)
            vectors.append(vector)
        index = CollectionIndex(BM25Index(), VectorIndex() if in_memory else None, archived, synced_at=started)
        index.lexical.add_many([m.id for m in memories], [lexical_text(m) for m in memories])
        if index.dense is not None and memories:
            index.dense.add_many([m.id for m in memories], np.stack(vectors), [_owner(m) for m in memories])  # type: ignore[arg-type]
        self.full_reads += 1
        return index

    def _catch_up(self, index: CollectionIndex, memory_type: str, agent: str | None) -> bool:
        """Apply to a stale index the records written since it was last synced (by any process);
        False, leaving it to be read in full, when there are too many of them or the collection
        holds records the index cannot account for (another process deleted some)."""
        if index.reread:
            return False
        started = time.time()
        limit = max(CATCH_UP_MIN, int(index.records() * CATCH_UP_MAX_SHARE))
        rows = self.store.changes_since(memory_type, agent, index.synced_at - CATCH_UP_SLACK_SECONDS, limit)
        if rows is not None:
            self._apply(index, [m for m, _ in rows], False, np.stack([v for _, v in rows]) if rows else None)
        if rows is None or self.store.count(memory_type, agent) != index.records():
            index.reread = True
            return False
        index.synced_at = started
        self.catch_ups += 1
        return True

    def _on_write(
        self,
        name: str,
        memories: Sequence[MemoryBase],
        deleted: bool,
        before: int,
        after: int,
        vectors: np.ndarray | None = None,
    ) -> None:
        build = self._build_lock(name)
        if build.acquire(blocking=False):  # no reader: follow the write now
            try:
                index = self._indexes.get(name)
                if index is not None:  # else not read yet: it is built from the store, which holds this write
                    self._follow(index, name, memories, deleted, before, after, vectors)
            finally:
                build.release()
            return
        with self._lock:
            writes = self._reading.get(name)
            if writes is not None:  # being read: its reader applies this write when it is done
                writes.append((memories, deleted, before, after, vectors))
            elif name in self._synced:  # a reader just done, or about to start: catch up again
                self._synced[name] = None

    def _follow(
        self,
        index: CollectionIndex,
        name: str,
        memories: Sequence[MemoryBase],
        deleted: bool,
        before: int,
        after: int,
        vectors: np.ndarray | None,
    ) -> None:
        """Apply a write of this process. When another process wrote since the index was synced,
        it is applied all the same but the index stays stale (applying only our own write would
        mark the other's as seen): the next refresh catches up with both."""
        if not self._apply(index, memories, deleted, vectors):
            index.reread = True  # a memory came back whose vector only the store has (a restore)
            with self._lock:
                if self._indexes.get(name) is index:
                    self._synced[name] = None
            return
        with self._lock:
            if self._indexes.get(name) is index and self._synced.get(name) == before:
                self._synced[name] = after

    def _apply(
        self, index: CollectionIndex, memories: Sequence[MemoryBase], deleted: bool, vectors: np.ndarray | None
    ) -> bool:
        """Add, replace and remove these records (all of them when `deleted`) in the index. False
        when a metadata-only write (no `vectors`) brought back a memory the vector index does not
        hold: its vector is in the store only, and the collection must be read again."""
        gone = [m.id for m in memories if deleted or m.archived]
        kept = [i for i, m in enumerate(memories) if not (deleted or m.archived)]
        if index.dense is not None:
            if vectors is not None:
                index.dense.add_many([memories[i].id for i in kept], vectors[kept], [_owner(memories[i]) for i in kept])
            elif any(memories[i].id not in index.dense for i in kept):
                return False
            else:
                for i in kept:
                    index.dense.set_owner(memories[i].id, _owner(memories[i]))
            index.dense.remove(gone)
            if self.vector_search == "auto" and len(index.dense) > IN_MEMORY_LIMIT:
                index.dense = None  # grown past the size where a full scan beats Chroma's index
        if gone:
            index.lexical.remove(gone)
        if kept:
            index.lexical.add_many([memories[i].id for i in kept], [lexical_text(memories[i]) for i in kept])
        if deleted:
            index.archived.difference_update(gone)
        else:
            index.archived.update(gone)
            index.archived.difference_update(memories[i].id for i in kept)
        return True

    def nearest(
        self, memory_type: str, agent: str | None, vector: np.ndarray, n: int, owner: str | None = None, restrict: bool = False
    ) -> list[Hit]:
        """The n nearest active memories of a collection with their vectors, nearest first: the
        write path's search (learning's grouping, merge on write). Exact when the collection is
        held in memory, as retrieval's is; else Chroma's index. `restrict`: only memories whose
        owner (see _owner: a preference's user, an outcome's strategy key) equals `owner`.

        Chroma's index is approximate, and an agent's memories of one kind of task are near-
        duplicates of each other: among 100,000 such facts, the five nearest it returned for a
        repeated one missed the original for 18-22 of 40 (bench/write_search.py, "clustered").

        Called with the store's write lock held, so it never waits for an index: one that is not
        current (not read yet, or another process wrote since) leaves the search to Chroma. The
        service asks for the indexes (`prepare`) before it takes the lock."""
        index = self.ready(memory_type, agent)
        if index is None or index.dense is None:
            where = None
            if restrict:
                where = {"user_id": owner} if memory_type == PREFERENCES else {"strategy_key": owner}
            return self.store.query(memory_type, agent, vector, n, where=where)
        ids, similarities, _ = index.dense.search(vector, n, owner, restrict)
        found = self.store.fetch_hits(memory_type, agent, ids)
        return [found[doc].at(similarity) for doc, similarity in zip(ids, similarities) if doc in found]
