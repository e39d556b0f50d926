"""What a retrieval returns: the memories chosen for a task, each with its scores and tier
(`ScoredMemory`, one class per memory type), and the slice of them by type with the prompt
rendered from it (`MemorySlice`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..learning.track import TrackRecord
from ..models import AntiPattern, DomainKnowledge, Heuristic, Memory, Outcome, UserPreference, nullable_as_type_list

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


FIELD_BY_TYPE = {
    "heuristic": "heuristics",
    "anti_pattern": "anti_patterns",
    "knowledge": "knowledge",
    "preference": "preferences",
    "outcome": "outcomes",
}
