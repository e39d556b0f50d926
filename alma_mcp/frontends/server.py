"""The MCP layer: tools, resources and prompts wired to the `ALMA` service. Nothing else.

Every handler is a plain `def` (the SDK runs it on a worker thread, so Chroma and the
embedding model never block the event loop). Every anticipated failure becomes a
`ToolError` / `ResourceError` whose message tells the caller what to fix.

Every tool, resource and prompt that touches memories acts as a named agent, and checks that
the connection may act as it (`Caller`: over HTTP the bearer token's agents and users, see
http.py; over stdio every agent of the config). Within that agent, scope.py decides what it
reaches: ids of memories out of its scope are answered exactly like ids that do not exist.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Annotated, Any, AsyncIterator, Callable, Literal, ParamSpec, TypeVar, get_args

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context, ResourceSecurity
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
    UnexpectedResourceError,
)
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError
from pydantic_core import to_jsonable_python

from .. import __version__
from ..config import AlmaConfig, load_config
from ..errors import AlmaError, NotFound, ScopeDenied
from .handshake import INSTRUCTIONS, SERVER_NAME, SERVER_TITLE
from ..learning.lifecycle import ConsolidateResult, RestoreResult, SweepResult
from ..models import (
    FeedbackSignal,
    OutcomeKind,
    feedback_steps_text,
    MEMORY_TYPES,
    AntiPattern,
    Category,
    Confidence,
    DomainKnowledge,
    Heuristic,
    MemoryId,
    MemoryRef,
    MemoryType,
    Name,
    Text,
    UserId,
    UserPreference,
)
from ..prompt.render import read_by_model
from ..prompt.results import MemorySlice
from ..ranking.explain import Explanation
from ..scope import EVERYONE, Caller, check_acts_as, check_serves
from ..service import ALMA, MAX_AGE_DAYS, ForgetResult, LearnResult, MemoryDetail

log = logging.getLogger("alma_mcp")
P = ParamSpec("P")
R = TypeVar("R")

# The handshake's fixed parts live in handshake.py, which answers `initialize` before this module loads.

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
WRITE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False)

TopK = Annotated[int, Field(ge=1, le=50, description="How many memories per type, at most.")]
AgentArg = Annotated[Name, Field(description="The agent's name, as declared in .alma/config.yaml.")]
# A retrieval's optional arguments, shared by alma_retrieve and alma_explain.
ForUser = Annotated[UserId | None, Field(description="Include this user's preferences.")]
OfTypes = Annotated[list[MemoryType] | None, Field(description="Only these types (default: all but raw outcomes).")]
OfTaskType = Annotated[
    Category | None,
    Field(description="The task's category, as given to alma_learn: leaves out lessons and outcomes of other task types."),
]


def tool_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn anticipated failures into ToolError, so the model reads the reason."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except AlmaError as exc:
            raise ToolError(str(exc)) from None

    return wrapper


def resource_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None
        except AlmaError as exc:
            raise ResourceError(str(exc)) from None

    return wrapper


def argument_errors(error: ValidationError) -> str:
    """What is wrong with a call's arguments, one clause each: `outcome: input should be 'success',
    'failure' or 'partial' (got 'great')`, `agent: required`."""
    clauses = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        if item["type"] == "missing":
            clauses.append(f"{where}: required")
            continue
        message = item["msg"].removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        given = repr(item.get("input"))
        clauses.append(f"{where}: {message} (got {given if len(given) <= 60 else given[:57] + '...'})")
    return "; ".join(clauses)


def _json(value: Any) -> str:
    """`value` as indented JSON: pydantic models at any depth (a dict of lists of memories too)."""
    return json.dumps(to_jsonable_python(value), indent=2, ensure_ascii=False)


def _int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ResourceError(f"{name}={value!r} is not a whole number") from None
    if not low <= number <= high:
        raise ResourceError(f"{name}={number} is out of range: use {low} to {high}")
    return number


def public_config(config: AlmaConfig, caller: Caller = EVERYONE) -> dict[str, Any]:
    """The configuration as JSON, with header values (which may hold credentials) redacted. A
    caller bound to some agents or users (an HTTP token of `http.tokens`) sees the agents it may act
    as, and of the tokens only its own: not which other agents and users exist, nor where the other
    tokens' secrets are kept."""
    data = config.model_dump(mode="json")
    headers = data["alma"]["chroma_http"]["headers"]
    data["alma"]["chroma_http"]["headers"] = {k: "<redacted>" for k in headers}
    if caller.agents is not None or caller.users is not None:
        data["alma"]["agents"] = {name: v for name, v in data["alma"]["agents"].items() if caller.may_act_as(name)}
        data["alma"]["http"]["tokens"] = [t for t in data["alma"]["http"]["tokens"] if caller.name == f"token {t['name']}"]
    data["data_dir"] = str(config.data_dir)
    data["config_file"] = str(config.source) if config.source else None
    return data


CALLER_KEY = "alma_mcp.caller"
"""Where http.py leaves the `Caller` its bearer token names, in the ASGI scope of each request."""


def caller_of(ctx: Context | None, default: Caller) -> Caller:
    """The caller of this request: the one its HTTP request carries, else the server's own."""
    if ctx is None:  # called directly, not through the SDK
        return default
    try:
        request = ctx.request_context.request
    except ValueError:  # no request context: a direct call
        return default
    found = getattr(request, "scope", {}).get(CALLER_KEY) if request is not None else None
    return found if isinstance(found, Caller) else default


_READER: ContextVar[Caller | None] = ContextVar("alma_mcp_reader", default=None)
"""The caller of the resource read under way: the SDK hands a static resource (`alma://agents`,
`alma://config`) no Context, so `AlmaServer.read_resource` leaves its caller here."""


class AlmaServer(MCPServer):
    """The SDK's server with what its handlers share: the service, and who a request without a
    caller of its own acts as (build_http_app narrows that to no one once tokens guard it)."""

    alma: ALMA
    alma_caller: Caller

    async def read_resource(self, uri: Any, context: Context | None = None) -> Any:
        """The SDK's read, with the reader left for static resources, and a bad argument (an
        anticipated ResourceError) answered as invalid params, not as the SDK's internal error."""
        reader = _READER.set(caller_of(context, self.alma_caller))
        try:  # the function runs in this task, or in a worker thread given a copy of its context
            return await super().read_resource(uri, context)
        except (ResourceNotFoundError, UnexpectedResourceError):
            raise
        except ResourceError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc), data={"uri": str(uri)}) from None
        finally:
            _READER.reset(reader)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None) -> Any:
        """The SDK's call, refusing arguments the tool does not declare (a misspelt `user` for
        `user_id` would otherwise be dropped without a word) and saying in one line per argument
        what is wrong with the others, instead of pydantic's report."""
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            declared = list(tool.parameters.get("properties", {}))
            unknown = sorted(set(arguments or {}) - set(declared))
            if unknown:
                raise ToolError(
                    f"Error executing tool {name}: unknown argument{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(map(repr, unknown))}; {name} takes {', '.join(declared)}"
                )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError) and exc.__cause__.title.endswith("Arguments"):
                raise ToolError(f"Error executing tool {name}: {argument_errors(exc.__cause__)}") from exc.__cause__
            raise

    def reader(self) -> Caller:
        """Who reads the static resource being read (no one, on a server guarded by tokens, outside a read)."""
        return _READER.get() or self.alma_caller


def create_server(
    config: AlmaConfig | None = None, alma: ALMA | None = None, caller: Caller = EVERYONE
) -> AlmaServer:
    """Build the MCP server around one ALMA service (made from `config` when not given).

    `caller` is who a connection without a credential of its own is: over stdio (and in-process)
    every agent and user by default; narrower to embed the server for one agent or user."""
    if alma is None:
        alma = ALMA(config if config is not None else load_config())
    service = alma

    def acting(ctx: Context | None, agent: str | None, user_id: str | None = None, what: str = "this call") -> Caller:
        """The caller, once it is known to act as `agent` (required) and to serve `user_id`."""
        who = caller_of(ctx, mcp.alma_caller)
        if not agent:
            raise ScopeDenied(f"{what} acts as an agent: pass agent=NAME (an agent declared in the config)")
        check_acts_as(who, agent)
        check_serves(who, user_id)
        return who

    # The SDK enters the lifespan once per stdio run and per HTTP app, but once per in-process
    # Client session: the service starts with the first one open and closes with the last.
    sessions = 0
    sessions_lock = anyio.Lock()

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[dict[str, Any]]:
        nonlocal sessions
        async with sessions_lock:
            sessions += 1
            if sessions == 1:
                service.warm_up()  # the model loads in the background; initialize is answered at once
        try:
            yield {"alma": service}
        finally:
            with anyio.CancelScope(shield=True):
                async with sessions_lock:
                    sessions -= 1
                    if sessions == 0:
                        # Off the event loop: it waits for the preload to finish the collection it reads.
                        await anyio.to_thread.run_sync(service.close)

    mcp = AlmaServer(
        SERVER_NAME,
        title=SERVER_TITLE,
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
    )
    mcp.alma = service
    # Who a request without a caller of its own is; http.py narrows it to no one once tokens guard
    # the server, so a request that somehow reaches a handler without its token's caller gets nothing.
    mcp.alma_caller = caller

    # -- tools: before a task ----------------------------------------------------------
    structured = service.config.alma.retrieve_structured

    @mcp.tool(annotations=READ_ONLY, title="Retrieve memories for a task", structured_output=None if structured else False)
    @tool_errors
    def alma_retrieve(
        task: Annotated[Text, Field(description="The task about to be done, in plain words.")],
        agent: AgentArg,
        top_k: TopK = 5,
        user_id: ForUser = None,
        memory_types: OfTypes = None,
        task_type: OfTaskType = None,
        ctx: Context | None = None,
    ) -> Annotated[CallToolResult, MemorySlice]:
        """Get what memory knows about a task, to read before doing it: the text is the markdown to
        inject (memories fenced as data; one line when nothing applies); the structured result (unless
        the config's retrieve_structured is false) holds the same memories by type, each with its tier
        and evidence, and that markdown as `prompt`."""
        acting(ctx, agent, user_id)
        found = service.retrieve(task, agent, top_k, user_id, memory_types, task_type)
        return CallToolResult(
            content=[TextContent(type="text", text=read_by_model(found.prompt))],
            structured_content=found.model_dump(mode="json", by_alias=True) if structured else None,
        )

    @mcp.tool(annotations=READ_ONLY, title="Explain what retrieval injects for a task, and why")
    @tool_errors
    def alma_explain(
        task: Annotated[Text, Field(description="The task, as it would be given to alma_retrieve.")],
        agent: AgentArg,
        top_k: TopK = 5,
        user_id: ForUser = None,
        memory_types: OfTypes = None,
        task_type: OfTaskType = None,
        n: Annotated[int, Field(ge=1, le=100, description="Memories to explain besides those injected.")] = 10,
        ctx: Context | None = None,
    ) -> Explanation:
        """For people tuning the memory, not for injecting: the relevance floors and the memories
        with the most evidence for this task, each with its evidence, similarity and verdict
        (injected and why, beyond top_k, below the floor). Same arguments as alma_retrieve."""
        acting(ctx, agent, user_id)
        return service.explain(task, agent, top_k, user_id, memory_types, task_type, n)

    # -- tools: after a task -----------------------------------------------------------
    @mcp.tool(annotations=WRITE, title="Record a task outcome and learn from it")
    @tool_errors
    def alma_learn(
        agent: AgentArg,
        task: Annotated[Text, Field(description="The task that was done.")],
        outcome: Annotated[OutcomeKind, Field(description="How it went.")],
        strategy_used: Annotated[Text, Field(description="The approach taken, in one or two sentences.")],
        task_type: Annotated[Category | None, Field(description="A category such as 'form_testing'.")] = None,
        duration_ms: Annotated[int | None, Field(ge=0)] = None,
        error_message: Text | None = None,
        feedback: Text | None = None,
        user_id: UserId | None = None,
        ctx: Context | None = None,
    ) -> LearnResult:
        """Record what happened on a task. Similar successes with the same strategy become a
        heuristic; repeated failures become an anti-pattern. Says what it created or updated."""
        acting(ctx, agent, user_id)
        return service.learn(
            agent, task, outcome, strategy_used, task_type, duration_ms, error_message, feedback, user_id
        )

    @mcp.tool(annotations=WRITE, title="Teach a heuristic")
    @tool_errors
    def alma_add_heuristic(
        agent: AgentArg,
        condition: Annotated[Text, Field(description="When it applies.")],
        strategy: Annotated[Text, Field(description="What to do.")],
        task_type: Category | None = None,
        confidence: Confidence = 0.7,
        ctx: Context | None = None,
    ) -> Heuristic:
        """Teach a strategy that works under a condition. A near-duplicate of a stored heuristic is
        merged into it (the returned memory is the one that stays)."""
        acting(ctx, agent)
        return service.add_heuristic(agent, condition, strategy, task_type, confidence)

    @mcp.tool(annotations=WRITE, title="Teach an anti-pattern")
    @tool_errors
    def alma_add_anti_pattern(
        agent: AgentArg,
        pattern: Annotated[Text, Field(description="What not to do.")],
        why_bad: Annotated[Text, Field(description="Why it fails.")],
        better_alternative: Text | None = None,
        task_type: Category | None = None,
        ctx: Context | None = None,
    ) -> AntiPattern:
        """Teach something to avoid, why, and what to do instead."""
        acting(ctx, agent)
        return service.add_anti_pattern(agent, pattern, why_bad, better_alternative, task_type)

    @mcp.tool(annotations=WRITE, title="Teach a domain fact")
    @tool_errors
    def alma_add_knowledge(
        agent: AgentArg,
        domain: Annotated[Category, Field(description="The domain, e.g. 'authentication'.")],
        fact: Text,
        source: Annotated[str, Field(max_length=200)] = "agent",
        confidence: Confidence = 0.8,
        ctx: Context | None = None,
    ) -> DomainKnowledge:
        """Teach a fact that is true in this project's domain."""
        acting(ctx, agent)
        return service.add_knowledge(agent, domain, fact, source, confidence)

    @mcp.tool(annotations=WRITE, title="Record a user preference")
    @tool_errors
    def alma_add_preference(
        user_id: UserId,
        category: Annotated[Category, Field(description="e.g. 'code_style', 'communication'.")],
        preference: Text,
        agent: Annotated[Name, Field(description="The agent recording it, working for this user.")],
        source: Annotated[str, Field(max_length=200)] = "user",
        ctx: Context | None = None,
    ) -> UserPreference:
        """Record how a user wants things done; shown to every agent working for that user."""
        acting(ctx, agent, user_id, "alma_add_preference")
        return service.add_preference(user_id, category, preference, source, agent=agent)

    @mcp.tool(annotations=WRITE, title="Give feedback on a memory")
    @tool_errors
    def alma_feedback(
        memory_id: Annotated[MemoryRef, Field(description="The memory's id, or its handle as the prompt shows it.")],
        signal: Annotated[
            FeedbackSignal,
            Field(
                description=f"Confidence steps: {feedback_steps_text()} (harmful counts twice helpful); used also "
                "refreshes recency. Confidence and the helpful/harmful balance both rank."
            ),
        ],
        agent: Annotated[
            Name,
            Field(description="The agent giving feedback; it must be able to read the memory (own, shared or inherited)."),
        ],
        ctx: Context | None = None,
    ) -> dict[str, Any]:
        """Say whether an injected memory helped: counters that move its confidence and ranking.
        A lesson marked harmful repeatedly, with its confidence below the floor, is retired."""
        who = acting(ctx, agent, what="alma_feedback")
        return service.feedback(memory_id, signal, agent, users=who.users).model_dump(mode="json")

    # -- tools: housekeeping -----------------------------------------------------------
    @mcp.tool(annotations=DESTRUCTIVE, title="Forget memories")
    @tool_errors
    def alma_forget(
        agent: Annotated[Name, Field(description="The agent whose memories go (by id too: only its own).")],
        memory_ids: Annotated[
            list[MemoryRef] | None, Field(max_length=1000, description="Ids, or handles as the prompt shows them.")
        ] = None,
        older_than_days: Annotated[float | None, Field(ge=0, le=MAX_AGE_DAYS)] = None,
        below_confidence: Annotated[float | None, Field(ge=0, le=1)] = None,
        dry_run: Annotated[bool, Field(description="Only list what would go (the default).")] = True,
        purge: Annotated[
            bool, Field(description="Erase instead of archiving: not restorable, its words leave the audit log too. Default: archive.")
        ] = False,
        ctx: Context | None = None,
    ) -> ForgetResult:
        """Take an agent's memories out of service: by id, or those older than N days and/or
        below a confidence (one of the three is required; older_than_days=0 is every memory of the
        agent). Shows what would go unless dry_run is false. They are archived (restorable with
        alma_restore) unless purge is true. Every removal is in alma://audit."""
        who = acting(ctx, agent, what="alma_forget")
        return service.forget(memory_ids, agent, older_than_days, below_confidence, dry_run, purge, users=who.users)

    @mcp.tool(annotations=WRITE, title="Restore archived memories")
    @tool_errors
    def alma_restore(
        memory_ids: Annotated[list[MemoryId], Field(min_length=1, max_length=1000)],
        agent: Annotated[Name, Field(description="The agent whose archived memories these are.")],
        ctx: Context | None = None,
    ) -> RestoreResult:
        """Bring an agent's archived memories back into service (forgotten, decayed, capped, merged
        or retired ones; purged ones are erased). Their strength starts afresh."""
        who = acting(ctx, agent, what="alma_restore")
        return service.restore(memory_ids, agent, users=who.users)

    @mcp.tool(annotations=DESTRUCTIVE, title="Merge near-duplicate memories")
    @tool_errors
    def alma_consolidate(
        agent: Annotated[Name, Field(description="Whose memories (for preferences: the agent asking).")],
        memory_type: Annotated[
            Literal["heuristic", "anti_pattern", "knowledge", "preference"] | None,
            Field(description="Which type (default: heuristics, anti-patterns and knowledge)."),
        ] = None,
        similarity_threshold: Annotated[
            float | None, Field(gt=0, le=1, description="Cosine similarity to count as the same (default: per type from config).")
        ] = None,
        dry_run: Annotated[bool, Field(description="Only report what would be merged (the default).")] = True,
        ctx: Context | None = None,
    ) -> ConsolidateResult:
        """Merge near-duplicate memories: the survivor keeps the counts, confidence and provenance
        of both, the other is archived. Reports what it merged (or would merge)."""
        who = acting(ctx, agent, what="alma_consolidate")
        return service.consolidate(agent, memory_type, similarity_threshold, dry_run, users=who.users)

    @mcp.tool(annotations=DESTRUCTIVE, title="Archive decayed and over-cap memories")
    @tool_errors
    def alma_sweep(
        agent: Annotated[Name, Field(description="The agent whose memories to sweep.")],
        dry_run: Annotated[bool, Field(description="Only report what would be archived (the default).")] = True,
        ctx: Context | None = None,
    ) -> SweepResult:
        """Archive memories whose strength (decaying with time since last use or validation) fell
        below the floor, and the lowest-value ones past an agent's cap. Also runs by itself every
        N writes (lifecycle.sweep_every_writes) over the whole project."""
        acting(ctx, agent, what="alma_sweep")
        return service.sweep(agent, dry_run)

    @mcp.tool(annotations=READ_ONLY, title="Memory statistics")
    @tool_errors
    def alma_stats(agent: Name | None = None, ctx: Context | None = None) -> dict[str, Any]:
        """Counts of memories by agent and type (of the agents this connection may act as)."""
        who = caller_of(ctx, mcp.alma_caller)
        if agent is not None:
            check_acts_as(who, agent)
        return service.stats(agent, caller=who)

    @mcp.tool(annotations=READ_ONLY, title="Server health")
    @tool_errors
    def alma_health() -> dict[str, Any]:
        """Whether storage is reachable and the embedding model loaded."""
        return service.health()

    # -- resources ---------------------------------------------------------------------
    @mcp.resource(
        "alma://agents",
        mime_type="application/json",
        description="Agents, their scope and what they read (those this connection may act as).",
    )
    @resource_errors
    def agents_resource() -> str:
        who = mcp.reader()
        return _json([agent for agent in service.agents() if who.may_act_as(agent["name"])])

    @mcp.resource(
        "alma://config",
        mime_type="application/json",
        description="The configuration in effect (to a token of http.tokens: its own agents and binding only).",
    )
    def config_resource() -> str:
        return _json(public_config(service.config, mcp.reader()))

    @mcp.resource(
        "alma://stats{?agent}",
        mime_type="application/json",
        description="Memory counts by agent and type, of the agents this connection may act as (?agent=NAME: one).",
    )
    @resource_errors
    def stats_resource(ctx: Context, agent: str | None = None) -> str:
        who = caller_of(ctx, mcp.alma_caller)
        if agent:
            check_acts_as(who, agent)
        return _json(service.stats(agent or None, caller=who))

    @mcp.resource(
        "alma://audit{?agent,limit}",
        mime_type="application/json",
        description="The audit log as agent NAME may read it (alma://audit?agent=NAME), newest first: every "
        "memory archived, purged, merged or restored that the agent may read, why, when and by which call.",
    )
    @resource_errors
    def audit_resource(ctx: Context, agent: str | None = None, limit: str | None = None) -> str:
        who = acting(ctx, agent, what="alma://audit?agent=NAME")
        count = _int_param(limit, "limit", 100, 1, 10000)
        return _json(service.audit_log(limit=count, reader=agent, users=who.users))

    @mcp.resource(
        "alma://audit/{memory_id}{?agent}",
        mime_type="application/json",
        description="The audit log entries about one memory that agent NAME may read (?agent=NAME), newest first.",
    )
    @resource_errors
    def audit_memory_resource(ctx: Context, memory_id: str, agent: str | None = None) -> str:
        who = acting(ctx, agent, what="alma://audit/ID?agent=NAME")
        return _json(service.audit_log(limit=1000, memory_id=memory_id, reader=agent, users=who.users))

    free_text = ResourceSecurity(exempt_params={"task", "task_type"})

    @mcp.resource(
        "alma://agents/{agent}/memories{?task,top_k,user_id,task_type}",
        mime_type="application/json",
        description="The memories retrieved for a task (JSON), or the agent's recent memories without one.",
        security=free_text,
    )
    @resource_errors
    def memories_resource(
        ctx: Context,
        agent: str,
        task: str | None = None,
        top_k: str | None = None,
        user_id: str | None = None,
        task_type: str | None = None,
    ) -> str:
        acting(ctx, agent, user_id or None)
        k = _int_param(top_k, "top_k", 5, 1, 50)
        if not task:
            return _json({kind: service.list_memories(agent, kind, limit=k) for kind in MEMORY_TYPES if kind != "preference"})
        return _json(service.retrieve(task, agent, k, user_id or None, task_type=task_type or None))

    @mcp.resource(
        "alma://agents/{agent}/prompt{?task,top_k,user_id,task_type}",
        mime_type="text/markdown",
        description="The markdown memory block to inject before a task.",
        security=free_text,
    )
    @resource_errors
    def prompt_resource(
        ctx: Context,
        agent: str,
        task: str | None = None,
        top_k: str | None = None,
        user_id: str | None = None,
        task_type: str | None = None,
    ) -> str:
        acting(ctx, agent, user_id or None)
        if not task:
            raise ResourceError("add the task to the URI: alma://agents/AGENT/prompt?task=...")
        k = _int_param(top_k, "top_k", 5, 1, 50)
        return service.retrieve(task, agent, k, user_id or None, task_type=task_type or None).prompt

    @mcp.resource(
        "alma://agents/{agent}/{memory_type}{?user_id}",
        mime_type="application/json",
        description="All active memories of one type that the agent can read (heuristic, anti_pattern, knowledge, "
        "outcome; preference with ?user_id=USER: that user's).",
    )
    @resource_errors
    def listing_resource(ctx: Context, agent: str, memory_type: str, user_id: str | None = None) -> str:
        acting(ctx, agent, user_id or None)
        if memory_type not in MEMORY_TYPES:
            raise ResourceNotFoundError(f"unknown memory type {memory_type!r}: use one of {list(MEMORY_TYPES)}")
        if memory_type == "preference" and not user_id:
            raise ResourceError(f"preferences belong to a user: alma://agents/{agent}/preference?user_id=USER")
        return _json(service.list_memories(agent, memory_type, limit=1000, user_id=user_id or None))

    @mcp.resource(
        "alma://memories/{memory_id}{?agent}",
        mime_type="application/json",
        description="One memory with its provenance (the outcomes it was learned from), as agent NAME reads it "
        "(?agent=NAME): only a memory that agent may read (own, shared or inherited); any other is reported missing.",
    )
    @resource_errors
    def memory_resource(ctx: Context, memory_id: str, agent: str | None = None) -> str:
        who = acting(ctx, agent, what="alma://memories/ID?agent=NAME")
        detail: MemoryDetail = service.get(memory_id, agent, users=who.users)
        return _json(detail)

    # -- prompts -----------------------------------------------------------------------
    @mcp.prompt(title="Task with memory", description="The task, with what memory knows about it injected first.")
    def alma_task(
        ctx: Context, agent: str, task: str, user_id: str | None = None, task_type: str | None = None
    ) -> list[Message]:
        try:
            acting(ctx, agent, user_id or None)
            memory = service.retrieve(task, agent, None, user_id or None, task_type=task_type or None)
        except AlmaError as exc:  # the SDK would hide a plain exception's message
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None
        parts = [
            read_by_model(memory.prompt),
            f"## Task\n\n{task}",
            f"When you are done, record the outcome with the alma_learn tool (agent {agent!r}): "
            "success, failure or partial, and the strategy you used.",
        ]
        return [UserMessage("\n\n".join(parts))]

    @mcp.prompt(title="Reflect and record", description="Asks the model to record what it learned with alma_learn.")
    def alma_reflect(ctx: Context, agent: str, task: str, outcome: str) -> list[Message]:
        try:
            acting(ctx, agent)
            service.config.agent(agent)
        except AlmaError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None
        if outcome not in get_args(OutcomeKind):
            raise MCPError(code=INVALID_PARAMS, message=f"outcome is {outcome!r}: use one of {', '.join(get_args(OutcomeKind))}")
        return [
            UserMessage(
                f"You just worked on this task as agent {agent!r}:\n\n{task}\n\n"
                f"It ended in: {outcome}.\n\n"
                "Reflect briefly: what strategy did you use, what worked, what failed and why? Then call "
                "the alma_learn tool once with agent, task, outcome (success, failure or partial), "
                "strategy_used (one or two sentences), and error_message or feedback if there were any. "
                "If you learned a general fact or a user preference, also call alma_add_knowledge or "
                "alma_add_preference."
            )
        ]

    for tool in mcp._tool_manager.list_tools():
        # Arguments no tool declares are refused (AlmaServer.call_tool): the schema says so too.
        tool.parameters["additionalProperties"] = False
        tool.description = _plain(tool.description)
    return mcp


def _plain(docstring: str | None) -> str:
    """A docstring as a description: its paragraphs, each on one line (no source indentation)."""
    paragraphs = inspect.cleandoc(docstring or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)
