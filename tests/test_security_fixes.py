"""One test per weakness found by attacking the server (SECURITY.md): each fails on the code
that had it. Scope itself (item 1) is in test_attack.py; purge as erasure in test_lifecycle.py."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from alma_mcp.storage import audit as audit_module
from alma_mcp.indexes import lexical
from alma_mcp.storage.audit import AuditEntry, JsonlAuditLog
from alma_mcp.config import HttpSettings
from alma_mcp.errors import AlmaError, ConfigError, InvalidInput, NotFound
from alma_mcp.frontends.http import build_http_app
from alma_mcp.frontends.server import create_server
from alma_mcp.storage.writelock import LOCK_FILE

AGENTS = {"alice": {}, "mallory": {"cannot_learn": ["secrets", "backend"]}}


# -- 2. cannot_learn is not bypassed by spacing, a newline or case ----------------------------------
@pytest.mark.parametrize("category", ["secrets ", "secrets\n", "Secrets", "SECRETS  ", "backend\n"])
def test_cannot_learn_holds_whatever_the_spelling(make_alma, category):
    alma = make_alma(agents=AGENTS, allow_undeclared_agents=False)
    writes = [
        lambda: alma.learn("mallory", "Read the vault", "success", "cat the file", category),
        lambda: alma.add_heuristic("mallory", "vault", "cat the file", task_type=category),
        lambda: alma.add_anti_pattern("mallory", "vault", "slow", task_type=category),
        lambda: alma.add_knowledge("mallory", category, "The vault key is on the wiki"),
        lambda: alma.add_preference("bob", category, "Show secrets", agent="mallory"),
    ]
    for write in writes:
        with pytest.raises(AlmaError):
            write()
    assert alma.stats()["total"] == 0


# -- 3. an import cannot shadow another agent's memory, nor bring in undeclared agents ----------------
def test_import_refuses_ids_of_other_agents_and_undeclared_agents(make_alma, tmp_path):
    alma = make_alma(agents={"helena": {}, "victor": {}}, allow_undeclared_agents=False)
    lesson = alma.add_heuristic("helena", "The signup form test is flaky", "Wait for the submit button")
    path = tmp_path / "export.jsonl"
    alma.export(path)
    header, line = path.read_text().splitlines()
    stolen = json.loads(line)
    stolen["memory"]["agent"] = "victor"
    ghost = json.loads(line)
    ghost["memory"].update(agent="ghost", id="heuristic-" + "a" * 32)
    path.write_text("\n".join([header, json.dumps(stolen), json.dumps(ghost)]) + "\n")
    report = alma.import_memories(path)
    assert report.added == 0 and len(report.rejected) == 2
    errors = " ".join(r.error for r in report.rejected)
    assert "already belongs to agent 'helena'" in errors and "'ghost' is not declared" in errors
    assert alma.get(lesson.id, "helena").memory.agent == "helena"
    agents = alma.stats()["agents"]  # the declared agents, each listed; nothing landed with victor or ghost
    assert agents.keys() == {"helena", "victor"} and sum(agents["victor"].values()) == 0


# -- 4. the tokenizer's cache is bounded in bytes, not only in entries --------------------------------
def test_long_unique_words_do_not_grow_the_tokenizer_cache():
    lexical._word_tokens.cache_clear()
    for i in range(2000):
        lexical.tokenize(f"deploy {i:05d}_" + "segment_" * 60)
    # Only the short words ('deploy') are cached; 2,000 words of ~490 characters are not.
    assert lexical._word_tokens.cache_info().currsize <= 2
    assert lexical.tokenize("ERR_CERT_DATE_INVALID " + "x_" * 100)[:2] == ["err_cert_date_invalid", "err"]


# -- 5. data, lock and export files are the owner's alone ---------------------------------------------
def test_data_files_are_private_whatever_the_umask(make_alma, tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "data"
        alma = make_alma(data_dir=data)
        alma.add_knowledge("bot", "vault", "The vault key is on the wiki")
        alma.forget(agent="bot", older_than_days=0, dry_run=False)  # writes the audit log
        exported = alma.export(tmp_path / "backup.jsonl")
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(data) == 0o700 and mode(data / "chroma") == 0o700
    assert mode(data / "chroma" / "chroma.sqlite3") == 0o600
    assert mode(data / LOCK_FILE) == 0o600
    assert mode(Path(exported.path)) == 0o600
    assert all(mode(p) & 0o077 == 0 for p in data.iterdir() if p.is_file())


# -- 6. an id out of scope answers exactly as a missing id --------------------------------------------
def test_no_existence_oracle(make_alma):
    alma = make_alma(agents=AGENTS, allow_undeclared_agents=False)
    theirs = alma.add_knowledge("alice", "ops", "The staging password is hunter2")
    alma.forget([theirs.id], agent="alice", dry_run=False)
    missing = "knowledge-" + "0" * 32

    def message(call) -> str:
        with pytest.raises(NotFound) as caught:
            call()
        return str(caught.value)

    for call in (
        lambda i: alma.forget([i], agent="mallory"),
        lambda i: alma.restore([i], agent="mallory"),
        lambda i: alma.feedback(i, "harmful", agent="mallory"),
        lambda i: alma.get(i, agent="mallory"),
    ):
        assert message(lambda: call(theirs.id)).replace(theirs.id, "ID") == message(lambda: call(missing)).replace(missing, "ID")


# -- 8. an age too large for a date is a clear error, not an OverflowError ----------------------------
def test_forget_older_than_an_impossible_age(make_alma):
    alma = make_alma()
    for days in (1e308, float("inf"), float("nan"), 1e6):
        with pytest.raises(InvalidInput, match="older_than_days"):
            alma.forget(agent="bot", older_than_days=days)


# -- 9. import keeps the tools' limits ------------------------------------------------------------------
def test_import_enforces_the_tools_limits(make_alma, tmp_path):
    alma = make_alma()
    fact = alma.add_knowledge("bot", "ops", "Deploys happen on Tuesdays")
    lesson = alma.add_heuristic("bot", "A deploy fails", "Roll back first")
    path = tmp_path / "export.jsonl"
    alma.export(path)
    header, *lines = path.read_text().splitlines()
    by_id = {json.loads(line)["memory"]["id"]: json.loads(line) for line in lines}
    big_source = by_id[fact.id]
    big_source["memory"]["source"] = "s" * 5_000_000
    many = by_id[lesson.id]
    many["memory"]["supporting_outcomes"] = [f"outcome-{i:032x}" for i in range(200_000)]
    future = json.loads(json.dumps(by_id[fact.id]))
    future["memory"]["updated_at"] = "9999-12-31T00:00:00Z"
    for bad in (big_source, many, future):
        path.write_text(header + "\n" + json.dumps(bad) + "\n")
        report = alma.import_memories(path)
        assert len(report.rejected) == 1 and report.added == report.updated == 0, report
    assert alma.get(fact.id).memory.source == "agent"
    assert alma.get(lesson.id).memory.supporting_outcomes == []


# -- 10. a weak token is refused off loopback and warned about on it ----------------------------------
def test_weak_tokens(alma, caplog):
    mcp = create_server(alma=alma)
    with pytest.raises(ConfigError, match="at least 32"):
        build_http_app(mcp, HttpSettings(), "0.0.0.0", 8765, token="x")
    with caplog.at_level(logging.WARNING, logger="alma_mcp"):
        assert build_http_app(mcp, HttpSettings(), "127.0.0.1", 8765, token="short-token") is not None
    assert "at least 32" in caplog.text


# -- 11. reading the audit log streams from the end and stops at the limit ----------------------------
def test_audit_reads_stop_at_the_limit(tmp_path, monkeypatch):
    log = JsonlAuditLog(tmp_path / "audit.jsonl")
    entries = [AuditEntry(action="archive", call="t", reason="r", memory_id=f"knowledge-{i:032x}", agent="a") for i in range(5000)]
    log.append(entries)
    parsed = []

    class Counting(AuditEntry):
        @classmethod
        def model_validate_json(cls, data, **kwargs):  # type: ignore[override]
            parsed.append(1)
            return AuditEntry.model_validate_json(data, **kwargs)

    monkeypatch.setattr(audit_module, "AuditEntry", Counting)
    newest = log.read(limit=10)
    assert [e.memory_id for e in newest] == [e.memory_id for e in reversed(entries[-10:])]
    assert len(parsed) <= 10
    parsed.clear()
    one = log.read(limit=5, memory_id=entries[42].memory_id)
    assert [e.memory_id for e in one] == [entries[42].memory_id] and len(parsed) == 1


# -- 12. stdio: a line the SDK cannot parse gets no answer; the server goes on --------------------------
@pytest.mark.slow
def test_stdio_unparseable_request_is_dropped_and_the_server_goes_on(tmp_path):
    """Pins the SDK's behaviour (mcp 2.x stdio_server): a line that fails JSON-RPC validation
    (a batch array, a lone surrogate, a 5,000-digit id) is handed to the session as an exception
    and logged, with no reply, so a client waiting on that id waits until its own timeout. The
    server stays up and answers the next request; SECURITY.md says so. If this test fails, the
    SDK started answering such lines: drop the note."""
    config = tmp_path / "config.yaml"
    config.write_text(f"alma:\n  data_dir: {tmp_path / 'data'}\n  preload_indexes: false\n", encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        [{"jsonrpc": "2.0", "id": 2, "method": "ping"}],
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += '{"jsonrpc": "2.0", "id": ' + "9" * 5000 + ', "method": "ping"}\n'
    text += '{"jsonrpc": "2.0", "id": 4, "method": "ping", "params": {"_meta": {"x": "\\ud800"}}}\n'
    text += json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping"}) + "\n"
    done = subprocess.run(
        [sys.executable, "-m", "alma_mcp", "--config", str(config)],
        input=text.encode(), capture_output=True, env=env, timeout=120,
    )
    replies = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    assert [r.get("id") for r in replies] == [1, 3]
