"""Bad input gets an error result whose message says what to fix, and nothing stored changes."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from alma_mcp.models import MAX_TEXT_CHARS
from alma_mcp.frontends.server import create_server

AGENTS = {
    "helena": {"can_learn": ["form_testing", "ui_testing"], "cannot_learn": ["database"]},
    "victor": {"cannot_learn": ["frontend"]},
}

LEARN = {"agent": "helena", "task": "Test the login form", "outcome": "success", "strategy_used": "Use labels", "task_type": "form_testing"}

# (tool, arguments, words the error message must contain)
BAD_CALLS = [
    ("alma_retrieve", {"agent": "helena"}, ["task", "required"]),
    ("alma_retrieve", {"task": "x"}, ["agent", "required"]),
    ("alma_retrieve", {"agent": "helena", "task": "x", "top_k": "five"}, ["top_k"]),
    ("alma_retrieve", {"agent": "helena", "task": "x", "top_k": 0}, ["top_k"]),
    ("alma_retrieve", {"agent": "helena", "task": "x", "top_k": 10_000}, ["top_k"]),
    ("alma_retrieve", {"agent": "nobody", "task": "x"}, ["unknown agent", "nobody"]),
    ("alma_retrieve", {"agent": "../etc/passwd", "task": "x"}, ["not a valid name"]),
    ("alma_retrieve", {"agent": "helena", "task": "x", "memory_types": ["bogus"]}, ["memory_types", "heuristic"]),
    ("alma_retrieve", {"agent": "helena", "task": "   "}, ["task", "empty"]),
    ("alma_retrieve", {"agent": "helena", "task": "x" * (MAX_TEXT_CHARS + 1)}, ["task", "limit"]),
    ("alma_retrieve", {"agent": "helena", "task": "x", "task_type": "../../etc"}, ["task_type", "category"]),
    ("alma_learn", {**LEARN, "outcome": "great"}, ["outcome", "success"]),
    ("alma_learn", {**LEARN, "task": ""}, ["task", "empty"]),
    ("alma_learn", {**LEARN, "strategy_used": None}, ["strategy_used"]),
    ("alma_learn", {**LEARN, "duration_ms": -5}, ["duration_ms"]),
    ("alma_learn", {**LEARN, "duration_ms": "slow"}, ["duration_ms"]),
    ("alma_learn", {**LEARN, "task_type": "database"}, ["cannot_learn", "database"]),
    ("alma_learn", {**LEARN, "task_type": "api_design"}, ["can_learn", "api_design"]),
    ("alma_learn", {**LEARN, "task_type": None}, ["task_type", "can_learn"]),
    ("alma_learn", {**LEARN, "agent": "helena/../victor"}, ["not a valid name"]),
    ("alma_learn", {**LEARN, "agent": "ghost"}, ["unknown agent", "ghost"]),
    ("alma_learn", {**LEARN, "task": "null byte \x00 inside"}, ["control characters"]),
    ("alma_learn", {**LEARN, "task": "lone surrogate \ud800"}, ["task"]),
    ("alma_learn", {**LEARN, "task": "x" * (MAX_TEXT_CHARS + 1)}, ["task", "limit"]),
    ("alma_add_knowledge", {"agent": "victor", "domain": "frontend", "fact": "CSS grid is fine"}, ["cannot_learn", "frontend"]),
    ("alma_add_knowledge", {"agent": "victor", "domain": "a/b\\c", "fact": "f"}, ["domain", "not a valid category"]),
    ("alma_add_knowledge", {"agent": "victor", "domain": "billing", "fact": "f", "confidence": 1.5}, ["confidence"]),
    ("alma_add_heuristic", {"agent": "helena", "condition": "c", "strategy": "s", "task_type": "database"}, ["cannot_learn"]),
    ("alma_add_anti_pattern", {"agent": "victor", "pattern": "p"}, ["why_bad", "required"]),
    ("alma_add_preference", {"user_id": "../../root", "category": "style", "preference": "p", "agent": "helena"}, ["user id"]),
    ("alma_add_preference", {"user_id": "alice", "category": "", "preference": "p", "agent": "helena"}, ["category"]),
    ("alma_feedback", {"memory_id": "not-an-id", "signal": "helpful", "agent": "helena"}, ["memory id"]),
    ("alma_feedback", {"memory_id": "heuristic-" + "0" * 32, "signal": "helpful", "agent": "helena"}, ["no memory"]),
    ("alma_feedback", {"memory_id": "heuristic-" + "0" * 32, "signal": "love", "agent": "helena"}, ["signal"]),
    ("alma_forget", {}, ["agent", "required"]),
    ("alma_feedback", {"memory_id": "heuristic-" + "0" * 32, "signal": "helpful"}, ["agent", "required"]),
    ("alma_forget", {"agent": "helena", "below_confidence": 3}, ["below_confidence"]),
    ("alma_forget", {"agent": "helena", "memory_ids": ["knowledge-" + "f" * 32], "dry_run": False}, ["no memory"]),
    ("alma_forget", {"agent": "helena", "older_than_days": 1e308}, ["older_than_days"]),
    ("alma_forget", {"agent": "helena", "dry_run": False}, ["say what to forget", "older_than_days=0"]),
    ("alma_forget", {"agent": "helena", "dry_run": False, "purge": True}, ["say what to forget"]),
    ("alma_stats", {"agent": "ghost"}, ["unknown agent"]),
    ("alma_retrieve", {"agent": "helena", "task": "x", "user": "alice"}, ["unknown argument 'user'", "user_id"]),
    ("alma_learn", {**LEARN, "outcome": "succeeded", "sucess": 1}, ["unknown argument 'sucess'"]),
    ("alma_no_such_tool", {}, ["alma_no_such_tool"]),
]


def snapshot(alma) -> str:
    """Every stored memory (archived too), as JSON: compared before and after bad calls."""
    rows = []
    for memory in alma.memories(include_archived=True):
        rows.append(memory.model_dump(mode="json"))
    return json.dumps(sorted(rows, key=lambda r: r["id"]), sort_keys=True)


@pytest.fixture
def seeded(make_alma):
    alma = make_alma(allow_undeclared_agents=False, agents=AGENTS)
    alma.add_knowledge("victor", "billing", "Invoices are generated nightly at 02:00 UTC")
    alma.add_heuristic("helena", "Testing a login form", "Assert on visible error text, not CSS classes", "form_testing")
    alma.add_preference("alice", "communication", "Short bullet-point reports")
    for _ in range(2):
        alma.learn(**LEARN)
    return alma


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_every_bad_call_is_an_error_result_and_changes_nothing(seeded, mode):
    before = snapshot(seeded)
    async with Client(create_server(alma=seeded), mode=mode) as client:
        for tool, arguments, words in BAD_CALLS:
            result = await client.call_tool(tool, arguments)
            assert result.is_error, f"{tool}({arguments}) should fail"
            message = result.content[0].text
            for word in words:
                assert word.lower() in message.lower(), f"{tool}({arguments}): {word!r} not in {message!r}"
            assert message.strip() != f"Error executing tool {tool}", "a crash, not an anticipated error"
            assert "validation error for" not in message and "errors.pydantic.dev" not in message, message
        # The server is still alive and well after all of that.
        ok = await client.call_tool("alma_retrieve", {"agent": "helena", "task": "test the login form"})
        assert not ok.is_error
    assert snapshot(seeded) == before


async def test_bad_resource_reads_are_clear_errors(seeded):
    before = snapshot(seeded)
    async with Client(create_server(alma=seeded), mode="legacy") as client:
        for uri, words in [
            ("alma://agents/helena/bogus", ["unknown memory type"]),
            ("alma://agents/ghost/heuristic", ["unknown agent"]),
            ("alma://agents/helena/prompt", ["task"]),
            ("alma://agents/helena/prompt?task=x&top_k=abc", ["top_k"]),
            ("alma://agents/helena/memories?task=x&top_k=999", ["top_k"]),
            ("alma://agents/helena/prompt?task=x&task_type=%2E%2E%2Fetc", ["task_type", "category"]),
            ("alma://memories/heuristic-" + "0" * 32 + "?agent=helena", ["no memory"]),
            ("alma://memories/heuristic-" + "0" * 32, ["agent=NAME"]),
            ("alma://agents/helena/preference", ["user_id"]),
            ("alma://audit", ["agent=NAME"]),
            ("alma://memories/whatever?agent=helena", ["memory id"]),
            ("alma://memories/nope-1?agent=helena", ["memory id"]),
        ]:
            with pytest.raises(MCPError) as error:
                await client.read_resource(uri)
            for word in words:
                assert word.lower() in str(error.value).lower(), f"{uri}: {error.value}"
            assert error.value.error.code == INVALID_PARAMS, f"{uri}: a bad argument, not an internal error: {error.value}"
    assert snapshot(seeded) == before


async def test_bad_prompt_arguments_are_clear_errors(seeded):
    async with Client(create_server(alma=seeded), mode="legacy") as client:
        for arguments, words in [
            ({"agent": "ghost", "task": "x"}, ["unknown agent 'ghost'"]),
            ({"agent": "helena", "task": "  "}, ["task", "empty"]),
            ({"agent": "helena"}, ["task"]),
        ]:
            with pytest.raises(MCPError) as error:
                await client.get_prompt("alma_task", arguments)
            for word in words:
                assert word in str(error.value), str(error.value)
        with pytest.raises(MCPError, match="outcome is 'meh': use one of success, failure, partial"):
            await client.get_prompt("alma_reflect", {"agent": "helena", "task": "t", "outcome": "meh"})


async def test_unusual_unicode_is_stored_and_found(seeded):
    text = "Kundenfeedback: „Größe“ 👍🏽 — 日本語のエラー: 無効な入力 — RTL: שגיאה"
    async with Client(create_server(alma=seeded), mode="legacy") as client:
        taught = await client.call_tool("alma_add_knowledge", {"agent": "victor", "domain": "i18n", "fact": text})
        assert not taught.is_error
        got = await client.call_tool(
            "alma_retrieve", {"agent": "victor", "task": "日本語のエラー 無効な入力", "memory_types": ["knowledge"]}
        )
        facts = [m["memory"]["fact"] for m in got.structured_content["knowledge"]]
        assert text in facts


async def test_argument_errors_read_as_one_clause_each(seeded):
    async with Client(create_server(alma=seeded), mode="legacy") as client:
        result = await client.call_tool("alma_learn", {**LEARN, "outcome": "succeeded", "duration_ms": -5, "task": None})
        assert result.is_error
        assert result.content[0].text == (
            "Error executing tool alma_learn: task: input should be a valid string (got None); "
            "outcome: input should be 'success', 'failure' or 'partial' (got 'succeeded'); "
            "duration_ms: input should be greater than or equal to 0 (got -5)"
        )
        tools = (await client.list_tools()).tools
        for tool in tools:
            assert tool.input_schema.get("additionalProperties") is False, tool.name
            assert "\n " not in (tool.description or ""), f"{tool.name}: source indentation in {tool.description!r}"
