"""Who may learn what, and who may read whose memories.

Writes: `can_learn` / `cannot_learn` per agent, checked on every write. The category of a
write is the task type for outcomes, heuristics and anti-patterns, the domain for knowledge
and the category for preferences; categories compare ignoring case. `cannot_learn` is
checked first; an empty `can_learn` means anything not forbidden, a non-empty one also
requires the write to name a category.

Reads: an agent reads its own memories, those of the agents it `inherit_from`s and those of
agents that `share_with` it. Anything else is invisible: a memory id outside that scope is
answered exactly like an id that does not exist, so scope leaks nothing.
"""

from __future__ import annotations

from .config import AlmaConfig
from .errors import NotFound, ScopeDenied


def _listed(category: str, categories: list[str]) -> bool:
    folded = category.casefold()
    return any(folded == c.casefold() for c in categories)


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
                f"agents.{agent}.can_learn allows only {settings.can_learn}"
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
        raise NotFound(f"no memory with id {memory_id!r} in project {config.project!r}")
    raise ScopeDenied(
        f"agent {reader!r} may not read the memories of agent {owner!r}: "
        f"add {owner!r} to agents.{reader}.inherit_from or {reader!r} to agents.{owner}.share_with"
    )
