"""Short handles: how the prompt names a memory, and what a tool accepts in place of its id.

A server id is the memory's type and 32 hex digits (`knowledge-3f0c9e2a…`): about 11 tokens, which
on a weak mention is as much as the words it shows. The prompt names a memory by the first
HANDLE_DIGITS of those hex digits instead; a tool that takes a memory id also takes a handle, and
resolves it among the memories the caller may read (Retriever.with_handle), never across agents or
users. Ids of another form (a store imported with its own ids) are shown whole.
"""

from __future__ import annotations

import re

from ..models import HANDLE_DIGITS

_SERVER_ID = re.compile(r"^[a-z_]{1,16}-([0-9a-f]{32})$")
_HANDLE = re.compile(rf"^[0-9a-f]{{{HANDLE_DIGITS},32}}$")
"""What a tool accepts as a handle: a prefix of an id's hex digits, at least HANDLE_DIGITS long."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def handle_of(memory_id: str) -> str:
    """How the prompt names this memory: the start of its hex digits, or (an id of another form)
    the id itself, made safe to stand outside a fence."""
    found = _SERVER_ID.match(memory_id)
    if found:
        return found.group(1)[:HANDLE_DIGITS]
    return _UNSAFE.sub("_", memory_id)[:80]


def is_handle(text: str) -> bool:
    return bool(_HANDLE.match(text))


def matches(memory_id: str, handle: str) -> bool:
    """Whether a server id's hex digits start with `handle`."""
    found = _SERVER_ID.match(memory_id)
    return found is not None and found.group(1).startswith(handle)
