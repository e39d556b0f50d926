"""Why a retrieval returned what it did: the verdict on each candidate against the floors
(`alma_retrieve`'s explain, `alma-mcp explain`)."""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, Field

from ..config import RetrievalSettings
from ..prompt.results import Tier
from .candidates import Candidate, admitted, under_preference_floor


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
    standout: float = 0.0
    sure_floor: float = 1.0
    runner_up_gap: float = Field(
        0.0,
        description="How far the best candidate's evidence stands above the best other one (near-duplicates aside); "
        "when the best is a fact or a preference below sure_floor, or the task is a question and its best a lesson or "
        "an outcome, and this is below standout, no evidence clears relevance_floor",
    )
    align_floor: float = 0.0
    alignment: float | None = Field(
        None,
        description="How closely the weakest content word of the task is matched in its best candidate, when the "
        "near-miss test was run (the best a fact or a preference answered by evidence); below align_floor, no "
        "evidence clears relevance_floor",
    )
    answered: bool = Field(description="some candidate cleared the floor, so the task is answered at all")
    candidates: list[CandidateVerdict]


HELD_BACK = (
    "the task's best does not stand out by standout from the runner-up, or is a near miss (a word of the task "
    "matched below align_floor)"
)


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
            why = (
                f"reached relevance_floor, but {HELD_BACK}"
                if not answered and c.evidence >= settings.relevance_floor
                else "below the floor"
            )
            return f"injected as a weak match: {why}, within weak_span of the task's best; one line for the model to judge"
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
            weak = "within weak_span of the best, not mentioned: weak_top_k (top_k, or 2 below weak_few_below) is full, or it nearly duplicates one injected"
        else:
            weak = "more than weak_span below the task's best candidate"
        if not answered and c.evidence >= settings.relevance_floor:
            return f"reached relevance_floor, but {HELD_BACK}; {weak}"
        if not answered:
            return f"below the floor: no memory cleared it; {weak}"
        return f"below relevance_floor - floor_margin; {weak}"

    return answered, [
        CandidateVerdict(
            id=c.memory.id,
            type=c.memory.type,
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
