"""The config file: starter, defaults, and clear failures naming the field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alma_mcp.config import STARTER_CONFIG, AlmaSettings, load_config, parse_config, write_starter_config
from alma_mcp.errors import ConfigError, NotFound
from alma_mcp.schemas import generate, render

ROOT = Path(__file__).resolve().parent.parent


def test_starter_config_is_valid_and_commented(tmp_path):
    path = write_starter_config(tmp_path / ".alma" / "config.yaml", project="shop")
    config = load_config(path)
    assert config.project == "shop"
    assert set(config.alma.agents) == {"helena", "victor"}
    assert config.readable_agents("helena") == ["helena", "victor"]  # victor shares with helena
    assert config.data_dir == (tmp_path / ".alma" / "data").resolve()
    assert path.read_text().count("#") > 20
    with pytest.raises(ConfigError, match="already exists"):
        write_starter_config(path)
    # Its agents may record a user's everyday preferences (the categories alma_add_preference suggests).
    from alma_mcp.scope import check_can_learn

    for agent in ("helena", "victor"):
        for category in ("communication", "code_style"):
            check_can_learn(config, agent, category, "preferences")


def test_original_shape_is_accepted():
    config = parse_config(
        {
            "alma": {
                "project_id": "legacy-project",
                "storage": "sqlite",
                "domains": {"coding": {"enabled": True, "agents": ["helena"]}},
                "agents": {"helena": {"domain": "coding", "can_learn": ["testing"], "cannot_learn": ["backend"], "min_occurrences_for_heuristic": 2}},
            }
        }
    )
    assert config.alma.storage == "chroma"
    assert config.agent("helena").min_occurrences_for_heuristic == 2
    with pytest.raises(NotFound, match="unknown agent 'victor'"):
        config.agent("victor")


@pytest.mark.parametrize(
    "alma, words",
    [
        ({"agents": {"helena": {"min_occurrences_for_heuristic": 0}}}, ["agents.helena.min_occurrences_for_heuristic", "greater than or equal to 1"]),
        ({"agents": {"helena": {"can_learn": "testing"}}}, ["agents.helena.can_learn", "list"]),
        ({"storage": "postgres"}, ["storage", "unknown storage 'postgres'"]),
        ({"project_id": "my project"}, ["project_id", "not a valid name"]),
        ({"agents": {"bad/name": {}}}, ["agents", "not a valid name"]),
        ({"agents": {"helena": {"inherit_from": ["ghost"]}}}, ["ghost", "not defined"]),
        ({"agnets": {}}, ["agnets", "Extra inputs are not permitted"]),
        ({"retrieval": {"top_k": 500}}, ["retrieval.top_k"]),
    ],
)
def test_bad_config_names_the_field(tmp_path, alma, words):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"alma": alma}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    for word in words:
        assert word in str(error.value)
    assert str(path) in str(error.value)


def test_invalid_yaml_and_missing_explicit_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("alma: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_no_config_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALMA_CONFIG", raising=False)
    config = load_config()
    assert config.alma.allow_undeclared_agents is True
    assert config.agent("anyone").can_learn == []


def test_checked_in_schemas_match_the_models():
    for name, schema in generate().items():
        path = ROOT / "schemas" / name
        assert path.exists(), f"schemas/{name} is missing: run python -m alma_mcp.schemas"
        assert path.read_text(encoding="utf-8") == render(schema), (
            f"schemas/{name} drifted from the models: run python -m alma_mcp.schemas"
        )


def test_starter_config_matches_the_schema_keys():
    schema = generate()["config.schema.json"]
    starter = yaml.safe_load(STARTER_CONFIG.format(project="p"))
    settings = schema["$defs"]["AlmaSettings"]["properties"]
    assert set(starter["alma"]) <= set(settings)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    env.pop("ALMA_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "alma_mcp", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_init_stats_search_and_bad_config(tmp_path):
    done = run_cli("init", "--project", "cli-test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".alma" / "config.yaml").exists()

    stats = run_cli("stats", cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["project"] == "cli-test"

    search = run_cli("search", "test the login form", "--agent", "helena", cwd=tmp_path)
    assert search.returncode == 0, search.stderr
    assert "nothing in memory is relevant" in search.stdout
    explained = run_cli("search", "test the login form", "--agent", "helena", "--explain", cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    assert "Why: relevance_floor 0.42" in explained.stdout and "no memory cleared the floor" in explained.stdout
    assert "has no memories" in explained.stdout

    unknown = run_cli("search", "x", "--agent", "ghost", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown agent 'ghost'" in unknown.stderr

    (tmp_path / ".alma" / "config.yaml").write_text("alma:\n  agents:\n    helena:\n      min_occurrences_for_heuristic: zero\n")
    broken = run_cli("stats", cwd=tmp_path)
    assert broken.returncode == 2
    assert "agents.helena.min_occurrences_for_heuristic" in broken.stderr and "Traceback" not in broken.stderr


def _drift(value: object, default: object, path: str) -> list[str]:
    """Where a documented config section says something other than the schema's default
    (`...` stands for keys a document leaves out)."""
    if isinstance(value, dict):
        return [d for key, item in value.items() if key != "..." for d in _drift(item, default[key], f"{path}.{key}")]  # type: ignore[index]
    return [] if value == default else [f"{path}: documented {value!r}, default {default!r}"]


def _documented_drift(documented: dict[str, object], examples: set[str]) -> list[str]:
    defaults = AlmaSettings().model_dump(mode="json")
    return [d for key, value in documented.items() if key not in examples for d in _drift(value, defaults[key], key)]


def test_starter_config_values_are_the_defaults():
    """The starter says its values are the defaults unless marked "example": a default that moves
    (relevance_floor went from 0.46 to 0.42 with a recalibration) must move in the starter too, or
    `alma-mcp init` quietly configures something other than what the README documents."""
    starter = yaml.safe_load(STARTER_CONFIG.format(project="p"))["alma"]
    assert _documented_drift(starter, {"project_id", "data_dir", "domains", "agents"}) == []


def test_readme_config_summary_values_are_the_defaults():
    """The README's Configuration block drifted with the starter (it said 0.46 too)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```yaml\n(.*?)^```", text[text.index("## Configuration") :], re.S | re.M)
    assert block is not None, "the README's Configuration section lost its yaml block"
    summary = yaml.safe_load(block.group(1))["alma"]
    assert _documented_drift(summary, {"project_id", "data_dir", "chroma_http", "domains", "agents"}) == []


@pytest.mark.slow
def test_cli_health_proves_the_model_loads_and_fails_loudly_when_it_cannot(tmp_path):
    """`alma-mcp health` is what a script or a monitor runs: exit 0 only when a server started
    with this config could serve; a model that cannot load (a name unavailable offline) is exit 1
    with the reason, not "ok"."""
    good = run_cli("init", "--project", "health-test", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    healthy = run_cli("health", cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["status"] == "ok" and report["embedding_model_status"] == "ready"

    (tmp_path / "bad.yaml").write_text(
        f"alma:\n  data_dir: {tmp_path / 'data2'}\n  embedding:\n    model: no-such-model-offline\n"
    )
    broken = run_cli("--config", "bad.yaml", "health", cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout
    report = json.loads(broken.stdout)
    assert report["status"] == "embedding model failed to load"
    assert report["embedding_model_status"].startswith("failed: ") and report["embedding_model_ready"] is False
    assert "set alma.embedding.model" in broken.stderr


RETIRED_FILE = """\
alma:
  storage: sqlite
  embedding: {cache_size: 100}
  retrieval: {near_duplicate: 0.8, candidate_pool: 40, weights: {similarity: 0.9}, top_k: 3}
  learning: {min_success_rate: 0.7, evidence_half_life: 5, retire_below_confidence: 0.3}
  lifecycle: {half_life_days: 7}
  agents:
    helena:
      retrieval: {candidate_pool: 10}
"""


def test_a_file_setting_retired_keys_loads_and_says_what_to_remove(tmp_path, caplog, capsys):
    from alma_mcp.frontends.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(RETIRED_FILE, encoding="utf-8")
    with caplog.at_level("WARNING", logger="alma_mcp"):
        config = load_config(path)
    retired = ["embedding.cache_size", "retrieval.near_duplicate", "retrieval.candidate_pool", "retrieval.weights", "learning.min_success_rate",
               "learning.evidence_half_life", "learning.retire_below_confidence", "lifecycle.half_life_days"]
    for key in retired:
        assert any(n.startswith(f"{key} is no longer a setting") and n.endswith("remove it from the config file") for n in config.notices), key
    assert any("'sqlite'" in n and "storage: chroma" in n for n in config.notices)
    assert len(config.notices) == len(retired) + 2  # and helena's own retrieval section's candidate_pool
    assert all(str(path) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == len(config.notices)
    # What they set is not used: the constants are.
    assert config.alma.storage == "chroma" and config.alma.retrieval.top_k == 3
    assert config.alma.retrieval.candidate_pool == 20 and config.retrieval_for("helena").candidate_pool == 20
    assert config.alma.retrieval.near_duplicate == 0.92 and config.alma.learning.evidence_half_life == 10.0
    assert config.alma.retrieval.weights.similarity == 0.70
    assert main(["config", "check", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "to change: lifecycle.half_life_days is no longer a setting" in printed
    assert main(["config", "check", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notices"] == config.notices


def test_the_starter_and_a_retired_key_under_a_typo(tmp_path):
    starter = parse_config(yaml.safe_load(STARTER_CONFIG.format(project="p")))
    assert starter.notices == []
    with pytest.raises(ConfigError, match="candidate_pools"):  # only the retired names are let through
        parse_config({"alma": {"retrieval": {"candidate_pools": 5}}})


def test_the_data_dir_variable_is_read_once_per_config(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMA_DATA_DIR", str(tmp_path / "first"))
    config = parse_config({"alma": {}})
    monkeypatch.setenv("ALMA_DATA_DIR", str(tmp_path / "second"))
    assert config.data_dir == tmp_path / "first"
    assert parse_config({"alma": {}}).data_dir == tmp_path / "second"
