"""From outcomes to lessons: repeated successes become heuristics, repeated failures anti-patterns.

A *lesson* is a cluster of the agent's outcomes that used the same strategy (after
normalising case and punctuation) on the same kind of task, under the same task type (ignoring
case; outcomes of different task types are never one lesson). Every new outcome is placed by
looking at the agent's whole history, never a window of recent outcomes: the outcomes of its
strategy are ranked by task similarity (exactly, through the retriever's in-memory copy of the
collection, `SearchIndexes.nearest`; Chroma's approximate index only for a collection past the
in-memory limit or under `vector_search: chroma`), so tasks interleaved with any number of
others still find their cluster.

Placing an outcome (`Learner.apply`, `Learner.cluster`):
1. Lessons first: the outcome joins every heuristic or anti-pattern on its strategy whose
   tasks (their mean vector) are at least `learning.similarity_threshold` similar to its
   task, and any lesson whose mean is that similar to the joined cluster's mean. They are all
   the same lesson: one of each kind is kept and any other is folded into it and archived as
   "merged into ...", so two clusters that turn out to be one never leave two heuristics.
   When no lesson is that close, the nearest lesson of the strategy within the looser seed bar
   (`threshold - SEED_MARGIN`) takes the outcome: an unusual wording of a task it covers, whose
   stray failures would otherwise form an anti-pattern against a strategy that works; and
   lessons whose means are within that bar of the cluster's mean are folded in too.
2. No lesson yet: the cluster starts from the outcomes of that strategy that no lesson holds
   and that are within `threshold - SEED_MARGIN` of this task (the strategy already matches
   exactly), then keeps those within the threshold of their mean (two rounds). Paraphrases
   are often less similar to each other than to the mean of a few of them.
3. Evidence: the success rate over all of the lesson's outcomes, each weighted by
   0.5 ** (newer outcomes after it / `learning.evidence_half_life`), so a world that changes
   shows up within a few outcomes while one noisy outcome barely moves it. Confidence is the
   lower bound of the 90% Wilson interval of that rate (the failure rate for anti-patterns),
   plus the feedback offset (`FEEDBACK_STEPS`).
4. Rules: a heuristic appears at `min_occurrences_for_heuristic` successes and a rate of at
   least `min_success_rate`; it is retired (archived, never deleted) only when its rate has
   fallen below that bar *and* its confidence below `retire_below_confidence`, and comes back
   only with the rate above the bar and the confidence clear of the floor (hysteresis). An
   anti-pattern appears at `min_failures_for_anti_pattern` failures when the strategy fails
   more often than not and is unlikely to work at all (the upper bound of the 90% Wilson
   interval of its success rate below `max_success_bound_for_anti_pattern`, 0.7: two straight
   failures qualify, a win and two losses do not), and is retired the same way once it
   succeeds more often than not. The bound matters because an agent that obeys an
   anti-pattern never tries its strategy again: one built on a working strategy's unlucky
   start would lock it out for good.
   A cluster never holds an active heuristic and an active anti-pattern at once.
5. Optionally (`min_alternative_outcomes`, off by default: on the benchmark it removed the
   lock-outs below but did not raise the success rate; README "How learning works"),
   anti-patterns are relative: "avoid this" means "something else does better here". Once the
   other strategies tried on the same kind of task (outcomes of the same task type whose task
   is within the threshold of the lesson's mean) have `min_alternative_outcomes` outcomes, an
   anti-pattern needs its strategy to do significantly worse than they do: the upper Wilson
   bound of its success rate below their pooled, recency-weighted success rate. And whenever
   any strategy is tried on that kind of task, the active anti-patterns of the others there are
   judged again (`_review_anti_patterns`) and retired once they no longer hold. An agent obeys
   an anti-pattern and stops trying its strategy, so without this two unlucky failures of the
   strategy that works would lock it out for good; strong evidence (0 of 10) still stands.
   The rules are pure functions of the evidence (`heuristic_state`, `anti_pattern_state`),
   which the benchmark's oracle arm calls as well.
6. What a task is shown: never a heuristic and an anti-pattern on one strategy together; the
   one whose tasks are closer to the task is kept (`without_contradictions`, which retrieval
   calls), so a lesson of another kind of task neither vetoes nor cancels the one learned here.

Lessons are stored with the mean task vector of their outcomes plus their strategy's vector
as their embedding, so they are found by the tasks they apply to while lessons of different
strategies on one kind of task stay apart (`lesson_vector`); their text (condition/strategy,
pattern/why) feeds the lexical index and the prompt. Outcomes are stored under their task alone.
`memory_vectors` rebuilds exactly these vectors for reindex, import and restore. Every lesson
lists the outcome ids behind it (`supporting_outcomes`), which `alma://memories/{id}` shows as
provenance.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

import numpy as np

from ..config import AlmaConfig, LearningSettings
from ..models import FEEDBACK_STEPS, OUTCOME_WEIGHTS, AntiPattern, Heuristic, MemoryBase, Outcome, key_text, new_id, strategy_key, utcnow, wording_key
from ..indexes.follower import SearchIndexes
from ..storage.store import MemoryStore


class _Shown(Protocol):
    """A memory as retrieval shows it: the memory and its similarity to the task."""

    memory: Any
    similarity: float


Lesson = TypeVar("Lesson", bound=_Shown)

WILSON_Z = 1.645
"""90% two-sided Wilson interval: a lower bound that three successes in three clear (0.53)."""
GROUP_POOL = 500
"""Nearest outcomes of the same strategy looked at when placing an outcome."""
EXPANSION_ROUNDS = 2
SEED_MARGIN = 0.10
"""How much looser the first, outcome-to-outcome step of a new cluster is than the threshold."""
REINSTATE_MARGIN = 0.05
"""A retired lesson comes back only this far above the floor, so it does not flap."""
ALTERNATIVES_POOL = 200
"""Nearest outcomes looked at for what the other strategies did on the same kind of task."""
REVIEW_POOL = 10
"""Nearest anti-patterns judged again against their alternatives after each outcome."""
MERGED_PREFIX = "merged into "
FETCH_BATCH = 1000
"""Outcomes read by id in one call when `memory_vectors` rebuilds lessons' vectors."""
LESSON_STRATEGY_WEIGHT = 0.8
"""Weight of the strategy's embedding added to the mean task vector in a lesson's stored vector:
the least that keeps the lessons of four strategies on one kind of task below retrieval's
near-duplicate bar (0.92) on the benchmark families, while tasks still find them (median 0.61)."""

RETIRE_ON_HARMFUL = 2
"""Harmful signals needed (and more than half the helpful ones) before feedback alone retires."""


def wilson_lower_bound(successes: float, trials: float, z: float = WILSON_Z) -> float:
    """Lower bound of the Wilson score interval; works with weighted (fractional) counts."""
    if trials <= 0:
        return 0.0
    p = min(1.0, max(0.0, successes / trials))
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - margin) / denom)


VOTES_OFFSET_RANGE = (-0.5, 0.25)
USAGE_OFFSET_LIMIT = 0.05
"""Bounds of what feedback alone adds to a learned lesson's confidence: helpful/harmful votes
within -0.5 .. +0.25, used/ignored within +-0.05. Counters that keep growing (an agent reporting
`used` on every run) must not pin a lesson at 1 whatever the evidence, nor mute a harmful vote."""


def feedback_offset(memory: MemoryBase) -> float:
    """The confidence the feedback counters add (or take away) on top of the evidence."""
    votes = FEEDBACK_STEPS["helpful"] * memory.helpful + FEEDBACK_STEPS["harmful"] * memory.harmful
    usage = FEEDBACK_STEPS["used"] * memory.used + FEEDBACK_STEPS["ignored"] * memory.ignored
    low, high = VOTES_OFFSET_RANGE
    return min(high, max(low, votes)) + min(USAGE_OFFSET_LIMIT, max(-USAGE_OFFSET_LIMIT, usage))


def _clamp(value: float) -> float:
    return round(min(1.0, max(0.0, value)), 4)


def apply_feedback(memory: MemoryBase, signal: str, floor: float) -> bool:
    """Count one feedback signal on `memory` and move its confidence; True if it is now retired."""
    before = feedback_offset(memory)
    setattr(memory, signal, getattr(memory, signal) + 1)
    now = utcnow()
    if signal in ("used", "helpful"):
        memory.last_used_at = now
    if hasattr(memory, "confidence"):
        # The step, as far as the bounded offset still moves (see VOTES_OFFSET_RANGE).
        step = feedback_offset(memory) - before
        memory.confidence = _clamp(memory.confidence + step)  # type: ignore[attr-defined]
    memory.updated_at = now
    if (
        memory.type in ("heuristic", "anti_pattern")  # type: ignore[attr-defined]
        and not memory.archived
        and memory.harmful >= RETIRE_ON_HARMFUL
        and 2 * memory.harmful > memory.helpful
        and memory.confidence < floor  # type: ignore[attr-defined]
    ):
        memory.archived = True
        memory.archived_reason = f"retired: marked harmful {memory.harmful} times (helpful {memory.helpful})"
        return True
    return False


@dataclass
class Evidence:
    """What a cluster of outcomes says about its strategy."""

    outcomes: list[Outcome]
    successes: int
    failures: int
    rate: float
    """Recency-weighted success rate (a partial counts half)."""
    weight: float
    """Effective number of observations after recency weighting."""

    @property
    def confidence(self) -> float:
        return wilson_lower_bound(self.rate * self.weight, self.weight)

    @property
    def fail_confidence(self) -> float:
        return wilson_lower_bound((1 - self.rate) * self.weight, self.weight)

    @property
    def upper(self) -> float:
        """Upper bound of the 90% Wilson interval of the success rate: how well the strategy might
        still do. Two failures in two tries leave 0.58, three 0.47, ten 0.21."""
        if self.weight <= 0:
            return 1.0
        return 1.0 - self.fail_confidence


def weigh(outcomes: Sequence[Outcome], half_life: float) -> Evidence:
    ordered = sorted(outcomes, key=lambda m: m.created_at)
    wins = total = 0.0
    for age, outcome in enumerate(reversed(ordered)):
        w = 0.5 ** (age / half_life)
        wins += w * OUTCOME_WEIGHTS[outcome.outcome]
        total += w
    return Evidence(
        outcomes=ordered,
        successes=sum(1 for m in ordered if m.outcome == "success"),
        failures=sum(1 for m in ordered if m.outcome == "failure"),
        rate=wins / total if total else 0.0,
        weight=total,
    )


# -- the rules, as pure functions of the evidence (bench/learning.py's oracle arm calls them too) --
def worse_than_alternatives(evidence: Evidence, alternatives: Evidence | None, settings: LearningSettings) -> bool | None:
    """Does the strategy do significantly worse than the other strategies tried on the same kind of
    task? Yes when even the upper Wilson bound of its success rate is below their (pooled,
    recency-weighted) success rate. None while those alternatives have fewer than
    `min_alternative_outcomes` outcomes: there is nothing to compare it with yet."""
    minimum = settings.min_alternative_outcomes
    if minimum is None or alternatives is None or len(alternatives.outcomes) < minimum:
        return None
    return evidence.upper < alternatives.rate


def heuristic_state(
    state: bool | None, evidence: Evidence, confidence: float, settings: LearningSettings, min_occurrences: int
) -> bool:
    """Whether a heuristic on this evidence is active. `state`: None (there is none yet), True
    (active) or False (retired). `confidence` is the evidence's plus the feedback offset."""
    qualifies = evidence.successes >= min_occurrences and evidence.rate >= settings.min_success_rate
    if state is None:
        return qualifies
    if state:
        return not (evidence.rate < settings.min_success_rate and confidence < settings.retire_below_confidence)
    return qualifies and confidence >= settings.retire_below_confidence + REINSTATE_MARGIN


def anti_pattern_state(
    state: bool | None,
    evidence: Evidence,
    alternatives: Evidence | None,
    confidence: float,
    settings: LearningSettings,
) -> bool:
    """Whether an anti-pattern on this evidence is active (`state` as for `heuristic_state`).

    It needs `min_failures_for_anti_pattern` failures, a strategy that fails more often than
    not and is unlikely to work at all (the upper Wilson bound of its success rate below
    `max_success_bound_for_anti_pattern`: two straight failures qualify, two wins and two losses
    do not), and, once the alternatives on this kind of task are known, a strategy that does
    significantly worse than they do: a strategy failing 2 of 3 times where everything else
    fails 9 of 10 is not the thing to avoid. So an anti-pattern built on two unlucky failures
    of a strategy that works is retired as soon as the alternatives tried instead prove no
    better, rather than locking the strategy out for good (an agent that obeys it never tries
    the strategy again, so its own outcomes could never retire it).
    """
    worse = worse_than_alternatives(evidence, alternatives, settings)
    warranted = (
        evidence.failures >= settings.min_failures_for_anti_pattern
        and evidence.rate < 0.5
        and evidence.upper < settings.max_success_bound_for_anti_pattern
        and worse is not False
    )
    if state is None:
        return warranted
    if state:
        succeeds_now = evidence.rate >= 0.5 and confidence < settings.retire_below_confidence
        return not (succeeds_now or worse is False)
    return warranted and confidence >= settings.retire_below_confidence + REINSTATE_MARGIN


def advised_strategy(memory: MemoryBase) -> str | None:
    """The strategy key a lesson advises for (a heuristic) or against (an anti-pattern). A taught
    anti-pattern has no strategy_key: its pattern's wording stands for the strategy."""
    if memory.type == "heuristic":  # type: ignore[attr-defined]
        return strategy_key(memory.strategy)  # type: ignore[attr-defined]
    if memory.type == "anti_pattern":  # type: ignore[attr-defined]
        return getattr(memory, "strategy_key", None) or strategy_key(memory.pattern)  # type: ignore[attr-defined]
    return None


def without_contradictions(heuristics: Sequence[Lesson], anti_patterns: Sequence[Lesson]) -> tuple[list[Lesson], list[Lesson]]:
    """The lessons to show for one task, with no strategy both advised and warned against.

    A heuristic and an anti-pattern on one strategy, both retrieved for a task, were learned (or
    taught) on different kinds of task: "restart the runner" worked when a runner's disk was full
    and fails when an image will not build. Shown together they cancel out, or the one learned
    elsewhere outvotes the one learned here. The side whose closest lesson is closer to this task
    is the one that applies and is kept; a tie keeps the warning. A lesson is anything with
    `memory` and `similarity` (retrieval's ScoredMemory)."""
    closest_do: dict[str | None, float] = {}
    closest_avoid: dict[str | None, float] = {}
    for items, closest in ((heuristics, closest_do), (anti_patterns, closest_avoid)):
        for item in items:
            key = advised_strategy(item.memory)
            closest[key] = max(closest.get(key, -math.inf), item.similarity)
    kept_do = [h for h in heuristics if h.similarity > closest_avoid.get(advised_strategy(h.memory), -math.inf)]
    kept_avoid = [a for a in anti_patterns if a.similarity >= closest_do.get(advised_strategy(a.memory), -math.inf)]
    return kept_do, kept_avoid


@dataclass
class LearnReport:
    heuristics_created: list[str] = field(default_factory=list)
    heuristics_updated: list[str] = field(default_factory=list)
    heuristics_retired: list[str] = field(default_factory=list)
    anti_patterns_created: list[str] = field(default_factory=list)
    anti_patterns_updated: list[str] = field(default_factory=list)
    anti_patterns_retired: list[str] = field(default_factory=list)
    lessons_merged: list[str] = field(default_factory=list)


def _unit(vectors: Sequence[np.ndarray]) -> np.ndarray:
    mean = np.mean(np.stack(vectors), axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm else mean).astype(np.float32)


def _unit_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = a + b
    norm = float(np.linalg.norm(total))
    return (total / norm if norm else total).astype(np.float32)


def lesson_vector(centre: np.ndarray, strategy_vector: np.ndarray) -> np.ndarray:
    """What a learned lesson is stored under: the mean of its tasks, so it is found by the tasks
    it applies to, plus its strategy, so lessons of different strategies on one kind of task do
    not share one vector (retrieval would drop all but one of them as near-duplicates)."""
    return _unit_sum(centre, LESSON_STRATEGY_WEIGHT * strategy_vector)


def learned(memory: MemoryBase) -> bool:
    """A heuristic or anti-pattern learned from outcomes (not one written by hand)."""
    return memory.type in ("heuristic", "anti_pattern") and bool(getattr(memory, "supporting_outcomes", None))  # type: ignore[attr-defined]


def memory_vectors(
    store: MemoryStore, memories: Sequence[MemoryBase], known: Mapping[str, MemoryBase] | None = None
) -> np.ndarray:
    """The vectors memories are stored under, as their write path makes them, with the store's
    current model: an outcome under its task alone (`ALMA.learn`), a learned lesson under the mean
    of its outcomes' tasks plus its strategy (`lesson_vector`), anything else under its text
    (`MemoryStore.embed`). Reindex, restore and import embed through this, so a memory re-embedded
    or brought back is found, and grouped with its kind of task, as before. A learned lesson none
    of whose outcomes is in the store any more falls back to its text. `known`: outcomes by id
    that are not stored yet (an import's batch), looked at before the store. Like
    `MemoryStore.embed`, it embeds the key fields in the same batch and leaves their vectors with
    the store for the put (or `key_vectors`) that follows."""
    outcomes = dict(known or {})
    wanted_by_agent: dict[str | None, set[str]] = {}
    for memory in memories:
        if learned(memory):
            wanted = set(memory.supporting_outcomes) - outcomes.keys()  # type: ignore[attr-defined]
            wanted_by_agent.setdefault(memory.agent, set()).update(wanted)
    for agent, wanted in wanted_by_agent.items():  # reads by the thousand, not one per lesson
        ordered = sorted(wanted)
        for start in range(0, len(ordered), FETCH_BATCH):
            part = store.fetch_with_vectors("outcome", agent, ordered[start : start + FETCH_BATCH])
            outcomes.update({i: m for i, (m, _) in part.items()})
    tasks: dict[int, list[str]] = {}
    strategies: dict[int, str] = {}  # a lesson's strategy as its newest outcome words it, as when it was written
    for i, memory in enumerate(memories):
        if memory.type == "outcome":  # type: ignore[attr-defined]
            tasks[i] = [memory.task]  # type: ignore[attr-defined]
        elif learned(memory):
            found = [outcomes[o] for o in memory.supporting_outcomes if o in outcomes]  # type: ignore[attr-defined]
            if found:
                tasks[i] = [m.task for m in found]  # type: ignore[attr-defined]
                strategies[i] = max(found, key=lambda m: m.created_at).strategy_used  # type: ignore[attr-defined]
    # One batch, as `MemoryStore.embed` does: the tasks, the strategies, the texts of the rest and
    # every key field (an outcome's key is its task), the key vectors kept for the put that follows.
    plain = [i for i in range(len(memories)) if i not in tasks]
    keys = list(dict.fromkeys(key_text(m) for m in memories))
    texts = list(dict.fromkeys(
        [t for wanted in tasks.values() for t in wanted] + list(strategies.values()) + [memories[i].text() for i in plain] + keys
    ))
    embedded = dict(zip(texts, store.embedder.embed(texts))) if texts else {}
    store.remember_keys(keys, [embedded[k] for k in keys])

    def vector(i: int) -> np.ndarray:
        if i not in tasks:
            return embedded[memories[i].text()]
        centre = _unit([embedded[t] for t in tasks[i]])
        return lesson_vector(centre, embedded[strategies[i]]) if i in strategies else centre

    return np.stack([vector(i) for i in range(len(memories))]).astype(np.float32)


def same_task_type(a: str | None, b: str | None) -> bool:
    """Outcomes filed under different task types (ignoring case; none is a type of its own) are
    never one lesson. The caller's own category is the strongest hint there is that two
    similar-sounding tasks (a rate-limited API, a CORS-blocked API call) are not one kind of task;
    letting an untyped outcome join any type would let it bridge two typed lessons into one."""
    return (a or "").casefold() == (b or "").casefold()


def is_merged(memory: MemoryBase) -> bool:
    return bool(memory.archived and (memory.archived_reason or "").startswith(MERGED_PREFIX))


class Learner:
    def __init__(self, store: MemoryStore, config: AlmaConfig, indexes: SearchIndexes | None = None) -> None:
        """`indexes`: the retriever's (one in-memory copy of each collection serves both)."""
        self.store = store
        self.config = config
        self.indexes = indexes if indexes is not None else SearchIndexes(store, config.alma.vector_search)

    # -- placing an outcome ------------------------------------------------------------
    def _pool(self, outcome: Outcome, vector: np.ndarray, key: str) -> dict[str, tuple[Outcome, np.ndarray]]:
        hits = self.indexes.nearest("outcome", outcome.agent, vector, GROUP_POOL, owner=key, restrict=True)
        pool = {
            h.memory.id: (h.memory, h.vector)
            for h in hits
            if h.vector is not None and same_task_type(h.memory.task_type, outcome.task_type)  # type: ignore[attr-defined]
        }
        pool[outcome.id] = (outcome, vector)
        return pool  # type: ignore[return-value]

    def _lessons(self, agent: str, key: str, task_type: str | None = None) -> list[MemoryBase]:
        found: list[MemoryBase] = []
        for kind in ("heuristic", "anti_pattern"):
            found += [
                m
                for m in self.store.list(kind, agent, where={"strategy_key": key}, include_archived=True)
                if not is_merged(m) and same_task_type(m.task_type, task_type)  # type: ignore[attr-defined]
            ]
        return found

    def _vectors_of(
        self, agent: str, ids: Sequence[str], pool: dict[str, tuple[Outcome, np.ndarray]]
    ) -> dict[str, tuple[Outcome, np.ndarray]]:
        """Outcomes by id with their task vectors: from the pool, else read from the store."""
        out = {i: pool[i] for i in ids if i in pool}
        missing = [i for i in ids if i not in pool]
        if missing:
            for i, (memory, vec) in self.store.fetch_with_vectors("outcome", agent, missing).items():
                out[i] = (memory, vec)  # type: ignore[assignment]
        return out

    def cluster(
        self, outcome: Outcome, vector: np.ndarray
    ) -> tuple[dict[str, tuple[Outcome, np.ndarray]], list[MemoryBase]]:
        """The outcomes of this outcome's lesson (with task vectors) and the lessons that hold them.

        A lesson's tasks are summed up by their mean vector. The outcome joins the lessons whose
        mean is similar enough to its task, plus any lesson whose mean is similar to the joined
        cluster's (two clusters that turn out to be one). With no such lesson, the cluster is
        built from outcomes no lesson holds yet: similar to this task, then to their mean.
        """
        threshold = self.config.alma.learning.similarity_threshold
        key = strategy_key(outcome.strategy_used)
        pool = self._pool(outcome, vector, key)
        centres: dict[str, tuple[np.ndarray, dict[str, tuple[Outcome, np.ndarray]]]] = {}
        lessons = self._lessons(outcome.agent, key, outcome.task_type)
        for lesson in lessons:
            known = self._vectors_of(outcome.agent, list(getattr(lesson, "supporting_outcomes", [])), pool)
            if known:
                centres[lesson.id] = (_unit([v for _, v in known.values()]), known)
        taken = {i for _, members in centres.values() for i in members}
        free = {i: item for i, item in pool.items() if i not in taken or i == outcome.id}

        group = {outcome.id: (outcome, vector)}
        near = {m.id: float(np.dot(centres[m.id][0], vector)) for m in lessons if m.id in centres}
        matched = [m for m in lessons if near.get(m.id, -1.0) >= threshold]
        if not matched:
            # An unusual wording of a task a lesson already covers: it joins the nearest lesson of
            # its strategy within the looser seed bar rather than starting a cluster of its own,
            # where two stray failures of a strategy that works would make an anti-pattern.
            closest = max((m for m in lessons if m.id in near), key=lambda m: near[m.id], default=None)
            if closest is not None and near[closest.id] >= threshold - SEED_MARGIN:
                matched = [closest]
        if matched:
            for lesson in matched:
                group.update(centres[lesson.id][1])
            centre = _unit([v for _, v in group.values()])
        else:
            # No lesson yet: start from the outcomes nearest this one (a looser bar, since the
            # strategy already matches exactly), then keep what is close to their mean.
            seed = threshold - SEED_MARGIN
            group.update({i: item for i, item in free.items() if float(np.dot(item[1], vector)) >= seed})
            centre = _unit([v for _, v in group.values()])
            for _ in range(EXPANSION_ROUNDS):
                group = {i: item for i, item in free.items() if float(np.dot(item[1], centre)) >= threshold}
                group[outcome.id] = (outcome, vector)
                centre = _unit([v for _, v in group.values()])
        # Lessons of the same cluster that this outcome alone did not reach, and outcomes no
        # lesson holds yet that belong here: one pass against the cluster's mean.
        for lesson in lessons:
            if lesson not in matched and lesson.id in centres and float(np.dot(centres[lesson.id][0], centre)) >= threshold - SEED_MARGIN:
                matched.append(lesson)
                group.update(centres[lesson.id][1])
        group.update({i: item for i, item in free.items() if float(np.dot(item[1], centre)) >= threshold})
        return group, matched

    # -- the rules ---------------------------------------------------------------------
    def apply(self, outcome: Outcome, vector: np.ndarray) -> LearnReport:
        report = LearnReport()
        learning = self.config.alma.learning
        floor = learning.retire_below_confidence
        min_occurrences = self.config.agent(outcome.agent).min_occurrences_for_heuristic
        key = strategy_key(outcome.strategy_used)
        group, matched = self.cluster(outcome, vector)
        evidence = weigh([m for m, _ in group.values()], learning.evidence_half_life)
        centre = _unit([v for _, v in group.values()])
        ids = set(group)
        now = utcnow()
        writes: dict[str, MemoryBase] = {}

        heuristic = _fold([m for m in matched if m.type == "heuristic"], writes)  # type: ignore[attr-defined]
        anti = _fold([m for m in matched if m.type == "anti_pattern"], writes)  # type: ignore[attr-defined]
        report.lessons_merged = [i for i, m in writes.items() if is_merged(m)]
        task_type = _common_task_type(evidence.outcomes)

        # Heuristic: the strategy works on this kind of task.
        if heuristic is None:
            if heuristic_state(None, evidence, evidence.confidence, learning, min_occurrences):
                heuristic = Heuristic(
                    id=new_id("heuristic"),
                    project=outcome.project,
                    agent=outcome.agent,
                    condition=_condition(evidence.outcomes, group, centre),
                    strategy=outcome.strategy_used,
                    task_type=task_type,
                    confidence=_clamp(evidence.confidence),
                    occurrence_count=len(evidence.outcomes),
                    success_count=evidence.successes,
                    supporting_outcomes=sorted(ids),
                    strategy_key=key,
                )
                writes[heuristic.id] = heuristic
                report.heuristics_created.append(heuristic.id)
        else:
            heuristic.supporting_outcomes = sorted(set(heuristic.supporting_outcomes) | ids)
            heuristic.occurrence_count = len(evidence.outcomes)
            heuristic.success_count = evidence.successes
            if written_by_learning(heuristic.condition, "condition"):  # a person's wording stays
                heuristic.condition = _condition(evidence.outcomes, group, centre)
            heuristic.confidence = _clamp(evidence.confidence + feedback_offset(heuristic))
            heuristic.updated_at = now
            if outcome.outcome == "success":
                heuristic.last_validated = now
            active = heuristic_state(not heuristic.archived, evidence, heuristic.confidence, learning, min_occurrences)
            if active == heuristic.archived:
                _set_active(heuristic, active, lambda: _heuristic_retired_reason(evidence, heuristic.confidence, floor))
                (report.heuristics_created if active else report.heuristics_retired).append(heuristic.id)
            else:
                report.heuristics_updated.append(heuristic.id)
            writes[heuristic.id] = heuristic

        # Anti-pattern: the strategy keeps failing on this kind of task, and (once they are known)
        # more often than the other strategies tried on it.
        compare = learning.min_alternative_outcomes is not None
        alternatives = self._alternatives(outcome.agent, centre, key, outcome.task_type) if compare else None
        fails_mostly = evidence.rate < 0.5
        if anti is None:
            if anti_pattern_state(None, evidence, alternatives, evidence.fail_confidence, learning):
                anti = AntiPattern(
                    id=new_id("anti_pattern"),
                    project=outcome.project,
                    agent=outcome.agent,
                    pattern=_pattern(outcome.strategy_used, evidence.outcomes, group, centre),
                    why_bad=_why_bad(evidence, alternatives),
                    better_alternative=self._better_alternative(outcome.agent, centre, key),
                    task_type=task_type,
                    confidence=_clamp(evidence.fail_confidence),
                    occurrence_count=evidence.failures,
                    success_count=evidence.successes,
                    supporting_outcomes=sorted(ids),
                    strategy_key=key,
                )
                writes[anti.id] = anti
                report.anti_patterns_created.append(anti.id)
        else:
            anti.supporting_outcomes = sorted(set(anti.supporting_outcomes) | ids)
            anti.occurrence_count = evidence.failures
            anti.success_count = evidence.successes
            if written_by_learning(anti.pattern, "pattern"):  # a person's wording stays
                anti.pattern = _pattern(outcome.strategy_used, evidence.outcomes, group, centre)
            if written_by_learning(anti.why_bad, "why_bad"):
                anti.why_bad = _why_bad(evidence, alternatives)
            anti.better_alternative = self._better_alternative(outcome.agent, centre, key) or anti.better_alternative
            anti.confidence = _clamp(evidence.fail_confidence + feedback_offset(anti))
            anti.updated_at = now
            if outcome.outcome == "failure":
                anti.last_seen = now
            active = anti_pattern_state(not anti.archived, evidence, alternatives, anti.confidence, learning)
            if active == anti.archived:
                _set_active(anti, active, lambda: _anti_pattern_retired_reason(evidence, alternatives, anti.confidence, floor))
                (report.anti_patterns_created if active else report.anti_patterns_retired).append(anti.id)
            else:
                report.anti_patterns_updated.append(anti.id)
            writes[anti.id] = anti

        # One cluster never says both "do this" and "avoid this": the majority decides.
        if heuristic is not None and anti is not None and not heuristic.archived and not anti.archived:
            loser = heuristic if fails_mostly else anti
            winner = anti if fails_mostly else heuristic
            loser.archived = True
            loser.archived_reason = f"retired: contradicted by {winner.id} (recent success rate {evidence.rate:.0%})"
            (report.heuristics_retired if loser is heuristic else report.anti_patterns_retired).append(loser.id)

        lessons = [m for m in writes.values() if m.id in {getattr(heuristic, "id", None), getattr(anti, "id", None)}]
        others = [m for m in writes.values() if m not in lessons]
        if lessons:
            self.store.put(lessons, self._lesson_vectors(lessons, centre, outcome.strategy_used))
        if others:
            self.store.update_metadata(others)
        if heuristic is not None and not heuristic.archived and (
            heuristic.id in report.heuristics_created
        ):
            self._offer_alternative(heuristic, centre)
        if compare:
            report.anti_patterns_retired += self._review_anti_patterns(outcome, centre, key)
        return report

    # -- comparing a strategy with the others tried on the same kind of task -----------
    def _alternatives(self, agent: str, centre: np.ndarray, key: str, task_type: str | None) -> Evidence | None:
        """What the other strategies did on this kind of task: the outcomes of the same task type
        with a different strategy whose task is at least `similarity_threshold` similar to the
        lesson's mean, weighed like a lesson's own (None when there are none)."""
        learning = self.config.alma.learning
        hits = self.indexes.nearest("outcome", agent, centre, ALTERNATIVES_POOL)
        others = [
            h.memory
            for h in hits
            if h.similarity >= learning.similarity_threshold
            and same_task_type(h.memory.task_type, task_type)  # type: ignore[attr-defined]
            and strategy_key(h.memory.strategy_used) != key  # type: ignore[attr-defined]
        ]
        return weigh(others, learning.evidence_half_life) if others else None  # type: ignore[arg-type]

    def _review_anti_patterns(self, outcome: Outcome, centre: np.ndarray, key: str) -> list[str]:
        """An outcome of one strategy is evidence about the alternatives to every other: the active
        anti-patterns of other strategies on the same kind of task are judged again against what
        the alternatives now show, and retired when their strategy is no longer significantly
        worse. The agent obeys an anti-pattern and stops trying its strategy, so its own outcomes
        could never do this."""
        learning = self.config.alma.learning
        retired: list[MemoryBase] = []
        for hit in self.indexes.nearest("anti_pattern", outcome.agent, centre, REVIEW_POOL):
            anti = hit.memory
            anti_key = getattr(anti, "strategy_key", None)
            if anti_key is None or anti_key == key or not same_task_type(anti.task_type, outcome.task_type):  # type: ignore[attr-defined]
                continue
            known = self.store.fetch_with_vectors("outcome", anti.agent, list(anti.supporting_outcomes))  # type: ignore[attr-defined]
            if not known:
                continue
            anti_centre = _unit([v for _, v in known.values()])
            if float(np.dot(anti_centre, centre)) < learning.similarity_threshold:
                continue  # another kind of task: this outcome says nothing about its alternatives
            evidence = weigh([m for m, _ in known.values()], learning.evidence_half_life)  # type: ignore[misc]
            alternatives = self._alternatives(anti.agent, anti_centre, anti_key, anti.task_type)  # type: ignore[attr-defined]
            if not anti_pattern_state(True, evidence, alternatives, anti.confidence, learning):  # type: ignore[attr-defined]
                _set_active(anti, False, lambda: _anti_pattern_retired_reason(evidence, alternatives, anti.confidence, learning.retire_below_confidence))  # type: ignore[attr-defined]
                anti.updated_at = utcnow()
                retired.append(anti)
        if retired:
            self.store.update_metadata(retired)
        return [m.id for m in retired]

    def _lesson_vectors(self, lessons: list[MemoryBase], centre: np.ndarray, strategy: str) -> np.ndarray:
        vector = lesson_vector(centre, self.store.embedder.embed([strategy])[0])
        return np.stack([vector] * len(lessons))

    # -- better alternatives -----------------------------------------------------------
    def _better_alternative(self, agent: str, centre: np.ndarray, failing_key: str) -> str | None:
        """The strategy of the most confident active heuristic on the same kind of task, never the
        failing strategy itself (a taught heuristic has no strategy_key: its strategy's wording is
        compared, or "avoid X" would say "instead: X")."""
        threshold = self.config.alma.learning.similarity_threshold
        hits = self.indexes.nearest("heuristic", agent, centre, 10)
        best = [
            h.memory
            for h in hits
            if h.similarity >= threshold and strategy_key(h.memory.strategy) != failing_key  # type: ignore[attr-defined]
        ]
        if not best:
            return None
        return max(best, key=lambda m: m.confidence).strategy  # type: ignore[attr-defined]

    def _offer_alternative(self, heuristic: Heuristic, centre: np.ndarray) -> None:
        """A new heuristic becomes the better alternative of anti-patterns on the same kind of task."""
        threshold = self.config.alma.learning.similarity_threshold
        changed = []
        for hit in self.indexes.nearest("anti_pattern", heuristic.agent, centre, 10):
            anti = hit.memory
            if hit.similarity < threshold or getattr(anti, "strategy_key", None) == heuristic.strategy_key:
                continue
            better = self._better_alternative(heuristic.agent, hit.vector, anti.strategy_key)  # type: ignore[arg-type, attr-defined]
            if better and better != anti.better_alternative:  # type: ignore[attr-defined]
                anti.better_alternative = better  # type: ignore[attr-defined]
                changed.append(anti)
        if changed:
            self.store.update_metadata(changed)


def _fold(lessons: list[MemoryBase], writes: dict[str, MemoryBase]) -> MemoryBase | None:
    """One lesson of a kind per cluster: keep the oldest active one (else the oldest) and fold
    any others into it, archived as merged, so no lesson is ever learned twice."""
    if not lessons:
        return None
    ordered = sorted(lessons, key=lambda m: (m.archived, m.created_at))
    primary = ordered[0]
    for extra in ordered[1:]:
        primary.supporting_outcomes = sorted(  # type: ignore[attr-defined]
            set(primary.supporting_outcomes) | set(extra.supporting_outcomes)  # type: ignore[attr-defined]
        )
        primary.helpful += extra.helpful
        primary.harmful += extra.harmful
        primary.used += extra.used
        primary.ignored += extra.ignored
        extra.archived = True
        extra.archived_reason = f"{MERGED_PREFIX}{primary.id}"
        extra.updated_at = utcnow()
        writes[extra.id] = extra
    return primary


def _central(outcomes: list[Outcome], group: dict[str, tuple[Outcome, np.ndarray]], centre: np.ndarray) -> list[str]:
    """Distinct task wordings, the most typical of the cluster first. Wordings that differ only in
    case, punctuation or spacing count as one, so a lesson names different tasks rather than one
    task three times."""
    ranked = sorted(outcomes, key=lambda m: -float(np.dot(group[m.id][1], centre)) if m.id in group else 0.0)
    wordings: dict[str, str] = {}
    for m in ranked:
        wordings.setdefault(wording_key(m.task), m.task)
    return list(wordings.values())


_LEARNED_WORDING = {
    "condition": re.compile(r"tasks like: "),
    "pattern": re.compile(r".* \(on tasks like: ", re.S),
    "why_bad": re.compile(r"failed \d+ of \d+ times on similar tasks"),
}


def written_by_learning(text: str, field_name: str) -> bool:
    """Whether a lesson's `field_name` still reads as learning writes it (`_condition`, `_pattern`,
    `_why_bad`), so that learning may rewrite it from the outcomes; a wording a person gave it
    (taught, or edited on the review page) is kept as it is."""
    return _LEARNED_WORDING[field_name].match(text) is not None


def _condition(outcomes: list[Outcome], group: dict[str, tuple[Outcome, np.ndarray]], centre: np.ndarray) -> str:
    wins = [m for m in outcomes if m.outcome == "success"] or outcomes
    tasks = _central(wins, group, centre)[:3]
    return ("tasks like: " + "; ".join(tasks))[:2000]


def _pattern(strategy: str, outcomes: list[Outcome], group: dict[str, tuple[Outcome, np.ndarray]], centre: np.ndarray) -> str:
    losses = [m for m in outcomes if m.outcome == "failure"] or outcomes
    tasks = _central(losses, group, centre)[:2]
    return f"{strategy} (on tasks like: {'; '.join(tasks)})"[:4000]


def _set_active(lesson: MemoryBase, active: bool, retired_reason: Callable[[], str]) -> None:
    """Reinstate or retire a lesson; the reason is worked out only for a retirement."""
    lesson.archived = not active
    lesson.archived_reason = None if active else retired_reason()


def _heuristic_retired_reason(evidence: Evidence, confidence: float, floor: float) -> str:
    return (
        f"retired: recent success rate {evidence.rate:.0%} over {len(evidence.outcomes)} outcomes, "
        f"confidence {confidence:.2f} below {floor}"
    )


def _anti_pattern_retired_reason(
    evidence: Evidence, alternatives: Evidence | None, confidence: float, floor: float
) -> str:
    if alternatives is None or (evidence.rate >= 0.5 and confidence < floor):
        return f"retired: the strategy now succeeds ({evidence.rate:.0%} recently), confidence {confidence:.2f} below {floor}"
    return (
        f"retired: no worse than the alternatives: the other strategies tried on similar tasks succeeded "
        f"{alternatives.rate:.0%} of the time, and this one may succeed up to {evidence.upper:.0%} "
        f"({evidence.successes} of {len(evidence.outcomes)})"
    )


def _why_bad(evidence: Evidence, alternatives: Evidence | None = None) -> str:
    failures = [m for m in evidence.outcomes if m.outcome == "failure"]
    reasons = Counter(m.error_message or m.feedback for m in failures if (m.error_message or m.feedback))
    summary = f"failed {evidence.failures} of {len(evidence.outcomes)} times on similar tasks"
    if alternatives is not None and alternatives.outcomes:
        summary += f" (other strategies succeeded {alternatives.rate:.0%} of {len(alternatives.outcomes)} times)"
    if not reasons:
        return summary
    top = [f"{text} ({count}x)" if count > 1 else text for text, count in reasons.most_common(3)]
    return f"{summary}: " + "; ".join(top)[:1900]


def _common_task_type(outcomes: list[Outcome]) -> str | None:
    types = Counter(m.task_type for m in outcomes if m.task_type)
    return types.most_common(1)[0][0] if types else None
