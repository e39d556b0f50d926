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

from .config import AlmaConfig, load_config
from .errors import AlmaError, ConfigError, InvalidInput, NotFound, ScopeDenied, StorageError
from .models import AntiPattern, DomainKnowledge, Heuristic, Outcome, UserPreference
from .retrieval import MemorySlice, ScoredMemory
from .service import ALMA, ForgetResult, LearnResult
from .harness import (
    Agent,
    Briefing,
    Context,
    ExecutionResult,
    Harness,
    MemorySchema,
    RunResult,
    Setting,
    Tool,
    ToolType,
)
from .templates import create_harness

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
