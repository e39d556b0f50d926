"""The exceptions alma-mcp raises. Every front end (MCP, CLI, Python) catches `AlmaError`.

Each message is written for the caller to read and act on: it says what was wrong and
what to send instead.
"""

from __future__ import annotations


class AlmaError(Exception):
    """Base class of every anticipated alma-mcp failure."""


class InvalidInput(AlmaError):
    """An argument is missing, malformed or out of range."""


class NotFound(AlmaError):
    """The named agent, memory or memory type does not exist."""


class ScopeDenied(AlmaError):
    """The agent's configuration forbids this read or write."""


class ConfigError(AlmaError):
    """The configuration file is unreadable or invalid."""


class StorageError(AlmaError):
    """The memory store could not complete the operation; nothing was changed."""
