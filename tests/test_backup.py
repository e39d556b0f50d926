"""Backup and moving: export, import (idempotent, line-by-line validation), reindex with another model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from alma_mcp.backup import FORMAT, VERSION
from alma_mcp.embedding.embedder import HashEmbedder
from alma_mcp.errors import InvalidInput
from alma_mcp.storage.store import MemoryStore, collection_name


def snapshot(alma: Any) -> dict[str, dict[str, Any]]:
    """Every stored memory (archived too), as plain data, by id."""
    out = {}
    for memory in alma.memories(include_archived=True):
        out[memory.id] = memory.model_dump(mode="json")
    return out


def populate(alma: Any) -> None:
    """All five types, learned lessons with provenance, feedback counters and an archived memory."""
    strategy = "Submit the form with the field blank and assert the inline error next to the field"
    for task in [
        "Test the login form validation for an empty email field",
        "Test the login form validation when the email field is empty",
        "Test login form validation with an empty e-mail field",
    ]:
        alma.learn("helena", task, "success", strategy, task_type="form_testing")
    for task in ["Wait for the dashboard chart to render", "Wait until the dashboard chart has rendered"]:
        alma.learn("helena", task, "failure", "Sleep five seconds then assert", task_type="ui_testing", error_message="chart not ready")
    alma.add_anti_pattern("helena", "Clicking through the date picker calendar", "Slow and flaky", "Type the date")
    fact = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    alma.feedback(fact.id, "helpful")
    gone = alma.add_knowledge("victor", "billing", "The old invoice service was called ledger-v1")
    alma.forget([gone.id], dry_run=False)
    alma.add_preference("alice", "communication", "Keep test reports to five bullet points")


def export_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_export_then_import_into_an_empty_store_gives_the_same_memories(make_alma, tmp_path):
    source = make_alma(data_dir=tmp_path / "source")
    populate(source)
    original = snapshot(source)
    assert {m["type"] for m in original.values()} == {"heuristic", "anti_pattern", "knowledge", "preference", "outcome"}
    assert any(m["archived"] for m in original.values())
    out = tmp_path / "backup.jsonl"

    exported = source.export(out)
    assert exported.count == len(original)
    lines = export_lines(out)
    header = json.loads(lines[0])
    assert header["format"] == FORMAT and header["version"] == VERSION and header["count"] == len(original)
    assert len(lines) == len(original) + 1
    assert not (tmp_path / "backup.jsonl.partial").exists()

    target = make_alma(data_dir=tmp_path / "target")
    report = target.import_memories(out)
    assert report.ok and report.added == len(original) and report.lines == len(original)
    assert snapshot(target) == original
    # Provenance still resolves, and retrieval works on the imported store.
    (heuristic,) = target.memories("heuristic", "helena")
    assert len(target.get(heuristic.id).provenance) == 3
    found = target.retrieve("When are invoices created?", "victor")
    assert [m.memory.fact for m in found.knowledge] == ["Invoices are generated at 02:00 UTC"]


def test_import_twice_adds_nothing_and_keeps_newer_changes(make_alma, tmp_path):
    source = make_alma(data_dir=tmp_path / "source")
    fact = source.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    source.add_knowledge("victor", "billing", "Refunds take five business days")
    out = tmp_path / "backup.jsonl"
    source.export(out)

    target = make_alma(data_dir=tmp_path / "target")
    assert target.import_memories(out).added == 2
    once = snapshot(target)
    again = target.import_memories(out)
    assert (again.added, again.updated, again.unchanged, again.re_embedded) == (0, 0, 2, 0)
    assert snapshot(target) == once
    # A memory changed since the backup is newer than the file: the file does not undo it.
    target.feedback(fact.id, "helpful")
    third = target.import_memories(out)
    assert third.kept_newer == 1 and target.get(fact.id).memory.helpful == 1
    # ... while a store holding an older version takes the file's.
    source.feedback(fact.id, "used")
    source.feedback(fact.id, "used")
    source.export(out)
    fourth = target.import_memories(out)
    assert fourth.updated == 1 and target.get(fact.id).memory.used == 2
    assert fourth.re_embedded == 0  # same text: the stored vector was kept


def test_corrupted_and_truncated_lines_are_reported_by_number_and_the_rest_imported(make_alma, tmp_path):
    source = make_alma(data_dir=tmp_path / "source")
    facts = [f"Service number {i} listens on port {8000 + i}" for i in range(8)]
    for fact in facts:
        source.add_knowledge("victor", "ops", fact)
    out = tmp_path / "backup.jsonl"
    source.export(out)
    lines = export_lines(out)
    assert len(lines) == 9
    lines[2] = lines[2].replace('"fact":', '"fact"', 1)  # corrupted JSON, line 3
    bad_confidence = json.loads(lines[4])
    bad_confidence["memory"]["confidence"] = 7
    lines[4] = json.dumps(bad_confidence)  # valid JSON, invalid memory, line 5
    wrong_id = json.loads(lines[5])
    wrong_id["memory"]["id"] = "heuristic-" + wrong_id["memory"]["id"].split("-", 1)[1]
    lines[5] = json.dumps(wrong_id)  # id of another type, line 6
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")  # truncated, line 9

    target = make_alma(data_dir=tmp_path / "target")
    report = target.import_memories(broken)
    assert [r.line for r in report.rejected] == [3, 5, 6, 9]
    assert "JSON" in report.rejected[0].error and "truncated" in report.rejected[0].error
    assert "confidence" in report.rejected[1].error
    assert "does not match its type" in report.rejected[2].error
    assert report.added == 4
    good = {json.loads(lines[i])["memory"]["id"] for i in (1, 3, 6, 7)}
    assert set(snapshot(target)) == good
    # Fixing the file and importing again completes the store, without duplicates.
    assert target.import_memories(out).added == 4
    assert len(snapshot(target)) == 8


def test_a_file_without_a_valid_header_is_refused_and_nothing_changes(make_alma, tmp_path):
    target = make_alma(data_dir=tmp_path / "target")
    target.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    before = snapshot(target)
    cases = {
        "empty.jsonl": "",
        "no_header.jsonl": '{"memory": {}}\n',
        "future.jsonl": json.dumps({"format": FORMAT, "version": VERSION + 1}) + "\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(InvalidInput):
            target.import_memories(tmp_path / name)
    with pytest.raises(InvalidInput, match="does not exist"):
        target.import_memories(tmp_path / "missing.jsonl")
    assert snapshot(target) == before


def test_export_with_embeddings_imports_without_embedding_again(make_parts, tmp_path):
    source, source_store, _ = make_parts(data_dir=tmp_path / "source")
    fact = source.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    source.add_preference("alice", "communication", "Keep test reports to five bullet points")
    out = tmp_path / "backup.jsonl"
    assert source.export(out, with_embeddings=True).with_embeddings
    target, target_store, _ = make_parts(data_dir=tmp_path / "target")
    report = target.import_memories(out)
    assert report.added == 2 and report.re_embedded == 0
    (_, before), (_, after) = (
        store.fetch_with_vectors("knowledge", "victor", [fact.id])[fact.id] for store in (source_store, target_store)
    )
    assert np.allclose(before, after)


def _models(store: MemoryStore) -> set[str]:
    return {
        store.collection_model(collection_name(store.project, kind, None if agent == "_" else agent))
        for agent, kind in store.scopes()
    }


def _side_collections(store: MemoryStore) -> list[str]:
    return sorted(n for n in store.collection_names() if not n.startswith("alma."))


def test_reindex_with_a_second_model_and_back(make_parts, tmp_path, real_embedder):
    data = tmp_path / "data"
    first, first_store, _ = make_parts(data_dir=data)
    populate(first)
    original = snapshot(first)
    before = first.retrieve("When are invoices created?", "victor")
    assert _models(first_store) == {"all-MiniLM-L6-v2"}

    # The config now names another model: every vector is rebuilt with it.
    second, second_store, _ = make_parts(data_dir=data, embedder=HashEmbedder(256), embedding={"model": "hash-256"})
    report = second.reindex()
    assert report.model == "hash-256" and report.re_embedded == len(original)
    assert {c.status for c in report.collections} == {"reindexed"}
    assert _models(second_store) == {"hash-256"} and _side_collections(second_store) == []
    assert snapshot(second) == original
    fact = next(m for m in original.values() if m.get("fact") == "Invoices are generated at 02:00 UTC")
    (_, vector) = second_store.fetch_with_vectors("knowledge", "victor", [fact["id"]])[fact["id"]]
    assert vector.shape == (256,) and np.allclose(vector, HashEmbedder(256).embed(["billing: Invoices are generated at 02:00 UTC"])[0])
    found = second.retrieve("When are invoices generated at 02:00 UTC?", "victor")
    assert fact["id"] in [m.memory.id for m in found.knowledge]
    # A second run has nothing to do.
    again = second.reindex()
    assert again.re_embedded == 0 and {c.status for c in again.collections} == {"current"}

    # And back to the real model: the same retrieval as before the round trip.
    third, third_store, _ = make_parts(data_dir=data, embedder=real_embedder)
    assert third.reindex().re_embedded == len(original)
    after = third.retrieve("When are invoices created?", "victor")
    assert [m.memory.id for m in after.knowledge] == [m.memory.id for m in before.knowledge]
    assert [m.similarity for m in after.knowledge] == pytest.approx([m.similarity for m in before.knowledge], abs=1e-4)
    assert {e.action for e in third.audit_log()} >= {"reindex"}


class _InterruptedEmbedder(HashEmbedder):
    """Fault injection: a real HashEmbedder that raises KeyboardInterrupt (a Ctrl-C) on one call."""

    def __init__(self, dim: int, interrupt_on_call: int) -> None:
        super().__init__(dim)
        self.calls = 0
        self.interrupt_on_call = interrupt_on_call

    def embed(self, texts: Any) -> np.ndarray:
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        return super().embed(texts)


def test_reindex_interrupted_anywhere_can_be_run_again(make_parts, tmp_path, hash_embedder):
    data = tmp_path / "data"
    first, first_store, _ = make_parts(data_dir=data, embedder=hash_embedder, embedding={"model": "hash-256"})
    for i in range(12):
        first.add_knowledge("victor", "ops", f"Service number {i} listens on port {8000 + i}")
    original = snapshot(first)

    # Ctrl-C during the copy: the live collection is untouched and still serves.
    interrupted, interrupted_store, _ = make_parts(data_dir=data, embedder=_InterruptedEmbedder(64, interrupt_on_call=3), embedding={"model": "hash-64"})
    with pytest.raises(KeyboardInterrupt):
        interrupted.reindex(batch=4)
    assert _side_collections(interrupted_store) == ["alma-reindex.default.victor.knowledge"]
    assert _models(first_store) == {"hash-256"} and snapshot(first) == original
    assert first.retrieve("Which port does service number 3 listen on?", "victor").knowledge

    # Written meanwhile by a server still on the old model: the rerun catches it up.
    late = first.add_knowledge("victor", "ops", "The cache listens on port 6379")
    resumed, resumed_store, _ = make_parts(data_dir=data, embedder=HashEmbedder(64), embedding={"model": "hash-64"})
    report = resumed.reindex(batch=4)
    assert report.re_embedded < 13  # the batches copied before the interruption were not redone
    assert _models(resumed_store) == {"hash-64"} and _side_collections(resumed_store) == []
    assert set(snapshot(resumed)) == set(original) | {late.id}

    # A crash inside the swap (live renamed away, the new one not yet renamed in): the next run
    # finishes it. Both states the swap passes through are recovered without loss.
    live = collection_name("default", "knowledge", "victor")
    store = resumed_store
    store.rename_collection(live, "alma-reindex.default.victor.knowledge")  # the new one, complete
    store.staging_collection("alma-retired.default.victor.knowledge", "hash-256")  # the old one, about to go
    finished, finished_store, _ = make_parts(data_dir=data, embedder=HashEmbedder(64), embedding={"model": "hash-64"})
    recovered = finished.reindex()
    assert {c.status for c in recovered.collections} == {"recovered"}
    assert _side_collections(finished_store) == [] and set(snapshot(finished)) == set(original) | {late.id}

    store.rename_collection(live, "alma-retired.default.victor.knowledge")  # renamed away, nothing new
    again, again_store, _ = make_parts(data_dir=data, embedder=HashEmbedder(64), embedding={"model": "hash-64"})
    assert {c.status for c in again.reindex().collections} == {"recovered"}
    assert _side_collections(again_store) == [] and set(snapshot(again)) == set(original) | {late.id}


def run_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    env.pop("ALMA_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "alma_mcp", "--config", str(config), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


def _config(path: Path, data: Path, model: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump({"alma": {"project_id": "cli", "data_dir": str(data), "allow_undeclared_agents": True, "embedding": {"model": model}}}),
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_cli_export_import_reindex(make_alma, tmp_path):
    source_config = _config(tmp_path / "a" / "config.yaml", tmp_path / "a" / "data", "hash-256")
    source = make_alma(data_dir=tmp_path / "a" / "data", embedder=HashEmbedder(256), project_id="cli", embedding={"model": "hash-256"})
    for i in range(5):
        source.add_knowledge("victor", "ops", f"Service number {i} listens on port {8000 + i}")
    out = tmp_path / "backup.jsonl"

    exported = run_cli("export", "--out", str(out), config=source_config)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["count"] == 5
    assert "5/5" not in exported.stderr  # no progress bar where stderr is a pipe (tests/test_cli.py: a terminal)

    lines = export_lines(out)
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30], encoding="utf-8")
    target_config = _config(tmp_path / "b" / "config.yaml", tmp_path / "b" / "data", "hash-256")
    imported = run_cli("import", str(out), config=target_config)
    assert imported.returncode == 1  # some lines were rejected ...
    assert f"{out} line 6 rejected" in imported.stderr
    assert json.loads(imported.stdout)["added"] == 4  # ... and the good ones are in
    twice = run_cli("import", str(out), "--quiet", config=target_config)
    assert json.loads(twice.stdout)["added"] == 0 and json.loads(twice.stdout)["unchanged"] == 4

    _config(target_config, tmp_path / "b" / "data", "hash-64")
    reindexed = run_cli("reindex", config=target_config)
    assert reindexed.returncode == 0, reindexed.stderr
    assert json.loads(reindexed.stdout)["re_embedded"] == 4 and "4/4" not in reindexed.stderr


LEARNED_TASKS = [
    "The login UI test fails intermittently in CI",
    "The browser test for the login page is flaky on the CI server",
    "Our end-to-end login test randomly fails in the pipeline",
]


def _vectors(store: MemoryStore, agent: str = "bot") -> dict[str, np.ndarray]:
    """Every outcome's and lesson's stored vector, by id."""
    out: dict[str, np.ndarray] = {}
    for kind in ("outcome", "heuristic", "anti_pattern"):
        ids = [m.id for m in store.list(kind, agent, include_archived=True)]
        out.update({i: v for i, (_, v) in store.fetch_with_vectors(kind, agent, ids).items()})
    return out


def test_reindex_import_and_restore_keep_the_vectors_learning_gave(make_parts, tmp_path):
    # Learning stores an outcome under its task alone, and a learned lesson under the mean of its
    # tasks plus its strategy: that is what groups outcomes and lets a task find its lessons.
    # Re-embedding (reindex), importing without vectors and restoring an archived lesson must give
    # them those same vectors, not the embedding of their text (a purged one is erased).
    first, first_store, _ = make_parts(data_dir=tmp_path / "a")
    for task in LEARNED_TASKS:
        first.learn("bot", task, "success", "Replace fixed sleeps with explicit waits", "testing")
        first.learn("bot", task, "failure", "Increase the test timeout", "testing", error_message="still flaky")
    assert first.list_memories("bot", "heuristic") and first.list_memories("bot", "anti_pattern")
    learned = _vectors(first_store)
    assert len(learned) == 8  # six outcomes, a heuristic and an anti-pattern

    def same(store: MemoryStore) -> None:
        now = _vectors(store)
        assert now.keys() == learned.keys()
        for i, vector in learned.items():
            assert np.allclose(now[i], vector, atol=1e-5), i

    assert first.reindex(force=True).re_embedded == 8
    same(first_store)

    path = tmp_path / "bot.jsonl"
    first.export(path)  # without embeddings: the import embeds again
    second, second_store, _ = make_parts(data_dir=tmp_path / "b")
    assert second.import_memories(path).re_embedded == 8
    same(second_store)

    heuristic = first.list_memories("bot", "heuristic")[0]
    first.forget([heuristic.id], dry_run=False)
    first.restore([heuristic.id])
    same(first_store)
    found = first.retrieve("The login page browser test is flaky in CI", "bot", memory_types=["heuristic"])
    assert [m.memory.id for m in found.heuristics] == [heuristic.id]
