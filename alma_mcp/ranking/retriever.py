"""Which memories to inject for a task, and how they are ranked.

For every collection the agent may read, dense candidates (cosine similarity of our own
embeddings) come from an exact in-memory copy of the collection's vectors (alma_mcp/indexes/dense.py;
`vector_search: auto` does so up to IN_MEMORY_LIMIT records a collection) or from Chroma's own
index (`vector_search: chroma`, and larger collections under `auto`), and lexical
candidates from an incremental BM25 index over the same memories; both indexes are built in
one pass over the store and follow its writes (`SearchIndexes`). The two rankings are fused by reciprocal rank fusion (RRF), across
all memory types at once so that scores are comparable between sections.

A memory's similarity to the task mixes the cosine similarity of its whole text with that of
its key field alone (`key_weight`, twice it for facts and preferences, `key_share`; a heuristic's
condition, an anti-pattern's pattern, a fact, an outcome's task): tasks are worded like the
situation a lesson was learned in, and the lesson's own words dilute the match. Only the closest
candidates are keyed; the key vector is embedded when the memory is written and stored with it
(`KeyVectors` embeds those of older memories on first sight), so a warm query costs a few dot
products.

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
at a few hundred memories and at 10,000. And when the task's best candidate is a fact or a
preference, evidence clears the floor only if that best stands `standout` above the runner-up
(`stands_out`): a question about a person or a thing that many memories mention comes close to all
of them, whether one answers it or not, and on a store of personal facts an absolute floor let
almost a third of such questions through. The preferences of the user named by
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

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from ..config import AlmaConfig, RetrievalSettings
from ..embedding.embedder import Embedder
from ..indexes.dense import VectorIndex
from ..indexes.follower import CollectionIndex, SearchIndexes
from ..indexes.keys import KeyVectors
from ..learning.learner import without_contradictions
from ..learning.track import TrackRecord
from ..models import MEMORY_TYPES, AntiPattern, AnyMemory, Heuristic, Outcome, UserPreference
from ..prompt.handles import matches
from ..prompt.render import render_prompt
from ..prompt.results import FIELD_BY_TYPE, MemorySlice
from ..storage.store import PREFERENCES, MemoryStore
from .calibration import FloorCalibration, shifted
from .candidates import SUBJECT_TYPES, Candidate, Mode, choose, crowding_of, final_score, fuse, mention, runner_up_gap, track_of
from .explain import Explanation, judge
from .nearmiss import near_miss

_KEYED_CANDIDATES = 10
"""Per query, how many candidates (closest by whole text first) get the key field's similarity."""

_SEARCH_THREADS = 4
"""Collections searched at once: Chroma's search releases the GIL, so a retrieval over the
four or five collections of an agent costs about the slowest search, not their sum."""

_RESULT_TTL_SECONDS = 300.0
"""Cached results expire after this long, so recency in a cached score is never far off."""

CALIBRATION_FILE = "feedback_calibration.json"

SUBJECT_KEY_SHARE = 2.0
"""A fact's or a preference's key field counts this many times `key_weight` in its similarity."""


def key_share(kind: str, settings: RetrievalSettings) -> float:
    """The key field's share of a memory's similarity: `key_weight`, and SUBJECT_KEY_SHARE times it
    for facts and preferences (SUBJECT_TYPES). Their key is the statement itself and their whole
    text adds only a label before it ("pets: ...", "food: ..."), which a question does not use: on
    the development corpus of personal facts, served R@5 0.795 -> 0.818 for the same no-answer
    cost (unfloored R@5 0.881 -> 0.899, measured with an outcome's verdict left out of its score),
    the agent corpus unchanged (docs/retrieval-tiers.md). 0 stays 0: whole text only."""
    share = settings.key_weight * (SUBJECT_KEY_SHARE if kind in SUBJECT_TYPES else 1.0)
    return min(1.0, share)


def embeds_beside(embedder: Any) -> Any:
    """The embedder class's `embed_query_beside`, when calling it embeds a task as its
    `embed_query` would; else None (the caller runs its other work, then `embed_query`).

    Looked up on the class: an embedder that wraps another and hands it what it does not define
    itself (__getattr__) still embeds the task through its own embed_query. A subclass that
    overrides `embed_query` but not `embed_query_beside` would otherwise be bypassed: the
    inherited `embed_query_beside` embeds the text the base class's way."""
    kind = type(embedder)
    beside = getattr(kind, "embed_query_beside", None)
    if beside is None:
        return None
    owner = next(k for k in kind.__mro__ if "embed_query_beside" in vars(k))
    return beside if getattr(kind, "embed_query", None) is getattr(owner, "embed_query", None) else None


def _other_type(memory: AnyMemory, wanted: str | None) -> bool:
    """Filed under a task type other than `wanted` (lower case; None wants every type). A memory
    filed under none never is, nor knowledge and preferences, which have no task type."""
    filed = memory.task_type if isinstance(memory, (Heuristic, AntiPattern, Outcome)) else None
    return wanted is not None and filed is not None and filed.lower() != wanted


def read_scopes(config: AlmaConfig, agent: str, memory_types: Sequence[str], user_id: str | None) -> list[tuple[str, str | None]]:
    """The collections (type, owning agent) a retrieval for `agent` reads: its own and those it
    may read (share_with, inherit_from); the preferences collection only for a user."""
    scopes: list[tuple[str, str | None]] = []
    for kind in memory_types:
        if kind == PREFERENCES:
            if user_id:
                scopes.append((kind, None))
        else:
            scopes += [(kind, source) for source in config.readable_agents(agent, kind)]
    return scopes


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
        return read_scopes(self.config, agent, memory_types, user_id)

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

    def with_handle(self, handle: str, agent: str | None) -> list[str]:
        """The ids of the active memories whose hex digits start with `handle` (prompt/handles.py),
        among the collections `agent` reads (None: every collection); preferences of every user,
        which the caller narrows to its own. Read from the search indexes, not the store: a handle
        is resolved in the time of a lookup, at any size."""
        if agent is None:
            scopes = [(kind, None if owner == "_" else owner) for owner, kind in self.store.scopes()]
        else:
            kinds = [kind for kind in MEMORY_TYPES if kind != PREFERENCES]
            scopes = read_scopes(self.config, agent, kinds, None) + [(PREFERENCES, None)]
        found: list[str] = []
        for kind, source in scopes:
            found += [memory_id for memory_id in self.indexes.get(kind, source).lexical.ids() if matches(memory_id, handle)]
        return list(dict.fromkeys(found))

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

    @property
    def encoder(self) -> Any:
        """The embedding model's encoder, whose token vectors the near-miss test reads (None when
        the model runs under sentence-transformers: the test is then skipped)."""
        return getattr(self.embedder, "encoder", None)

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
        near_miss(task, candidates, settings, self.encoder)
        chosen = choose(candidates, confident_kinds, top_k, settings)
        by_type = {kind: [c.scored() for c in picked] for kind, picked in chosen.items()}
        by_type.update({kind: [] for kind in kinds if kind not in by_type})
        for candidate in mention(candidates, chosen, settings, kinds, top_k):
            by_type[candidate.memory.type].append(candidate.scored("weak"))
        if by_type.get("heuristic") and by_type.get("anti_pattern"):
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
            **{FIELD_BY_TYPE[kind]: items for kind, items in by_type.items()},
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
        aligned = near_miss(task, candidates, settings, self.encoder)
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
            standout=settings.standout,
            sure_floor=settings.sure_floor,
            runner_up_gap=round(runner_up_gap(candidates, settings), 4),
            align_floor=settings.align_floor,
            alignment=None if aligned is None else round(aligned, 4),
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
        pool = settings.candidate_pool * (2 if task_type else 1)
        wanted_type = task_type.lower() if task_type else None
        found: dict[str, Candidate] = {}
        lexical_hits: list[tuple[float, str]] = []
        admit = settings.relevance_floor - settings.floor_margin
        if settings.weak_top_k > 0:  # the weak tier reads down to weak_floor
            admit = min(admit, settings.weak_floor - settings.weak_span)
        scopes = self.scopes(agent, memory_types, user_id)

        # Each collection's index is taken once, with its vectors as they are now: a concurrent
        # write may drop them (a collection grown past IN_MEMORY_LIMIT) while the search runs.
        indexes: dict[tuple[str, str | None], tuple[CollectionIndex, VectorIndex | None]] = {}
        for scope in scopes:
            index = self.indexes.get(*scope)
            indexes[scope] = (index, index.dense)
        # The lexical searches need no vector: they run on the search threads while this one
        # embeds the task. They start once the task is tokenized, as it enters the encoder's
        # layers, which let go of the GIL (ONNX Runtime, numpy's products); started before, they
        # hold the GIL that the tokenizer's call waits for on its way out.
        lexical_jobs: dict[tuple[str, str | None], Any] = {}

        def search_lexically() -> None:
            for scope, (index, _) in indexes.items():
                lexical_jobs[scope] = self._searches.submit(index.lexical.search, task, pool)

        embed_beside = embeds_beside(self.embedder)
        if mode == "dense":
            vector = self.embedder.embed_query(task)
        elif embed_beside is not None:
            vector = embed_beside(self.embedder, task, search_lexically)
        else:
            search_lexically()
            vector = self.embedder.embed_query(task)
        lexical = {scope: job.result() for scope, job in lexical_jobs.items()}

        def search(scope: tuple[str, str | None]) -> tuple[list[Any], list[Any], dict[str, Any]]:
            """One collection: its lexical hits, its nearest memories, and the lexical hits the
            dense search did not return that could still pass, read in the same call to Chroma."""
            kind, source = scope
            dense_index = indexes[scope][1]
            hits = lexical.get(scope, [])
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
        # not been measured since. In memory, each scan is a fraction of a millisecond and holds
        # the GIL most of it: this thread runs them one after another, saving the hand-offs to
        # the search threads; Chroma's queries of collections too large for memory go to them.
        in_memory = mode != "lexical" and all(dense is not None for _, dense in indexes.values())
        searched = map(search, scopes) if in_memory else self._searches.map(search, scopes)
        for (kind, source), (hits, dense_hits, extra) in zip(scopes, searched):
            for hit in dense_hits:
                if hit.memory.archived:  # archived by another process since the index was read
                    continue
                if _other_type(hit.memory, wanted_type):
                    continue
                found[hit.memory.id] = Candidate(hit.memory, hit.vector, hit.similarity, key_vector=hit.key_vector)
            lexical_hits += [(h.score, h.id) for h in hits]
            for doc, hit in extra.items():
                memory, vec = hit.memory, hit.vector
                if memory.archived or (isinstance(memory, UserPreference) and memory.user_id != user_id):
                    continue
                if _other_type(memory, wanted_type):
                    continue
                found[doc] = Candidate(memory, vec, float(np.dot(vec, vector)), key_vector=hit.key_vector)
            for h in hits:
                candidate = found.get(h.id)
                if candidate is not None:
                    candidate.lexical, candidate.coverage, candidate.quoted = h.score, h.coverage, h.identifiers

        if settings.key_weight > 0 and mode != "lexical" and found:
            # Only the closest candidates get the key field's share: they are the ones the floor
            # and the top_k turn on, and a memory never seen before costs an embedding (a query
            # at 10,000 memories met about 50 new ones, 0.8 s, when all were keyed).
            closest = sorted(found.values(), key=lambda c: c.similarity, reverse=True)[:_KEYED_CANDIDATES]
            key_similarities = self.keys.similarities([c.memory for c in closest], vector, [c.key_vector for c in closest])
            for candidate, key_similarity in zip(closest, key_similarities):
                share = key_share(candidate.memory.type, settings)
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
