"""docs/library.md is executed as written, so it cannot rot.

Its ```bash blocks (`alma-mcp init`) and ```python blocks run in document order in an empty
folder: the shell commands with this environment's `alma-mcp`, the Python blocks in one
namespace, like a reader pasting them into one session. Then the test checks what they did.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alma_mcp.prompt.handles import handle_of

LIBRARY = Path(__file__).resolve().parent.parent / "docs" / "library.md"
SECTION = "# Python library and the harness pattern"
ISSUE_LINES = [
    "from alma_mcp import ALMA, create_harness, Context, Harness, Setting, Agent, MemorySchema, Tool, ToolType",
    'alma = ALMA.from_config(".alma/config.yaml")',
    'memories = alma.retrieve(task="Test the login form validation", agent="helena", top_k=5)',
    "prompt = memories.to_prompt()",
    'alma.learn(agent="helena", task="Test login form", outcome="success", strategy_used=',
]


def section_blocks() -> list[tuple[str, str]]:
    text = LIBRARY.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return [(lang, body) for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", section, re.S | re.M)]


def test_readme_library_section_holds_the_issue_snippet():
    python = " ".join(" ".join(body.split()) for lang, body in section_blocks() if lang == "python")
    for line in ISSUE_LINES:
        assert line in python, f"docs/library.md lost: {line}"
    assert "create_harness(" in python and "harness.run(" in python


@pytest.mark.slow
def test_readme_library_section_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    namespace: dict[str, object] = {"__name__": "__readme__"}
    ran = {"bash": 0, "python": 0}
    try:
        for number, (lang, body) in enumerate(section_blocks()):
            if lang == "bash":
                done = subprocess.run(["bash", "-e", "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True)
                assert done.returncode == 0, f"docs/library.md bash block {number} failed:\n{body}\n{done.stderr}"
            elif lang == "python":
                exec(compile(body, f"docs/library.md python block {number}", "exec"), namespace)
            else:
                continue
            ran[lang] += 1
        printed = capsys.readouterr().out
    finally:
        alma = namespace.get("alma")
        if alma is not None:
            alma.close()  # type: ignore[attr-defined]

    assert ran["bash"] >= 1 and ran["python"] >= 3
    assert (tmp_path / ".alma" / "config.yaml").exists()
    assert namespace["prompt"] == ""  # a fresh store has nothing to inject
    # The harness part: the last run's prompt injects the heuristic the earlier runs created.
    result = namespace["result"]
    created = [
        line.split("created heuristic ")[1].split(";")[0] for line in printed.splitlines() if "created heuristic" in line
    ]
    assert created, printed
    assert handle_of(created[0]) in result.prompt  # type: ignore[attr-defined]
    assert "Submit each field with invalid values and check its validation message" in result.prompt  # type: ignore[attr-defined]
    assert result.prompt.rstrip().endswith("Test the signup form validation")  # type: ignore[attr-defined]
    # The custom agent's schema refused its forbidden category, naming the rule.
    assert "the 'coding' memory schema forbids ['database']" in printed
