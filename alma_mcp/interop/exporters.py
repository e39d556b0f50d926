"""Export an agent's memory to the forms other tools read, so a user can leave (or share):

- `claude-md`: a CLAUDE.md-style digest of the agent's current heuristics, anti-patterns and
  facts, each section ranked by value (lifecycle.value), cut to a size the user sets;
- `memory-dir`: the same digest as a file in a folder used by Anthropic's memory tool;
- `mcp-memory`: the JSONL of the official MCP memory server (entities with observations);
- `jsonl`: one JSON object per line, `{"text", "type", "domain", "id"}`.

Each line is written in the form `importers` reads back, and the importer recognises a memory
it already holds by its wording, so export then import into the same store adds nothing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from ..config import AlmaConfig
from ..errors import InvalidInput
from ..learning.lifecycle import half_life, strength, value
from ..models import AnyMemory, DomainKnowledge, utcnow


class Source(Protocol):
    """What an export reads of the service (`service.ALMA`, which calls it): exports never import it."""

    config: AlmaConfig

    def memories(
        self, memory_type: str | None = None, agent: str | None = None, include_archived: bool = False
    ) -> list[AnyMemory]: ...

ExportFormat = Literal["claude-md", "memory-dir", "mcp-memory", "jsonl"]
EXPORT_FORMATS: tuple[str, ...] = ("claude-md", "memory-dir", "mcp-memory", "jsonl")
SECTIONS = {"heuristic": "Heuristics", "anti_pattern": "Anti-patterns", "knowledge": "Facts"}
DEFAULT_MAX_CHARS = 4000
_ABOUT = re.compile(r"^([^:\n]{1,80}): (.+)$", re.S)


def digest_line(memory: AnyMemory) -> str:
    """A memory as one line of prose, the form every export writes and the importer parses."""
    return digest_text(memory.type, memory.model_dump()) if memory.type in _WORDING else memory.text()


_WORDING = ("heuristic", "anti_pattern", "knowledge", "preference")


def digest_text(kind: str, fields: dict[str, Any]) -> str:
    """`digest_line` from a memory's fields. The separators (an arrow, "— why:", "— instead:")
    are what the importer splits a lesson at: rarer in prose than a colon, which a learned
    heuristic's condition holds ("tasks like: ...")."""
    if kind == "heuristic":
        return f"When {fields['condition']} → {fields['strategy']}"
    if kind == "anti_pattern":
        line = f"Avoid {fields['pattern']} — why: {fields['why_bad']}"
        return line + (f" — instead: {fields['better_alternative']}" if fields.get("better_alternative") else "")
    if kind == "knowledge":
        return str(fields["fact"])
    return str(fields["preference"])


def _one_line(text: str) -> str:
    return " ".join(text.split())


class DigestReport(BaseModel):
    path: str
    format: str
    agent: str
    written: int
    available: int
    chars: int
    max_chars: int | None = None


def ranked(alma: Source, agent: str) -> list[tuple[float, AnyMemory]]:
    """The agent's own active heuristics, anti-patterns and facts, most valuable first (`agent`
    checked by the caller)."""
    now = utcnow()
    days = half_life(alma.config, agent)
    found: list[tuple[float, AnyMemory]] = []
    for kind in SECTIONS:
        for memory in alma.memories(kind, agent):
            found.append((value(memory, strength(memory, days, now)), memory))
    found.sort(key=lambda pair: (-pair[0], pair[1].id))
    return found


def claude_md(alma: Source, agent: str, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, int, int]:
    """The digest text, the memories in it and those available. Memories are taken in order of
    value while the text stays within `max_chars`; within a section they keep that order."""
    if max_chars < 200:
        raise InvalidInput(f"max_chars is {max_chars}: allow at least 200 characters")
    memories = ranked(alma, agent)
    head = (
        f"# What agent {agent} has learned\n\n"
        f"Exported by alma-mcp from project {alma.config.project}, most valuable first.\n"
    )
    chosen: dict[str, list[str]] = {kind: [] for kind in SECTIONS}
    domains: dict[str, list[str]] = {}

    def render() -> str:
        parts = [head]
        for kind, title in SECTIONS.items():
            if kind == "knowledge":
                if domains:
                    parts.append(f"\n## {title}\n")
                    for domain, lines in domains.items():
                        parts.append(f"\n### {domain}\n" + "".join(f"- {line}\n" for line in lines))
            elif chosen[kind]:
                parts.append(f"\n## {title}\n\n" + "".join(f"- {line}\n" for line in chosen[kind]))
        return "".join(parts)

    written = 0
    for _, memory in memories:
        line = _one_line(digest_line(memory))
        domain = memory.domain if isinstance(memory, DomainKnowledge) else None
        bucket = domains.setdefault(domain, []) if domain is not None else chosen[memory.type]
        bucket.append(line)
        if len(render()) > max_chars:  # a shorter, less valuable one may still fit
            bucket.pop()
            if domain is not None and not bucket:
                del domains[domain]
            continue
        written += 1
    text = render()
    return text, written, len(memories)


def export_to(alma: Source, fmt: str, agent: str, out: Path, max_chars: int | None = None) -> DigestReport:
    """Write an agent's memory in one of EXPORT_FORMATS; the file is replaced only when complete."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}: use one of {list(EXPORT_FORMATS)}")
    if fmt in ("claude-md", "memory-dir"):
        text, written, available = claude_md(alma, agent, max_chars or DEFAULT_MAX_CHARS)
        if fmt == "memory-dir":
            out.mkdir(parents=True, exist_ok=True)
            out = out / f"alma-{agent}.md"
    else:
        memories = ranked(alma, agent)
        rows = [_jsonl_row(m) for _, m in memories] if fmt == "jsonl" else _graph(memories)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        written = available = len(memories)
    _write(out, text)
    return DigestReport(path=str(out), format=fmt, agent=agent, written=written, available=available,
                        chars=len(text), max_chars=max_chars if fmt in ("claude-md", "memory-dir") else None)


def _jsonl_row(memory: AnyMemory) -> dict[str, Any]:
    row = {"text": digest_line(memory), "type": memory.type, "id": memory.id}
    if isinstance(memory, DomainKnowledge):
        row["domain"] = memory.domain
    return row


def _graph(memories: list[tuple[float, AnyMemory]]) -> list[dict[str, Any]]:
    """Entities of the MCP memory server: one per knowledge domain (its facts as observations),
    one for the agent's heuristics and one for its anti-patterns."""
    entities: dict[tuple[str, str], dict[str, Any]] = {}
    for _, memory in memories:
        kind = memory.type
        observation = digest_line(memory)
        if isinstance(memory, DomainKnowledge):
            entity_type = memory.domain
            about = _ABOUT.match(observation)  # "name: observation", as the importer words an entity's facts
            name, observation = (about[1], about[2]) if about else (entity_type, observation)
        else:
            name, entity_type = f"{memory.agent} {SECTIONS[kind].lower()}", f"alma {kind}"
        entity = entities.setdefault(
            (name, entity_type), {"type": "entity", "name": name, "entityType": entity_type, "observations": []}
        )
        entity["observations"].append(observation)
    return list(entities.values())


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
