"""The ranking of the candidates found for a task, as pure functions: their fusion into relevance
and evidence (`fuse`), their final score, the floors that admit them (`choose`), and the weak tier
(`mention`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Sequence

import numpy as np

from ..config import RetrievalSettings
from ..learning.signals import feedback_score, recency, success_rate
from ..learning.track import TrackRecord, tally
from ..models import AntiPattern, AnyMemory, Heuristic, Outcome, UserPreference
from ..prompt.results import SCORED_BY_TYPE, ScoredMemory, Tier

Mode = Literal["hybrid", "dense", "lexical"]
"""hybrid is what the server uses; dense-only and lexical-only exist for the benchmark."""


@dataclass
class Candidate:
    """One memory considered for a task, with every signal the ranking uses."""

    memory: AnyMemory
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
        return SCORED_BY_TYPE[self.memory.type](
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
    the best memory against the store around the task, not against one absolute number. Evidence
    clears relevance_floor only when the task's best candidate stands out (`stands_out`).
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
    # The standout test decides whether the task is answered by evidence at all, not which memories
    # share the answer: once one passes the lexical door, stands out or reaches sure_floor, every
    # memory over relevance_floor clears it as before (a warning among close lessons included).
    if mode != "lexical" and not any(c.lexical_ok or c.evidence >= settings.sure_floor for c in candidates):
        if not stands_out(candidates, settings):
            for c in candidates:
                c.dense_ok = False


def runner_up_gap(candidates: Sequence[Candidate], settings: RetrievalSettings) -> float:
    """How far the task's best candidate's evidence stands above the best of the others that do
    not nearly duplicate it (1.0 when there is no other): the task's background among the memories
    about the same subject."""
    if not candidates:
        return 0.0
    best = max(candidates, key=lambda c: c.evidence)
    others = [
        c.evidence
        for c in candidates
        if c is not best and float(np.dot(c.vector, best.vector)) < settings.near_duplicate
    ]
    return best.evidence - max(others) if others else 1.0


def stands_out(candidates: Sequence[Candidate], settings: RetrievalSettings) -> bool:
    """Whether evidence may clear the relevance floor for this task: yes, unless its best candidate
    is a fact or a preference (SUBJECT_TYPES) that stands less than `standout` above the runner-up
    (`runner_up_gap`). A question that names a person, a pet or a place that many memories mention
    comes close to all of them, whether or not one answers it; a memory that answers it stands out
    from the others about the same subject. On the development corpus of personal facts, 29% of
    the questions with no answer reached relevance_floor that way, 7% stand out as well
    (bench/retrieval.py --tiers, docs/retrieval-tiers.md). `fuse` lets evidence at `sure_floor`
    through whatever the runner-up, and the lexical door and the preference floor are not
    affected: a quoted identifier is its own evidence."""
    if settings.standout <= 0 or not candidates:
        return True
    if max(candidates, key=lambda c: c.evidence).memory.type not in SUBJECT_TYPES:
        return True
    return runner_up_gap(candidates, settings) >= settings.standout


SUBJECT_TYPES = ("knowledge", "preference")
"""The types the standout test judges (when the task's best candidate is one of them): statements
about a subject, which a question that only names the subject comes close to. Lessons and outcomes
are keyed on a situation, and a family of close ones is what a task in that situation should be
given: judged by the standout test too, the field learning benchmark's development set lost 0.030
± 0.018 of its success in episodes 21-60 (10 seeds, docs/retrieval-tiers.md). A question is held to
it whatever its best candidate's type (ranking/nearmiss.py)."""


def final_score(candidate: Candidate, settings: RetrievalSettings, now: datetime) -> float:
    w = settings.weights
    total = w.similarity + w.recency + w.success + w.confidence + w.feedback
    memory = candidate.memory
    value = (
        w.similarity * candidate.relevance
        + w.recency * recency(memory, settings.recency_half_life_days, now)
        + w.success * success_rate(memory)
        + w.confidence * memory.confidence
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
    return floor is not None and isinstance(c.memory, UserPreference) and c.evidence >= floor


ADVICE = ("heuristic",)
"""Lessons an agent acts on ("when ...: do ..."): given in full only when they clear the floor in
their own right, never on the floor margin that brings in the memories around a relevant one; below
the floor they keep their place in the ranking but are named in the weak tier, as what may not
apply. On the field benchmark's development set, a heuristic taught for a neighbouring kind of
task and admitted on the margin was the advice most often followed to a wrong choice (58 of 65
such heuristics, evidence median 0.37); named instead, episodes 21-60 +0.040 ± 0.014 (realised,
seeds 0-9; docs/learning-benchmark.md)."""

NAMED_ON_MARGIN = (*ADVICE, *SUBJECT_TYPES)
"""The types the floor margin names (weak tier) instead of giving in full: advice (ADVICE), and
facts and preferences, which share a subject with the memory that cleared the floor more often
than they answer the task. A task with no answer whose best fact reaches sure_floor brought its
neighbours in full on the margin: on the development corpus of personal facts, naming them instead
took a no-answer question's mean prompt from 52.2 to 47.5 tokens, for the same served recall (all of
them are still served, one line each; docs/retrieval-tiers.md)."""


def on_margin_named(c: Candidate, answered: bool, settings: RetrievalSettings) -> bool:
    """A memory of NAMED_ON_MARGIN that only the floor margin admits: chosen in its place, then
    named, not given. A preference under its own floor (preference_floor) is not on the margin: the
    caller asked for that user's preferences."""
    return (
        c.memory.type in NAMED_ON_MARGIN
        and not c.cleared
        and not under_preference_floor(c, settings)
        and admitted(c, answered, settings)
    )


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
        pool = [c for c in candidates if c.memory.type in kinds and admitted(c, answered, settings)]
        together = select(pool, top_k, settings.near_duplicate)
        # A warning that clears the floor is never crowded out by advice: the best one takes the
        # last place (the prompt, too, fills its budget with anti-patterns first).
        warnings = [c for c in pool if isinstance(c.memory, AntiPattern) and c.cleared]
        if warnings and not any(isinstance(c.memory, AntiPattern) for c in together):
            together = [*together[: min(len(together), top_k - 1)], max(warnings, key=lambda c: c.score)]
        together = _lessons_over_their_outcomes(pool, together)
        together = [c for c in together if not on_margin_named(c, answered, settings)]
        return {kind: [c for c in together if c.memory.type == kind] for kind in kinds}
    return {
        kind: [
            c
            for c in select(
                [c for c in candidates if c.memory.type == kind and admitted(c, answered, settings)],
                top_k,
                settings.near_duplicate,
            )
            if not on_margin_named(c, answered, settings)
        ]
        for kind in kinds
    }


def _lessons_over_their_outcomes(pool: Sequence[Candidate], together: list[Candidate]) -> list[Candidate]:
    """A lesson is never crowded out by the outcomes it was formed from: an admitted lesson left
    out while some of its supporting outcomes are in takes the place of the lowest of them (the
    outcome and its lesson speak for the same strategy, the lesson with all its evidence)."""
    chosen_ids = {c.memory.id for c in together}
    for lesson in sorted(pool, key=lambda c: c.score, reverse=True):
        memory = lesson.memory
        support = set(memory.supporting_outcomes) if isinstance(memory, (Heuristic, AntiPattern)) else set()
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
    best = max((c.evidence for c in candidates if c.memory.type in allowed), default=0.0)
    if best < settings.weak_floor:
        return []
    if best < settings.weak_few_below:
        # Near the bottom of the tier the task is given its few closest memories, not weak_top_k:
        # what the tier serves there is mostly in them, and a task with no answer pays for the rest.
        room = min(room, settings.weak_few)
    # The task is given mentions at all only when its best candidate reaches weak_floor, and then
    # only those within weak_span of that best: the bar is the task's own, so a task whose closest
    # memories stand level gets several, one whose best stands out gets that one, and a store
    # where everything sits a little closer to every task does not raise the count.
    least = best - settings.weak_span
    # What the floor margin chose but did not give in full (NAMED_ON_MARGIN) is named here, first:
    # the room it left is the room it keeps.
    answered = any(c.cleared for c in candidates)
    demoted = {c.memory.id for c in candidates if on_margin_named(c, answered, settings)}
    pool = sorted(
        (
            c
            for c in candidates
            if c.memory.type in allowed
            and c.memory.id not in ids
            and (c.evidence >= least or c.memory.id in demoted)
        ),
        key=lambda c: (c.memory.id in demoted, c.score),
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


def track_of(candidates: Sequence[Candidate], n: int) -> TrackRecord | None:
    """The track record over the n outcomes among the candidates whose tasks are most similar."""
    if n <= 0:
        return None
    outcomes = [(c.memory, c.similarity) for c in candidates if isinstance(c.memory, Outcome)]
    return tally(sorted(outcomes, key=lambda pair: -pair[1])[:n])
