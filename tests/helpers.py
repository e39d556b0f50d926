"""Helpers shared by test modules (which never import each other)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from alma_mcp.config import AlmaConfig, parse_config

if TYPE_CHECKING:
    from alma_mcp.ranking.retriever import Retriever
    from alma_mcp.service import ALMA
    from alma_mcp.storage.store import MemoryStore


ONNX_CACHE = os.environ["ALMA_MCP_CACHE_DIR"]
"""Where the ONNX copy of the model is kept between runs (conftest.py sets it before any test imports this)."""


def build_config(data_dir: Path, **alma: Any) -> AlmaConfig:
    """A config on `data_dir`, undeclared agents allowed unless said otherwise; `alma` holds the
    settings of the config file's `alma:` section."""
    alma.setdefault("allow_undeclared_agents", True)
    alma.setdefault("data_dir", str(data_dir))
    return parse_config({"alma": alma})


class Parts(NamedTuple):
    """A service built on a store and a retriever the test made and holds (conftest `make_parts`):
    a test of a component at work in the service watches the component itself, since ALMA
    exposes none of its parts."""

    alma: ALMA
    store: MemoryStore
    retriever: Retriever


# -- a small corpus: four Playwright lessons and a fact (retrieval, dense, key-vector tests) --
PLAYWRIGHT_LESSONS = [
    ("Testing a login form with client-side validation",
     "Assert the inline errors via getByRole('alert') before submitting, then post the same bad payload "
     "to /api/auth/login and expect HTTP 422 so server-side validation is covered too."),
    ("A Playwright test flakes waiting for a button right after navigation",
     "Remove waitForTimeout calls; await page.waitForURL after the click and use web-first assertions "
     "such as expect(locator).toBeVisible(), which retry until the timeout."),
    ("Testing checkout where the Stripe card field lives inside an iframe",
     "Use page.frameLocator on the Stripe iframe and fill the card input there; 4242 4242 4242 4242 succeeds."),
    ("Running an accessibility audit on a new page",
     "Run AxeBuilder with the wcag2a and wcag2aa tags and fail the test on any serious violation."),
]


def teach_playwright(alma: ALMA, agent: str = "helena") -> None:
    for condition, strategy in PLAYWRIGHT_LESSONS:
        alma.add_heuristic(agent, condition, strategy, task_type="testing")
    alma.add_anti_pattern(
        agent,
        "Sleeping a fixed number of seconds before clicking",
        "Fixed sleeps are too short on CI and waste time locally; the test stays flaky.",
        "Wait for the URL or use auto-retrying assertions.",
    )
    alma.add_knowledge(agent, "testing", "Staging sends the X-Test-Bypass header to skip the captcha on /signup.")


# -- prompts --------------------------------------------------------------------------
def fenced_regions(markdown: str) -> tuple[list[str], list[str]]:
    """(contents of fenced blocks, lines outside them), parsed the CommonMark way for backtick
    fences: a fence closes only on a line of at least as many backticks and nothing else."""
    inside: list[str] = []
    outside: list[str] = []
    opening: str | None = None
    current: list[str] = []
    for line in markdown.split("\n"):
        if opening is None:
            match = re.match(r"^(`{3,})([^`]*)$", line)
            if match:
                opening, current = match.group(1), []
            else:
                outside.append(line)
        elif re.fullmatch(r"`{%d,}\s*" % len(opening), line):
            inside.append("\n".join(current))
            opening = None
        else:
            current.append(line)
    assert opening is None, "a fence was left open: everything after it would read as data or break the prompt"
    return inside, outside


# -- a server process over stdio --------------------------------------------------------
def write_config(tmp_path: Path) -> Path:
    config = tmp_path / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "alma:\n"
        "  project_id: stdio-test\n"
        "  agents:\n"
        "    helena:\n"
        "      can_learn: [form_testing]\n"
        "      min_occurrences_for_heuristic: 3\n",
        encoding="utf-8",
    )
    return config


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "PYTHONUNBUFFERED": "1"})
    return env
