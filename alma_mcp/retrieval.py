"""Which memories to inject for a task, and how they are ranked.

For every collection the agent may read, dense candidates (cosine similarity of our own
embeddings) come from an exact in-memory copy of the collection's vectors (alma_mcp/dense.py;
`vector_search: auto` does so up to IN_MEMORY_LIMIT records a collection) or from Chroma's own
index (`vector_search: chroma`, and larger collections under `auto`), and lexical
candidates from an incremental BM25 index over the same memories; both indexes are built in
one pass over the store and follow its writes (`SearchIndexes`). The two rankings are fused by reciprocal rank fusion (RRF), across
all memory types at once so that scores are comparable between sections.

A memory's similarity to the task mixes the cosine similarity of its whole text with that of
its key field alone (`key_weight`; a heuristic's condition, an anti-pattern's pattern, a fact,
an outcome's task): tasks are worded like the situation a lesson was learned in, and the
lesson's own words dilute the match. Only the closest candidates are keyed; the key vector is
embedded when the memory is written and stored with it (`KeyVectors` embeds those of older
memories on first sight), so a warm query costs a few dot products.

A candidate is *relevant* when it clears the floor: its evidence (similarity plus a share of
lexical coverage) reaches `relevance_floor`, or its lexical coverage (the share of the task's IDF mass the memory
contains) reaches `lexical_floor`. The second door is what lets an error string or identifier
quoted verbatim through even when the embedding model blurs it. Both floors are calibrated on
the development corpus (bench/retrieval.py). What clears the floor is the *confident* tier,
injected in full. Below it, when the task's best candidate reaches `weak_floor`, the few best
within `weak_span` of that best are the *weak* tier (`mention`): one line each, labelled for the
model to judge, since a floor that decides all-or-nothing on an overlapping signal throws away a
third of the right answers. A task whose best is below weak_floor gets an empty prompt. Evidence
is judged against the store around the task (`crowding_of`): as a store fills with memories like
the task, every candidate's evidence is lowered by the same amount, so that the same floors hold
at a few hundred memories and at 10,000. The preferences of the user named by
`user_id` may have their own, lower floor (`preference_floor`, off by default).

The final score mixes relevance with recency, success rate, confidence and feedback
(`RetrievalWeights`, README "How retrieval scores"). Per type, near-duplicates of a memory
already chosen are skipped, so one lesson stored five times never fills the top_k. By default
(`top_k_scope: all`) the types are ranked together and top_k is the number injected in all.

Results are cached per scope: the key holds the scope (agent, user, types, and every
collection read with its write generation), so any write to the scope invalidates it; a TTL
bounds how stale recency can get.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .calibration import FloorCalibration, shifted
from .config import AlmaConfig, RetrievalSettings
from .embeddings import Embedder
from .dense import VectorIndex
from .lexical import BM25Index
from .models import (
    MEMORY_TYPES,
    OUTCOME_WEIGHTS,
    AntiPattern,
    DomainKnowledge,
    Heuristic,
    Memory,
    MemoryBase,
    Outcome,
    UserPreference,
    key_text,
    nullable_as_type_list,
    strategy_key,
)
from .prompt import render_prompt
from .store import PREFERENCES, Hit, MemoryStore, collection_name
from .track import TrackRecord, tally

log = logging.getLogger("alma_mcp")

Mode = Literal["hybrid", "dense", "lexical"]
"""hybrid is what the server uses; dense-only and lexical-only exist for the benchmark."""

_KEYED_CANDIDATES = 10
"""Per query, how many candidates (closest by whole text first) get the key field's similarity."""

IN_MEMORY_LIMIT = 200_000
"""`vector_search: auto` searches a collection in memory up to this many records, Chroma beyond.
A scan reads every vector (35,000 take about 2 ms here, 200,000 about 12) where Chroma's HNSW
query costs about 2.5 ms at any size, but HNSW is approximate, and on stores full of near-
duplicates (the benchmark's filler; an agent's many outcomes of one kind of task) it lost the
right memory: at 100,000 per agent it returned 85-88% of the exact 10 nearest, none of them for
some tasks, and dense-only Recall@5 fell to 0.05 against 0.41 exact (bench/README.md, "Retrieval:
recall, false injection, latency"). The limit was 15,000 when speed alone decided it."""

VectorSearch = Literal["auto", "memory", "chroma"]

_SEARCH_THREADS = 4
"""Collections searched at once: Chroma's search releases the GIL, so a retrieval over the
four or five collections of an agent costs about the slowest search, not their sum."""

_RESULT_TTL_SECONDS = 300.0
"""Cached results expire after this long, so recency in a cached score is never far off."""

CATCH_UP_SLACK_SECONDS = 60.0
"""A catch-up with other processes' writes reads the records written since its index was last
synced, less this margin: a write is timed when it starts, by its writer's clock, and may become
visible a little later; a Chroma server's clients may disagree on the time by a little too."""
CATCH_UP_MAX_SHARE = 0.1
"""A catch-up with more changed records than this share of the collection (at least
CATCH_UP_MIN) reads the whole collection instead."""
CATCH_UP_MIN = 2000


Tier = Literal["confident", "weak"]
"""How a memory is injected: `confident` (its evidence clears the floor, or is within
floor_margin of one that does) in full; `weak` (evidence between weak_floor and that) as a
one-line mention the model is told to judge for itself."""


class ScoredMemory(BaseModel):
    memory: Memory
    tier: Tier = Field(
        "confident",
        description="confident: cleared the relevance floor, injected in full; weak: below it but above weak_floor, "
        "mentioned in one line as a weak match for the model to judge.",
    )
    evidence: float = Field(
        0.0,
        description="The memory's relevance to the task, the one number the floors judge, the prompt shows and "
        "explain reports: similarity + lexical_weight x coverage.",
    )
    score: float = Field(description="Final ranking score, 0-1: relevance mixed with recency, success, confidence, feedback.")
    relevance: float = Field(
        0.0, description="The ranking's part of the score, 0-1: rank fusion of the dense and lexical rankings mixed with evidence."
    )
    similarity: float = Field(
        description="Similarity of the memory to the task: cosine of its whole text, mixed with that of its key field (key_weight)."
    )
    lexical: float = Field(0.0, description="BM25 score of the memory for the task (0 when no term matched).")
    coverage: float = Field(0.0, description="Share (0-1) of the task's distinctive words found in the memory.")
    matched_by: Literal["dense", "lexical", "both"] = Field(
        "dense", description="Which door let it through the relevance floor."
    )
    source_agent: str = Field(description="The agent whose memory this is (differs when inherited or shared).")


# One class per type, so that a section's JSON schema names its memory type instead of a union
# of five: a client that checks structured output against the schema (the MCP SDK's does) tries
# every branch of a union for every memory, which cost more than the retrieval it checks.
class ScoredHeuristic(ScoredMemory):
    memory: Heuristic


class ScoredAntiPattern(ScoredMemory):
    memory: AntiPattern


class ScoredKnowledge(ScoredMemory):
    memory: DomainKnowledge


class ScoredPreference(ScoredMemory):
    memory: UserPreference


class ScoredOutcome(ScoredMemory):
    memory: Outcome


SCORED_BY_TYPE: dict[str, type[ScoredMemory]] = {
    "heuristic": ScoredHeuristic,
    "anti_pattern": ScoredAntiPattern,
    "knowledge": ScoredKnowledge,
    "preference": ScoredPreference,
    "outcome": ScoredOutcome,
}


class MemorySlice(BaseModel):
    """What retrieval found for one task, by type, and the prompt to inject."""

    model_config = ConfigDict(json_schema_extra=nullable_as_type_list)

    task: str
    agent: str
    user_id: str | None = None
    heuristics: list[ScoredHeuristic] = Field(default_factory=list)
    anti_patterns: list[ScoredAntiPattern] = Field(default_factory=list)
    knowledge: list[ScoredKnowledge] = Field(default_factory=list)
    preferences: list[ScoredPreference] = Field(default_factory=list)
    outcomes: list[ScoredOutcome] = Field(default_factory=list)
    track_record: TrackRecord = Field(
        default_factory=TrackRecord,
        description="The agent's own outcomes on the most similar tasks, tallied by strategy (track.py); empty when "
        "none of them is relevant enough to be served, or the tally says neither use nor avoid.",
    )
    prompt: str = Field("", description="Markdown to inject before the task; empty when nothing is relevant.")

    def by_type(self) -> dict[str, list[ScoredMemory]]:
        return {
            "heuristic": self.heuristics,
            "anti_pattern": self.anti_patterns,
            "knowledge": self.knowledge,
            "preference": self.preferences,
            "outcome": self.outcomes,
        }

    def all(self) -> list[ScoredMemory]:
        return [item for items in self.by_type().values() for item in items]

    def ranked(self) -> list[ScoredMemory]:
        """Every returned memory, all types together: the confident ones by score, then the weak ones."""
        return sorted(self.all(), key=lambda item: (item.tier == "confident", item.score), reverse=True)

    def confident(self) -> list[ScoredMemory]:
        """The memories injected in full (those that cleared the floor), best score first."""
        return [item for item in self.ranked() if item.tier == "confident"]

    def to_prompt(self) -> str:
        return self.prompt

    def __len__(self) -> int:
        return len(self.all())


_FIELD_BY_TYPE = {
    "heuristic": "heuristics",
    "anti_pattern": "anti_patterns",
    "knowledge": "knowledge",
    "preference": "preferences",
    "outcome": "outcomes",
}


# -- the parts of the score -----------------------------------------------------------------
def recency(memory: MemoryBase, half_life_days: float, now: datetime) -> float:
    """1 for a memory used or validated just now, halving every `half_life_days`."""
    last = memory.last_used_at or memory.updated_at
    validated = getattr(memory, "last_validated", None) or getattr(memory, "last_seen", None)
    if validated and validated > last:
        last = validated
    age_days = max(0.0, (now - last).total_seconds() / 86400.0)
    return math.exp(-math.log(2) * age_days / half_life_days)


def success_rate(memory: MemoryBase) -> float:
    kind = memory.type  # type: ignore[attr-defined]
    if kind == "heuristic":
        return memory.success_count / max(1, memory.occurrence_count)  # type: ignore[attr-defined]
    if kind == "outcome":
        return OUTCOME_WEIGHTS[memory.outcome]  # type: ignore[attr-defined]
    return 0.5


def feedback_score(memory: MemoryBase) -> float:
    """0.5 with no feedback; harmful counts twice as much as helpful."""
    positive = memory.helpful
    negative = 2 * memory.harmful
    return 0.5 + 0.5 * (positive - negative) / (positive + negative + 2)


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


class KeyVectors:
    """Similarities of memories' key fields to a task.

    The store keeps a key vector with every memory written since key vectors existed (embedded
    with its text at write time), so a warm query costs a few dot products. A memory stored
    before then, or whose key text changed on a path that kept an old vector, has none: its key
    is embedded the first time it is a candidate and kept in an LRU keyed by (id, key text), so
    an edited memory gets a new entry and the old one ages out. `embedded` counts those.
    """

    def __init__(self, embedder: Embedder, capacity: int = 100_000) -> None:
        self.embedder = embedder
        self.capacity = capacity
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.embedded = 0

    def similarities(
        self,
        memories: Sequence[MemoryBase],
        query: np.ndarray,
        stored: Sequence[np.ndarray | None] | None = None,
    ) -> np.ndarray:
        """Cosine similarity of each memory's key field to `query`; `stored[i]`, when given and
        not None, is memory i's key vector as read from the store."""
        if not memories:
            return np.zeros(0, dtype=np.float32)
        rows: list[np.ndarray | None] = list(stored) if stored is not None else [None] * len(memories)
        need = [i for i, row in enumerate(rows) if row is None]
        if need:
            keys = [(memories[i].id, key_text(memories[i])) for i in need]
            with self._lock:
                found = {key: self._vectors.get(key) for key in keys}
            missing = list(dict.fromkeys(key for key, vector in found.items() if vector is None))
            if missing:
                vectors = self.embedder.embed([text for _, text in missing])
                with self._lock:
                    for key, vector in zip(missing, vectors):
                        self._vectors[key] = found[key] = vector
                    self.embedded += len(missing)
                    while len(self._vectors) > self.capacity:
                        self._vectors.popitem(last=False)
            for i, key in zip(need, keys):
                rows[i] = found[key]
        return np.stack(rows) @ query  # type: ignore[arg-type]


# -- the search indexes ------------------------------------------------------------------
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


def _other_type(memory: MemoryBase, wanted: str | None) -> bool:
    """Filed under a task type other than `wanted` (lower case; None wants every type). A memory
    filed under none never is, nor knowledge and preferences, which have no task type."""
    filed = getattr(memory, "task_type", None)
    return wanted is not None and bool(filed) and filed.lower() != wanted


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


# -- candidates ---------------------------------------------------------------------------
@dataclass
class Candidate:
    """One memory considered for a task, with every signal the ranking uses."""

    memory: MemoryBase
    vector: np.ndarray
    similarity: float
    lexical: float = 0.0
    coverage: float = 0.0
    quoted: int = 0
    dense_rank: int | None = None
    lexical_rank: int | None = None
    relevance: float = 0.0
    evidence: float = 0.0
    score: float = 0.0
    dense_ok: bool = False
    lexical_ok: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    key_vector: np.ndarray | None = None
    """The key field's vector as stored with the memory (None for memories stored without one)."""

    @property
    def cleared(self) -> bool:
        return self.dense_ok or self.lexical_ok

    @property
    def matched_by(self) -> Literal["dense", "lexical", "both"]:
        if self.dense_ok and self.lexical_ok:
            return "both"
        return "lexical" if self.lexical_ok else "dense"

    def scored(self, tier: Tier = "confident") -> ScoredMemory:
        return SCORED_BY_TYPE[self.memory.type](  # type: ignore[attr-defined]
            memory=self.memory,
            tier=tier,
            evidence=round(self.evidence, 4),
            score=round(self.score, 4),
            relevance=round(self.relevance, 4),
            similarity=round(self.similarity, 4),
            lexical=round(self.lexical, 3),
            coverage=round(self.coverage, 3),
            matched_by=self.matched_by,
            source_agent=self.memory.agent,
        )


CROWDING_RANK = 10
"""The task's background is the similarity of its CROWDING_RANK-th nearest candidate (all
collections together): where the store is crowded with memories like the task, that one is
close too, and the best being close means less."""


def crowding_of(candidates: Sequence[Candidate], settings: RetrievalSettings) -> float:
    """How much a task's evidence is lowered because the store is crowded around it:
    crowding_weight x how far the task's background (see CROWDING_RANK) rises above
    crowding_floor. 0 on a store of a few hundred varied memories, where the tenth nearest
    memory is rarely that close; at 10,000 memories per agent of the same work it takes back
    about what the crowd added to the best match of a task with no answer (bench/retrieval.py
    --tiers, docs/retrieval-tiers.md)."""
    if settings.crowding_weight <= 0 or len(candidates) < CROWDING_RANK:
        return 0.0
    similarities = sorted((c.similarity for c in candidates), reverse=True)
    return settings.crowding_weight * max(0.0, similarities[CROWDING_RANK - 1] - settings.crowding_floor)


def fuse(candidates: Sequence[Candidate], settings: RetrievalSettings, mode: Mode) -> None:
    """Set each candidate's relevance, evidence and floor verdicts, in place.

    relevance (for ranking) = fusion_rank_share x weighted RRF of the two rankings
                            + (1 - fusion_rank_share) x evidence
    evidence (for the floor) = cosine similarity + lexical_weight x lexical coverage - crowding
    where crowding (`crowding_of`) is the same for every candidate of the task: the floors judge
    the best memory against the store around the task, not against one absolute number.
    Dense-only and lexical-only modes use one ranker and one signal (similarity, coverage).
    """
    k = settings.rrf_k
    lexical_weight = settings.lexical_weight
    crowding = crowding_of(candidates, settings) if mode != "lexical" else 0.0
    for c in candidates:
        dense_part = 1.0 / (k + 1 + c.dense_rank) if c.dense_rank is not None else 0.0
        lexical_part = 1.0 / (k + 1 + c.lexical_rank) if c.lexical_rank is not None else 0.0
        if mode == "dense":
            c.evidence = c.similarity - crowding
            c.relevance = c.similarity
        elif mode == "lexical":
            c.evidence = c.coverage
            c.relevance = 0.5 * lexical_part * (k + 1) + 0.5 * c.coverage
        else:
            rrf = (dense_part + lexical_weight * lexical_part) * (k + 1) / (1.0 + lexical_weight)
            c.evidence = c.similarity + lexical_weight * c.coverage - crowding
            share = settings.fusion_rank_share
            c.relevance = share * rrf + (1.0 - share) * min(1.0, max(0.0, c.evidence))
        c.dense_ok = c.evidence >= settings.relevance_floor
        # The lexical door: the memory holds most of the task's distinctive words, or quotes an
        # identifier of the task verbatim (an error code, a constraint name, a config key).
        c.lexical_ok = (
            mode != "dense"
            and settings.lexical_floor < 1.0
            and c.lexical > 0
            and (c.coverage >= settings.lexical_floor or c.quoted > 0)
        )


def final_score(candidate: Candidate, settings: RetrievalSettings, now: datetime) -> float:
    w = settings.weights
    total = w.similarity + w.recency + w.success + w.confidence + w.feedback
    memory = candidate.memory
    value = (
        w.similarity * candidate.relevance
        + w.recency * recency(memory, settings.recency_half_life_days, now)
        + w.success * success_rate(memory)
        + w.confidence * float(getattr(memory, "confidence", 0.5))
        + w.feedback * feedback_score(memory)
    )
    return value / (total or 1.0)


def select(candidates: Sequence[Candidate], top_k: int, near_duplicate: float) -> list[Candidate]:
    """The top_k by score, skipping near-duplicates of a memory already chosen."""
    chosen: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: c.score, reverse=True):
        if any(float(np.dot(candidate.vector, other.vector)) >= near_duplicate for other in chosen):
            continue
        chosen.append(candidate)
        if len(chosen) >= top_k:
            break
    return chosen


def under_preference_floor(c: Candidate, settings: RetrievalSettings) -> bool:
    """A preference of the named user that clears its own floor, when it has one (see `choose`)."""
    floor = settings.preference_floor
    return floor is not None and c.memory.type == PREFERENCES and c.evidence >= floor  # type: ignore[attr-defined]


def admitted(c: Candidate, answered: bool, settings: RetrievalSettings) -> bool:
    """Whether `choose` may keep this candidate; `answered`: some candidate cleared the floor."""
    if under_preference_floor(c, settings):
        return True
    return answered and (c.cleared or c.evidence >= settings.relevance_floor - settings.floor_margin)


def choose(
    candidates: Sequence[Candidate], kinds: Sequence[str], top_k: int, settings: RetrievalSettings
) -> dict[str, list[Candidate]]:
    """The admitted candidates, best first, near-duplicates skipped, by type: top_k in all
    (`top_k_scope: all`; the best anti-pattern that clears the floor always among them) or top_k
    of each type (`top_k_scope: type`).

    The floor works at two levels. The task is answered at all only if some candidate clears
    the floor (by evidence or by the lexical door): otherwise nothing is returned. When it is,
    candidates whose evidence is within `floor_margin` below the floor are admitted too, since
    the memories around a clearly relevant one are often relevant in a weaker way.

    Preferences (present only when the caller named a user) have their own, lower floor,
    `preference_floor`: that user's general preferences ("keep reports short") rarely look like
    the task, and the caller asked for them.
    """
    answered = any(c.cleared for c in candidates)
    if settings.top_k_scope == "all":
        # One ranking across the types: scores are comparable between sections (fuse ranks all
        # types at once), and top_k per type would let five loosely related lessons of each
        # type bury the two or three memories that match this task closely.
        pool = [c for c in candidates if c.memory.type in kinds and admitted(c, answered, settings)]  # type: ignore[attr-defined]
        together = select(pool, top_k, settings.near_duplicate)
        # A warning that clears the floor is never crowded out by advice: the best one takes the
        # last place (the prompt, too, fills its budget with anti-patterns first).
        warnings = [c for c in pool if c.memory.type == "anti_pattern" and c.cleared]  # type: ignore[attr-defined]
        if warnings and not any(c.memory.type == "anti_pattern" for c in together):  # type: ignore[attr-defined]
            together = [*together[: min(len(together), top_k - 1)], max(warnings, key=lambda c: c.score)]
        together = _lessons_over_their_outcomes(pool, together)
        return {kind: [c for c in together if c.memory.type == kind] for kind in kinds}  # type: ignore[attr-defined]
    return {
        kind: select(
            [c for c in candidates if c.memory.type == kind and admitted(c, answered, settings)],  # type: ignore[attr-defined]
            top_k,
            settings.near_duplicate,
        )
        for kind in kinds
    }


def _lessons_over_their_outcomes(pool: Sequence[Candidate], together: list[Candidate]) -> list[Candidate]:
    """A lesson is never crowded out by the outcomes it was formed from: an admitted lesson left
    out while some of its supporting outcomes are in takes the place of the lowest of them (the
    outcome and its lesson speak for the same strategy, the lesson with all its evidence)."""
    chosen_ids = {c.memory.id for c in together}
    for lesson in sorted(pool, key=lambda c: c.score, reverse=True):
        support = set(getattr(lesson.memory, "supporting_outcomes", ()))
        if not support or lesson.memory.id in chosen_ids:
            continue
        backing = [i for i, c in enumerate(together) if c.memory.id in support]
        if backing:
            together[backing[-1]] = lesson
            chosen_ids = {c.memory.id for c in together}
    return sorted(together, key=lambda c: c.score, reverse=True)


def mention(
    candidates: Sequence[Candidate],
    chosen: dict[str, list[Candidate]],
    settings: RetrievalSettings,
    kinds: Sequence[str] | None = None,
    top_k: int | None = None,
) -> list[Candidate]:
    """The weak tier: up to `weak_top_k` candidates of the chosen types that were not chosen in
    full but whose evidence reaches `weak_floor`, best score first, near-duplicates of anything
    already chosen or mentioned skipped.

    A floor decides all-or-nothing on a signal that overlaps between answerable and unanswerable
    tasks; below it, the closest memories are still more often right than not, so they are named
    in one line each and the model that reads the task judges them, at a cost of a few dozen
    tokens when they are not. `kinds`: the types that may be mentioned (default: those chosen from).
    Under `top_k_scope: all` the mentions only fill the room the confident ones left of `top_k`
    (default: the settings' top_k)."""
    allowed = set(kinds if kinds is not None else chosen)
    taken = [c for picked in chosen.values() for c in picked]
    room = settings.weak_top_k
    if settings.top_k_scope == "all":
        room = min(room, (top_k or settings.top_k) - len(taken))
    if room <= 0:
        return []
    ids = {c.memory.id for c in taken}
    best = max((c.evidence for c in candidates if c.memory.type in allowed), default=0.0)  # type: ignore[attr-defined]
    if best < settings.weak_floor:
        return []
    # The task is given mentions at all only when its best candidate reaches weak_floor, and then
    # only those within weak_span of that best: the bar is the task's own, so a task whose closest
    # memories stand level gets several, one whose best stands out gets that one, and a store
    # where everything sits a little closer to every task does not raise the count.
    least = best - settings.weak_span
    pool = sorted(
        (
            c
            for c in candidates
            if c.memory.type in allowed  # type: ignore[attr-defined]
            and c.memory.id not in ids
            and c.evidence >= least
        ),
        key=lambda c: c.score,
        reverse=True,
    )
    weak: list[Candidate] = []
    for candidate in pool:
        if any(float(np.dot(candidate.vector, other.vector)) >= settings.near_duplicate for other in [*taken, *weak]):
            continue
        weak.append(candidate)
        if len(weak) >= room:
            break
    return weak


class CandidateVerdict(BaseModel):
    """One memory considered for a task, its evidence against the floor, and what became of it."""

    id: str
    type: str
    agent: str
    text: str = Field(description="the memory's text, cut to 120 characters")
    evidence: float = Field(description="what the floor is checked against: similarity + lexical_weight x coverage")
    similarity: float
    coverage: float = Field(description="share of the task's distinctive words (IDF mass) the memory holds")
    score: float
    injected: bool
    tier: Tier | None = Field(None, description="how it was injected: in full (confident), in one line (weak); null: not at all")
    verdict: str


class Explanation(BaseModel):
    """Why a retrieval returned what it did: the floors, and the candidates nearest to clearing them."""

    task: str
    agent: str
    relevance_floor: float
    floor_margin: float
    lexical_floor: float
    preference_floor: float | None
    weak_floor: float = 0.0
    weak_span: float = 0.0
    crowding: float = Field(
        0.0, description="What was taken off every candidate's evidence for this task because the store is crowded around it"
    )
    answered: bool = Field(description="some candidate cleared the floor, so the task is answered at all")
    candidates: list[CandidateVerdict]


def judge(
    candidates: Sequence[Candidate],
    chosen: dict[str, list[Candidate]],
    settings: RetrievalSettings,
    n: int,
    weak: Sequence[Candidate] = (),
) -> tuple[bool, list[CandidateVerdict]]:
    """The verdict on every injected candidate and on the strongest others (by evidence), `n` in
    all at least: the rules of `choose` and `mention`, spelled out per memory."""
    answered = any(c.cleared for c in candidates)
    best = max((c.evidence for c in candidates), default=0.0)
    confident = {c.memory.id for picked in chosen.values() for c in picked}
    mentioned = {c.memory.id for c in weak}
    injected = confident | mentioned
    ranked = sorted(candidates, key=lambda c: (c.memory.id in injected, c.evidence), reverse=True)
    shown = ranked[: max(n, len(injected))]

    def verdict(c: Candidate) -> str:
        if c.memory.id in mentioned:
            return "injected as a weak match: below the floor, within weak_span of the task's best; one line for the model to judge"
        if c.memory.id in confident:
            if c.dense_ok:
                return "injected: cleared relevance_floor"
            if c.lexical_ok:
                return "injected: through the lexical door (coverage or a quoted identifier)"
            if under_preference_floor(c, settings):
                return "injected: the user's preference cleared preference_floor"
            return "injected: within floor_margin of relevance_floor, and the task is answered"
        if admitted(c, answered, settings):
            return "admitted, not injected: top_k is full, or it nearly duplicates one injected"
        if best < settings.weak_floor:
            weak = "no weak matches: the task's best candidate is below weak_floor"
        elif c.evidence >= best - settings.weak_span:
            weak = "within weak_span of the best, not mentioned: weak_top_k (or top_k) is full, or it nearly duplicates one injected"
        else:
            weak = "more than weak_span below the task's best candidate"
        if not answered:
            return f"below the floor: no memory cleared it; {weak}"
        return f"below relevance_floor - floor_margin; {weak}"

    return answered, [
        CandidateVerdict(
            id=c.memory.id,
            type=c.memory.type,  # type: ignore[attr-defined]
            agent=c.memory.agent,
            text=" ".join(c.memory.text().split())[:120],
            evidence=round(c.evidence, 4),
            similarity=round(c.similarity, 4),
            coverage=round(c.coverage, 3),
            score=round(c.score, 4),
            injected=c.memory.id in injected,
            tier="confident" if c.memory.id in confident else "weak" if c.memory.id in mentioned else None,
            verdict=verdict(c),
        )
        for c in shown
    ]


CALIBRATION_FILE = "feedback_calibration.json"


def track_of(candidates: Sequence[Candidate], n: int) -> TrackRecord | None:
    """The track record over the n outcomes among the candidates whose tasks are most similar."""
    if n <= 0:
        return None
    outcomes = sorted((c for c in candidates if isinstance(c.memory, Outcome)), key=lambda c: -c.similarity)[:n]
    return tally([(c.memory, c.similarity) for c in outcomes])  # type: ignore[misc]


class Retriever:
    def __init__(self, store: MemoryStore, embedder: Embedder, config: AlmaConfig, cache_size: int = 512) -> None:
        self.store = store
        self.embedder = embedder
        self.config = config
        self.indexes = SearchIndexes(store, config.alma.vector_search)
        self.keys = KeyVectors(embedder)
        self.calibration = FloorCalibration(config.data_dir / CALIBRATION_FILE)
        self._searches = ThreadPoolExecutor(_SEARCH_THREADS, thread_name_prefix="alma-search")
        self._results: OrderedDict[tuple[Any, ...], tuple[float, MemorySlice]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    def close(self) -> None:
        """Let the search threads go (they would also end with the process)."""
        self._searches.shutdown(wait=False)

    def clear_cache(self) -> None:
        """Forget cached results (the benchmark uses it to time uncached retrievals)."""
        with self._lock:
            self._results.clear()

    def scopes(self, agent: str, memory_types: Sequence[str], user_id: str | None) -> list[tuple[str, str | None]]:
        """The collections (type, owning agent) a retrieval for `agent` reads: its own and those it
        may read (share_with, inherit_from); the preferences collection only for a user."""
        scopes: list[tuple[str, str | None]] = []
        for kind in memory_types:
            if kind == PREFERENCES:
                if user_id:
                    scopes.append((kind, None))
            else:
                scopes += [(kind, source) for source in self.config.readable_agents(agent, kind)]
        return scopes

    def settings_for(self, agent: str) -> RetrievalSettings:
        """The agent's retrieval settings, its floors moved by its own feedback (calibration.py)."""
        settings = self.config.retrieval_for(agent)
        if not settings.calibrate_from_feedback:
            return settings
        shift = self.calibration.shift(agent, settings.relevance_floor)
        if not shift:
            return settings
        return settings.model_copy(
            update={
                "relevance_floor": shifted(settings.relevance_floor, shift),
                "weak_floor": shifted(settings.weak_floor, shift),
            }
        )

    def rate(self, agent: str, memory_id: str, signal: str) -> bool:
        """Count `agent`'s feedback on a memory it was served (see calibration.py)."""
        return self.calibration.rate(agent, memory_id, signal)

    def _types(self, memory_types: Sequence[str] | None, settings: RetrievalSettings) -> list[str]:
        if memory_types is None:
            return [t for t in MEMORY_TYPES if t != "outcome" or settings.include_outcomes]
        return list(memory_types)

    @staticmethod
    def _confident_types(
        kinds: Sequence[str], memory_types: Sequence[str] | None, settings: RetrievalSettings
    ) -> list[str]:
        """The types that may be injected in full: all those read, but outcomes that come with the
        default types under `include_outcomes: weak` are only ever mentioned."""
        if memory_types is None and settings.include_outcomes == "weak":
            return [kind for kind in kinds if kind != "outcome"]
        return list(kinds)

    def retrieve(
        self,
        task: str,
        agent: str,
        top_k: int | None = None,
        user_id: str | None = None,
        memory_types: Sequence[str] | None = None,
        settings: RetrievalSettings | None = None,
        mode: Mode = "hybrid",
        task_type: str | None = None,
    ) -> MemorySlice:
        settings = settings or self.settings_for(agent)
        top_k = top_k or settings.top_k
        kinds = self._types(memory_types, settings)
        confident_kinds = self._confident_types(kinds, memory_types, settings)
        scopes = self.scopes(agent, kinds, user_id)
        key = (
            mode,
            task,
            agent,
            top_k,
            user_id,
            tuple(kinds),
            tuple(confident_kinds),
            task_type.lower() if task_type else None,
            settings.model_dump_json(),
            tuple((kind, source, self.store.generation(kind, source)) for kind, source in scopes),
        )
        now_mono = time.monotonic()
        with self._lock:
            cached = self._results.get(key)
            if cached is not None and now_mono - cached[0] < _RESULT_TTL_SECONDS:
                self._results.move_to_end(key)
                self.cache_hits += 1
                self.calibration.served(agent, {m.memory.id: m.evidence for m in cached[1].all()})
                return cached[1].model_copy(deep=True)
            self.cache_misses += 1

        candidates = self.candidates(task, agent, user_id, kinds, settings, mode, task_type)
        chosen = choose(candidates, confident_kinds, top_k, settings)
        by_type = {kind: [c.scored() for c in picked] for kind, picked in chosen.items()}
        by_type.update({kind: [] for kind in kinds if kind not in by_type})
        for candidate in mention(candidates, chosen, settings, kinds, top_k):
            by_type[candidate.memory.type].append(candidate.scored("weak"))  # type: ignore[attr-defined]
        if by_type.get("heuristic") and by_type.get("anti_pattern"):
            from .learning import without_contradictions  # learning imports this module

            by_type["heuristic"], by_type["anti_pattern"] = without_contradictions(by_type["heuristic"], by_type["anti_pattern"])
        record = track_of(candidates, settings.track_record) if "outcome" in kinds else None
        served = {item.memory.id for items in by_type.values() for item in items}
        if record is not None and not record.ids & served:
            # None of its outcomes is relevant enough to be served (confident or weak): a task with
            # no answer in a store crowded with other work would otherwise pay for a record.
            record = None
        result = MemorySlice(
            task=task,
            agent=agent,
            user_id=user_id,
            track_record=record or TrackRecord(),
            **{_FIELD_BY_TYPE[kind]: items for kind, items in by_type.items()},
        )
        result.prompt = render_prompt(by_type, settings.token_budget, record)
        self.calibration.served(agent, {m.memory.id: m.evidence for m in result.all()})
        with self._lock:
            self._results[key] = (now_mono, result)
            while len(self._results) > self._cache_size:
                self._results.popitem(last=False)
        return result.model_copy(deep=True)

    def explain(
        self,
        task: str,
        agent: str,
        top_k: int | None = None,
        user_id: str | None = None,
        memory_types: Sequence[str] | None = None,
        task_type: str | None = None,
        n: int = 10,
    ) -> Explanation:
        """What `retrieve` would inject for this task and why, with the nearest memories it would
        not (their evidence against the floors): for tuning `relevance_floor` on one's own store."""
        settings = self.settings_for(agent)
        top_k = top_k or settings.top_k
        kinds = self._types(memory_types, settings)
        candidates = self.candidates(task, agent, user_id, kinds, settings, task_type=task_type)
        chosen = choose(candidates, self._confident_types(kinds, memory_types, settings), top_k, settings)
        answered, verdicts = judge(candidates, chosen, settings, n, mention(candidates, chosen, settings, kinds, top_k))
        return Explanation(
            task=task,
            agent=agent,
            relevance_floor=settings.relevance_floor,
            floor_margin=settings.floor_margin,
            lexical_floor=settings.lexical_floor,
            preference_floor=settings.preference_floor,
            weak_floor=settings.weak_floor,
            weak_span=settings.weak_span,
            crowding=round(crowding_of(candidates, settings), 4),
            answered=answered,
            candidates=verdicts,
        )

    def candidates(
        self,
        task: str,
        agent: str,
        user_id: str | None,
        memory_types: Sequence[str],
        settings: RetrievalSettings,
        mode: Mode = "hybrid",
        task_type: str | None = None,
    ) -> list[Candidate]:
        """Every candidate from every readable collection, fused and scored, before the floor.
        Their memories are shared with the store's record cache (Record.shared): read them, never
        change them. With `task_type`, lessons and outcomes filed under another task type are left
        out (those filed under none stay): each ranker then looks twice as deep, so that the
        memories left still fill the pool."""
        vector = self.embedder.embed_query(task)
        pool = settings.candidate_pool * (2 if task_type else 1)
        wanted_type = task_type.lower() if task_type else None
        found: dict[str, Candidate] = {}
        lexical_hits: list[tuple[float, str]] = []
        admit = settings.relevance_floor - settings.floor_margin
        if settings.weak_top_k > 0:  # the weak tier reads down to weak_floor
            admit = min(admit, settings.weak_floor - settings.weak_span)
        scopes = self.scopes(agent, memory_types, user_id)

        def search(scope: tuple[str, str | None]) -> tuple[list[Any], list[Any], dict[str, Any]]:
            """One collection: its lexical hits, its nearest memories, and the lexical hits the
            dense search did not return that could still pass, read in the same call to Chroma."""
            kind, source = scope
            index, dense_index = indexes[scope]
            hits = index.lexical.search(task, pool) if mode != "dense" else []
            if mode == "lexical":
                return hits, [], self.store.fetch_hits(kind, source, [h.id for h in hits], shared=True) if hits else {}

            def could_pass(ids: list[str], similarities: list[float], complete: bool) -> list[str]:
                # A memory the search did not return is less similar than the last one it did
                # (`ceiling`), so it can only be admitted through the lexical door or if its
                # coverage lifts it over the floor; only those are read. A search that came back
                # short has seen every memory. Hits among the ids found are read anyway. (The
                # bound ignores the key-field share of the similarity, added below: a memory
                # outside the pool whose key alone would lift it over the floor is rare.)
                seen = set(ids)
                ceiling = None if complete or not similarities else min(similarities)
                return [
                    h.id
                    for h in hits
                    if h.id in seen
                    or (
                        ceiling is not None
                        and (
                            h.identifiers > 0
                            or h.coverage >= settings.lexical_floor
                            or ceiling + settings.lexical_weight * h.coverage >= admit
                        )
                    )
                ]

            if in_memory and dense_index is not None:
                # The nearest memories from the in-memory index (exact, active ones only), then
                # their records and the lexical hits that could pass, in one read.
                ids, similarities, complete = dense_index.search(vector, pool, user_id, restrict=kind == PREFERENCES)
                nearest = set(ids)
                extra_ids = [doc for doc in could_pass(ids, similarities, complete) if doc not in nearest] if hits else []
                read = self.store.fetch_hits(kind, source, list(dict.fromkeys([*ids, *extra_ids])), shared=True)
                dense = [read[doc].at(sim) for doc, sim in zip(ids, similarities) if doc in read]
                return hits, dense, {doc: read[doc] for doc in extra_ids if doc in read}
            where = {"user_id": user_id} if kind == PREFERENCES else None
            dense, extra = self.store.query_and_read(
                kind, source, vector, pool, where, could_pass if hits else None, shared=True
            )
            return hits, dense, extra

        # All of the scope's collections are scanned in memory, or none: when the scan was a BLAS
        # product, its threads spun on both cores after it and slowed Chroma's queries of the
        # larger collections running beside it by more than the scan saved (65 against 51-57 ms
        # at 100,000 per agent). The scan is single-threaded now (dense.py); mixing the two has
        # not been measured since.
        # Each collection's index is taken once, with its vectors as they are now: a concurrent
        # write may drop them (a collection grown past IN_MEMORY_LIMIT) while the search runs.
        indexes: dict[tuple[str, str | None], tuple[CollectionIndex, VectorIndex | None]] = {}
        for scope in scopes:
            index = self.indexes.get(*scope)
            indexes[scope] = (index, index.dense)
        in_memory = mode != "lexical" and all(dense is not None for _, dense in indexes.values())
        for (kind, source), (hits, dense_hits, extra) in zip(scopes, self._searches.map(search, scopes)):
            for hit in dense_hits:
                if hit.memory.archived:  # archived by another process since the index was read
                    continue
                if _other_type(hit.memory, wanted_type):
                    continue
                found[hit.memory.id] = Candidate(hit.memory, hit.vector, hit.similarity, key_vector=hit.key_vector)  # type: ignore[arg-type]
            lexical_hits += [(h.score, h.id) for h in hits]
            for doc, hit in extra.items():
                memory, vec = hit.memory, hit.vector
                if memory.archived or (kind == PREFERENCES and getattr(memory, "user_id", None) != user_id):
                    continue
                if _other_type(memory, wanted_type):
                    continue
                found[doc] = Candidate(memory, vec, float(np.dot(vec, vector)), key_vector=hit.key_vector)  # type: ignore[arg-type]
            for h in hits:
                candidate = found.get(h.id)
                if candidate is not None:
                    candidate.lexical, candidate.coverage, candidate.quoted = h.score, h.coverage, h.identifiers

        if settings.key_weight > 0 and mode != "lexical" and found:
            # Only the closest candidates get the key field's share: they are the ones the floor
            # and the top_k turn on, and a memory never seen before costs an embedding (a query
            # at 10,000 memories met about 50 new ones, 0.8 s, when all were keyed).
            share = settings.key_weight
            closest = sorted(found.values(), key=lambda c: c.similarity, reverse=True)[:_KEYED_CANDIDATES]
            key_similarities = self.keys.similarities([c.memory for c in closest], vector, [c.key_vector for c in closest])
            for candidate, key_similarity in zip(closest, key_similarities):
                candidate.similarity = (1.0 - share) * candidate.similarity + share * float(key_similarity)

        # Ranks are global across collections, so the fused scores compare between sections.
        dense_order = sorted(found.values(), key=lambda c: c.similarity, reverse=True)
        for rank, candidate in enumerate(dense_order):
            candidate.dense_rank = rank
        for rank, (_, doc) in enumerate(sorted(lexical_hits, reverse=True)):
            if doc in found:  # ranked among all lexical hits, read or not, so reads never change ranks
                found[doc].lexical_rank = rank
        candidates = list(found.values())
        fuse(candidates, settings, mode)
        now = datetime.now(timezone.utc)
        for candidate in candidates:
            candidate.score = final_score(candidate, settings, now)
        return candidates
