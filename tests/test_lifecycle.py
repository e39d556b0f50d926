"""The life cycle: merging near-duplicates, decay and the sweep, caps, forget/restore, the audit log.

The real embedding model decides what counts as a near-duplicate; HashEmbedder only in the
unit tests of pure rules (strength, plan_merges).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mcp import Client

from alma_mcp.storage.audit import AuditEntry, JsonlAuditLog, audit_file
from alma_mcp.errors import InvalidInput, NotFound
from alma_mcp.learning.lifecycle import days_to_floor, half_life, plan_merges, strength
from alma_mcp.models import DomainKnowledge, Heuristic, new_id, utcnow
from alma_mcp.frontends.server import create_server

MODES = ["legacy", "auto"]


def snapshot(alma: Any) -> dict[str, str]:
    """Every stored memory (archived too) as JSON, by id: to prove that nothing changed."""
    out = {}
    for memory in alma.memories(include_archived=True):
        out[memory.id] = memory.model_dump_json()
    return out


def old_fact(alma: Any, agent: str, fact: str, days: float, confidence: float = 0.8) -> DomainKnowledge:
    """A fact taught `days` ago and never used since, written straight to the store."""
    then = utcnow() - timedelta(days=days)
    memory = DomainKnowledge(
        id=new_id("knowledge"), project=alma.config.project, agent=agent, domain="ops", fact=fact,
        confidence=confidence, created_at=then, updated_at=then,
    )
    alma.put([memory])
    return memory


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text if result.content else result
    return result.structured_content


# -- merging on write --------------------------------------------------------------------
def test_anti_pattern_taught_twice_is_merged_with_counts_kept(alma):
    first = alma.add_anti_pattern("helena", "Using sleep() to wait for elements", "Flaky tests", task_type="testing")
    alma.feedback(first.id, "helpful")
    alma.feedback(first.id, "used")
    second = alma.add_anti_pattern(
        "helena", "Waiting for elements with sleep()", "Makes tests flaky", better_alternative="Wait for the element to be visible", task_type="testing"
    )
    assert second.id == first.id  # the older lesson survives, ACE-style
    survivor = alma.get(first.id).memory
    assert survivor.occurrence_count == 2
    assert survivor.helpful == 1 and survivor.used == 1
    assert survivor.better_alternative == "Wait for the element to be visible"
    assert survivor.pattern == "Using sleep() to wait for elements"
    assert not survivor.archived
    archived = [m for m in alma.memories("anti_pattern", "helena", include_archived=True) if m.archived]
    assert len(archived) == 1 and archived[0].pattern == "Waiting for elements with sleep()"
    assert archived[0].archived_reason.startswith(f"merged into {first.id}")
    assert alma.stats()["agents"]["helena"]["anti_pattern"] == 1
    (entry,) = alma.audit_log(action="merge")
    assert entry.memory_id == archived[0].id and entry.details["survivor"] == first.id and entry.details["similarity"] >= 0.9


def test_distinct_lessons_are_not_merged(alma):
    alma.add_heuristic("helena", "When testing a form with validation", "Test each field's error message separately", "testing")
    alma.add_heuristic("helena", "When testing a login form", "Use the staging database", "testing")
    # Same wording for another agent: scopes never merge.
    alma.add_heuristic("victor", "When testing a form with validation", "Test each field's error message separately", "testing")
    assert alma.stats()["agents"]["helena"]["heuristic"] == 2
    assert alma.stats()["agents"]["victor"]["heuristic"] == 1
    assert alma.audit_log() == []


def test_preference_restated_keeps_the_newer_wording(alma):
    old = alma.add_preference("alice", "code_style", "Use 2 spaces for indentation")
    alma.feedback(old.id, "helpful")
    new = alma.add_preference("alice", "code_style", "Use 4 spaces for indentation")
    assert new.id != old.id
    active = alma.memories("preference")
    assert [m.preference for m in active] == ["Use 4 spaces for indentation"]
    assert active[0].helpful == 1 and active[0].created_at == old.created_at  # the history is folded in
    stale = alma.get(old.id).memory
    assert stale.archived and stale.archived_reason.startswith(f"superseded by {new.id}")
    # Another user's identical preference is theirs alone.
    alma.add_preference("bob", "code_style", "Use 4 spaces for indentation")
    assert len(alma.memories("preference")) == 2


def test_merge_thresholds_are_configurable_per_type(make_alma):
    alma = make_alma(lifecycle={"merge_thresholds": {"anti_pattern": None}})
    alma.add_anti_pattern("helena", "Using sleep() to wait for elements", "Flaky tests")
    alma.add_anti_pattern("helena", "Waiting for elements with sleep()", "Makes tests flaky")
    assert alma.stats()["agents"]["helena"]["anti_pattern"] == 2
    assert alma.config.alma.lifecycle.merge_thresholds["heuristic"] == 0.90  # the others keep their default


def test_merging_a_taught_duplicate_into_a_learned_heuristic_keeps_its_provenance(make_alma):
    # Learning stores a lesson under the centre of its tasks' vectors, not its own text's, so
    # the taught copy sits at about 0.85 from it: merged here on demand with that threshold.
    alma = make_alma(lifecycle={"merge_on_write": False})
    strategy = "Submit the form with the field blank and assert the inline error next to the field"
    tasks = [
        "Test the login form validation for an empty email field",
        "Test the login form validation when the email field is empty",
        "Test login form validation with an empty e-mail field",
    ]
    created = []
    for task in tasks:
        created += alma.learn("helena", task, "success", strategy, task_type="form_testing").heuristics_created
    (learned_id,) = created
    learned = alma.get(learned_id).memory
    taught = alma.add_heuristic("helena", "Testing a login form with an empty email field", strategy, "form_testing", confidence=0.9)
    alma.feedback(taught.id, "helpful")
    result = alma.consolidate("helena", "heuristic", similarity_threshold=0.75, dry_run=False)
    assert result.count == 1 and result.groups[0].survivor.id == learned_id  # the older lesson survives
    merged = alma.get(learned_id).memory
    assert merged.supporting_outcomes == learned.supporting_outcomes and len(merged.supporting_outcomes) == 3
    assert merged.occurrence_count == 4 and merged.success_count == 4 and merged.helpful == 1
    assert merged.confidence >= 0.9
    assert alma.get(taught.id).memory.archived_reason.startswith(f"merged into {learned_id}")
    # Learning goes on updating the same lesson: the archived copy never comes back.
    report = alma.learn("helena", "Check the login form with a blank email address", "success", strategy, task_type="form_testing")
    assert report.heuristics_updated == [learned_id] and report.heuristics_created == []
    assert alma.stats()["agents"]["helena"]["heuristic"] == 1


# -- consolidation on demand -------------------------------------------------------------
def test_consolidate_dry_run_changes_nothing_then_merges(make_alma):
    alma = make_alma(lifecycle={"merge_on_write": False})
    facts = [
        ("database", "Migrations run with alembic upgrade head"),
        ("database", "Migrations are applied with alembic upgrade head"),
        ("database", "Run migrations with alembic upgrade head"),
        ("billing", "Invoices are generated at 02:00 UTC"),
    ]
    made = [alma.add_knowledge("victor", d, f) for d, f in facts]
    for memory in made[:3]:
        alma.feedback(memory.id, "used")
    before = snapshot(alma)

    dry = alma.consolidate("victor", "knowledge", similarity_threshold=0.9)
    assert dry.dry_run and dry.count == 2 and len(dry.groups) == 1
    assert snapshot(alma) == before
    assert alma.audit_log() == []

    done = alma.consolidate("victor", "knowledge", similarity_threshold=0.9, dry_run=False)
    assert done.count == 2
    group = done.groups[0]
    # Facts: the newest statement survives.
    assert group.survivor.id == made[2].id
    assert {m.id for m in group.merged} == {made[0].id, made[1].id}
    survivor = alma.get(made[2].id).memory
    assert survivor.used == 3 and survivor.created_at == made[0].created_at
    assert alma.stats()["agents"]["victor"]["knowledge"] == 2
    assert {e.memory_id for e in alma.audit_log(action="merge")} == {made[0].id, made[1].id}
    # Nothing left to merge: a second run is a no-op.
    assert alma.consolidate("victor", "knowledge", similarity_threshold=0.9, dry_run=False).count == 0
    # Restoring a merged fact says which memory still counts its evidence, by its id alone.
    assert alma.restore([made[0].id]).message == (
        f"restored 1 memory; {made[0].id} had been merged into {made[2].id}, which still counts its evidence too"
    )


def test_consolidate_rejects_bad_requests_and_changes_nothing(alma):
    alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    before = snapshot(alma)
    with pytest.raises(InvalidInput, match="outcomes"):
        alma.consolidate("victor", "outcome")
    with pytest.raises(InvalidInput, match="similarity_threshold"):
        alma.consolidate("victor", "knowledge", similarity_threshold=1.5)
    with pytest.raises(InvalidInput, match="name the agent"):
        alma.consolidate(None, "knowledge")
    with pytest.raises(NotFound):
        alma.consolidate("victor", "lesson")
    assert snapshot(alma) == before


def test_plan_merges_never_chains_and_prefers_the_oldest_lesson(hash_embedder):
    now = utcnow()
    texts = ["alpha beta gamma delta", "alpha beta gamma delta epsilon", "zeta eta theta iota"]
    lessons = [
        Heuristic(id=new_id("heuristic"), project="p", agent="a", condition=t, strategy="s", created_at=now - timedelta(days=i))
        for i, t in enumerate(texts)
    ]
    vectors = hash_embedder.embed([m.text() for m in lessons])
    (plan,) = plan_merges(lessons, vectors, 0.8)
    assert plan.survivor.id == lessons[1].id  # the oldest of the two near-duplicates
    assert [m.id for m, _ in plan.members] == [lessons[0].id]
    # A chain a~b, b~c with a!~c: c is not merged into a through b.
    chain = np.array([[1.0, 0.0], [0.8, 0.6], [0.28, 0.96]], dtype=np.float32)
    chain /= np.linalg.norm(chain, axis=1, keepdims=True)
    ordered = [
        Heuristic(id=new_id("heuristic"), project="p", agent="a", condition=f"c{i}", strategy="s", created_at=now + timedelta(days=i))
        for i in range(3)
    ]
    plans = plan_merges(ordered, chain, 0.79)
    assert [(p.survivor.id, [m.id for m, _ in p.members]) for p in plans] == [(ordered[0].id, [ordered[1].id])]


# -- decay, the sweep and caps -----------------------------------------------------------
def test_strength_halves_every_half_life_and_use_restarts_the_clock():
    now = utcnow()
    fresh = DomainKnowledge(id=new_id("knowledge"), project="p", agent="a", domain="d", fact="f", created_at=now, updated_at=now)
    month = fresh.model_copy(update={"updated_at": now - timedelta(days=30), "created_at": now - timedelta(days=30)})
    year = fresh.model_copy(update={"updated_at": now - timedelta(days=365), "created_at": now - timedelta(days=365)})
    used = year.model_copy(update={"last_used_at": now - timedelta(days=1)})
    values = [strength(m, 30.0, now) for m in (fresh, used, month, year)]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(1.0) and values[2] == pytest.approx(0.5, abs=1e-6)
    assert days_to_floor(30.0, 0.02) == pytest.approx(169.3, abs=0.1)


def test_sweep_archives_only_what_decayed_below_the_floor(alma):
    fresh = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    month = old_fact(alma, "victor", "The nightly backup runs at 03:00 UTC", days=40)
    stale = old_fact(alma, "victor", "The old build server was called hermes", days=400)
    revived = old_fact(alma, "victor", "Deploys need a green CI run first", days=400)
    alma.feedback(revived.id, "used")  # used today: its clock restarts
    before = snapshot(alma)

    dry = alma.sweep()
    assert dry.dry_run and [m.id for m in dry.decayed] == [stale.id]
    assert dry.decayed[0].details["strength"] < 0.02
    assert snapshot(alma) == before and alma.audit_log() == []

    done = alma.sweep(dry_run=False)
    assert [m.id for m in done.decayed] == [stale.id]
    gone = alma.get(stale.id).memory
    assert gone.archived and gone.archived_reason.startswith("decayed: strength")
    for kept in (fresh, month, revived):
        assert not alma.get(kept.id).memory.archived
    (entry,) = alma.audit_log()
    assert (entry.action, entry.call, entry.memory_id) == ("archive", "sweep", stale.id)
    # Decay also orders what stays: the month-old fact is weaker than the fresh one.
    days = half_life(alma.config, "victor")
    now = utcnow()
    assert strength(alma.get(fresh.id).memory, days, now) > strength(alma.get(month.id).memory, days, now)


def test_automatic_sweep_runs_on_the_first_write(make_alma):
    alma = make_alma(lifecycle={"sweep_every_writes": 5})
    stale = old_fact(alma, "victor", "The old build server was called hermes", days=400)
    alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    assert alma.get(stale.id).memory.archived
    (entry,) = alma.audit_log()
    assert entry.call == "automatic sweep" and entry.memory_id == stale.id


def test_cap_archives_the_lowest_value_first(make_alma):
    alma = make_alma(agents={"victor": {"max_memories": 3}})
    facts = {
        "Invoices are generated at 02:00 UTC": 0.9,
        "The nightly backup runs at 03:00 UTC": 0.3,
        "Deploys need a green CI run first": 0.8,
        "The staging database is reset every Sunday": 0.2,
        "API keys rotate every 90 days": 0.7,
    }
    made = {fact: alma.add_knowledge("victor", "ops", fact, confidence=c) for fact, c in facts.items()}
    active = {m.fact for m in alma.memories("knowledge", "victor")}
    assert active == {"Invoices are generated at 02:00 UTC", "Deploys need a green CI run first", "API keys rotate every 90 days"}
    capped = alma.audit_log(action="archive")
    assert {e.memory_id for e in capped} == {made["The nightly backup runs at 03:00 UTC"].id, made["The staging database is reset every Sunday"].id}
    assert all(e.call == "cap" and "over the cap of 3" in e.reason for e in capped)


# -- forget, restore and the audit log ---------------------------------------------------
def test_forget_dry_run_changes_nothing(alma):
    fact = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    old_fact(alma, "victor", "The nightly backup runs at 03:00 UTC", days=10)
    before = snapshot(alma)
    for kwargs in ({"memory_ids": [fact.id]}, {"agent": "victor", "older_than_days": 5}, {"memory_ids": [fact.id], "purge": True}):
        result = alma.forget(**kwargs)
        assert result.dry_run and result.count == 1
    assert snapshot(alma) == before
    assert alma.audit_log() == []


def test_forget_needs_ids_or_a_criterion(alma):
    """An agent alone is not a criterion: it would take every memory of the agent in one call."""
    from alma_mcp.errors import InvalidInput

    alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    alma.add_knowledge("victor", "ops", "Deploys need a green CI run first")
    before = snapshot(alma)
    for purge in (False, True):
        with pytest.raises(InvalidInput, match="older_than_days=0 takes every memory"):
            alma.forget(agent="victor", dry_run=False, purge=purge)
    assert alma.forget(memory_ids=[], agent="victor", dry_run=False).count == 0
    assert snapshot(alma) == before
    assert alma.forget(agent="victor", older_than_days=0, dry_run=False).count == 2  # on purpose
    assert alma.memories("knowledge", "victor") == []


def test_forget_archives_by_default_and_restore_brings_it_back(alma):
    fact = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    done = alma.forget([fact.id], dry_run=False)
    assert done.action == "archive" and done.count == 1
    stored = alma.get(fact.id).memory
    assert stored.archived and stored.archived_reason == "forgotten by id"
    assert alma.retrieve("When are invoices generated?", "victor").knowledge == []
    # Archiving twice changes nothing.
    assert alma.forget([fact.id], dry_run=False).count == 0

    restored = alma.restore([fact.id])
    assert restored.count == 1
    back = alma.get(fact.id).memory
    assert not back.archived and back.archived_reason is None and back.last_used_at is not None
    assert [m.memory.id for m in alma.retrieve("When are invoices generated?", "victor").knowledge] == [fact.id]
    assert [e.action for e in alma.audit_log(memory_id=fact.id)] == ["restore", "archive"]
    with pytest.raises(InvalidInput, match="not archived"):
        alma.restore([fact.id])


def test_purge_erases_the_memory_and_its_words_from_the_audit_log(alma):
    fact = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC by cron-7f3a", confidence=0.6)
    kept = alma.add_knowledge("victor", "billing", "Refunds take five business days")
    alma.forget([fact.id, kept.id], dry_run=False)  # archived first: an entry with its title
    alma.restore([fact.id, kept.id])
    done = alma.forget([fact.id], dry_run=False, purge=True)
    assert done.action == "purge" and done.count == 1
    with pytest.raises(NotFound):
        alma.get(fact.id).memory
    (entry,) = alma.audit_log(action="purge")
    assert entry.memory_id == fact.id and entry.snapshot is None and entry.title is None
    assert entry.call == "forget (purge)"
    assert all(e.title is None for e in alma.audit_log(memory_id=fact.id))
    log_text = audit_file(alma.config.data_dir, alma.config.project).read_text()
    assert "cron-7f3a" not in log_text and "Refunds take five business days" in log_text
    with pytest.raises(NotFound, match="no memory with id"):
        alma.restore([fact.id])


def test_every_removal_is_in_the_audit_log(make_alma):
    alma = make_alma(agents={"victor": {"max_memories": 4}}, allow_undeclared_agents=True)
    # forget (archive), forget (purge), merge on write, consolidate, decay sweep, cap, learning's retirement.
    a = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    b = alma.add_knowledge("victor", "billing", "Refunds take five business days")
    alma.forget([a.id], dry_run=False)
    alma.forget([b.id], dry_run=False, purge=True)
    alma.add_anti_pattern("victor", "Using sleep() to wait for elements", "Flaky tests")
    alma.add_anti_pattern("victor", "Waiting for elements with sleep()", "Makes tests flaky")
    old_fact(alma, "victor", "The old build server was called hermes", days=400)
    alma.sweep(dry_run=False)
    for fact, confidence in [("Deploys need a green CI run first", 0.9), ("API keys rotate every 90 days", 0.8),
                             ("The staging database is reset every Sunday", 0.7), ("Logs are kept for 30 days", 0.6),
                             ("The status page is at status.example.com", 0.1)]:
        alma.add_knowledge("victor", "ops", fact, confidence=confidence)
    strategy = "Retry the request three times with a fixed one second delay"
    tasks = ["Call the payments API when it times out", "Handle a timeout from the payments API",
             "Recover from a payments API timeout", "Deal with the payments API timing out"]
    for task in tasks[:3]:
        alma.learn("helena", task, "success", strategy, task_type="api")
    retired = []
    for i in range(6):
        retired += alma.learn("helena", f"{tasks[i % 4]} again", "failure", strategy, task_type="api", error_message="still timed out").heuristics_retired
    assert retired, "the heuristic should have been retired by the failures"

    archived = {m.id for m in alma.memories(include_archived=True) if m.archived}
    audited = {e.memory_id: e for e in alma.audit_log(limit=1000) if e.action in ("archive", "merge", "purge")}
    assert archived <= set(audited), f"removals without an audit entry: {archived - set(audited)}"
    assert b.id in audited and audited[b.id].action == "purge"
    calls = {e.call for e in audited.values()}
    assert {"forget", "forget (purge)", "sweep", "cap", "learn"} <= calls
    assert any(c.startswith("merge on write") for c in calls)
    for entry in audited.values():
        assert entry.reason and entry.at and entry.memory_type and entry.agent


def test_jsonl_audit_log_survives_a_torn_line(tmp_path):
    log = JsonlAuditLog(audit_file(tmp_path, "p"))
    log.append([AuditEntry(action="archive", call="forget", reason="one")])
    with open(log.path, "ab") as handle:
        handle.write(b'{"id": "torn", "act')  # a crash mid-append
    log.append([AuditEntry(action="archive", call="forget", reason="two")])
    assert [e.reason for e in log.read()] == ["two", "one"]
    assert oct(os.stat(log.path).st_mode & 0o777) == "0o600"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.chroma_server
@pytest.mark.slow
def test_chroma_http_audit_log_is_shared_and_ignored_by_scopes(tmp_path, make_alma, real_embedder):
    chroma = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    port = _free_port()
    server = subprocess.Popen(
        [chroma, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded poll until the server answers its heartbeat
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "chroma run did not start"
            time.sleep(0.2)
        settings = {"storage": "chroma-http", "chroma_http": {"host": "127.0.0.1", "port": port}}
        first = make_alma(data_dir=tmp_path / "one", **settings)
        fact = first.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
        first.forget([fact.id], dry_run=False)
        # A second service (another process, another machine) reads the same log.
        second = make_alma(data_dir=tmp_path / "two", **settings)
        (entry,) = second.audit_log()
        assert entry.memory_id == fact.id and entry.action == "archive"
        assert list(second.stats()["agents"]) == ["victor"] and second.count(include_archived=True) == 1  # no audit "agent"
        assert not (tmp_path / "one" / "audit.default.jsonl").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- through a real MCP client -----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_life_cycle_tools_and_audit_resource(make_alma, mode):
    alma = make_alma(lifecycle={"merge_on_write": False})
    a = alma.add_knowledge("victor", "database", "Migrations run with alembic upgrade head")
    b = alma.add_knowledge("victor", "database", "Migrations are applied with alembic upgrade head")
    c = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    async with Client(create_server(alma=alma), mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"alma_consolidate", "alma_restore", "alma_sweep", "alma_forget"} <= set(tools)
        assert tools["alma_consolidate"].annotations.destructive_hint is True
        assert tools["alma_forget"].input_schema["properties"]["purge"]["default"] is False

        dry = structured(await client.call_tool("alma_consolidate", {"agent": "victor", "memory_type": "knowledge"}))
        assert dry["dry_run"] is True and dry["count"] == 1
        assert dry["groups"][0]["survivor"]["id"] == b.id and dry["groups"][0]["merged"][0]["id"] == a.id
        done = structured(await client.call_tool("alma_consolidate", {"agent": "victor", "memory_type": "knowledge", "dry_run": False}))
        assert done["count"] == 1

        forgot = structured(await client.call_tool("alma_forget", {"agent": "victor", "memory_ids": [c.id], "dry_run": False}))
        assert forgot["action"] == "archive" and forgot["count"] == 1
        restored = structured(await client.call_tool("alma_restore", {"agent": "victor", "memory_ids": [c.id]}))
        assert restored["count"] == 1

        sweep = structured(await client.call_tool("alma_sweep", {"agent": "victor"}))
        assert sweep["dry_run"] is True and sweep["count"] == 0

        audit = json.loads((await client.read_resource("alma://audit?agent=victor")).contents[0].text)
        assert [(e["action"], e["memory_id"]) for e in audit] == [("restore", c.id), ("archive", c.id), ("merge", a.id)]
        assert audit[1]["call"] == "forget" and audit[2]["call"] == "consolidate"
        one = json.loads((await client.read_resource(f"alma://audit/{a.id}?agent=victor")).contents[0].text)
        assert [e["action"] for e in one] == ["merge"]

        bad = await client.call_tool("alma_consolidate", {"agent": "victor", "memory_type": "outcome"})
        assert bad.is_error
        bad_restore = await client.call_tool("alma_restore", {"agent": "victor", "memory_ids": [b.id]})
        assert bad_restore.is_error and "not archived" in bad_restore.content[0].text


async def test_async_variants_for_async_agents(alma):
    fact = alma.add_knowledge("victor", "billing", "Invoices are generated at 02:00 UTC")
    assert (await alma.aforget([fact.id], dry_run=False)).count == 1
    assert (await alma.arestore([fact.id])).count == 1
    assert (await alma.aconsolidate("victor", "knowledge")).count == 0
    assert (await alma.asweep()).dry_run is True
