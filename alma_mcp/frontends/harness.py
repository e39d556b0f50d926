"""The harness pattern: a fixed Setting, a per-run Context, an Agent with a MemorySchema, and ALMA.

Every run has three steps, all of them calls on the one `ALMA` service the MCP tools use:

1. pre-run: `alma.retrieve` finds the memories relevant to the task, and the harness builds
   the prompt (who the agent is, the setting, its constraints and tools, the injected
   memory, then the task);
2. run: the executor (any callable, sync or async: an LLM client, a script) gets a
   `Briefing` and reports an `ExecutionResult`: success, failure or partial, the strategy it
   used, any error, optional feedback;
3. post-run: `alma.learn` records the outcome; repeated successes become heuristics and
   repeated failures anti-patterns, which the next run's pre-run injects.

The schema's categories are enforced here, on top of the config's `can_learn` /
`cannot_learn` (which `ALMA` enforces on every write): a run whose category the schema
forbids is refused with `ScopeDenied` before the executor runs, so nothing is stored.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Union

from pydantic import TypeAdapter, ValidationError

from ..config import AgentSettings
from ..errors import InvalidInput, NotFound, ScopeDenied
from ..models import FEEDBACK_SIGNALS, OUTCOME_KINDS, Category, Name, OutcomeKind
from ..prompt.handles import handle_of
from ..prompt.results import MemorySlice
from ..scope import check_can_learn

if TYPE_CHECKING:
    from ..models import AntiPattern, DomainKnowledge, Heuristic
    from ..service import ALMA, LearnResult

log = logging.getLogger("alma_mcp")


_name = TypeAdapter(Name)
_category = TypeAdapter(Category)


def _check(adapter: TypeAdapter[Any], value: Any, what: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(f"{what}: {exc.errors()[0]['msg']}") from None


def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, got {value!r}")
    return value


def _listed(category: str, categories: list[str]) -> bool:
    """Categories compare ignoring case, as the config's can_learn / cannot_learn do."""
    folded = category.casefold()
    return any(folded == c.casefold() for c in categories)


class ToolType(str, Enum):
    """What kind of thing a tool does; shown to the agent next to the tool's name."""

    SEARCH = "search"
    DATA_ACCESS = "data_access"
    EXECUTION = "execution"
    COMMUNICATION = "communication"
    ANALYSIS = "analysis"
    CREATION = "creation"


@dataclass
class Tool:
    """One tool available in a setting."""

    name: str
    description: str
    tool_type: ToolType = ToolType.EXECUTION
    constraints: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_text(self.name, "tool name")
        _check_text(self.description, f"description of tool {self.name!r}")
        try:
            self.tool_type = ToolType(self.tool_type)
        except ValueError:
            raise InvalidInput(
                f"tool {self.name!r}: unknown tool_type {self.tool_type!r}; use one of {[t.value for t in ToolType]}"
            ) from None

    def to_prompt(self) -> str:
        line = f"**{self.name}** ({self.tool_type.value}): {self.description}"
        if self.constraints:
            line += f" Constraints: {'; '.join(self.constraints)}."
        return line


@dataclass
class Setting:
    """The fixed environment: what the agent can use and the rules that hold on every run."""

    name: str
    description: str
    tools: list[Tool] = field(default_factory=list)
    global_constraints: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_text(self.name, "setting name")
        _check_text(self.description, f"description of setting {self.name!r}")
        for tool in self.tools:
            if not isinstance(tool, Tool):
                raise InvalidInput(f"setting {self.name!r}: tools must be Tool objects, got {tool!r}")
        names = [t.name for t in self.tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidInput(f"setting {self.name!r} lists tool(s) {duplicates} more than once")

    def to_prompt(self) -> str:
        lines = [f"## Setting: {self.name}", "", self.description]
        if self.global_constraints:
            lines += ["", "### Constraints (always apply)"] + [f"- {c}" for c in self.global_constraints]
        if self.tools:
            lines += ["", "### Tools"] + [f"- {tool.to_prompt()}" for tool in self.tools]
        return "\n".join(lines)


@dataclass
class MemorySchema:
    """What an agent may learn: its domain, the categories it learns and those it must not.

    Categories compare ignoring case. A run's category (its `task_type` in the outcome) is
    the context's `task_type`, else
    `default_category`, else the first learnable category. `min_occurrences` is how many
    successes make a heuristic; it applies when the config does not declare the agent (a
    declared agent's `min_occurrences_for_heuristic` in the config file wins).
    """

    domain: str
    description: str = ""
    learnable_categories: list[str] = field(default_factory=list)
    forbidden_categories: list[str] = field(default_factory=list)
    min_occurrences: int = 3
    default_category: str | None = None

    def __post_init__(self) -> None:
        _check(_category, self.domain, "schema domain")
        for category in [*self.learnable_categories, *self.forbidden_categories]:
            _check(_category, category, f"schema {self.domain!r} category")
        both = sorted(c for c in self.learnable_categories if _listed(c, self.forbidden_categories))
        if both:
            raise InvalidInput(f"schema {self.domain!r} lists {both} as both learnable and forbidden")
        if not isinstance(self.min_occurrences, int) or self.min_occurrences < 1:
            raise InvalidInput(f"schema {self.domain!r}: min_occurrences must be 1 or more, got {self.min_occurrences!r}")
        if self.default_category is not None:
            _check(_category, self.default_category, f"schema {self.domain!r} default_category")
        elif self.learnable_categories:
            self.default_category = self.learnable_categories[0]

    def check(self, category: str | None, agent: str, what: str = "outcomes") -> None:
        """Raise ScopeDenied, naming the schema rule, if this schema does not let `agent` learn `category`."""
        if category is not None and _listed(category, self.forbidden_categories):
            raise ScopeDenied(
                f"agent {agent!r} may not learn {what} in category {category!r}: the {self.domain!r} memory "
                f"schema forbids {self.forbidden_categories}"
            )
        if self.learnable_categories and category is None:
            raise ScopeDenied(
                f"agent {agent!r} learns only the categories of the {self.domain!r} memory schema "
                f"{self.learnable_categories}: give the context a task_type from that list"
            )
        if self.learnable_categories and category is not None and not _listed(category, self.learnable_categories):
            raise ScopeDenied(
                f"agent {agent!r} may not learn {what} in category {category!r}: the {self.domain!r} memory "
                f"schema allows only {self.learnable_categories}"
            )

    def agent_settings(self, description: str | None = None) -> AgentSettings:
        """The config entry that enforces this schema for an agent the config does not declare."""
        return AgentSettings(
            domain=self.domain,
            description=description,
            can_learn=list(self.learnable_categories),
            cannot_learn=list(self.forbidden_categories),
            min_occurrences_for_heuristic=self.min_occurrences,
        )

    def to_prompt(self) -> str:
        lines = [f"### What you learn from ({self.domain})"]
        if self.learnable_categories:
            lines.append(f"- learn: {', '.join(self.learnable_categories)}")
        if self.forbidden_categories:
            lines.append(f"- out of scope: {', '.join(self.forbidden_categories)}")
        return "\n".join(lines)


@dataclass
class Agent:
    """Who acts: a name declared in the config (or allowed as undeclared), a role, and its memory schema."""

    name: str
    role: str
    description: str
    memory_schema: MemorySchema

    def __post_init__(self) -> None:
        _check(_name, self.name, "agent name")
        _check_text(self.role, f"role of agent {self.name!r}")
        if not isinstance(self.memory_schema, MemorySchema):
            raise InvalidInput(f"agent {self.name!r}: memory_schema must be a MemorySchema")

    def to_prompt(self) -> str:
        lines = [f"# You are {self.name}: {self.role}"]
        if self.description:
            lines += ["", self.description]
        return "\n".join(lines)


@dataclass
class Context:
    """One run's inputs: the task, and who and what it is for. Built fresh for every run."""

    task: str
    project: str | None = None
    user_id: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    constraints: list[str] = field(default_factory=list)
    task_type: str | None = None

    def __post_init__(self) -> None:
        _check_text(self.task, "context task")
        if self.task_type is not None:
            _check(_category, self.task_type, "context task_type")
        if not isinstance(self.inputs, dict):
            raise InvalidInput(f"context inputs must be a dict, got {type(self.inputs).__name__}")

    def to_prompt(self) -> str:
        lines = ["## Task", "", self.task]
        if self.inputs:
            lines += ["", "### Inputs"]
            for key, value in self.inputs.items():
                shown = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
                lines.append(f"- {key}: {shown}")
        if self.constraints:
            lines += ["", "### Constraints for this task"] + [f"- {c}" for c in self.constraints]
        return "\n".join(lines)


@dataclass
class Briefing:
    """What the executor receives: the prompt to act on, and the parts it was built from."""

    prompt: str
    context: Context
    memories: MemorySlice
    agent: Agent
    setting: Setting
    task_type: str | None

    def __str__(self) -> str:
        return self.prompt


@dataclass
class ExecutionResult:
    """What the executor reports. `strategy` is how it went about the task, in words that stay the
    same when it does the same thing again: outcomes are grouped into lessons by strategy.

    `memory_feedback` optionally maps ids of injected memories to helpful, harmful, used or ignored.
    """

    outcome: OutcomeKind
    strategy: str
    output: Any = None
    error: str | None = None
    feedback: str | None = None
    memory_feedback: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOME_KINDS:
            raise InvalidInput(f"executor outcome {self.outcome!r} is not one of {list(OUTCOME_KINDS)}")
        _check_text(self.strategy, "executor strategy")
        for memory_id, signal in self.memory_feedback.items():
            if signal not in FEEDBACK_SIGNALS:
                raise InvalidInput(
                    f"memory_feedback for {memory_id!r}: {signal!r} is not one of {list(FEEDBACK_SIGNALS)}"
                )

    @property
    def success(self) -> bool:
        return self.outcome == "success"


@dataclass
class RunResult:
    """What one harness run did: the prompt it built, what the executor reported, what was learned."""

    context: Context
    task_type: str | None
    prompt: str
    memories: MemorySlice
    execution: ExecutionResult
    learned: "LearnResult"
    duration_ms: int

    @property
    def success(self) -> bool:
        return self.execution.success

    @property
    def output(self) -> Any:
        return self.execution.output

    @property
    def injected_ids(self) -> list[str]:
        """Ids of the memories that were in the prompt (which names them by their handles)."""
        return [item.memory.id for item in self.memories.all() if handle_of(item.memory.id) in self.prompt]


Executor = Callable[[Briefing], Union[ExecutionResult, dict[str, Any], Awaitable[Any]]]


def _as_execution_result(value: Any) -> ExecutionResult:
    if isinstance(value, ExecutionResult):
        return value
    if isinstance(value, dict):
        known = {"outcome", "strategy", "output", "error", "feedback", "memory_feedback"}
        unknown = sorted(set(value) - known)
        if unknown or "outcome" not in value or "strategy" not in value:
            raise InvalidInput(
                f"executor returned a dict with keys {sorted(value)}; it needs 'outcome' and 'strategy' "
                f"and may have {sorted(known - {'outcome', 'strategy'})}"
            )
        return ExecutionResult(**value)
    raise InvalidInput(
        f"executor returned {type(value).__name__}; return an ExecutionResult(outcome=..., strategy=...) "
        "or a dict with the same keys"
    )


class Harness:
    """Runs an agent in a setting with memory: retrieve and inject before, learn after."""

    def __init__(self, setting: Setting, agent: Agent, alma: "ALMA", top_k: int | None = None) -> None:
        if not isinstance(setting, Setting):
            raise InvalidInput("setting must be a Setting")
        if not isinstance(agent, Agent):
            raise InvalidInput("agent must be an Agent")
        self.setting = setting
        self.agent = agent
        self.alma = alma
        self.top_k = top_k
        self._adopt_schema()

    @property
    def schema(self) -> MemorySchema:
        return self.agent.memory_schema

    def _adopt_schema(self) -> None:
        """Make sure the service knows the agent; an agent the config leaves undeclared gets the schema's rules."""
        config = self.alma.config
        declared = config.alma.agents.get(self.agent.name)
        if declared is None:
            if not config.alma.allow_undeclared_agents:
                schema = self.schema
                raise NotFound(
                    f"agent {self.agent.name!r} is not declared in the config ({config.source or 'built in'}); "
                    f"known agents: {sorted(config.alma.agents) or '(none)'}. Declare it under alma.agents, e.g.\n"
                    f"    {self.agent.name}:\n"
                    f"      domain: {schema.domain}\n"
                    f"      can_learn: [{', '.join(schema.learnable_categories)}]\n"
                    f"      cannot_learn: [{', '.join(schema.forbidden_categories)}]\n"
                    f"      min_occurrences_for_heuristic: {schema.min_occurrences}\n"
                    "or set alma.allow_undeclared_agents: true"
                )
            # The service enforces the schema on every write from now on, whoever makes it; the
            # config it was built from (maybe another service's too) is left as it is.
            self.alma.adopt_agent(self.agent.name, self.schema.agent_settings(self.agent.description or None))
        elif declared.min_occurrences_for_heuristic != self.schema.min_occurrences:
            log.info(
                "agent %s: the config's min_occurrences_for_heuristic (%d) applies, not the schema's (%d)",
                self.agent.name,
                declared.min_occurrences_for_heuristic,
                self.schema.min_occurrences,
            )

    # -- categories ------------------------------------------------------------------
    def category_for(self, context: Context) -> str | None:
        """The category this run's outcome is learned under."""
        return context.task_type or self.schema.default_category

    def check_category(self, category: str | None, what: str = "outcomes") -> None:
        """Raise ScopeDenied if the schema or the config forbids learning `category`."""
        self.schema.check(category, self.agent.name, what)
        check_can_learn(self.alma.config, self.agent.name, category, what)

    def _check_context(self, context: Context) -> str | None:
        if not isinstance(context, Context):
            raise InvalidInput(f"context must be a Context, got {type(context).__name__}")
        project = self.alma.config.project
        if context.project is not None and context.project != project:
            raise InvalidInput(
                f"context is for project {context.project!r} but this memory service is project {project!r}: "
                "open ALMA.from_config on that project's config"
            )
        category = self.category_for(context)
        self.check_category(category)
        return category

    # -- the three steps ---------------------------------------------------------------
    def build_prompt(self, context: Context, memories: MemorySlice) -> str:
        """Identity, setting (constraints and tools), what it learns, injected memory, then the task."""
        sections = [self.agent.to_prompt(), self.setting.to_prompt(), self.schema.to_prompt()]
        injected = memories.to_prompt()
        if injected:
            sections.append(injected.strip())
        sections.append(context.to_prompt())
        return "\n\n".join(sections) + "\n"

    def pre_run(self, context: Context) -> Briefing:
        category = self._check_context(context)
        memories = self.alma.retrieve(
            task=context.task, agent=self.agent.name, top_k=self.top_k, user_id=context.user_id
        )
        return self._briefing(context, memories, category)

    def _briefing(self, context: Context, memories: MemorySlice, category: str | None) -> Briefing:
        return Briefing(
            prompt=self.build_prompt(context, memories),
            context=context,
            memories=memories,
            agent=self.agent,
            setting=self.setting,
            task_type=category,
        )

    def _learn_arguments(self, briefing: Briefing, execution: ExecutionResult, duration_ms: int) -> dict[str, Any]:
        injected = {item.memory.id for item in briefing.memories.all()}
        stray = sorted(set(execution.memory_feedback) - injected)
        if stray:
            raise InvalidInput(f"memory_feedback names memories that were not injected in this run: {stray}")
        return dict(
            agent=self.agent.name,
            task=briefing.context.task,
            outcome=execution.outcome,
            strategy_used=execution.strategy,
            task_type=briefing.task_type,
            duration_ms=duration_ms,
            error_message=execution.error,
            feedback=execution.feedback,
            user_id=briefing.context.user_id,
        )

    def post_run(self, briefing: Briefing, execution: ExecutionResult, duration_ms: int = 0) -> RunResult:
        """Record the outcome (and any feedback on injected memories); return what was learned."""
        execution = _as_execution_result(execution)
        arguments = self._learn_arguments(briefing, execution, duration_ms)
        self.check_category(briefing.task_type)
        learned = self.alma.learn(**arguments)
        for memory_id, signal in execution.memory_feedback.items():
            self.alma.feedback(memory_id, signal, agent=self.agent.name)
        return self._result(briefing, execution, learned, duration_ms)

    def _result(
        self, briefing: Briefing, execution: ExecutionResult, learned: "LearnResult", duration_ms: int
    ) -> RunResult:
        return RunResult(
            context=briefing.context,
            task_type=briefing.task_type,
            prompt=briefing.prompt,
            memories=briefing.memories,
            execution=execution,
            learned=learned,
            duration_ms=duration_ms,
        )

    def run(self, context: Context, executor: Executor) -> RunResult:
        """Retrieve and inject memory, call the executor, learn from its result.

        An executor that raises records nothing (the exception propagates): to teach the agent
        about a failure, return `ExecutionResult(outcome="failure", error=...)`.
        """
        if not callable(executor):
            raise InvalidInput("executor must be callable: it gets a Briefing and returns an ExecutionResult")
        briefing = self.pre_run(context)
        started = time.perf_counter()
        value = executor(briefing)
        if inspect.isawaitable(value):
            value = _run_awaitable(value)
        duration_ms = int((time.perf_counter() - started) * 1000)
        return self.post_run(briefing, _as_execution_result(value), duration_ms)

    # -- async ---------------------------------------------------------------------------
    async def apre_run(self, context: Context) -> Briefing:
        category = self._check_context(context)
        memories = await self.alma.aretrieve(
            task=context.task, agent=self.agent.name, top_k=self.top_k, user_id=context.user_id
        )
        return self._briefing(context, memories, category)

    async def apost_run(self, briefing: Briefing, execution: ExecutionResult, duration_ms: int = 0) -> RunResult:
        execution = _as_execution_result(execution)
        arguments = self._learn_arguments(briefing, execution, duration_ms)
        self.check_category(briefing.task_type)
        learned = await self.alma.alearn(**arguments)
        for memory_id, signal in execution.memory_feedback.items():
            await self.alma.afeedback(memory_id, signal, agent=self.agent.name)
        return self._result(briefing, execution, learned, duration_ms)

    async def arun(self, context: Context, executor: Executor) -> RunResult:
        """`run` for async agents: an async executor is awaited, a sync one runs in a worker thread."""
        if not callable(executor):
            raise InvalidInput("executor must be callable: it gets a Briefing and returns an ExecutionResult")
        import anyio

        briefing = await self.apre_run(context)
        started = time.perf_counter()
        if inspect.iscoroutinefunction(executor) or inspect.iscoroutinefunction(getattr(executor, "__call__", None)):
            pending = executor(briefing)
            value = await pending if inspect.isawaitable(pending) else pending
        else:
            value = await anyio.to_thread.run_sync(executor, briefing)
            if inspect.isawaitable(value):
                value = await value
        duration_ms = int((time.perf_counter() - started) * 1000)
        return await self.apost_run(briefing, _as_execution_result(value), duration_ms)

    # -- direct lessons, checked against the schema ------------------------------------
    def add_heuristic(self, condition: str, strategy: str, task_type: str | None = None, confidence: float = 0.7) -> "Heuristic":
        category = task_type or self.schema.default_category
        self.check_category(category, "heuristics")
        return self.alma.add_heuristic(self.agent.name, condition, strategy, category, confidence)

    def add_anti_pattern(
        self, pattern: str, why_bad: str, better_alternative: str | None = None, task_type: str | None = None
    ) -> "AntiPattern":
        category = task_type or self.schema.default_category
        self.check_category(category, "anti-patterns")
        return self.alma.add_anti_pattern(self.agent.name, pattern, why_bad, better_alternative, category)

    def add_knowledge(self, domain: str, fact: str, source: str = "agent") -> "DomainKnowledge":
        self.check_category(domain, "knowledge")
        return self.alma.add_knowledge(self.agent.name, domain, fact, source)

    def stats(self) -> dict[str, Any]:
        return self.alma.stats(self.agent.name)


def _run_awaitable(awaitable: Awaitable[Any]) -> Any:
    """Finish an async executor's result from sync code; inside an event loop, `arun` is the way."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        raise InvalidInput("the executor is async and an event loop is running: use `await harness.arun(...)`")

    async def finish() -> Any:
        return await awaitable

    return asyncio.run(finish())
