"""The prompt names a memory by a short handle (the first 8 hex digits of its id) instead of its
full id; alma_feedback, alma_forget and the memory resource take the handle in the id's place,
resolved among the memories the caller may read, never across agents or users. Real model, real
store, a real MCP client session."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from alma_mcp.frontends.server import create_server
from alma_mcp.models import DomainKnowledge
from alma_mcp.prompt.handles import handle_of
from alma_mcp.service import ALMA

MODES = ["legacy", "auto"]
FACT = "The staging database is reset every Sunday at 02:00 UTC."
TASK = "when is the staging database reset"


def text_of(result: Any) -> str:
    return result.content[0].text if result.content else ""


@pytest.mark.parametrize("mode", MODES)
async def test_a_handle_from_the_prompt_rates_reads_and_forgets_its_memory(alma: ALMA, mode: str) -> None:
    memory = alma.add_knowledge("helena", "ops", FACT)
    server = create_server(alma=alma)
    async with Client(server, mode=mode) as client:
        served = await client.call_tool("alma_retrieve", {"task": TASK, "agent": "helena"})
        prompt = served.structured_content["prompt"]
        handle = handle_of(memory.id)
        assert re.fullmatch(r"[0-9a-f]{8}", handle) and handle in prompt and memory.id not in prompt
        rated = await client.call_tool("alma_feedback", {"memory_id": handle, "signal": "helpful", "agent": "helena"})
        assert not rated.is_error, text_of(rated)
        assert rated.structured_content["id"] == memory.id and rated.structured_content["helpful"] == 1
        read = await client.read_resource(f"alma://memories/{handle}?agent=helena")
        assert json.loads(read.contents[0].text)["memory"]["id"] == memory.id
        # Another agent that may not read helena's memories cannot reach it by its handle either.
        foreign = await client.call_tool("alma_feedback", {"memory_id": handle, "signal": "helpful", "agent": "victor"})
        assert foreign.is_error and "no memory with id" in text_of(foreign)
        gone = await client.call_tool("alma_forget", {"agent": "helena", "memory_ids": [handle], "dry_run": False})
        assert not gone.is_error and gone.structured_content["memories"][0]["id"] == memory.id
        assert alma.get(memory.id).memory.archived


async def test_a_handle_that_names_two_memories_asks_for_the_full_id(alma: ALMA) -> None:
    twins = [
        DomainKnowledge(id=f"knowledge-abcdef01{tail * 24}", project=alma.config.project, agent="helena", domain="ops", fact=fact)
        for tail, fact in (("0", FACT), ("1", "The staging cluster runs three replicas."))
    ]
    alma.put(twins)
    server = create_server(alma=alma)
    async with Client(server, mode="legacy") as client:
        both = await client.call_tool("alma_feedback", {"memory_id": "abcdef01", "signal": "used", "agent": "helena"})
        assert both.is_error and "give the full id" in text_of(both)
        assert all(t.id in text_of(both) for t in twins)
        one = await client.call_tool("alma_feedback", {"memory_id": "abcdef011", "signal": "used", "agent": "helena"})
        assert not one.is_error and one.structured_content["id"] == twins[1].id
        assert alma.get(twins[0].id).memory.used == 0, "the ambiguous call changed nothing"
        short = await client.call_tool("alma_feedback", {"memory_id": "abcdef0", "signal": "used", "agent": "helena"})
        assert short.is_error and "memory id or handle" in text_of(short)


@pytest.mark.parametrize("mode", MODES)
async def test_a_handle_resolves_only_among_the_callers_memories(alma: ALMA, mode: str) -> None:
    # Two agents' facts whose ids share their first 8 hex digits: each agent's handle names its
    # own, and neither the answer nor an error ever shows the other agent's id.
    mine, theirs = (
        DomainKnowledge(id=f"knowledge-5eed5eed{tail * 24}", project=alma.config.project, agent=agent, domain="ops", fact=fact)
        for tail, agent, fact in (("a", "victor", "Victor's builds run on the arm64 pool."), ("b", "helena", FACT))
    )
    alma.put([mine, theirs])
    server = create_server(alma=alma)
    async with Client(server, mode=mode) as client:
        rated = await client.call_tool("alma_feedback", {"memory_id": "5eed5eed", "signal": "harmful", "agent": "victor"})
        assert not rated.is_error, text_of(rated)
        assert rated.structured_content["id"] == mine.id and theirs.id not in text_of(rated)
        gone = await client.call_tool("alma_forget", {"agent": "victor", "memory_ids": ["5eed5eedb"], "dry_run": False})
        assert gone.is_error and "no memory with id" in text_of(gone) and theirs.id not in text_of(gone)
        with pytest.raises(MCPError, match="no memory with id") as refused:
            await client.read_resource("alma://memories/5eed5eedb?agent=victor")
        assert theirs.id not in str(refused.value)
    assert alma.get(theirs.id).memory.harmful == 0 and not alma.get(theirs.id).memory.archived
