"""What a newcomer and a registry read: server.json against the MCP registry's published schema,
the README's ownership marker, the generated configuration reference, the README's commands
being the ones CI runs, and docs whose links resolve."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from jsonschema import Draft7Validator

import alma_mcp
from alma_mcp import configdoc
from alma_mcp.frontends.cli import build_parser
from alma_mcp.config import CONFIG_ENV, DATA_DIR_ENV

ROOT = Path(__file__).resolve().parent.parent
SERVER = json.loads((ROOT / "server.json").read_text(encoding="utf-8"))
SCHEMA = json.loads((ROOT / "tests" / "data" / "server.schema.json").read_text(encoding="utf-8"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_server_json_is_valid_against_the_registry_schema():
    validator = Draft7Validator(SCHEMA, format_checker=Draft7Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(SERVER)]
    assert errors == []
    assert SERVER["$schema"] == SCHEMA["$id"]
    # The schema does catch mistakes: a name without its namespace, a version range.
    broken = {**SERVER, "name": "alma-mcp", "packages": [{**SERVER["packages"][0], "version": "latest"}]}
    assert len(list(validator.iter_errors(broken))) == 2


def test_server_json_describes_this_package():
    (package,) = SERVER["packages"]
    assert package["registryType"] == "pypi" and package["transport"] == {"type": "stdio"}
    assert package["identifier"] == PYPROJECT["project"]["name"] == "alma-mcp"
    assert SERVER["version"] == package["version"] == alma_mcp.__version__
    # The version is kept in one place, alma_mcp/__init__.py, which pyproject.toml reads.
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "alma_mcp.__version__"}
    # Its arguments are ones the command takes, in that order.
    argv = []
    for argument in package["packageArguments"]:
        argv += [argument["value"]] if argument["type"] == "positional" else [argument["name"], "config.yaml"]
    assert build_parser().parse_args(argv).config == "config.yaml"
    # Its environment variables are the ones the code reads.
    named = {variable["name"] for variable in package["environmentVariables"]}
    assert {CONFIG_ENV, DATA_DIR_ENV, "ALMA_MCP_CACHE_DIR", "HF_HUB_OFFLINE"} == named
    assert '"ALMA_MCP_CACHE_DIR"' in (ROOT / "alma_mcp" / "embedding" / "onnx_encoder.py").read_text(encoding="utf-8")


def test_readme_carries_the_registry_ownership_marker():
    """The registry checks PyPI ownership by finding `mcp-name: NAME` in the package description
    (the README), followed by a boundary: whitespace, a tag or the end of a comment."""
    assert re.search(rf"mcp-name: {re.escape(SERVER['name'])}(\s|<|-->)", README)
    assert PYPROJECT["project"]["readme"] == "README.md"


def test_configuration_reference_is_generated_from_the_models():
    path = ROOT / "docs" / "configuration.md"
    assert path.read_text(encoding="utf-8") == configdoc.render(), (
        "docs/configuration.md is stale: run python -m alma_mcp.configdoc"
    )


def test_configuration_reference_lists_every_field():
    text = configdoc.render()
    for path, model in configdoc._sections():
        assert f"## {path}\n" in text
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{path}.{name}"


def _bash_block_after(heading: str) -> list[str]:
    start = README.index(heading)
    block = re.search(r"^```bash\n(.*?)^```", README[start:], re.S | re.M)
    assert block is not None, f"no bash block after {heading!r}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_set_up_and_test_commands():
    """CI proves the README: .ci/run runs the set-up and test commands exactly as written."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    set_up = _bash_block_after("### Set up and run")
    tests = _bash_block_after("Run the tests")
    assert len(set_up) == 1 and len(tests) == 1
    for command in (*set_up, *tests):
        assert command in ci, f".ci/run does not run the README's {command!r}"
    assert "[test]" not in set_up[0], "the set-up installs only what running the server needs"
    assert "pytest" in tests[0]


def test_readme_commands_need_no_activated_venv():
    """Without an activated venv, `alma-mcp` and `python examples/...` are not found: every
    command the README gives for the checkout names .venv/bin."""
    for block in re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M):
        for line in block.splitlines():
            words = line.split("#")[0].split()
            for index, word in enumerate(words):
                if word in {"alma-mcp", "python", "pip", "pytest"} and index == 0:
                    pytest.fail(f"README runs {word!r} from an activated venv: {line}")


def test_readme_is_for_users():
    assert len(README.splitlines()) <= 300
    for text in [README, *(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\bsession \d|session's|\btoday\b", text)


@pytest.mark.parametrize("doc", ["README.md", "CHANGELOG.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_resolve(doc):
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{doc} links to {target}, which does not exist"


def test_licence_is_the_declared_one():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
