"""Built-in harness templates for the domains of the original design, and `create_harness`.

Each domain has one setting (tools and constraints every agent in it shares) and its
agents, each with a memory schema. The coding agents' categories are the ones the starter
config (`alma-mcp init`) declares for helena and victor, so a template and a fresh config
work together without edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import NotFound
from .harness import Agent, Harness, MemorySchema, Setting, Tool, ToolType

if TYPE_CHECKING:
    from ..service import ALMA


@dataclass(frozen=True)
class DomainTemplate:
    setting: Callable[[], Setting]
    agents: dict[str, Callable[[], Agent]]


def _coding_setting() -> Setting:
    return Setting(
        name="Software development",
        description="A code repository with a test suite, a local browser and a staging API.",
        tools=[
            Tool("search_code", "Find files, symbols and usages in the repository.", ToolType.SEARCH),
            Tool("run_tests", "Run the test suite or one test file and report failures.", ToolType.EXECUTION),
            Tool(
                "browser",
                "Drive a headless browser: open pages, fill forms, click, read the page.",
                ToolType.EXECUTION,
                ["staging and local URLs only"],
            ),
            Tool("http_client", "Call HTTP endpoints of the staging API.", ToolType.DATA_ACCESS, ["no production hosts"]),
            Tool("database_query", "Run read-only SQL on the staging database.", ToolType.DATA_ACCESS, ["read-only"]),
            Tool("edit_file", "Change a file in the working tree.", ToolType.CREATION),
        ],
        global_constraints=[
            "Never touch production data or production hosts.",
            "Every change keeps the test suite green.",
            "Report what you could not verify instead of guessing.",
        ],
    )


def _helena() -> Agent:
    return Agent(
        name="helena",
        role="Frontend tester",
        description="Tests user interfaces: forms, validation, flows and accessibility, in a real browser.",
        memory_schema=MemorySchema(
            domain="coding",
            description="Frontend testing strategies and what breaks them.",
            learnable_categories=["testing", "form_testing", "ui_testing"],
            forbidden_categories=["backend", "database"],
            min_occurrences=3,
        ),
    )


def _victor() -> Agent:
    return Agent(
        name="victor",
        role="Backend API developer",
        description="Designs and builds HTTP APIs: endpoints, validation, errors, persistence.",
        memory_schema=MemorySchema(
            domain="coding",
            description="API design and backend implementation patterns.",
            learnable_categories=["api_design", "backend", "database"],
            forbidden_categories=["frontend"],
            min_occurrences=3,
        ),
    )


def _research_setting() -> Setting:
    return Setting(
        name="Research",
        description="Literature and web research that ends in a sourced written summary.",
        tools=[
            Tool("web_search", "Search the web and return result titles, snippets and links.", ToolType.SEARCH),
            Tool("paper_search", "Search papers by topic, author or citation.", ToolType.SEARCH),
            Tool("read_document", "Fetch and read a page or paper in full.", ToolType.DATA_ACCESS),
            Tool("compare_sources", "Tabulate what several sources claim and where they disagree.", ToolType.ANALYSIS),
            Tool("write_notes", "Write findings with their citations.", ToolType.CREATION),
        ],
        global_constraints=[
            "Every claim carries a source you actually read.",
            "Prefer primary sources over summaries.",
            "Say how strong the evidence is, and when sources disagree.",
        ],
    )


def _researcher() -> Agent:
    return Agent(
        name="researcher",
        role="Research analyst",
        description="Finds, reads and weighs sources, and writes sourced summaries.",
        memory_schema=MemorySchema(
            domain="research",
            description="Search strategies, source quality and synthesis.",
            learnable_categories=["literature_review", "search_strategy", "source_evaluation", "synthesis"],
            forbidden_categories=["publishing", "outreach"],
            min_occurrences=3,
        ),
    )


def _content_setting() -> Setting:
    return Setting(
        name="Content",
        description="Writing for a product's audience: marketing copy and documentation.",
        tools=[
            Tool("search_references", "Search the product docs, past content and the style guide.", ToolType.SEARCH),
            Tool("draft", "Write or revise a draft.", ToolType.CREATION),
            Tool("style_check", "Check a draft against the style guide and reading level.", ToolType.ANALYSIS),
            Tool("run_snippet", "Run a code sample to check it works as documented.", ToolType.EXECUTION),
            Tool("submit_for_review", "Send a draft to a human reviewer.", ToolType.COMMUNICATION, ["never publish directly"]),
        ],
        global_constraints=[
            "Follow the style guide and the brand voice.",
            "No claim about the product that the docs or a source do not support.",
            "Nothing is published without human review.",
        ],
    )


def _copywriter() -> Agent:
    return Agent(
        name="copywriter",
        role="Copywriter",
        description="Writes landing pages, emails and headlines for a defined audience.",
        memory_schema=MemorySchema(
            domain="content",
            description="What copy works for this audience, and what falls flat.",
            learnable_categories=["copywriting", "headlines", "tone", "audience"],
            forbidden_categories=["legal_advice", "pricing"],
            min_occurrences=3,
        ),
    )


def _documenter() -> Agent:
    return Agent(
        name="documenter",
        role="Technical writer",
        description="Writes reference docs, tutorials and examples that run.",
        memory_schema=MemorySchema(
            domain="content",
            description="Documentation structures and examples that readers follow successfully.",
            learnable_categories=["documentation", "tutorials", "api_docs", "examples"],
            forbidden_categories=["marketing", "legal_advice"],
            min_occurrences=3,
        ),
    )


def _operations_setting() -> Setting:
    return Setting(
        name="Customer operations",
        description="A support desk: tickets, the customer's account and a knowledge base.",
        tools=[
            Tool("ticket_lookup", "Read a ticket and the customer's earlier tickets.", ToolType.DATA_ACCESS),
            Tool("account_lookup", "Read the customer's account status and recent events.", ToolType.DATA_ACCESS, ["read-only"]),
            Tool("kb_search", "Search the support knowledge base.", ToolType.SEARCH),
            Tool("run_diagnostic", "Run a named diagnostic on the customer's account.", ToolType.EXECUTION),
            Tool("reply", "Reply to the customer on the ticket.", ToolType.COMMUNICATION),
            Tool("escalate", "Hand the ticket to a human with a summary.", ToolType.COMMUNICATION),
        ],
        global_constraints=[
            "Never reveal another customer's data.",
            "Billing disputes and security incidents go to a human.",
            "Confirm with the customer before any change to their account.",
        ],
    )


def _support() -> Agent:
    return Agent(
        name="support",
        role="Support agent",
        description="Resolves customer tickets: diagnoses, answers, escalates when it must.",
        memory_schema=MemorySchema(
            domain="operations",
            description="Fixes and replies that resolved tickets, and what made customers come back.",
            learnable_categories=["customer_support", "troubleshooting", "escalation"],
            forbidden_categories=["billing_changes", "security_overrides"],
            min_occurrences=3,
        ),
    )


TEMPLATES: dict[str, DomainTemplate] = {
    "coding": DomainTemplate(_coding_setting, {"helena": _helena, "victor": _victor}),
    "research": DomainTemplate(_research_setting, {"researcher": _researcher}),
    "content": DomainTemplate(_content_setting, {"copywriter": _copywriter, "documenter": _documenter}),
    "operations": DomainTemplate(_operations_setting, {"support": _support}),
}


def template_agents() -> dict[str, list[str]]:
    """Each built-in domain and its agents."""
    return {domain: list(template.agents) for domain, template in TEMPLATES.items()}


def create_harness(domain: str, agent_name: str, alma: "ALMA", top_k: int | None = None) -> Harness:
    """A harness from a built-in template: `create_harness("coding", "helena", alma)`.

    The agent must be declared in the config, or the config must allow undeclared agents
    (then the template's schema becomes the agent's rules for this service).
    """
    template = TEMPLATES.get(domain)
    if template is None:
        options = "; ".join(f"{d} ({', '.join(a)})" for d, a in template_agents().items())
        raise NotFound(f"unknown domain {domain!r}: the built-in templates are {options}")
    make_agent = template.agents.get(agent_name)
    if make_agent is None:
        raise NotFound(
            f"domain {domain!r} has no agent {agent_name!r}: use one of {list(template.agents)}, "
            "or build your own Agent and Harness(setting, agent, alma)"
        )
    return Harness(template.setting(), make_agent(), alma, top_k=top_k)
