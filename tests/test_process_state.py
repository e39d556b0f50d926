"""Used as a library, alma-mcp leaves its host process alone: it sets no environment variable and
no torch thread count, and a harness does not rewrite the config its service was built from. The
alma-mcp command, which owns its process, makes those settings itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alma_mcp.embedding.embedder import HashEmbedder
from alma_mcp.errors import ScopeDenied
from alma_mcp.frontends.templates import create_harness
from alma_mcp.service import ALMA
from alma_mcp.storage.store import MemoryStore
from helpers import build_config

PROCESS_SETTINGS = ("OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM", "ANONYMIZED_TELEMETRY")
"""What the library used to set for the whole process, and the command sets for its own."""


def _bare_env() -> dict[str, str]:
    """This environment without the settings under test (HF_HUB_OFFLINE stays: nothing downloads)."""
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_SETTINGS}
    env["HF_HUB_OFFLINE"] = "1"
    return env


LIBRARY_USE = """
import json, os, sys
before = dict(os.environ)
from alma_mcp import ALMA
from alma_mcp.config import parse_config

alma = ALMA(parse_config({"alma": {"data_dir": sys.argv[1], "allow_undeclared_agents": True}}))
alma.add_knowledge("helena", "ops", "The staging database is reset every Sunday night at 02:00.")
found = alma.retrieve("When is the staging database reset?", "helena")
alma.close()
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"changed": changed, "found": len(found)}))
"""


@pytest.mark.slow
def test_the_library_sets_no_environment_variable(tmp_path: Path) -> None:
    """Import, store, retrieve with the real model and Chroma: the environment is as it was."""
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_USE, str(tmp_path / "data")],
        env=_bare_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["found"] >= 1
    assert result["changed"] == [], f"the library set {result['changed']} for the whole process"


COMMAND_USE = """
import os, sys
from alma_mcp.frontends.cli import main
code = main(["init", "--path", sys.argv[1]])
print({name: os.environ.get(name) for name in sys.argv[2:]})
"""


@pytest.mark.slow
def test_the_command_makes_the_process_settings_itself(tmp_path: Path) -> None:
    """The settings the library no longer makes are the command's: numpy's BLAS on one thread
    (before numpy is imported), no telemetry, no tokenizer threads; a user's own value stands."""
    env = _bare_env() | {"TOKENIZERS_PARALLELISM": "true"}
    done = subprocess.run(
        [sys.executable, "-c", COMMAND_USE, str(tmp_path / "config.yaml"), *PROCESS_SETTINGS],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(
        {"OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "true", "ANONYMIZED_TELEMETRY": "False"}
    )


@pytest.mark.slow
@pytest.mark.models
def test_a_library_embedder_on_torch_leaves_the_process_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sentence-transformers path loads from the local folder without HF_HUB_OFFLINE set for
    the process, and embeds a query without changing torch's thread count; in a process the
    command owns (`own_process`), a small input runs on one thread and the count is put back."""
    pytest.importorskip("sentence_transformers", reason="needs alma-mcp[models]")
    import torch

    from alma_mcp.embedding import embedder as embedding

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    model = embedding.SentenceTransformerEmbedder(backend="torch", onnx=False)
    model.wait(timeout=300)
    assert "HF_HUB_OFFLINE" not in os.environ and "TOKENIZERS_PARALLELISM" not in os.environ

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # more than one, so that a small input would be moved to one
    calls: list[int] = []
    real = torch.set_num_threads

    def spy(n: int) -> None:
        calls.append(n)
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    try:
        model.embed(["the staging database is reset on Sundays"])
        assert calls == [], "the library changed torch's thread count for the whole process"
        monkeypatch.setattr(embedding, "_owns_process", True)
        model.embed(["and the release branch is cut on Tuesdays"])
        assert calls == [1, 2]
    finally:
        real(threads)


def test_a_harness_leaves_the_config_it_was_given_alone(tmp_path: Path) -> None:
    """A harness for an agent the config does not declare gives the agent its schema's rules in
    its own service, for every write from then on, and in no other service built on that config."""
    config = build_config(tmp_path / "data")
    embedder = HashEmbedder()
    alma = ALMA(config, embedder=embedder, store=MemoryStore.in_memory(config.project, embedder))
    other = ALMA(config, embedder=embedder, store=MemoryStore.in_memory(config.project, embedder))
    try:
        harness = create_harness("coding", "helena", alma)
        assert "helena" not in config.alma.agents and "helena" not in other.config.alma.agents
        rules = alma.config.agent("helena")
        assert rules.cannot_learn == harness.schema.forbidden_categories == ["backend", "database"]
        with pytest.raises(ScopeDenied, match="cannot_learn"):  # a write around the harness too
            alma.learn("helena", "Migrate the orders table", "success", "online schema change", task_type="database")
        other.learn("helena", "Migrate the orders table", "success", "online schema change", task_type="database")
    finally:
        alma.close()
        other.close()
