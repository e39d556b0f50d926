"""Short handles: how the prompt names a memory, and what a tool accepts in place of its id.

A server id is the memory's type and 32 hex digits (`knowledge-3f0c9e2a…`): about 11 tokens, which
on a weak mention is as much as the words it shows. The prompt names a memory by the first
HANDLE_DIGITS of those hex digits instead; a tool that takes a memory id also takes a handle, and
resolves it among the memories the caller may read (Retriever.with_handle), never across agents or
users. Ids of another form (a store imported with its own ids) are shown whole.
"""

from __future__ import annotations

import re

from ..models import HANDLE_DIGITS, HANDLE_PATTERN, MEMORY_ID_PATTERN

_SERVER_ID = re.compile(rf"^{MEMORY_ID_PATTERN}$")
_HANDLE = re.compile(rf"^{HANDLE_PATTERN}$")
"""What a tool accepts as a handle: a prefix of an id's hex digits, at least HANDLE_DIGITS long."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def handle_of(memory_id: str) -> str:
    """How the prompt names this memory: the start of its hex digits, or (an id of another form)
    the id itself, made safe to stand outside a fence."""
    if _SERVER_ID.match(memory_id):
        return _digits(memory_id)[:HANDLE_DIGITS]
    return _UNSAFE.sub("_", memory_id)[:80]


def is_handle(text: str) -> bool:
    return bool(_HANDLE.match(text))


def matches(memory_id: str, handle: str) -> bool:
    """Whether a server id's hex digits start with `handle`."""
    return bool(_SERVER_ID.match(memory_id)) and _digits(memory_id).startswith(handle)


def _digits(memory_id: str) -> str:
    """A server id's 32 hex digits (its type has no '-')."""
    return memory_id.partition("-")[2][:32]
