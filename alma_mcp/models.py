"""The five memory types, and the validated names and texts they are made of.

Everything that crosses a boundary (MCP arguments, config, export files) is one of
these pydantic models, so one set of rules decides what is valid everywhere.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

# -- the vocabulary: each defined here once; code, tool schemas and checked docs read it from here --
MemoryType = Literal["heuristic", "anti_pattern", "knowledge", "preference", "outcome"]
MEMORY_TYPES: tuple[str, ...] = get_args(MemoryType)

OutcomeKind = Literal["success", "failure", "partial"]
OUTCOME_KINDS: tuple[str, ...] = get_args(OutcomeKind)
OUTCOME_WEIGHTS: dict[str, float] = {"success": 1.0, "partial": 0.5, "failure": 0.0}
"""What an outcome counts as a win, in success rates and the evidence lessons are learned from."""

FeedbackSignal = Literal["helpful", "harmful", "used", "ignored"]
FEEDBACK_SIGNALS: tuple[str, ...] = get_args(FeedbackSignal)
FEEDBACK_STEPS: dict[str, float] = {"helpful": 0.05, "harmful": -0.10, "used": 0.01, "ignored": -0.02}
"""How much one signal moves a memory's confidence (learning bounds their sum, see
learning.feedback_offset): a harmful vote counts twice a helpful one."""


def feedback_steps_text() -> str:
    """The steps in words, for tool descriptions: 'helpful +0.05, harmful -0.10, ...'."""
    return ", ".join(f"{signal} {step:+.2f}" for signal, step in FEEDBACK_STEPS.items())


MAX_TEXT_CHARS = 8000
"""Longest text field accepted. A memory is a lesson, not a document."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
# No space at the end: "secrets " must not pass for a category other than "secrets".
_CATEGORY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _./:-]{0,62}[A-Za-z0-9_./:-])?$")

HANDLE_DIGITS = 8
"""A memory's handle, how the prompt names it, is the first HANDLE_DIGITS hex digits of its id
(prompt/handles.py); a tool that takes an id also takes a handle, resolved among the memories the
caller may read. One memory in 4 billion shares a given handle: a clash is an error asking for
the full id, never a guess."""
MEMORY_ID_PATTERN = r"[a-z_]{1,16}-[0-9a-f]{32}"
"""A server-made memory id: its type and 32 hex digits."""
HANDLE_PATTERN = rf"[0-9a-f]{{{HANDLE_DIGITS},32}}"
"""A handle: the first HANDLE_DIGITS or more of an id's hex digits."""
_MEMORY_ID_RE = re.compile(rf"^{MEMORY_ID_PATTERN}$")

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):  # `$` alone lets a trailing newline through
        raise ValueError(
            f"{shown(value)} is not a valid name: use 1-48 letters, digits, '-' or '_', "
            "starting with a letter or digit (no spaces, dots or slashes)"
        )
    return value


def _check_user(value: str) -> str:
    if not _USER_RE.fullmatch(value):  # `$` alone lets a trailing newline through
        raise ValueError(
            f"{shown(value)} is not a valid user id: use 1-128 letters, digits or . _ @ + -, "
            "starting with a letter or digit"
        )
    return value


def _check_category(value: str) -> str:
    if not _CATEGORY_RE.fullmatch(value):  # `$` alone lets a trailing newline through
        raise ValueError(
            f"{shown(value)} is not a valid category: use 1-64 letters, digits, spaces or _ . / : -, "
            "starting with a letter or digit and not ending with a space"
        )
    return value


def _check_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"is {len(value)} characters long; the limit is {MAX_TEXT_CHARS}")
    if _FORBIDDEN_CHARS.search(value):
        raise ValueError("contains control characters (such as NUL); send plain text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (it contains a lone surrogate)") from None
    return value


def _check_memory_id(value: str) -> str:
    if not _MEMORY_ID_RE.fullmatch(value):  # `$` alone lets a trailing newline through
        raise ValueError(f"{shown(value)} is not a memory id (ids look like 'heuristic-<32 hex digits>')")
    return value


def shown(value: str, limit: int = 60) -> str:
    """`value` quoted for an error message, cut to about `limit` characters: an error about a
    100,000-character argument need not send it back."""
    quoted = repr(value)
    return quoted if len(quoted) <= limit else quoted[: limit - 4] + "...'"


def cut(text: str, limit: int) -> str:
    """`text` on one line (its whitespace collapsed) if it fits in `limit` characters, else its
    words up to `limit` and an ellipsis (a word longer than a third of the limit is cut inside):
    a listing's title, a weak mention in the prompt."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space >= limit // 3 * 2:
        head = head[:space]
    return head.rstrip(" ,;:.-") + "\u2026"


_MEMORY_REF_RE = re.compile(rf"^(?:{MEMORY_ID_PATTERN}|{HANDLE_PATTERN})$")


def _check_memory_ref(value: str) -> str:
    if not _MEMORY_REF_RE.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a memory id or handle (ids look like 'heuristic-<32 hex digits>'; a handle is the "
            f"first {HANDLE_DIGITS} or more of those digits, as the prompt shows it)"
        )
    return value


# The validators give the caller a readable message; json_schema_extra publishes the same rule
# in the JSON Schemas and the MCP tool input schemas.
Name = Annotated[str, AfterValidator(_check_name), Field(json_schema_extra={"pattern": _NAME_RE.pattern})]
"""An agent or project name: safe in collection names, paths and URIs."""
UserId = Annotated[str, AfterValidator(_check_user), Field(json_schema_extra={"pattern": _USER_RE.pattern})]
Category = Annotated[
    str, AfterValidator(_check_category), Field(json_schema_extra={"pattern": _CATEGORY_RE.pattern})
]
Text = Annotated[
    str, AfterValidator(_check_text), Field(json_schema_extra={"minLength": 1, "maxLength": MAX_TEXT_CHARS})
]
MemoryId = Annotated[
    str, AfterValidator(_check_memory_id), Field(json_schema_extra={"pattern": _MEMORY_ID_RE.pattern})
]
MemoryRef = Annotated[
    str, AfterValidator(_check_memory_ref), Field(json_schema_extra={"pattern": _MEMORY_REF_RE.pattern})
]
"""A memory's id or its handle (HANDLE_DIGITS or more of its hex digits)."""
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]


def wording_key(text: str) -> str:
    """A text with case, punctuation and spacing taken out: two texts with one key say the same."""
    return " ".join(re.findall(r"[\w]+", text.lower()))


def strategy_key(strategy: str) -> str:
    """A strategy's identity for grouping: case, punctuation and spacing do not matter."""
    return wording_key(strategy)[:200]


def new_id(memory_type: str) -> str:
    return f"{memory_type}-{uuid.uuid4().hex}"


def memory_type_of(memory_id: str) -> str:
    """The memory type encoded in an id, e.g. 'anti_pattern' for 'anti_pattern-3f…'."""
    return memory_id.rsplit("-", 1)[0]


# Keywords that constrain one JSON type only, so a `null` passes them whatever they say.
_TYPE_BOUND_KEYWORDS = frozenset(
    {"type", "format", "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
     "exclusiveMaximum", "multipleOf", "items", "minItems", "maxItems", "uniqueItems"}
)


def nullable_as_type_list(schema: dict[str, Any]) -> None:
    """Publish an optional field (`X | None`) as `{"type": ["X", "null"], ...}` instead of pydantic's
    `{"anyOf": [{"type": "X", ...}, {"type": "null"}]}`: the same set of values, checked in one step.
    A client that validates structured results (the MCP SDK's checks every one with jsonschema)
    otherwise tries both branches of every optional field of every memory returned. Only plain
    branches are folded; one with an enum, a const or a reference keeps its anyOf."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
            continue
        other = options[1] if options[0] == {"type": "null"} else options[0]
        if not isinstance(other.get("type"), str) or not set(other) <= _TYPE_BOUND_KEYWORDS or set(other) & set(prop):
            continue
        del prop["anyOf"]
        prop.update(other)
        prop["type"] = [other["type"], "null"]


class MemoryBase(BaseModel):
    """What every memory carries: identity, scope, time, feedback and life-cycle state."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=nullable_as_type_list)

    id: str
    project: Name
    agent: Name
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    helpful: Count = 0
    harmful: Count = 0
    used: Count = 0
    ignored: Count = 0
    archived: bool = False
    archived_reason: str | None = None

    def text(self) -> str:
        """The text that is embedded and indexed for this memory."""
        raise NotImplementedError

    def title(self) -> str:
        """One line that says what this memory is, for listings."""
        return cut(self.text(), 120)


class Heuristic(MemoryBase):
    """A strategy that worked repeatedly on a kind of task."""

    type: Literal["heuristic"] = "heuristic"
    condition: Text
    strategy: Text
    task_type: Category | None = None
    confidence: Confidence = 0.5
    occurrence_count: Count = 1
    success_count: Count = 1
    supporting_outcomes: list[str] = Field(default_factory=list)
    last_validated: datetime = Field(default_factory=utcnow)
    strategy_key: str | None = Field(None, description="Set for learned heuristics: the strategy they group on.")

    def text(self) -> str:
        return f"{self.condition}\n{self.strategy}"

    def title(self) -> str:
        condition = re.sub(r"^when\s+", "", self.condition.strip(), flags=re.IGNORECASE)
        return f"When {cut(condition, 60)}: {cut(self.strategy, 60)}"


class AntiPattern(MemoryBase):
    """A strategy that failed repeatedly, why, and what to do instead."""

    type: Literal["anti_pattern"] = "anti_pattern"
    pattern: Text
    why_bad: Text
    better_alternative: Text | None = None
    task_type: Category | None = None
    confidence: Confidence = 0.5
    occurrence_count: Count = 1
    success_count: Count = 0
    supporting_outcomes: list[str] = Field(default_factory=list)
    last_seen: datetime = Field(default_factory=utcnow)
    strategy_key: str | None = Field(None, description="Set for learned anti-patterns: the failing strategy.")

    def text(self) -> str:
        return f"{self.pattern}\n{self.why_bad}"

    def title(self) -> str:
        return f"Avoid: {cut(self.pattern, 100)}"


class DomainKnowledge(MemoryBase):
    """A fact that is true in this project's domain."""

    type: Literal["knowledge"] = "knowledge"
    domain: Category
    fact: Text
    source: str = "agent"
    confidence: Confidence = 0.8

    def text(self) -> str:
        return f"{self.domain}: {self.fact}"


class UserPreference(MemoryBase):
    """How a user wants things done."""

    type: Literal["preference"] = "preference"
    user_id: UserId
    category: Category
    preference: Text
    source: str = "user"
    confidence: Confidence = 0.9

    def text(self) -> str:
        return f"{self.category}: {self.preference}"


class Outcome(MemoryBase):
    """The raw record of one task: what was tried and how it went."""

    type: Literal["outcome"] = "outcome"
    task: Text
    task_type: Category | None = None
    outcome: OutcomeKind
    strategy_used: Text
    duration_ms: Annotated[int, Field(ge=0)] | None = None
    error_message: Text | None = None
    feedback: Text | None = None
    user_id: UserId | None = None
    confidence: Confidence = 1.0

    def text(self) -> str:
        return f"{self.task}\n{self.strategy_used}"

    def title(self) -> str:
        return f"[{self.outcome}] {cut(self.task, 60)} via {cut(self.strategy_used, 50)}"


AnyMemory = Union[Heuristic, AntiPattern, DomainKnowledge, UserPreference, Outcome]
"""A memory of any type: narrow it by `isinstance` (or `match`), not by comparing `type` strings."""
Memory = Annotated[AnyMemory, Field(discriminator="type")]
MODEL_BY_TYPE: dict[str, type[AnyMemory]] = {
    "heuristic": Heuristic,
    "anti_pattern": AntiPattern,
    "knowledge": DomainKnowledge,
    "preference": UserPreference,
    "outcome": Outcome,
}
memory_adapter: TypeAdapter[AnyMemory] = TypeAdapter(Memory)


def parse_memory(data: dict[str, Any] | str) -> AnyMemory:
    """Validate a memory from a dict or JSON text; raises pydantic.ValidationError."""
    if isinstance(data, str):
        return memory_adapter.validate_json(data)
    return memory_adapter.validate_python(data)


_KEY_FIELD = {
    "heuristic": "condition",
    "anti_pattern": "pattern",
    "knowledge": "fact",
    "outcome": "task",
    "preference": "preference",
}


def key_text(memory: AnyMemory) -> str:
    """The part of a memory a task is worded like: the situation, not the lesson learned in it.

    Retrieval mixes its similarity into the whole text's (`key_weight`); the store embeds it on
    every write and keeps the vector with the memory."""
    value = getattr(memory, _KEY_FIELD.get(memory.type, ""), None)
    return value if isinstance(value, str) and value else memory.text()
