"""Import from Claude Code, Anthropic's memory tool, the MCP memory server and plain JSONL;
export to those forms; and the round trip: import, export, import again adds nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alma_mcp.interop import importers
from alma_mcp.errors import InvalidInput
from alma_mcp.interop.exporters import claude_md

DATA = Path(__file__).parent / "data"


def active(alma, agent, kind):
    return [m for m in alma.memories(kind, None if kind == "preference" else agent) if not m.archived]


def facts(alma, agent="dev"):
    return {m.fact: m for m in active(alma, agent, "knowledge")}


def test_claude_md_bullets_become_facts_and_preferences_by_section(alma):
    report = alma.import_from("claude-code", DATA / "claude-project", "dev", user_id="sam")
    assert report.rejected == [] and report.added == report.lines == 9
    known = facts(alma)
    prices = known["Prices are stored in cents as integers, never as floats."]
    assert prices.domain == "Architecture" and prices.source == "import CLAUDE.md:13"
    # A bullet's indented continuation line belongs to it; a code block holds no memories.
    assert "A paid order can only be refunded, never edited." in next(f for f in known if f.startswith("The order state"))
    assert not any("not a bullet" in f for f in known)
    prefs = {p.preference: p for p in active(alma, "dev", "preference")}
    assert prefs["Use type hints on every public function."].category == "Code style"
    assert prefs["Use type hints on every public function."].user_id == "sam"
    never = prefs["Never log full card numbers; log the last four digits only."]
    assert never.category == "Conventions" and never.source == "import .claude/CLAUDE.md:3"
    (entry,) = alma.audit_log(action="import")
    assert entry.call == "import-from claude-code" and entry.details["added"] == 9


def test_auto_memory_folder_reads_memory_md_and_its_topic_files(alma):
    report = alma.import_from("claude-code", DATA / "claude-auto-memory", "dev")
    assert report.added == 6 and report.rejected == []
    known = facts(alma)
    deadlock = known["Two workers updating the same order deadlock unless they lock rows in id order."]
    assert deadlock.domain == "Database deadlocks" and deadlock.source == "import debugging.md:3"
    assert {p.preference for p in active(alma, "dev", "preference")} == {
        "The user wants answers in British English.", "Show diffs before applying large refactors."}


def test_memory_tool_folder_bullets_and_paragraphs(alma):
    report = alma.import_from("memory-dir", DATA / "memories", "support")
    assert report.added == 5 and report.rejected == []
    known = facts(alma, "support")
    assert known["Refund requests older than 90 days go to a human agent."].source == "import /memories/notes.md:3"
    escalations = known["Escalations go to the on-call lead listed in the team calendar."]
    assert escalations.domain == "tickets" and escalations.source == "import /memories/projects/tickets.txt:3"
    # A paragraph under a file named "style" is about how the user wants things: a preference.
    (pref,) = active(alma, "support", "preference")
    assert pref.preference == "The user prefers concise answers with code first, explanation after."


def test_mcp_memory_server_entities_and_relations(alma):
    report = alma.import_from("mcp-memory", DATA / "mcp-memory.jsonl", "dev")
    assert report.added == 5 and report.rejected == []
    known = facts(alma)
    assert known["Ada_Lovelace: Maintains the billing service"].domain == "person"
    assert known["billing-service: Deploys on Tuesdays and Thursdays only"].source == "import mcp-memory.jsonl:2"
    assert known["Ada_Lovelace maintains billing-service"].domain == "relations"


def test_plain_jsonl_of_texts(alma):
    report = alma.import_from("jsonl", DATA / "texts.jsonl", "dev")
    assert report.added == 3
    assert facts(alma)["Feature flags are read from LaunchDarkly at start-up, not per request."].domain == "configuration"
    assert [p.preference for p in active(alma, "dev", "preference")] == ["Reply in French to tickets from the Lyon office."]


@pytest.mark.parametrize(
    "fmt, source",
    [("claude-code", "claude-project"), ("claude-code", "claude-auto-memory"), ("memory-dir", "memories"),
     ("mcp-memory", "mcp-memory.jsonl"), ("jsonl", "texts.jsonl")],
)
def test_import_export_import_again_adds_nothing(alma, tmp_path, fmt, source):
    alma.add_heuristic("dev", "a migration fails on a locked table", "retry it outside business hours")
    alma.add_anti_pattern("dev", "editing a paid order", "paid orders are immutable", "issue a refund instead")
    first = alma.import_from(fmt, DATA / source, "dev")
    assert first.added > 0
    again = alma.import_from(fmt, DATA / source, "dev")
    assert again.added == 0 and again.unchanged == again.lines == first.lines
    counts = {k: len(active(alma, "dev", k)) for k in ("heuristic", "anti_pattern", "knowledge", "preference")}
    for out_fmt, out in (("claude-md", tmp_path / "CLAUDE.md"), ("memory-dir", tmp_path / "memories"),
                         ("mcp-memory", tmp_path / "memory.jsonl"), ("jsonl", tmp_path / "texts.jsonl")):
        alma.export_to(out_fmt, "dev", out, max_chars=100_000)
        back = alma.import_from({"claude-md": "claude-code"}.get(out_fmt, out_fmt), out, "dev")
        assert back.added == 0 and back.lines > 0, (out_fmt, back)
    assert {k: len(active(alma, "dev", k)) for k in counts} == counts


def test_digest_into_a_fresh_store_brings_the_lessons_back_as_lessons(make_alma, tmp_path):
    source = make_alma(data_dir=tmp_path / "a")
    # Colons in a lesson's wording (learned conditions read "tasks like: ...") stay where they were.
    source.add_heuristic("dev", "tasks like: a migration fails on a locked table", "retry it: outside business hours")
    source.add_anti_pattern("dev", "editing a paid order", "paid orders are immutable: refunds only", "issue a refund instead")
    source.add_knowledge("dev", "payments", "prices are stored in cents")
    source.export_to("claude-md", "dev", tmp_path / "CLAUDE.md")
    target = make_alma(data_dir=tmp_path / "b")
    assert target.import_from("claude-code", tmp_path / "CLAUDE.md", "dev").added == 3
    (h,) = active(target, "dev", "heuristic")
    assert (h.condition, h.strategy) == ("tasks like: a migration fails on a locked table", "retry it: outside business hours")
    (a,) = active(target, "dev", "anti_pattern")
    assert (a.pattern, a.why_bad, a.better_alternative) == ("editing a paid order", "paid orders are immutable: refunds only", "issue a refund instead")
    assert facts(target)["prices are stored in cents"].domain == "payments"


def test_digest_is_ranked_by_value_and_kept_within_the_size_limit(make_alma):
    alma = make_alma(lifecycle={"merge_on_write": False})
    strong = alma.add_knowledge("dev", "payments", "prices are stored in cents", confidence=1.0)
    weak = alma.add_knowledge("dev", "payments", "the old shop used euros only", confidence=0.1)
    for _ in range(3):
        alma.feedback(strong.id, "helpful")
        alma.feedback(weak.id, "harmful")
    for i in range(40):
        alma.add_knowledge("dev", "filler", f"filler fact number {i} about the warehouse shelf {i * 7}")
    text, written, available = claude_md(alma, "dev", max_chars=600)
    assert len(text) <= 600 and 0 < written < available == 42
    assert "prices are stored in cents" in text and "the old shop used euros only" not in text
    with pytest.raises(InvalidInput, match="at least 200"):
        claude_md(alma, "dev", max_chars=50)


# -- bad input -----------------------------------------------------------------------------
def test_wrong_encoding_is_rejected_with_its_line_and_the_rest_imported(alma, tmp_path):
    folder = tmp_path / "memories"
    folder.mkdir()
    (folder / "good.md").write_text("- The API key rotates monthly.\n", encoding="utf-8")
    (folder / "latin1.md").write_bytes("- first line\n- caf\xe9 au lait\n".encode("latin-1"))
    report = alma.import_from("memory-dir", folder, "dev")
    assert report.added == 1
    (bad,) = report.rejected
    assert "latin1.md is not UTF-8 text (line 2" in bad.error
    with pytest.raises(InvalidInput, match="not UTF-8"):
        alma.import_from("jsonl", folder / "latin1.md", "dev")


def test_huge_file_is_refused_without_reading_it_whole(alma, tmp_path, monkeypatch):
    huge = tmp_path / "memory.jsonl"
    with open(huge, "wb") as handle:
        handle.truncate(importers.MAX_FILE_BYTES + 1)
    with pytest.raises(InvalidInput, match="files over .* bytes are not read"):
        alma.import_from("mcp-memory", huge, "dev")
    assert alma.stats()["total"] == 0


def test_a_symlink_out_of_the_folder_is_not_followed(alma, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("- the database password is hunter2\n", encoding="utf-8")
    folder = tmp_path / "memories"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.md").write_text("- Deploys happen on Tuesdays.\n", encoding="utf-8")
    os.symlink(secret, folder / "leak.md")
    os.symlink(tmp_path, folder / "sub" / "escape")
    report = alma.import_from("memory-dir", folder, "dev")
    assert report.added == 1 and all("leads outside" in r.error for r in report.rejected) and report.rejected
    assert not any("hunter2" in f for f in facts(alma))
    project = tmp_path / "project"
    project.mkdir()
    os.symlink(secret, project / "CLAUDE.md")
    report = alma.import_from("claude-code", project, "dev")
    assert report.added == 0 and "leads outside" in report.rejected[0].error


def test_bad_lines_are_rejected_one_by_one(alma, tmp_path):
    graph = tmp_path / "memory.jsonl"
    graph.write_text(
        '{"type":"entity","name":"shop","entityType":"service","observations":["Runs on Kubernetes"]}\n'
        "{not json\n"
        '{"type":"entity","name":"x","observations":"not a list"}\n'
        '{"type":"relation","from":"a"}\n'
        '{"type":"entity","name":"big","entityType":"service","observations":["' + "x" * 9000 + '"]}\n'
        '{"type":"entity","name":"nul","entityType":"service","observations":["bad\\u0000text"]}\n',
        encoding="utf-8",
    )
    report = alma.import_from("mcp-memory", graph, "dev")
    assert report.added == 1
    assert [r.line for r in report.rejected] == [2, 3, 4, 5, 6]
    assert "limit is 8000" in report.rejected[3].error and "control characters" in report.rejected[4].error


def test_bad_arguments_say_what_to_send(alma, tmp_path):
    with pytest.raises(InvalidInput, match="unknown import format"):
        alma.import_from("obsidian", DATA / "texts.jsonl", "dev")
    with pytest.raises(InvalidInput, match="does not exist"):
        alma.import_from("jsonl", tmp_path / "missing.jsonl", "dev")
    with pytest.raises(InvalidInput, match="not a valid name"):
        alma.import_from("jsonl", DATA / "texts.jsonl", "../etc")
    with pytest.raises(InvalidInput, match="user"):
        alma.import_from("jsonl", DATA / "texts.jsonl", "dev", user_id="no spaces allowed")
    assert alma.stats()["total"] == 0


def test_cli_import_from_and_export_to(alma, tmp_path, capsys):
    from alma_mcp.frontends.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(f"alma:\n  project_id: cli\n  allow_undeclared_agents: true\n  data_dir: {tmp_path / 'cli-data'}\n", encoding="utf-8")
    assert main(["--config", str(config), "import-from", "jsonl", str(DATA / "texts.jsonl"), "--agent", "dev"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 3
    out = tmp_path / "CLAUDE.md"
    assert main(["--config", str(config), "export-to", "claude-md", str(out), "--agent", "dev", "--max-chars", "300"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chars"] <= 300 and report["written"] >= 1 and out.read_text(encoding="utf-8").startswith("# What agent dev")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok fact"\n{broken\n', encoding="utf-8")
    assert main(["--config", str(config), "import-from", "jsonl", str(bad), "--agent", "dev"]) == 1
    assert "line 2: rejected: not valid JSON" in capsys.readouterr().err


def test_a_folder_without_claude_code_memory_files_is_refused(alma, tmp_path):
    (tmp_path / "README.md").write_text("- not a memory file\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="holds none of CLAUDE.md"):
        alma.import_from("claude-code", tmp_path, "dev")


@pytest.mark.parametrize("fmt", ["claude-md", "memory-dir", "jsonl", "mcp-memory"])
def test_every_export_is_a_text_file_ending_with_a_newline(fast_alma, tmp_path, fmt):
    out = tmp_path / "out"
    empty = fast_alma.export_to(fmt, "dev", out)
    written = Path(empty.path).read_text(encoding="utf-8")
    assert written == "" or written.endswith("\n"), repr(written[-40:])
    fast_alma.add_knowledge("dev", "ops", "The billing service listens on port 8001")
    fast_alma.add_heuristic("dev", "a migration fails on a locked table", "retry it outside business hours")
    full = Path(fast_alma.export_to(fmt, "dev", out).path).read_text(encoding="utf-8")
    assert full.endswith("\n") and not full.endswith("\n\n"), repr(full[-40:])
