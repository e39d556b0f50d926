"""Who may learn what, and who may read whose memories.

Writes: `can_learn` / `cannot_learn` per agent, checked on every write. The category of a
write is the task type for outcomes, heuristics and anti-patterns, the domain for knowledge
and the category for preferences; categories compare ignoring case and spacing. `cannot_learn` is
checked first; an empty `can_learn` means anything not forbidden, a non-empty one also
requires the write to name a category.

Reads: an agent reads its own memories, those of the agents it `inherit_from`s and those of
agents that `share_with` it. Anything else is invisible: a memory id outside that scope is
answered exactly like an id that does not exist, so scope leaks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import AlmaConfig
from .errors import NotFound, ScopeDenied


def normal_category(category: str) -> str:
    """A category as rules compare it: case folded, runs of spaces one space, none at the ends."""
    return " ".join(category.split()).casefold()


def _listed(category: str, categories: list[str]) -> bool:
    folded = normal_category(category)
    return any(folded == normal_category(c) for c in categories)


def check_can_learn(config: AlmaConfig, agent: str, category: str | None, what: str) -> None:
    """Raise ScopeDenied, naming the rule, if `agent` may not learn `category`."""
    settings = config.agent(agent)
    if category is not None and _listed(category, settings.cannot_learn):
        raise ScopeDenied(
            f"agent {agent!r} may not learn {what} in category {category!r}: "
            f"it is listed in agents.{agent}.cannot_learn {settings.cannot_learn}"
        )
    if settings.can_learn:
        if category is None:
            raise ScopeDenied(
                f"agent {agent!r} may only learn the categories in agents.{agent}.can_learn "
                f"{settings.can_learn}; pass a {'domain' if what == 'knowledge' else 'task_type'} "
                "from that list"
            )
        if not _listed(category, settings.can_learn):
            raise ScopeDenied(
                f"agent {agent!r} may not learn {what} in category {category!r}: "
                f"agents.{agent}.can_learn allows only {settings.can_learn} (add {category!r} to that list "
                "in the config to allow it)"
            )


def can_read(config: AlmaConfig, reader: str, owner: str, memory_type: str | None = None) -> bool:
    return owner in config.readable_agents(reader, memory_type)


def check_can_read(
    config: AlmaConfig, reader: str, owner: str, memory_id: str | None = None, memory_type: str | None = None
) -> None:
    """Raise if `reader` may not see `owner`'s memories.

    With a `memory_id` the memory is invisible: NotFound, worded like a missing id. Without
    one (a listing or search that names the other agent) ScopeDenied says which setting
    would allow it.
    """
    if can_read(config, reader, owner, memory_type):
        return
    if memory_id is not None:
        raise missing(config, memory_id)
    raise ScopeDenied(
        f"agent {reader!r} may not read the memories of agent {owner!r}: "
        f"add {owner!r} to agents.{reader}.inherit_from or {reader!r} to agents.{owner}.share_with"
    )


# -- callers: who is on the other end of a connection ----------------------------------------


@dataclass(frozen=True)
class Caller:
    """What a connection may act as: the agents it may name and the users whose preferences it
    may read or write. None means all of them: a stdio server's caller is the local user who
    started it, and serves every agent of the config; over HTTP each bearer token names its own.

    Within an agent, the agent's own scope still applies (`check_can_read`): a caller that may act
    as every agent reaches another agent's memories only by naming that agent."""

    agents: frozenset[str] | None = None
    users: frozenset[str] | None = None
    name: str = "local"

    def may_act_as(self, agent: str) -> bool:
        return self.agents is None or agent in self.agents

    def may_serve(self, user_id: str) -> bool:
        return self.users is None or user_id in self.users


EVERYONE = Caller()
"""The caller of a stdio server, of the CLI and of the Python API: every agent, every user."""


def check_acts_as(caller: Caller, agent: str) -> None:
    if not caller.may_act_as(agent):
        raise ScopeDenied(
            f"this connection ({caller.name}) may not act as agent {agent!r}: "
            f"its credential covers {sorted(caller.agents or [])}"
        )


def check_serves(caller: Caller, user_id: str | None) -> None:
    if user_id is not None and not caller.may_serve(user_id):
        raise ScopeDenied(
            f"this connection ({caller.name}) may not read or write the preferences of user {user_id!r}: "
            "its credential does not list that user"
        )


def missing(config: AlmaConfig, memory_id: str) -> NotFound:
    """The one answer for an id that does not exist and for one the caller may not reach."""
    return NotFound(f"no memory with id {memory_id!r} in project {config.project!r}")


def visible(
    config: AlmaConfig, memory: Any, agent: str | None, users: frozenset[str] | None, write: bool = False
) -> bool:
    """Whether `agent`, for a caller serving `users`, may read (or, with `write`, change) `memory`.

    A preference belongs to its user: any agent working for that user reaches it. Any other memory
    belongs to its agent: others read it through share_with / inherit_from, and only the owner
    changes it. `agent` None is the trusted local caller (CLI, Python API)."""
    if memory.type == "preference":
        return users is None or memory.user_id in users
    if agent is None:
        return True
    if write:
        return memory.agent == agent
    return can_read(config, agent, memory.agent, memory.type)
