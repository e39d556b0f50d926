"""From outcomes to lessons: repeated successes become heuristics, repeated failures anti-patterns.

A *group* is the agent's outcomes, across its whole history, that used the same strategy
(after normalising case and punctuation) on tasks similar to this one (cosine similarity at
or above `learning.similarity_threshold`). Chroma filters by strategy before ranking, so
interleaved tasks still find their group however many other outcomes came between them.

- A heuristic exists once a group has `min_occurrences_for_heuristic` successes and a success
  rate of at least `learning.min_success_rate`. A heuristic that already holds any of the
  group's outcomes is the same lesson and is updated in place, never duplicated.
- An anti-pattern exists once a group has `min_failures_for_anti_pattern` failures and
  fails more often than it succeeds.
- Confidence is the lower bound of the 90% Wilson interval of the success rate (failure
  rate for anti-patterns), so one noisy outcome moves it a little and many move it a lot.
  A lesson whose confidence falls below `learning.retire_below_confidence` after at least
  `min_occurrences` observations is archived (retired), never silently deleted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .config import AlmaConfig
from .models import AntiPattern, Heuristic, MemoryBase, Outcome, strategy_key, utcnow
from .store import MemoryStore

WILSON_Z = 1.645
GROUP_POOL = 500


def wilson_lower_bound(successes: int, trials: int, z: float = WILSON_Z) -> float:
    if trials <= 0:
        return 0.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - margin) / denom)


@dataclass
class LearnReport:
    heuristics_created: list[str] = field(default_factory=list)
    heuristics_updated: list[str] = field(default_factory=list)
    heuristics_retired: list[str] = field(default_factory=list)
    anti_patterns_created: list[str] = field(default_factory=list)
    anti_patterns_updated: list[str] = field(default_factory=list)
    anti_patterns_retired: list[str] = field(default_factory=list)


class Learner:
    def __init__(self, store: MemoryStore, config: AlmaConfig) -> None:
        self.store = store
        self.config = config

    def group(self, outcome: Outcome, vector: np.ndarray) -> list[Outcome]:
        """The agent's outcomes with the same strategy on similar tasks (this one included)."""
        threshold = self.config.alma.learning.similarity_threshold
        hits = self.store.query(
            "outcome", outcome.agent, vector, GROUP_POOL, where={"strategy_key": strategy_key(outcome.strategy_used)}
        )
        members = [h.memory for h in hits if h.similarity >= threshold]
        if not any(m.id == outcome.id for m in members):
            members.append(outcome)
        return members  # type: ignore[return-value]

    def _lessons_for(self, kind: str, agent: str, key: str, member_ids: set[str]) -> list[MemoryBase]:
        """Existing lessons (archived too) on this strategy that hold any outcome of the group."""
        lessons = self.store.list(kind, agent, where={"strategy_key": key}, include_archived=True)
        return [m for m in lessons if member_ids & set(getattr(m, "supporting_outcomes", []))]

    def apply(self, outcome: Outcome, vector: np.ndarray) -> LearnReport:
        report = LearnReport()
        agent_settings = self.config.agent(outcome.agent)
        learning = self.config.alma.learning
        members = self.group(outcome, vector)
        key = strategy_key(outcome.strategy_used)
        ids = {m.id for m in members}
        successes = [m for m in members if m.outcome == "success"]
        failures = [m for m in members if m.outcome == "failure"]
        trials = len(successes) + len(failures) + sum(0.5 for m in members if m.outcome == "partial")
        wins = len(successes) + sum(0.5 for m in members if m.outcome == "partial")
        now = utcnow()
        changed: list[MemoryBase] = []
        new: list[MemoryBase] = []

        # Heuristic: the strategy works on this kind of task.
        heuristics = self._lessons_for("heuristic", outcome.agent, key, ids)
        rate = wins / trials if trials else 0.0
        confidence = wilson_lower_bound(round(wins), round(trials))
        if heuristics:
            primary = _merge_duplicates(heuristics, changed)
            supporting = sorted(set(primary.supporting_outcomes) | ids)
            h_members = {m.id: m for m in members}
            primary.supporting_outcomes = supporting
            primary.occurrence_count = max(primary.occurrence_count, len(h_members))
            primary.success_count = max(0, min(primary.occurrence_count, len(successes)))
            primary.confidence = round(confidence, 4)
            primary.updated_at = now
            if outcome.outcome == "success":
                primary.last_validated = now
            if primary.archived and confidence >= learning.retire_below_confidence and rate >= learning.min_success_rate:
                primary.archived = False
                primary.archived_reason = None
            elif (
                not primary.archived
                and confidence < learning.retire_below_confidence
                and rate < learning.min_success_rate
                and len(members) >= agent_settings.min_occurrences_for_heuristic
            ):
                primary.archived = True
                primary.archived_reason = (
                    f"retired: success rate fell to {rate:.0%} over {len(members)} outcomes"
                )
                report.heuristics_retired.append(primary.id)
            changed.append(primary)
            report.heuristics_updated.append(primary.id)
        elif len(successes) >= agent_settings.min_occurrences_for_heuristic and rate >= learning.min_success_rate:
            exemplar = _central(successes)
            heuristic = Heuristic(
                id=_new("heuristic"),
                project=outcome.project,
                agent=outcome.agent,
                condition=exemplar.task,
                strategy=outcome.strategy_used,
                task_type=outcome.task_type,
                confidence=round(confidence, 4),
                occurrence_count=len(members),
                success_count=len(successes),
                supporting_outcomes=sorted(ids),
                strategy_key=key,
            )
            new.append(heuristic)
            report.heuristics_created.append(heuristic.id)

        # Anti-pattern: the strategy keeps failing on this kind of task.
        anti_patterns = self._lessons_for("anti_pattern", outcome.agent, key, ids)
        fail_rate = len(failures) / trials if trials else 0.0
        fail_confidence = wilson_lower_bound(len(failures), round(trials))
        if anti_patterns:
            primary_ap = _merge_duplicates(anti_patterns, changed)
            old_text = primary_ap.text()
            primary_ap.supporting_outcomes = sorted(set(primary_ap.supporting_outcomes) | ids)
            primary_ap.occurrence_count = len(failures)
            primary_ap.success_count = len(successes)
            primary_ap.confidence = round(fail_confidence, 4)
            primary_ap.why_bad = _why_bad(failures) or primary_ap.why_bad
            better = self._better_alternative(outcome, vector, key)
            if better:
                primary_ap.better_alternative = better
            primary_ap.updated_at = now
            if outcome.outcome == "failure":
                primary_ap.last_seen = now
            if primary_ap.archived and fail_confidence >= learning.retire_below_confidence and fail_rate > 0.5:
                primary_ap.archived = False
                primary_ap.archived_reason = None
            elif not primary_ap.archived and fail_confidence < learning.retire_below_confidence and fail_rate < 0.5:
                primary_ap.archived = True
                primary_ap.archived_reason = f"retired: the strategy now succeeds ({1 - fail_rate:.0%})"
                report.anti_patterns_retired.append(primary_ap.id)
            (changed if primary_ap.text() == old_text else new).append(primary_ap)
            report.anti_patterns_updated.append(primary_ap.id)
        elif len(failures) >= learning.min_failures_for_anti_pattern and fail_rate > 0.5:
            exemplar = _central(failures)
            anti = AntiPattern(
                id=_new("anti_pattern"),
                project=outcome.project,
                agent=outcome.agent,
                pattern=f"{outcome.strategy_used} (on tasks like: {exemplar.task})",
                why_bad=_why_bad(failures) or f"failed {len(failures)} of {len(members)} times on similar tasks",
                better_alternative=self._better_alternative(outcome, vector, key),
                task_type=outcome.task_type,
                confidence=round(fail_confidence, 4),
                occurrence_count=len(failures),
                success_count=len(successes),
                supporting_outcomes=sorted(ids),
                strategy_key=key,
            )
            new.append(anti)
            report.anti_patterns_created.append(anti.id)

        if new:
            self.store.put(new)
        if changed:
            self.store.update_metadata(_unique(changed))
        return report

    def _better_alternative(self, outcome: Outcome, vector: np.ndarray, failing_key: str) -> str | None:
        threshold = self.config.alma.learning.similarity_threshold
        hits = self.store.query("heuristic", outcome.agent, vector, 10)
        best = [
            h.memory
            for h in hits
            if h.similarity >= threshold * 0.8 and getattr(h.memory, "strategy_key", None) != failing_key
        ]
        if not best:
            return None
        top = max(best, key=lambda m: m.confidence)  # type: ignore[attr-defined]
        return top.strategy  # type: ignore[attr-defined]


def _merge_duplicates(lessons: list[MemoryBase], changed: list[MemoryBase]) -> MemoryBase:
    """Keep the oldest lesson; fold any others of the same group into it and retire them."""
    lessons = sorted(lessons, key=lambda m: m.created_at)
    primary = lessons[0]
    for extra in lessons[1:]:
        primary.supporting_outcomes = sorted(set(primary.supporting_outcomes) | set(extra.supporting_outcomes))  # type: ignore[attr-defined]
        if not extra.archived:
            extra.archived = True
            extra.archived_reason = f"merged into {primary.id}"
            changed.append(extra)
    return primary


def _why_bad(failures: list[Outcome]) -> str | None:
    reasons = Counter(m.error_message or m.feedback for m in failures if (m.error_message or m.feedback))
    if not reasons:
        return None
    top = [f"{text} ({count}x)" if count > 1 else text for text, count in reasons.most_common(3)]
    return "; ".join(top)[:2000]


def _central(outcomes: list[Outcome]) -> Outcome:
    """The outcome that names the lesson: the earliest, so the heuristic's wording is stable."""
    return min(outcomes, key=lambda m: m.created_at)


def _unique(memories: list[MemoryBase]) -> list[MemoryBase]:
    seen: dict[str, MemoryBase] = {}
    for memory in memories:
        seen[memory.id] = memory
    return list(seen.values())


def _new(kind: str) -> str:
    from .models import new_id

    return new_id(kind)
