"""Each vocabulary (memory types, outcome kinds and weights, feedback signals and steps) is
defined once, in alma_mcp/models.py; what states it elsewhere (tool schemas, docs, the review
page) is generated from that definition or checked against it here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mcp import Client

from alma_mcp import models
from alma_mcp.ranking import calibration
from alma_mcp.frontends.server import create_server

ROOT = Path(__file__).resolve().parent.parent


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def test_the_literal_types_and_their_tuples_agree() -> None:
    assert models.MEMORY_TYPES == ("heuristic", "anti_pattern", "knowledge", "preference", "outcome")
    assert set(models.OUTCOME_WEIGHTS) == set(models.OUTCOME_KINDS)
    assert set(models.FEEDBACK_STEPS) == set(models.FEEDBACK_SIGNALS)
    assert set(calibration.USEFUL) == set(models.FEEDBACK_SIGNALS)
    assert set(models.MODEL_BY_TYPE) == set(models.MEMORY_TYPES)


def test_the_learning_guide_states_the_feedback_steps_as_defined() -> None:
    text = (ROOT / "docs" / "learning.md").read_text(encoding="utf-8")
    stated = {m[1]: _number(m[2]) for m in re.finditer(r"`(helpful|harmful|used|ignored)` ([+−-]\d\.\d+)", text)}
    assert stated == models.FEEDBACK_STEPS


def test_the_review_page_states_the_harmful_step_as_defined() -> None:
    script = (ROOT / "alma_mcp" / "frontends" / "ui" / "static" / "app.js").read_text(encoding="utf-8")
    (step,) = re.findall(r"Harmful feedback \(confidence ([+−-]\d\.\d+)\)", script)
    assert _number(step) == models.FEEDBACK_STEPS["harmful"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_tool_schemas_list_the_vocabulary(fast_alma, mode: str) -> None:
    async with Client(create_server(alma=fast_alma), mode=mode) as client:
        tools = {tool.name: tool.input_schema for tool in (await client.list_tools()).tools}
    feedback = tools["alma_feedback"]["properties"]["signal"]
    assert tuple(feedback["enum"]) == models.FEEDBACK_SIGNALS
    assert models.feedback_steps_text() in feedback["description"]
    assert tuple(tools["alma_learn"]["properties"]["outcome"]["enum"]) == models.OUTCOME_KINDS
    kinds = tools["alma_retrieve"]["properties"]["memory_types"]["anyOf"][0]["items"]["enum"]
    assert tuple(kinds) == models.MEMORY_TYPES
