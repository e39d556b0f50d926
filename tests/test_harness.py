"""The harness, end to end: real embedding model, real embedded Chroma, scripted executors.

Each run goes through the same ALMA service the MCP tools call; the tests read what the
next run's prompt contains to show that a lesson learned in one run is injected in the next.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from alma_mcp import (
    ALMA,
    Agent,
    Briefing,
    Context,
    ExecutionResult,
    Harness,
    InvalidInput,
    MemorySchema,
    NotFound,
    ScopeDenied,
    Setting,
    Tool,
    ToolType,
    create_harness,
)
from alma_mcp.config import write_starter_config
from alma_mcp.frontends.templates import TEMPLATES
from alma_mcp.prompt.handles import handle_of

REPO = Path(__file__).resolve().parent.parent
NAIVE = "Fill the form with valid data, submit it and check the success page"
THOROUGH = "Submit each field with invalid values and check its validation message"
LOGIN_TASKS = [
    "Test the login form validation",
    "Test the login form validation in Firefox",
    "Test the login form validation after the redesign",
    "Test the login form validation on mobile",
]


def outcomes(alma: ALMA, agent: str) -> list[Any]:
    return alma.list_memories(agent, "outcome")


def starter_alma(tmp_path: Path, real_embedder: Any) -> ALMA:
    """ALMA on the config `alma-mcp init` writes (agents helena and victor), with the real model."""
    path = write_starter_config(tmp_path / ".alma" / "config.yaml", project="shop")
    return ALMA.from_config(path, embedder=real_embedder)


@pytest.fixture
def starter(tmp_path: Path, real_embedder: Any):
    alma = starter_alma(tmp_path, real_embedder)
    yield alma
    alma.close()


class Scripted:
    """An executor that reports a fixed outcome and remembers every briefing it was given."""

    def __init__(self, outcome: str, strategy: str, **extra: Any) -> None:
        self.outcome, self.strategy, self.extra = outcome, strategy, extra
        self.briefings: list[Briefing] = []

    def __call__(self, briefing: Briefing) -> ExecutionResult:
        self.briefings.append(briefing)
        return ExecutionResult(outcome=self.outcome, strategy=self.strategy, **self.extra)  # type: ignore[arg-type]


def quick_learner() -> Agent:
    """An agent whose schema makes a heuristic from a single success."""
    return Agent(
        name="quick",
        role="Form tester",
        description="Learns from one success.",
        memory_schema=MemorySchema(
            domain="qa", learnable_categories=["form_testing"], forbidden_categories=["payments"], min_occurrences=1
        ),
    )


def small_setting() -> Setting:
    return Setting(
        name="Web app",
        description="A staging web app with a browser.",
        tools=[Tool("browser", "Drive a headless browser.", ToolType.EXECUTION, ["staging only"])],
        global_constraints=["Never use real customer accounts."],
    )


# -- the promise: what run 1 learns, run 2 sees -----------------------------------------------


def test_second_run_prompt_injects_the_heuristic_learned_in_the_first(alma):
    harness = Harness(small_setting(), quick_learner(), alma)
    executor = Scripted("success", THOROUGH, feedback="caught the broken email check")

    first = harness.run(Context(task="Test the login form validation"), executor)
    assert len(first.memories) == 0 and first.injected_ids == []  # fresh store: nothing to inject
    assert THOROUGH not in first.prompt
    assert len(first.learned.heuristics_created) == 1
    learned_id = first.learned.heuristics_created[0]

    second = harness.run(Context(task="Test the login form validation in Firefox"), executor)
    assert THOROUGH in second.prompt
    assert handle_of(learned_id) in second.prompt
    assert learned_id in second.injected_ids
    assert [h.memory.id for h in executor.briefings[1].memories.heuristics] == [learned_id]
    # The injected memory sits between the setting and the task.
    assert second.prompt.index("## Setting") < second.prompt.index(THOROUGH) < second.prompt.index("## Task")
    # The same lesson is reinforced, not duplicated.
    assert second.learned.heuristics_created == []
    assert second.learned.heuristics_updated == [learned_id]


def test_coding_template_on_the_starter_config_learns_to_avoid_then_to_follow(starter):
    """helena from `create_harness` on the `alma-mcp init` config: failures teach an anti-pattern,
    successes (three: the config's min_occurrences_for_heuristic) a heuristic, each injected next run."""
    harness = create_harness("coding", "helena", starter)
    naive = Scripted("failure", NAIVE, error="missed the validation bug: the happy path never shows errors")
    anti_pattern_id = None
    for task in LOGIN_TASKS:
        result = harness.run(Context(task=task), naive)
        if result.learned.anti_patterns_created:
            anti_pattern_id = result.learned.anti_patterns_created[0]
            break
    assert anti_pattern_id, "repeated failures of one strategy never became an anti-pattern"
    stored = starter.get(result.learned.outcome_id).memory
    assert stored.task_type == "testing"  # the schema's default category, allowed by the config

    thorough = Scripted("success", THOROUGH)
    after = harness.run(Context(task="Test the login form validation", task_type="form_testing"), thorough)
    assert NAIVE in after.prompt
    assert anti_pattern_id in after.injected_ids
    assert "missed the validation bug" in after.prompt

    heuristic_id = None
    for task in LOGIN_TASKS:
        result = harness.run(Context(task=task, task_type="form_testing"), thorough)
        if result.learned.heuristics_created:
            heuristic_id = result.learned.heuristics_created[0]
            break
    assert heuristic_id, "repeated successes of one strategy never became a heuristic"
    nxt = harness.run(Context(task="Test the signup form validation", task_type="form_testing"), thorough)
    assert heuristic_id in nxt.injected_ids
    assert THOROUGH in nxt.prompt


# -- scope: the schema's categories, on top of the config -------------------------------------


def test_schema_forbidden_category_is_refused_before_the_executor_runs(starter):
    harness = create_harness("coding", "helena", starter)
    executor = Scripted("success", THOROUGH)
    with pytest.raises(ScopeDenied, match=r"'backend'.*forbids \['backend', 'database'\]"):
        harness.run(Context(task="Test the orders API", task_type="backend"), executor)
    with pytest.raises(ScopeDenied, match="forbids"):  # categories compare ignoring case, as in the config
        harness.run(Context(task="Test the orders API", task_type="Database"), executor)
    with pytest.raises(ScopeDenied, match=r"allows only \['testing', 'form_testing', 'ui_testing'\]"):
        harness.run(Context(task="Write the release notes", task_type="writing"), executor)
    assert executor.briefings == []
    assert outcomes(starter, "helena") == []


def test_schema_forbids_what_the_config_would_allow(starter):
    """victor's config may learn 'database'; a schema that forbids it wins in the harness."""
    agent = Agent(
        name="victor",
        role="API developer",
        description="Endpoints only.",
        memory_schema=MemorySchema(domain="coding", learnable_categories=["api_design"], forbidden_categories=["database"]),
    )
    harness = Harness(small_setting(), agent, starter)
    with pytest.raises(ScopeDenied, match="memory schema forbids"):
        harness.run(Context(task="Add an index to the orders table", task_type="database"), Scripted("success", "x"))
    with pytest.raises(ScopeDenied, match="memory schema forbids"):
        harness.add_knowledge("database", "orders.id is a bigint")
    with pytest.raises(ScopeDenied, match="schema allows only"):
        harness.add_heuristic("when adding endpoints", "write the OpenAPI spec first", task_type="backend")
    assert outcomes(starter, "victor") == []
    assert starter.list_memories("victor", "knowledge") == []
    # Within the schema it works, through the same service.
    heuristic = harness.add_heuristic("when adding endpoints", "write the OpenAPI spec first")
    assert heuristic.task_type == "api_design"


def test_config_cannot_learn_still_applies_under_a_permissive_schema(starter):
    agent = Agent(
        name="helena", role="Tester", description="", memory_schema=MemorySchema(domain="coding", learnable_categories=[])
    )
    harness = Harness(small_setting(), agent, starter)
    with pytest.raises(ScopeDenied, match="cannot_learn"):
        harness.run(Context(task="Test the orders table", task_type="database"), Scripted("success", "x"))
    with pytest.raises(ScopeDenied, match="can_learn"):
        harness.run(Context(task="Test the login form"), Scripted("success", "x"))  # no category at all
    assert outcomes(starter, "helena") == []


def test_undeclared_agent_gets_the_schema_as_its_rules(alma):
    harness = Harness(small_setting(), quick_learner(), alma)
    settings = alma.config.agent("quick")
    assert settings.can_learn == ["form_testing"] and settings.cannot_learn == ["payments"]
    assert settings.min_occurrences_for_heuristic == 1
    # Direct calls on the same service now obey the schema too.
    with pytest.raises(ScopeDenied):
        alma.learn(agent="quick", task="Test checkout", outcome="success", strategy_used="x", task_type="payments")
    assert harness.category_for(Context(task="t")) == "form_testing"


# -- clear errors -------------------------------------------------------------------------------


def test_unknown_domain_or_agent_lists_the_options(alma):
    with pytest.raises(NotFound) as excinfo:
        create_harness("cooking", "chef", alma)
    message = str(excinfo.value)
    for domain, template in TEMPLATES.items():
        assert domain in message
        for name in template.agents:
            assert name in message
    with pytest.raises(NotFound, match=r"no agent 'helena'.*\['copywriter', 'documenter'\]"):
        create_harness("content", "helena", alma)


def test_template_agent_missing_from_a_strict_config_says_how_to_declare_it(starter):
    with pytest.raises(NotFound) as excinfo:
        create_harness("research", "researcher", starter)
    message = str(excinfo.value)
    assert "researcher" in message and "helena" in message and "victor" in message
    assert "can_learn: [literature_review" in message
    assert "allow_undeclared_agents" in message


def test_bad_executor_results_are_refused_and_nothing_is_stored(alma):
    harness = Harness(small_setting(), quick_learner(), alma)
    task = Context(task="Test the login form validation")
    with pytest.raises(InvalidInput, match="ExecutionResult"):
        harness.run(task, lambda briefing: "it went fine")
    with pytest.raises(InvalidInput, match="needs 'outcome' and 'strategy'"):
        harness.run(task, lambda briefing: {"outcome": "success"})
    with pytest.raises(InvalidInput, match="not one of"):
        harness.run(task, lambda briefing: {"outcome": "great", "strategy": "x"})
    with pytest.raises(InvalidInput, match="callable"):
        harness.run(task, "not a function")  # type: ignore[arg-type]

    def crashes(briefing: Briefing) -> ExecutionResult:
        raise RuntimeError("the browser crashed")

    with pytest.raises(RuntimeError, match="browser crashed"):
        harness.run(task, crashes)
    assert outcomes(alma, "quick") == []
    # A dict with the right keys is accepted.
    result = harness.run(task, lambda briefing: {"outcome": "partial", "strategy": THOROUGH, "error": "flaky"})
    assert result.execution.outcome == "partial"
    assert len(outcomes(alma, "quick")) == 1


def test_context_for_another_project_is_refused(starter):
    harness = create_harness("coding", "helena", starter)
    with pytest.raises(InvalidInput, match="project 'billing'.*project 'shop'"):
        harness.run(Context(task="Test the login form", project="billing"), Scripted("success", "x"))
    result = harness.run(Context(task="Test the login form", project="shop"), Scripted("success", "x"))
    assert result.success


def test_model_objects_reject_bad_definitions():
    with pytest.raises(InvalidInput, match="both learnable and forbidden"):
        MemorySchema(domain="qa", learnable_categories=["a"], forbidden_categories=["a"])
    with pytest.raises(InvalidInput, match="min_occurrences"):
        MemorySchema(domain="qa", min_occurrences=0)
    with pytest.raises(InvalidInput, match="unknown tool_type"):
        Tool("t", "does things", "teleport")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="agent name"):
        Agent(name="helena smith", role="r", description="", memory_schema=MemorySchema(domain="qa"))
    with pytest.raises(InvalidInput, match="more than once"):
        Setting(name="s", description="d", tools=[Tool("a", "x"), Tool("a", "y")])
    with pytest.raises(InvalidInput, match="task"):
        Context(task="   ")
    assert Tool("t", "does things", "search").tool_type is ToolType.SEARCH


# -- the prompt -------------------------------------------------------------------------------


def test_prompt_has_identity_setting_constraints_tools_memory_then_task(alma):
    harness = Harness(small_setting(), quick_learner(), alma)
    harness.add_heuristic("when testing login forms", THOROUGH)
    context = Context(
        task="Test the login form validation",
        user_id="ana",
        inputs={"url": "https://staging.example/login", "browsers": ["firefox", "chrome"]},
        constraints=["Finish within ten minutes."],
    )
    briefing = harness.pre_run(context)
    prompt = briefing.prompt
    memory_header = briefing.memories.to_prompt().strip().splitlines()[0]
    order = [
        "# You are quick: Form tester",
        "## Setting: Web app",
        "- Never use real customer accounts.",
        "**browser** (execution): Drive a headless browser. Constraints: staging only.",
        "- learn: form_testing",
        memory_header,
        THOROUGH,
        "## Task",
        "Test the login form validation",
        '- browsers: ["firefox", "chrome"]',
        "- Finish within ten minutes.",
    ]
    positions = [prompt.index(part) for part in order]
    assert positions == sorted(positions), prompt
    assert str(briefing) == prompt and briefing.task_type == "form_testing"


@pytest.mark.parametrize("domain,agent", [(d, a) for d, t in TEMPLATES.items() for a in t.agents])
def test_every_template_runs_and_learns_under_its_default_category(make_alma, domain, agent):
    alma = make_alma()  # undeclared agents allowed: the template's schema becomes the rules
    harness = create_harness(domain, agent, alma)
    schema = harness.schema
    assert schema.learnable_categories and schema.forbidden_categories and harness.setting.tools
    result = harness.run(Context(task=f"A typical {domain} task for {agent}"), Scripted("success", "the usual way"))
    for tool in harness.setting.tools:
        assert f"**{tool.name}**" in result.prompt
    for constraint in harness.setting.global_constraints:
        assert constraint in result.prompt
    assert alma.get(result.learned.outcome_id).memory.task_type == schema.learnable_categories[0]
    with pytest.raises(ScopeDenied):
        harness.run(Context(task="Out of scope", task_type=schema.forbidden_categories[0]), Scripted("success", "x"))


# -- feedback on injected memories ------------------------------------------------------------


def test_executor_feedback_on_injected_memories_is_recorded(alma):
    harness = Harness(small_setting(), quick_learner(), alma)
    heuristic = harness.add_heuristic("when testing login forms", THOROUGH)

    def grateful(briefing: Briefing) -> ExecutionResult:
        ids = [item.memory.id for item in briefing.memories.heuristics]
        return ExecutionResult("success", THOROUGH, memory_feedback={i: "helpful" for i in ids})

    harness.run(Context(task="Test the login form validation"), grateful)
    assert alma.get(heuristic.id).memory.helpful == 1

    stray = "heuristic-" + "0" * 32
    before = len(outcomes(alma, "quick"))
    with pytest.raises(InvalidInput, match="not injected"):
        harness.run(Context(task="Test the login form"), Scripted("success", THOROUGH, memory_feedback={stray: "harmful"}))
    assert len(outcomes(alma, "quick")) == before


# -- async ------------------------------------------------------------------------------------


async def test_arun_awaits_async_executors_and_learns(alma):
    harness = Harness(small_setting(), quick_learner(), alma)
    seen: list[Briefing] = []

    async def agent(briefing: Briefing) -> ExecutionResult:
        seen.append(briefing)
        return ExecutionResult("success", THOROUGH)

    first = await harness.arun(Context(task="Test the login form validation"), agent)
    assert first.learned.heuristics_created
    second = await harness.arun(Context(task="Test the login form validation in Firefox"), Scripted("success", THOROUGH))
    assert first.learned.heuristics_created[0] in second.injected_ids
    # A sync executor inside arun runs in a worker thread; a sync `run` refuses an async executor in a loop.
    with pytest.raises(InvalidInput, match="arun"):
        harness.run(Context(task="Test the login form"), agent)
    assert len(outcomes(alma, "quick")) == 2
    memories = await alma.aretrieve(task="Test the login form validation", agent="quick")
    assert memories.heuristics
    why = await alma.aexplain(task="Test the login form validation", agent="quick")
    assert {c.id for c in why.candidates if c.injected} == {m.memory.id for m in memories.all()}
    assert (await alma.astats("quick"))["agents"]["quick"]["outcome"] == 2


def test_sync_run_accepts_an_async_executor_outside_a_loop(alma):
    harness = Harness(small_setting(), quick_learner(), alma)

    async def agent(briefing: Briefing) -> dict[str, Any]:
        return {"outcome": "failure", "strategy": NAIVE, "error": "missed the bug"}

    result = harness.run(Context(task="Test the login form validation"), agent)
    assert result.execution.outcome == "failure"
    assert alma.get(result.learned.outcome_id).memory.error_message == "missed the bug"


# -- the examples stay runnable ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_example_runs_and_the_agent_improves(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "new heuristic" in done.stdout


async def test_pre_run_and_post_run_can_drive_an_agent_loop_the_caller_owns(alma):
    """For agents that are not one callable: take the briefing, act, then report."""
    harness = Harness(small_setting(), quick_learner(), alma)
    briefing = harness.pre_run(Context(task="Test the login form validation"))
    assert briefing.task_type == "form_testing" and len(briefing.memories) == 0
    first = harness.post_run(briefing, ExecutionResult("success", THOROUGH))
    assert first.learned.heuristics_created
    later = await harness.apre_run(Context(task="Test the login form validation in Firefox"))
    assert handle_of(first.learned.heuristics_created[0]) in later.prompt
    second = await harness.apost_run(later, {"outcome": "success", "strategy": THOROUGH})  # type: ignore[arg-type]
    assert alma.get(second.learned.outcome_id).memory.task == "Test the login form validation in Firefox"
    assert second.learned.heuristics_updated or second.learned.heuristics_created
