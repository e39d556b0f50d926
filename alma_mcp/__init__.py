"""alma-mcp: a learning memory for AI agents, over the Model Context Protocol and in Python.

Public API::

    from alma_mcp import ALMA
    alma = ALMA.from_config(".alma/config.yaml")
    memories = alma.retrieve(task="Test the login form validation", agent="helena", top_k=5)
    prompt = memories.to_prompt()

    # The harness: retrieve and inject before a run, learn from its outcome after.
    from alma_mcp import Context, ExecutionResult, create_harness
    harness = create_harness("coding", "helena", alma)
    result = harness.run(Context(task="Test the signup form"), executor)  # executor(briefing) -> ExecutionResult
"""

from __future__ import annotations

import os

# The model runs in numpy (bert.py) on small matrices. With OpenBLAS's default of one thread
# per core, its worker spins while it waits: on a busy machine a bulk embedding that needs
# 1.6 s of CPU on one thread took over 100 s of CPU on two. One thread, unless the user says
# otherwise; effective when alma_mcp is imported before numpy, as the server and CLI do.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

# The public names are imported when first used (PEP 562), not with the package: `python -m
# alma_mcp` and the CLI import this package first, and the service pulls in numpy, pydantic
# models and the retrieval code (most of a second) that answering an MCP `initialize` does not need.
_EXPORTS = {
    "AlmaConfig": "config",
    "load_config": "config",
    "AlmaError": "errors",
    "ConfigError": "errors",
    "InvalidInput": "errors",
    "NotFound": "errors",
    "ScopeDenied": "errors",
    "StorageError": "errors",
    "AntiPattern": "models",
    "DomainKnowledge": "models",
    "Heuristic": "models",
    "Outcome": "models",
    "UserPreference": "models",
    "MemorySlice": "prompt.results",
    "ScoredMemory": "prompt.results",
    "ALMA": "service",
    "ForgetResult": "service",
    "LearnResult": "service",
    "Agent": "frontends.harness",
    "Briefing": "frontends.harness",
    "Context": "frontends.harness",
    "ExecutionResult": "frontends.harness",
    "Harness": "frontends.harness",
    "MemorySchema": "frontends.harness",
    "RunResult": "frontends.harness",
    "Setting": "frontends.harness",
    "Tool": "frontends.harness",
    "ToolType": "frontends.harness",
    "create_harness": "frontends.templates",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alma_mcp' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "__version__",
    "ALMA",
    "AlmaConfig",
    "load_config",
    "MemorySlice",
    "ScoredMemory",
    "LearnResult",
    "ForgetResult",
    "Harness",
    "create_harness",
    "Setting",
    "Context",
    "Agent",
    "MemorySchema",
    "Tool",
    "ToolType",
    "Briefing",
    "ExecutionResult",
    "RunResult",
    "Heuristic",
    "AntiPattern",
    "DomainKnowledge",
    "UserPreference",
    "Outcome",
    "AlmaError",
    "ConfigError",
    "InvalidInput",
    "NotFound",
    "ScopeDenied",
    "StorageError",
]
