"""Who may learn what: `can_learn` / `cannot_learn` per agent, checked on every write.

The category of a write is the task type for outcomes, heuristics and anti-patterns, the
domain for knowledge and the category for preferences. `cannot_learn` always wins; an
empty `can_learn` means anything not forbidden.
"""

from __future__ import annotations

from .config import AlmaConfig
from .errors import ScopeDenied


def check_can_learn(config: AlmaConfig, agent: str, category: str | None, what: str) -> None:
    """Raise ScopeDenied, naming the rule, if `agent` may not learn `category`."""
    settings = config.agent(agent)
    if category is not None and category in settings.cannot_learn:
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
        if category not in settings.can_learn:
            raise ScopeDenied(
                f"agent {agent!r} may not learn {what} in category {category!r}: "
                f"agents.{agent}.can_learn allows only {settings.can_learn}"
            )


def check_can_read(config: AlmaConfig, reader: str, owner: str) -> None:
    """Raise ScopeDenied if `reader` may not see `owner`'s memories (own, inherited or shared)."""
    if owner not in config.readable_agents(reader):
        raise ScopeDenied(
            f"agent {reader!r} may not read the memories of agent {owner!r}: "
            f"add {owner!r} to agents.{reader}.inherit_from or {reader!r} to agents.{owner}.share_with"
        )
