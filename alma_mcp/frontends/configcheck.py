"""What a valid configuration means, agent by agent: the report of `alma-mcp config check`.

Validation itself is `load_config`'s (an invalid file never gets here); this says, in the terms
the server enforces, what each declared agent may write and whose lessons it reads.
"""

from __future__ import annotations

from typing import Any

from ..config import AlmaConfig


def describe(config: AlmaConfig) -> dict[str, Any]:
    settings = config.alma
    agents: dict[str, Any] = {}
    for name, agent in settings.agents.items():
        agents[name] = {
            "description": agent.description,
            "domain": agent.domain,
            "can_learn": list(agent.can_learn),
            "cannot_learn": list(agent.cannot_learn),
            # lessons and knowledge; raw outcomes are never shared (config.readable_agents)
            "reads": config.readable_agents(name),
            "read_by": sorted(other for other in settings.agents if other != name and name in config.readable_agents(other)),
            "min_occurrences_for_heuristic": agent.min_occurrences_for_heuristic,
            "max_memories": agent.max_memories,
            "retrieval_override": agent.retrieval is not None,
        }
    return {
        "source": str(config.source) if config.source is not None else None,
        "project": config.project,
        "storage": settings.storage,
        "data_dir": str(config.data_dir) if settings.storage == "chroma" else None,
        "allow_undeclared_agents": settings.allow_undeclared_agents,
        "agents": agents,
    }
