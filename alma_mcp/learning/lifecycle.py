"""The life cycle of a memory: merged with its near-duplicates, weakened by time, archived, restored.

Nothing here destroys a memory by itself. Every removal from active service is an
*archive* (``archived=True`` with a reason), written to the audit log before the store
changes, and can be undone with `restore`. Only `purge` (an explicit forget) deletes,
and it erases: the memory's words leave the audit log too, and it cannot be restored.

Strength
    ``0.5 ** (days since the memory was last used, validated or re-taught / half-life)``.
    The clock is the one retrieval's recency term reads (`retrieval.recency`), so the
    strength that archives a memory is the recency that ranks it. Use (feedback ``used`` /
    ``helpful``), validation (a successful outcome for a heuristic, a new failure for an
    anti-pattern), teaching the same thing again (a merge on write) and a restore all
    restart it.

Merging
    Two memories of one type are the same when their cosine similarity reaches the type's
    threshold (and, for preferences, they belong to the same user; for lessons, their task
    types do not differ). Lessons (heuristics, anti-patterns) accumulate evidence: the
    older one survives with its wording and id, ACE-style. Facts and preferences are
    statements: the newer wording survives, because teaching a near-identical fact again
    is usually a restatement or a correction ("use 4 spaces" after "use 2 spaces"
    measures 0.95). Either way the survivor takes the counters, the best confidence, the
    provenance (supporting outcomes, sources) and the earliest creation time of both; the
    other is archived with a reason naming the survivor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Sequence, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from ..storage.audit import AuditAction, AuditEntry, AuditLog, entry_for, erased
from ..config import AlmaConfig, LifecycleSettings
from ..errors import InvalidInput, NotFound
from ..models import FEEDBACK_SIGNALS, AntiPattern, AnyMemory, DomainKnowledge, Heuristic, Outcome, UserPreference, utcnow
from ..indexes.follower import SearchIndexes
from .learner import MERGED_PREFIX
from .signals import feedback_score, recency, success_rate
from ..storage.store import PREFERENCES, MemoryStore

_M = TypeVar("_M", Heuristic, AntiPattern, DomainKnowledge, UserPreference, Outcome)

MERGEABLE = ("heuristic", "anti_pattern", "knowledge", "preference")
_BLOCK = 512


# -- pure rules ------------------------------------------------------------------------
def strength(memory: AnyMemory, half_life_days: float, now: datetime) -> float:
    """1.0 when just used or validated, halving every `half_life_days` since."""
    return recency(memory, half_life_days, now)


def days_to_floor(half_life_days: float, floor: float) -> float:
    """How long an untouched memory takes to fall below `floor`."""
    return half_life_days * math.log2(1.0 / floor)


def value(memory: AnyMemory, memory_strength: float) -> float:
    """What a memory is worth keeping, 0-1: its strength, weighted by confidence, success and feedback."""
    quality = (float(getattr(memory, "confidence", 0.5)) + success_rate(memory) + feedback_score(memory)) / 3
    return memory_strength * (0.4 + 0.6 * quality)


def restart_clock(memory: AnyMemory, now: datetime) -> None:
    """Mark a memory as just validated: every field retrieval's recency reads moves to `now`."""
    memory.updated_at = now
    if memory.last_used_at is not None:
        memory.last_used_at = now  # retrieval reads last_used_at before updated_at
    if isinstance(memory, Heuristic):
        memory.last_validated = now
    elif isinstance(memory, AntiPattern):
        memory.last_seen = now


def compatible(a: AnyMemory, b: AnyMemory) -> bool:
    """Whether two memories of one type may be merged at all, whatever their similarity."""
    if a.type != b.type or a.type not in MERGEABLE or a.id == b.id:
        return False
    if isinstance(a, UserPreference) and isinstance(b, UserPreference):
        return a.user_id == b.user_id
    if a.agent != b.agent:
        return False
    if isinstance(a, (Heuristic, AntiPattern)) and isinstance(b, (Heuristic, AntiPattern)):
        return a.task_type is None or b.task_type is None or a.task_type == b.task_type
    return True


def newer_survives(memory_type: str) -> bool:
    """Facts and preferences: the latest statement wins. Lessons: the older one keeps accumulating."""
    return memory_type in ("knowledge", "preference")


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _join_sources(a: str, b: str) -> str:
    parts = [p.strip() for p in f"{a},{b}".split(",") if p.strip()]
    return ", ".join(dict.fromkeys(parts))[:500]


def merge_into(survivor: AnyMemory, other: AnyMemory) -> None:
    """Fold `other`'s counts, confidence and provenance into `survivor` (its wording is kept)."""
    for counter in FEEDBACK_SIGNALS:
        setattr(survivor, counter, getattr(survivor, counter) + getattr(other, counter))
    survivor.created_at = min(survivor.created_at, other.created_at)
    survivor.updated_at = max(survivor.updated_at, other.updated_at)
    survivor.last_used_at = _latest(survivor.last_used_at, other.last_used_at)
    survivor.confidence = max(survivor.confidence, other.confidence)
    if isinstance(survivor, (Heuristic, AntiPattern)) and isinstance(other, (Heuristic, AntiPattern)):
        overlap = len(set(survivor.supporting_outcomes) & set(other.supporting_outcomes))
        survivor.supporting_outcomes = sorted(set(survivor.supporting_outcomes) | set(other.supporting_outcomes))
        survivor.occurrence_count = max(
            survivor.occurrence_count + other.occurrence_count - overlap, len(survivor.supporting_outcomes)
        )
        survivor.success_count = min(survivor.occurrence_count, survivor.success_count + other.success_count)
        survivor.task_type = survivor.task_type or other.task_type
        # Learning finds its lessons by strategy_key: the survivor must be the one it finds.
        survivor.strategy_key = survivor.strategy_key or other.strategy_key
        if isinstance(survivor, Heuristic) and isinstance(other, Heuristic):
            survivor.last_validated = max(survivor.last_validated, other.last_validated)
        elif isinstance(survivor, AntiPattern) and isinstance(other, AntiPattern):
            survivor.last_seen = max(survivor.last_seen, other.last_seen)
            survivor.better_alternative = survivor.better_alternative or other.better_alternative
    elif isinstance(survivor, (DomainKnowledge, UserPreference)) and isinstance(other, (DomainKnowledge, UserPreference)):
        survivor.source = _join_sources(survivor.source, other.source)


@dataclass
class MergePlan:
    survivor: AnyMemory
    members: list[tuple[AnyMemory, float]] = field(default_factory=list)


def plan_merges(memories: Sequence[AnyMemory], vectors: np.ndarray, threshold: float) -> list[MergePlan]:
    """Group near-duplicates greedily. Each memory joins at most one survivor, and only when it is
    itself similar enough to that survivor (no chains of pairwise-similar memories)."""
    if len(memories) < 2:
        return []
    kind = memories[0].type
    order = sorted(range(len(memories)), key=lambda i: memories[i].created_at, reverse=newer_survives(kind))
    items = [memories[i] for i in order]
    matrix = np.asarray(vectors, dtype=np.float32)[order]
    taken = [False] * len(items)
    plans: list[MergePlan] = []
    for start in range(0, len(items), _BLOCK):
        block = matrix[start : start + _BLOCK] @ matrix.T  # one BLAS call per block, not n^2 dot products
        for row, i in enumerate(range(start, min(start + _BLOCK, len(items)))):
            if taken[i]:
                continue
            plan = MergePlan(items[i])
            for found in np.nonzero(block[row, i + 1 :] >= threshold)[0] + i + 1:
                j = int(found)
                if not taken[j] and compatible(items[i], items[j]):
                    taken[j] = True
                    plan.members.append((items[j], float(block[row, j])))
            if plan.members:
                taken[i] = True
                plans.append(plan)
    return plans


# -- results -------------------------------------------------------------------------
class MemoryRef(BaseModel):
    id: str
    type: str
    agent: str
    title: str
    details: dict[str, Any] = Field(default_factory=dict)


def ref(memory: AnyMemory, **details: Any) -> MemoryRef:
    return MemoryRef(id=memory.id, type=memory.type, agent=memory.agent, title=memory.title(), details=details)


class MergeGroup(BaseModel):
    survivor: MemoryRef
    merged: list[MemoryRef] = Field(description="Archived into the survivor; details.similarity says how close.")


class ConsolidateResult(BaseModel):
    dry_run: bool
    count: int = Field(description="How many memories were (or would be) merged away.")
    groups: list[MergeGroup]
    message: str


class SweepResult(BaseModel):
    dry_run: bool
    count: int
    decayed: list[MemoryRef] = Field(description="Archived because their strength fell below the floor.")
    capped: list[MemoryRef] = Field(description="Archived because the agent was past its cap (lowest value first).")
    message: str


class RestoreResult(BaseModel):
    count: int
    restored: list[MemoryRef]
    message: str


# -- the life cycle over a store -----------------------------------------------------
def half_life(config: AlmaConfig, agent: str | None) -> float:
    """Days for a memory's strength to halve: the agent's recency half-life, so that what archives a
    memory is what ranks it."""
    if agent is None or agent == "_":
        return config.alma.retrieval.recency_half_life_days
    return config.retrieval_for(agent).recency_half_life_days


class Lifecycle:
    """Merges, sweeps, archives, purges and restores, each written to the audit log first.

    Callers hold the service's write lock around every method that changes the store.
    """

    def __init__(
        self,
        store: MemoryStore,
        config: AlmaConfig,
        audit: AuditLog,
        indexes: SearchIndexes | None = None,
    ) -> None:
        """`indexes`: the retriever's, whose in-memory copies make the search for a duplicate exact."""
        self.store = store
        self.config = config
        self.audit = audit
        self.indexes = indexes if indexes is not None else SearchIndexes(store, config.alma.vector_search)

    @property
    def settings(self) -> LifecycleSettings:
        return self.config.alma.lifecycle

    def half_life(self, agent: str | None) -> float:
        return half_life(self.config, agent)

    def threshold(self, memory_type: str, override: float | None = None) -> float | None:
        if override is not None:
            return override
        return next((t for kind, t in self.settings.merge_thresholds.items() if kind == memory_type), None)

    def cap(self, agent: str) -> int | None:
        agent_settings = self.config.alma.agents.get(agent)
        if agent_settings is not None and agent_settings.max_memories is not None:
            return agent_settings.max_memories
        return self.settings.max_memories_per_type

    # -- archive, purge, restore -----------------------------------------------------
    def archive(
        self, memories: Sequence[tuple[AnyMemory, str, dict[str, Any]]], call: str, action: AuditAction = "archive"
    ) -> None:
        """Archive (memory, reason, details) triples: audit first, then the store."""
        if not memories:
            return
        now = utcnow()
        self.audit.append([entry_for(m, action, call, reason, details) for m, reason, details in memories])
        for memory, reason, _ in memories:
            memory.archived = True
            memory.archived_reason = reason[:500]
            memory.updated_at = now
        self.store.update_metadata([m for m, _, _ in memories])

    def purge(self, memories: Sequence[AnyMemory], call: str, reason: str) -> int:
        if not memories:
            return 0
        """Erase memories: the audit entry keeps no words of theirs, the store deletes them, and the
        earlier entries about them lose their titles (audit.erase)."""
        self.audit.append([erased(entry_for(m, "purge", call, reason)) for m in memories])
        deleted = self.store.delete(memories)
        self.audit.erase({m.id for m in memories})
        return deleted

    def restore(self, memory_ids: Sequence[str], call: str) -> RestoreResult:
        """Bring archived memories back into service (a purged one is erased: it cannot come back)."""
        now = utcnow()
        back: list[AnyMemory] = []
        for memory_id in memory_ids:
            try:
                memory = self.store.get(memory_id)
            except NotFound:
                raise NotFound(f"no memory with id {memory_id!r} in project {self.config.project!r}") from None
            if not memory.archived:
                raise InvalidInput(f"memory {memory_id} is not archived; nothing to restore")
            back.append(memory)
        self.audit.append(
            [entry_for(m, "restore", call, f"restored (was: {m.archived_reason or 'purged'})") for m in back]
        )
        reasons = [m.archived_reason or "" for m in back]
        for memory in back:
            memory.archived = False
            memory.archived_reason = None
            restart_clock(memory, now)  # else the next sweep would archive it again at once
            if memory.last_used_at is None:
                memory.last_used_at = now
        self.store.update_metadata(back)
        message = f"restored {len(back)} memor{'y' if len(back) == 1 else 'ies'}"
        for memory, reason in zip(back, reasons):
            if reason.startswith(MERGED_PREFIX):  # "merged into ID: why", "... ID on write (...)", "... ID by consolidate (...)"
                survivor = reason.removeprefix(MERGED_PREFIX).split()[0].rstrip(":")
                # A merge is not undone: the survivor keeps the counts it took from this memory.
                message += f"; {memory.id} had been merged into {survivor}, which still counts its evidence too"
        return RestoreResult(count=len(back), restored=[ref(m) for m in back], message=message)

    # -- merging -------------------------------------------------------------------------
    def merge_on_write(self, memory: _M, vector: np.ndarray, call: str) -> _M | None:
        """If `memory` nearly duplicates a stored one, merge the two and return the survivor
        (both written); else None and the caller stores `memory` as new."""
        kind = memory.type
        threshold = self.threshold(kind)
        if not self.settings.merge_on_write or threshold is None or kind not in MERGEABLE:
            return None
        scope = None if kind == PREFERENCES else memory.agent
        user = memory.user_id if isinstance(memory, UserPreference) else None
        nearest = self.indexes.nearest(kind, scope, vector, 5, owner=user, restrict=kind == PREFERENCES)
        hits = [h for h in nearest if h.similarity >= threshold and compatible(h.memory, memory)]
        if not hits:
            return None
        best = max(hits, key=lambda h: h.similarity)
        existing = best.memory
        if not isinstance(existing, type(memory)):  # compatible() compared their types
            return None
        now = utcnow()
        similarity = round(best.similarity, 4)
        if newer_survives(kind):
            survivor, absorbed = memory, existing
            reason = f"superseded by {survivor.id}, taught again (similarity {similarity})"
        else:
            survivor, absorbed = existing, memory
            reason = f"merged into {survivor.id} on write (similarity {similarity})"
        merge_into(survivor, absorbed)
        restart_clock(survivor, now)
        details = {"survivor": survivor.id, "similarity": similarity}
        self.audit.append([entry_for(absorbed, "merge", call, reason, details)])
        absorbed.archived = True
        absorbed.archived_reason = reason
        absorbed.updated_at = now
        # The new one of the two needs its vector written; the stored one only its metadata.
        self.store.put([memory], vector[None, :])
        self.store.update_metadata([existing])
        return survivor

    def consolidate(
        self, kinds: Sequence[str], agent: str | None, threshold: float | None, dry_run: bool, call: str
    ) -> ConsolidateResult:
        groups: list[MergeGroup] = []
        changed: list[AnyMemory] = []
        entries: list[AuditEntry] = []
        for kind in kinds:
            limit = self.threshold(kind, threshold)
            if limit is None:
                continue
            scope = None if kind == PREFERENCES else agent
            pairs = list(self.store.iter_memories(kind, scope, with_embeddings=True))
            if len(pairs) < 2:
                continue
            memories = [m for m, v in pairs if v is not None]
            vectors = np.stack([v for _, v in pairs if v is not None])
            for plan in plan_merges(memories, vectors, limit):
                survivor = plan.survivor
                merged_refs = []
                for member, similarity in plan.members:
                    similarity = round(similarity, 4)
                    merged_refs.append(ref(member, similarity=similarity))
                    reason = f"merged into {survivor.id} by consolidate (similarity {similarity})"
                    entries.append(entry_for(member, "merge", call, reason, {"survivor": survivor.id, "similarity": similarity}))
                    if not dry_run:
                        merge_into(survivor, member)
                        member.archived = True
                        member.archived_reason = reason
                        changed.append(member)
                groups.append(MergeGroup(survivor=ref(survivor), merged=merged_refs))
                changed.append(survivor)
        count = sum(len(g.merged) for g in groups)
        if not dry_run and entries:
            self.audit.append(entries)
            self.store.update_metadata(changed)  # wording is unchanged: no re-embedding
        verb = "would merge" if dry_run else "merged"
        message = f"{verb} {count} memories into {len(groups)} survivors"
        if dry_run and count:
            message += "; call again with dry_run=false to do it"
        return ConsolidateResult(dry_run=dry_run, count=count, groups=groups, message=message)

    # -- decay and caps --------------------------------------------------------------
    def sweep(self, agent: str | None, dry_run: bool, call: str, now: datetime | None = None) -> SweepResult:
        """Archive what decayed below the floor, then what lies past each agent's cap."""
        now = now or utcnow()
        floor = self.settings.archive_floor
        decayed: list[tuple[AnyMemory, str, dict[str, Any]]] = []
        scopes = [(a, k) for a, k in self.store.scopes() if agent is None or a in (agent, "_")]
        if floor > 0:
            for owner, kind in scopes:
                if kind not in self.settings.decay_types or (agent is not None and kind == PREFERENCES and owner != agent):
                    continue
                half_life = self.half_life(None if owner == "_" else owner)
                # Nothing younger than this can be below the floor: let Chroma skip it.
                cutoff = now - timedelta(days=days_to_floor(half_life, floor))
                where = {"created_ts": {"$lt": cutoff.timestamp()}}
                for memory, _ in self.store.iter_memories(kind, None if owner == "_" else owner, where=where):
                    s = strength(memory, half_life, now)
                    if s < floor:
                        decayed.append(
                            (memory, f"decayed: strength {s:.3f} below the floor {floor}", {"strength": round(s, 4)})
                        )
        capped: list[tuple[AnyMemory, str, dict[str, Any]]] = []
        gone = {m.id for m, _, _ in decayed}
        for owner, kind in scopes:
            if owner == "_":
                continue
            capped += self._over_cap(owner, kind, gone, now)
        if not dry_run:
            self.archive(decayed, call)
            self.archive(capped, call)
        count = len(decayed) + len(capped)
        verb = "would archive" if dry_run else "archived"
        return SweepResult(
            dry_run=dry_run,
            count=count,
            decayed=[ref(m, **d) for m, _, d in decayed],
            capped=[ref(m, **d) for m, _, d in capped],
            message=f"{verb} {len(decayed)} decayed and {len(capped)} over-cap memories",
        )

    def _over_cap(
        self, agent: str, kind: str, already_gone: set[str], now: datetime
    ) -> list[tuple[AnyMemory, str, dict[str, Any]]]:
        cap = self.cap(agent)
        if cap is None or self.store.count(kind, agent, include_archived=False) <= cap:
            return []
        half_life = self.half_life(agent)
        active = [m for m in self.store.list(kind, agent) if m.id not in already_gone]
        excess = len(active) - cap
        if excess <= 0:
            return []
        scored = sorted(((value(m, strength(m, half_life, now)), m.created_at, m) for m in active), key=lambda t: (t[0], t[1]))
        return [
            (m, f"over the cap of {cap} {kind} memories for {agent}: lowest value ({v:.3f})", {"value": round(v, 4), "cap": cap})
            for v, _, m in scored[:excess]
        ]

    def enforce_cap(self, agent: str, kind: str, call: str) -> list[MemoryRef]:
        """Archive the lowest-value memories of one agent and type past its cap (after a write)."""
        over = self._over_cap(agent, kind, set(), utcnow())
        self.archive(over, call)
        return [ref(m, **d) for m, _, d in over]
