"""What a memory's own record says of it, apart from any task: how recent, how successful, how
well received. Ranking mixes these into a memory's score; the lifecycle weighs them to decide what
decays and what is worth keeping."""

from __future__ import annotations

import math
from datetime import datetime

from ..models import OUTCOME_WEIGHTS, MemoryBase


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
