"""Scope: who may learn what (checked on every write, by category, naming the rule), and who may
read whose memories (share_with / inherit_from, enforced on every read, invisible otherwise).
Both directions are tested: what the setting allows, and what it does not."""

from __future__ import annotations

import json

import pytest
from mcp import Client

from alma_mcp.config import parse_config
from alma_mcp.errors import ConfigError, NotFound, ScopeDenied
from alma_mcp.frontends.server import create_server

MODES = ["legacy", "auto"]

AGENTS = {
    "helena": {"can_learn": ["testing", "ui_testing"], "cannot_learn": ["database"]},
    "victor": {"can_learn": ["api_design", "database", "backend"], "share_with": ["helena"]},
    "ada": {"inherit_from": ["victor"]},
    "max": {},
}
TASK = "The payments API returns 500 when the currency field is missing"
FIX = "Validate the request body against the schema before calling the handler"


def total(alma) -> int:
    return alma.stats()["total"]


def test_writes_outside_can_learn_are_refused_naming_the_rule(make_alma):
    alma = make_alma(agents=AGENTS)
    cases = [
        (lambda: alma.learn("helena", "Migrate the users table", "success", "Use a transaction", "database"), "cannot_learn"),
        (lambda: alma.learn("helena", "Design the orders endpoint", "success", "REST", "api_design"), "can_learn"),
        (lambda: alma.learn("helena", "Test the form", "success", "Playwright"), "can_learn"),
        (lambda: alma.add_heuristic("helena", "a migration", "batch it", task_type="database"), "cannot_learn"),
        (lambda: alma.add_anti_pattern("helena", "raw SQL", "injection", task_type="backend"), "can_learn"),
        (lambda: alma.add_knowledge("helena", "database", "Postgres 16 is used"), "cannot_learn"),
        (lambda: alma.add_knowledge("victor", "frontend", "React 18 is used"), "can_learn"),
        (lambda: alma.add_preference("u1", "frontend", "dark mode", agent="victor"), "can_learn"),
    ]
    for write, rule in cases:
        with pytest.raises(ScopeDenied) as caught:
            write()
        assert rule in str(caught.value) and "agents." in str(caught.value)
    assert total(alma) == 0  # nothing refused was stored
    # Categories compare ignoring case, and allowed writes go through.
    with pytest.raises(ScopeDenied, match="cannot_learn"):
        alma.learn("helena", "Migrate the users table", "success", "Use a transaction", "Database")
    alma.learn("helena", "Test the login form", "success", "Playwright", "UI_Testing")
    alma.add_knowledge("victor", "Database", "Postgres 16 is used")
    assert total(alma) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_scope_errors_reach_the_client(make_alma, mode):
    alma = make_alma(agents=AGENTS)
    async with Client(create_server(alma=alma), mode=mode) as client:
        result = await client.call_tool(
            "alma_learn",
            {"agent": "helena", "task": "Migrate the users table", "outcome": "success", "strategy_used": "x", "task_type": "database"},
        )
        assert result.is_error and "cannot_learn" in result.content[0].text
    assert total(alma) == 0


def _teach_victor(alma) -> tuple[str, str, str]:
    heuristic = alma.add_heuristic("victor", TASK, FIX, task_type="backend")
    knowledge = alma.add_knowledge("victor", "backend", "The payments API validates currency codes against ISO 4217")
    outcome = alma.learn("victor", TASK, "success", FIX, "backend").outcome_id
    return heuristic.id, knowledge.id, outcome


def test_share_with_and_inherit_from_allow_reading_in_one_direction_only(make_alma):
    alma = make_alma(agents=AGENTS)
    heuristic_id, knowledge_id, outcome_id = _teach_victor(alma)
    helena_own = alma.add_heuristic("helena", "The login form test is flaky", "Wait for the button", task_type="testing")

    # helena (victor shares with her) and ada (inherits from victor) read victor's lessons...
    for reader in ("helena", "ada"):
        got = alma.retrieve(TASK, reader)
        assert [h.memory.id for h in got.heuristics] == [heuristic_id]
        assert got.heuristics[0].source_agent == "victor"
        assert knowledge_id in [k.memory.id for k in got.knowledge]
        assert heuristic_id in [m.id for m in alma.list_memories(reader, "heuristic")]
        assert alma.get(heuristic_id, agent=reader).memory.id == heuristic_id
        assert alma.feedback(heuristic_id, "used", agent=reader).used >= 1
        # ...but never victor's raw outcomes: the lessons are shared, the log is not.
        assert alma.retrieve(TASK, reader, memory_types=["outcome"]).outcomes == []
        assert outcome_id not in [m.id for m in alma.list_memories(reader, "outcome")]
        with pytest.raises(NotFound, match="no memory with id"):
            alma.get(outcome_id, agent=reader)
        with pytest.raises(NotFound, match="no memory with id"):
            alma.feedback(outcome_id, "helpful", agent=reader)
    # ...but max, who has neither setting, sees nothing of it anywhere.
    assert alma.retrieve(TASK, "max").heuristics == [] and alma.retrieve(TASK, "max").knowledge == []
    assert alma.list_memories("max", "heuristic") == [] and alma.list_memories("max", "outcome") == []
    for memory_id in (heuristic_id, knowledge_id, outcome_id):
        with pytest.raises(NotFound, match="no memory with id"):
            alma.get(memory_id, agent="max")
        with pytest.raises(NotFound, match="no memory with id"):
            alma.feedback(memory_id, "helpful", agent="max")
    # The other direction: victor shares with helena, not the reverse; victor does not inherit.
    assert helena_own.id not in [h.memory.id for h in alma.retrieve("The login form test is flaky", "victor").heuristics]
    assert alma.list_memories("victor", "heuristic") == [alma.get(heuristic_id).memory]
    with pytest.raises(NotFound):
        alma.get(helena_own.id, agent="victor")
    # ada inherits from victor, which lets ada read victor, never victor read ada.
    ada_own = alma.add_knowledge("ada", "backend", "Ada's note: the payments API retries webhooks twice")
    with pytest.raises(NotFound):
        alma.get(ada_own.id, agent="victor")
    assert ada_own.id not in [k.memory.id for k in alma.retrieve("payments API webhooks retries", "victor").knowledge]
    # The invisible answer is the same as for an id that does not exist: scope leaks nothing.
    with pytest.raises(NotFound) as missing:
        alma.get("heuristic-" + "0" * 32, agent="max")
    with pytest.raises(NotFound) as hidden:
        alma.get(heuristic_id, agent="max")
    assert str(hidden.value).replace(heuristic_id, "X") == str(missing.value).replace("heuristic-" + "0" * 32, "X")
    # Refused feedback changed nothing.
    assert alma.get(heuristic_id).memory.helpful == 0
    # The owner sees its own outcomes, and the raw outcomes behind a lesson; a reader of the
    # lesson does not.
    for _ in range(3):
        alma.learn("victor", TASK, "success", FIX, "backend")
    lesson = next(h for h in alma.list_memories("victor", "heuristic") if h.supporting_outcomes)
    assert outcome_id in lesson.supporting_outcomes
    assert alma.retrieve(TASK, "victor", memory_types=["outcome"]).outcomes
    assert outcome_id in [m.id for m in alma.get(lesson.id, agent="victor").provenance]
    assert alma.get(lesson.id).provenance  # the operator's view, no agent
    assert alma.get(lesson.id, agent="helena").provenance == []


@pytest.mark.parametrize("mode", MODES)
async def test_read_scope_over_mcp(make_alma, mode):
    alma = make_alma(agents=AGENTS)
    heuristic_id, _, outcome_id = _teach_victor(alma)
    async with Client(create_server(alma=alma), mode=mode) as client:
        shared = json.loads(
            (await client.read_resource(f"alma://memories/{heuristic_id}?agent=helena")).contents[0].text
        )
        assert shared["memory"]["id"] == heuristic_id
        with pytest.raises(Exception, match="no memory with id"):
            await client.read_resource(f"alma://memories/{outcome_id}?agent=max")
        with pytest.raises(Exception, match="no memory with id"):  # shared lessons, not the log
            await client.read_resource(f"alma://memories/{outcome_id}?agent=helena")
        mine = json.loads((await client.read_resource(f"alma://memories/{outcome_id}?agent=victor")).contents[0].text)
        assert mine["memory"]["id"] == outcome_id
        listing = json.loads((await client.read_resource("alma://agents/max/heuristic")).contents[0].text)
        assert listing == []
        listing = json.loads((await client.read_resource("alma://agents/helena/heuristic")).contents[0].text)
        assert heuristic_id in [m["id"] for m in listing]
        refused = await client.call_tool("alma_feedback", {"memory_id": heuristic_id, "signal": "harmful", "agent": "max"})
        assert refused.is_error and "no memory with id" in refused.content[0].text
        allowed = await client.call_tool("alma_feedback", {"memory_id": heuristic_id, "signal": "helpful", "agent": "ada"})
        assert not allowed.is_error and allowed.structured_content["helpful"] == 1
        got = await client.call_tool("alma_retrieve", {"agent": "max", "task": TASK})
        assert got.structured_content["heuristics"] == []
    assert alma.get(heuristic_id).memory.harmful == 0


@pytest.mark.parametrize(
    "agents, words",
    [
        ({"a": {"share_with": ["a"]}}, ["agents.a", "itself"]),
        ({"a": {"inherit_from": ["a"]}}, ["agents.a", "itself"]),
        ({"a": {"can_learn": ["Testing"], "cannot_learn": ["testing"]}}, ["agents.a", "both can_learn and cannot_learn"]),
        ({"a": {"share_with": ["ghost"]}}, ["ghost", "not defined"]),
    ],
)
def test_bad_scope_settings_fail_at_start(agents, words):
    with pytest.raises(ConfigError) as caught:
        parse_config({"alma": {"agents": agents}})
    for word in words:
        assert word in str(caught.value)
