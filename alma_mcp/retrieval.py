"""Which memories to inject for a task, and how they are ranked.

For each memory type the agent may read: dense candidates from Chroma (cosine similarity)
and lexical candidates from BM25 are fused by reciprocal rank fusion; a relevance floor
drops what is not about the task; the final score mixes relevance with recency, success
rate, confidence and feedback (weights in `RetrievalWeights`, documented in the README);
near-duplicates are kept out of the top_k. Results are cached per scope: the cache key
holds the write generation of every collection read, so any write to the scope
invalidates it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, Field

from .config import AlmaConfig, RetrievalSettings
from .embeddings import Embedder
from .lexical import BM25Index
from .models import MEMORY_TYPES, Memory, MemoryBase
from .prompt import render_prompt
from .store import PREFERENCES, MemoryStore

RRF_K = 60
NEAR_DUPLICATE = 0.92
"""Cosine similarity above which a candidate counts as a near-duplicate of one already chosen."""


class ScoredMemory(BaseModel):
    memory: Memory
    score: float = Field(description="Final ranking score, 0-1.")
    similarity: float = Field(description="Cosine similarity of the memory to the task.")
    lexical: float = Field(0.0, description="BM25 score of the memory for the task (0 when no term matched).")
    source_agent: str = Field(description="The agent whose memory this is (differs when inherited or shared).")


class MemorySlice(BaseModel):
    """What retrieval found for one task, by type, and the prompt to inject."""

    task: str
    agent: str
    user_id: str | None = None
    heuristics: list[ScoredMemory] = Field(default_factory=list)
    anti_patterns: list[ScoredMemory] = Field(default_factory=list)
    knowledge: list[ScoredMemory] = Field(default_factory=list)
    preferences: list[ScoredMemory] = Field(default_factory=list)
    outcomes: list[ScoredMemory] = Field(default_factory=list)
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


def recency(memory: MemoryBase, half_life_days: float, now: datetime) -> float:
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
        return {"success": 1.0, "partial": 0.5, "failure": 0.0}[memory.outcome]  # type: ignore[attr-defined]
    return 0.5


def feedback_score(memory: MemoryBase) -> float:
    """0.5 with no feedback; harmful counts twice as much as helpful."""
    positive = memory.helpful
    negative = 2 * memory.harmful
    return 0.5 + 0.5 * (positive - negative) / (positive + negative + 2)


class _LexicalCache:
    def __init__(self) -> None:
        self._indexes: dict[tuple[str, str | None], tuple[int, BM25Index]] = {}
        self._lock = threading.Lock()

    def get(self, store: MemoryStore, memory_type: str, agent: str | None) -> BM25Index:
        key = (memory_type, agent)
        generation = store.generation(memory_type, agent)
        cached = self._indexes.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        ids, docs = store.documents(memory_type, agent)
        index = BM25Index(ids, docs)
        with self._lock:
            self._indexes[key] = (generation, index)
        return index


class Retriever:
    def __init__(self, store: MemoryStore, embedder: Embedder, config: AlmaConfig, cache_size: int = 512) -> None:
        self.store = store
        self.embedder = embedder
        self.config = config
        self._lexical = _LexicalCache()
        self._results: OrderedDict[tuple[Any, ...], MemorySlice] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _scopes(self, agent: str, memory_types: Sequence[str], user_id: str | None) -> list[tuple[str, str | None]]:
        readable = self.config.readable_agents(agent)
        scopes: list[tuple[str, str | None]] = []
        for kind in memory_types:
            if kind == PREFERENCES:
                if user_id:
                    scopes.append((kind, None))
            else:
                scopes += [(kind, source) for source in readable]
        return scopes

    def retrieve(
        self,
        task: str,
        agent: str,
        top_k: int | None = None,
        user_id: str | None = None,
        memory_types: Sequence[str] | None = None,
        settings: RetrievalSettings | None = None,
    ) -> MemorySlice:
        settings = settings or self.config.retrieval_for(agent)
        top_k = top_k or settings.top_k
        if memory_types is None:
            memory_types = [t for t in MEMORY_TYPES if t != "outcome" or settings.include_outcomes]
        scopes = self._scopes(agent, memory_types, user_id)
        key = (
            task,
            agent,
            top_k,
            user_id,
            tuple(memory_types),
            tuple((kind, source, self.store.generation(kind, source)) for kind, source in scopes),
        )
        with self._lock:
            hit = self._results.get(key)
            if hit is not None:
                self._results.move_to_end(key)
                return hit.model_copy(deep=True)

        vector = self.embedder.embed_query(task)
        now = datetime.now(timezone.utc)
        by_type: dict[str, list[ScoredMemory]] = {kind: [] for kind in memory_types}
        for kind in memory_types:
            candidates: list[tuple[ScoredMemory, np.ndarray]] = []
            for scope_kind, source in scopes:
                if scope_kind != kind:
                    continue
                candidates += self._candidates(task, vector, kind, source, user_id, top_k, settings, now)
            by_type[kind] = _select(candidates, top_k)
        result = MemorySlice(
            task=task,
            agent=agent,
            user_id=user_id,
            **{_FIELD_BY_TYPE[kind]: items for kind, items in by_type.items()},
        )
        result.prompt = render_prompt(by_type, settings.token_budget)
        with self._lock:
            self._results[key] = result
            while len(self._results) > self._cache_size:
                self._results.popitem(last=False)
        return result.model_copy(deep=True)

    def _candidates(
        self,
        task: str,
        vector: np.ndarray,
        kind: str,
        source: str | None,
        user_id: str | None,
        top_k: int,
        settings: RetrievalSettings,
        now: datetime,
    ) -> list[tuple[ScoredMemory, np.ndarray]]:
        pool = max(4 * top_k, 20)
        where = {"user_id": user_id} if kind == PREFERENCES else None
        dense = self.store.query(kind, source, vector, pool, where=where)
        found: dict[str, tuple[MemoryBase, float, np.ndarray]] = {
            h.memory.id: (h.memory, h.similarity, h.vector) for h in dense  # type: ignore[misc]
        }
        dense_rank = {h.memory.id: r for r, h in enumerate(dense)}
        lexical = self._lexical.get(self.store, kind, source).search(task, pool)
        lexical_score = dict(lexical)
        lexical_rank = {doc: r for r, (doc, _) in enumerate(lexical)}
        missing = [doc for doc, _ in lexical if doc not in found]
        if missing:
            for doc, (memory, vec) in self.store.fetch_with_vectors(kind, source, missing).items():
                if memory.archived or (kind == PREFERENCES and getattr(memory, "user_id", None) != user_id):
                    continue
                found[doc] = (memory, float(np.dot(vec, vector)), vec)

        weights = settings.weights
        total = weights.similarity + weights.recency + weights.success + weights.confidence + weights.feedback
        best_rrf = 2.0 / (RRF_K + 1)
        out: list[tuple[ScoredMemory, np.ndarray]] = []
        for doc, (memory, similarity, vec) in found.items():
            if similarity < settings.relevance_floor:
                continue
            rrf = 0.0
            if doc in dense_rank:
                rrf += 1.0 / (RRF_K + 1 + dense_rank[doc])
            if doc in lexical_rank:
                rrf += 1.0 / (RRF_K + 1 + lexical_rank[doc])
            relevance = 0.5 * similarity + 0.5 * (rrf / best_rrf)
            score = (
                weights.similarity * relevance
                + weights.recency * recency(memory, settings.recency_half_life_days, now)
                + weights.success * success_rate(memory)
                + weights.confidence * float(getattr(memory, "confidence", 0.5))
                + weights.feedback * feedback_score(memory)
            ) / (total or 1.0)
            out.append(
                (
                    ScoredMemory(
                        memory=memory,
                        score=round(score, 4),
                        similarity=round(similarity, 4),
                        lexical=round(lexical_score.get(doc, 0.0), 3),
                        source_agent=memory.agent,
                    ),
                    vec,
                )
            )
        return out


def _select(candidates: list[tuple[ScoredMemory, np.ndarray]], top_k: int) -> list[ScoredMemory]:
    """The top_k by score, skipping near-duplicates of a memory already chosen."""
    chosen: list[tuple[ScoredMemory, np.ndarray]] = []
    for item, vec in sorted(candidates, key=lambda c: c[0].score, reverse=True):
        if any(float(np.dot(vec, other)) >= NEAR_DUPLICATE for _, other in chosen):
            continue
        chosen.append((item, vec))
        if len(chosen) >= top_k:
            break
    return [item for item, _ in chosen]
