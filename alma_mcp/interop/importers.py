"""Import memory from where it already lives, idempotently, reported like `alma-mcp import`:

- `claude-code`: Claude Code's memory files: `CLAUDE.md` (also `CLAUDE.local.md`,
  `.claude/CLAUDE.md`) and the per-project auto-memory folder (`MEMORY.md` and its topic files);
- `memory-dir`: a folder written by Anthropic's memory tool (what the model saw as `/memories`);
- `mcp-memory`: the JSONL (or JSON graph) of the official MCP memory server: entities with
  observations, and relations;
- `jsonl`: one text per line, a JSON string or `{"text", "type"?, "domain"?}`.

Markdown bullets become domain knowledge (their section heading as the domain), or user
preferences when the section is about how the user wants things done; under the `Heuristics`
and `Anti-patterns` sections that `exporters` writes, lessons again. Each memory records its
file and line in `source`. A text the agent already holds, in any form an export writes, is
counted unchanged and not stored again; ids are derived from the text, so re-imports match.

Inputs are untrusted: files must be UTF-8 and at most MAX_FILE_BYTES, folders are walked
without leaving them (a symlink pointing outside is refused), and each bad line is rejected
with its reason while the good ones are imported.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from pydantic import ValidationError

from ..storage.audit import AuditEntry
from ..backup import ImportReport, RejectedLine, _import_batch
from ..errors import InvalidInput
from .exporters import digest_line, digest_text
from ..models import MEMORY_TYPES, MODEL_BY_TYPE, DomainKnowledge, MemoryBase, UserPreference, wording_key

if TYPE_CHECKING:
    from ..service import ALMA

IMPORT_FORMATS: tuple[str, ...] = ("claude-code", "memory-dir", "mcp-memory", "jsonl")
MAX_FILE_BYTES = 2 * 1024 * 1024
"""Largest file read: memory files are notes, not corpora (Claude Code loads MEMORY.md's first 200 lines)."""
MAX_FILES = 1000
TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".xml", ".json", ".yaml", ".yml")
CLAUDE_FILES = ("CLAUDE.md", "CLAUDE.local.md", ".claude/CLAUDE.md", "MEMORY.md")
PREFERENCE_SECTION = re.compile(
    r"prefer|style|convention|guideline|instruction|workflow|tone|formatting|always|never|feedback|\buser\b", re.I
)
_BULLET = re.compile(r"^(\s*)(?:[-*+]|\d{1,3}[.)])\s+(?:\[[ xX]\]\s+)?(.*\S)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HEURISTIC = re.compile(r"^When (.+?) → (.+)$", re.S)
_ANTI_PATTERN = re.compile(r"^Avoid (.+?) — why: (.+?)(?: — instead: (.+))?$", re.S)
_CATEGORY_CHARS = re.compile(r"[^A-Za-z0-9 _./:-]+")


@dataclass
class Item:
    """One memory to be, before validation: its type, its fields and where it came from."""

    kind: str
    fields: dict[str, Any]
    source: str
    line: int
    file: str = ""
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = wording_key(digest_text(self.kind, self.fields))


class Rejected(Exception):
    """A file or line that cannot be imported; the message says why."""


def category(text: str, fallback: str = "general") -> str:
    """A heading or entity name made into a valid category (domain): 1-64 safe characters."""
    cleaned = " ".join(_CATEGORY_CHARS.sub(" ", text).split())
    cleaned = cleaned.lstrip(" _./:-")[:64].rstrip()
    return cleaned or fallback


def lesson_or_fact(text: str, section: str, domain: str, source: str, line: int) -> Item:
    """A bullet read back into the type its section and wording say."""
    if section == "heuristics" and (m := _HEURISTIC.match(text)):
        return Item("heuristic", {"condition": m[1], "strategy": m[2]}, source, line)
    if section == "anti-patterns" and (m := _ANTI_PATTERN.match(text)):
        return Item("anti_pattern", {"pattern": m[1], "why_bad": m[2], "better_alternative": m[3]}, source, line)
    if PREFERENCE_SECTION.search(domain):
        return Item("preference", {"category": category(domain), "preference": text}, source, line)
    return Item("knowledge", {"domain": category(domain), "fact": text}, source, line)


# -- reading files safely --------------------------------------------------------------
def read_text(path: Path, root: Path | None = None) -> str:
    """A file's text, if it is a regular file inside `root`, small enough and UTF-8."""
    if root is not None:
        resolved = path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            raise Rejected(f"{path} leads outside {root} (a symlink?): not read")
    if not path.is_file():
        raise Rejected(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise Rejected(f"{path} is {size} bytes; files over {MAX_FILE_BYTES} bytes are not read (is it really a memory file?)")
    data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise Rejected(f"{path} is not UTF-8 text (line {line}, byte {exc.start}): convert it to UTF-8") from None


def markdown_items(text: str, label: str, default_domain: str) -> Iterator[Item]:
    """Bullets (with their indented continuation lines) under the nearest heading."""
    headings: list[str] = []
    lines = text.splitlines()
    i = 0
    in_code = False
    while i < len(lines):
        raw = lines[i]
        if raw.lstrip().startswith("```"):
            in_code = not in_code
        if in_code:
            i += 1
            continue
        if heading := _HEADING.match(raw):
            level = len(heading[1])
            headings = headings[: level - 1] + [""] * (level - 1 - len(headings)) + [heading[2]]
            i += 1
            continue
        bullet = _BULLET.match(raw)
        if not bullet:
            i += 1
            continue
        start, indent, parts = i + 1, len(bullet[1]), [bullet[2]]
        i += 1
        while i < len(lines) and lines[i].strip() and not _BULLET.match(lines[i]) and not _HEADING.match(lines[i]) \
                and len(lines[i]) - len(lines[i].lstrip()) > indent:
            parts.append(lines[i].strip())
            i += 1
        named = [h for h in headings if h]
        domain = named[-1] if named else default_domain
        section = next((h.lower() for h in reversed(named) if h.lower() in ("heuristics", "anti-patterns")), "")
        yield lesson_or_fact(" ".join(parts), section, domain, f"{label}:{start}", start)


def _files(root: Path, names: tuple[str, ...] | None) -> Iterator[Path]:
    """The memory files under root, in a stable order, never following a path out of it."""
    if root.is_file() or root.is_symlink() and not root.is_dir():
        yield root
        return
    if not root.is_dir():
        raise InvalidInput(f"{root} does not exist")
    if names is not None:
        chosen = [root / n for n in names if (root / n).exists() or (root / n).is_symlink()]
        if (root / "MEMORY.md").exists():  # an auto-memory folder: its topic files too
            chosen += sorted(p for p in root.glob("*.md") if p.name not in names)
        if not chosen:
            raise InvalidInput(
                f"{root} holds none of {', '.join(names)}: point at the file, the project folder that holds "
                "CLAUDE.md, or an auto-memory folder (~/.claude/projects/<project>/memory)"
            )
        yield from chosen
        return
    count = 0
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        if path.suffix.lower() in TEXT_SUFFIXES or path.is_symlink():
            count += 1
            if count > MAX_FILES:
                raise InvalidInput(f"{root} holds more than {MAX_FILES} files: point at the memory folder itself")
            yield path


def _folder_items(root: Path, names: tuple[str, ...] | None, prefix: str, rejected: list[RejectedLine]) -> Iterator[Item]:
    base = root if root.is_dir() else root.parent
    for path in _files(root, names):
        label = f"{prefix}{path.relative_to(base).as_posix()}" if path != root else str(path)
        try:
            text = read_text(path, base)
        except Rejected as exc:
            rejected.append(RejectedLine(line=0, error=str(exc)))
            continue
        items = list(markdown_items(text, label, category(path.stem)))
        if not items and path.suffix.lower() not in (".md", ".markdown"):
            items = list(_paragraphs(text, label, category(path.stem)))
        for item in items:
            item.file = label
            yield item


def _paragraphs(text: str, label: str, domain: str) -> Iterator[Item]:
    """A file without bullets: each paragraph is one fact."""
    start, buffer = 0, []
    for number, raw in enumerate(text.splitlines() + [""], 1):
        if raw.strip():
            start = start or number
            buffer.append(raw.strip())
        elif buffer:
            yield lesson_or_fact(" ".join(buffer), "", domain, f"{label}:{start}", start)
            start, buffer = 0, []


def _graph_items(path: Path, rejected: list[RejectedLine]) -> Iterator[Item]:
    """The MCP memory server's store: JSONL of entity and relation lines, or one JSON graph."""
    text = read_text(path)
    stripped = text.lstrip()
    records: list[tuple[int, Any]] = []
    if stripped.startswith("{") and '"entities"' in stripped[:2000] and stripped.count("\n{") == 0:
        graph = json.loads(stripped)
        records = [(0, e | {"type": "entity"}) for e in graph.get("entities", [])]
        records += [(0, r | {"type": "relation"}) for r in graph.get("relations", [])]
    else:
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                records.append((number, json.loads(raw)))
            except json.JSONDecodeError as exc:
                rejected.append(RejectedLine(line=number, error=f"not valid JSON: {exc.msg} at column {exc.colno}"))
    for number, record in records:
        where = f"{path.name}:{number}"
        if not isinstance(record, dict) or record.get("type") not in ("entity", "relation"):
            rejected.append(RejectedLine(line=number, error='expected {"type": "entity", ...} or {"type": "relation", ...}'))
            continue
        if record["type"] == "entity":
            name, kind, observations = record.get("name"), record.get("entityType"), record.get("observations")
            if not isinstance(name, str) or not isinstance(observations, list) or not all(isinstance(o, str) for o in observations):
                rejected.append(RejectedLine(line=number, error="an entity needs a name and a list of observation strings"))
                continue
            section = {"alma heuristic": "heuristics", "alma anti_pattern": "anti-patterns"}.get(str(kind), "")
            domain = category(kind if isinstance(kind, str) else name)
            for observation in observations:
                if section:  # a lesson exported by alma-mcp: its wording says it all
                    yield lesson_or_fact(observation, section, name, where, number)
                else:  # an observation means little without the entity it is about
                    yield Item("knowledge", {"domain": domain, "fact": f"{name}: {observation}"}, where, number)
        else:
            ends = [record.get(k) for k in ("from", "relationType", "to")]
            if not all(isinstance(v, str) and v.strip() for v in ends):
                rejected.append(RejectedLine(line=number, error="a relation needs from, relationType and to"))
                continue
            yield Item("knowledge", {"domain": "relations", "fact": " ".join(ends)}, where, number)  # type: ignore[arg-type]


def _text_items(path: Path, rejected: list[RejectedLine]) -> Iterator[Item]:
    for number, raw in enumerate(read_text(path).splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            rejected.append(RejectedLine(line=number, error=f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if isinstance(row, str):
            row = {"text": row}
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            rejected.append(RejectedLine(line=number, error='expected a JSON string or {"text": "..."}'))
            continue
        kind = row.get("type", "knowledge")
        section = {"heuristic": "heuristics", "anti_pattern": "anti-patterns"}.get(kind, "")
        domain = row.get("domain") or ("preferences" if kind == "preference" else "imported")
        if not isinstance(domain, str):
            rejected.append(RejectedLine(line=number, error="domain must be a string"))
            continue
        yield lesson_or_fact(row["text"], section, domain, f"{path.name}:{number}", number)


# -- turning items into memories -------------------------------------------------------
def _memory(alma: "ALMA", item: Item, agent: str, user_id: str) -> MemoryBase:
    digest = hashlib.sha256(f"{alma.config.project}|{agent}|{item.kind}|{item.key}".encode()).hexdigest()[:32]
    fields = dict(item.fields)
    if item.kind in ("knowledge", "preference"):
        fields["source"] = f"import {item.source}"[:500]
    if item.kind == "preference":
        fields["user_id"] = user_id
    if item.kind == "anti_pattern" and not fields.get("better_alternative"):
        fields.pop("better_alternative", None)
    try:
        return MODEL_BY_TYPE[item.kind](
            id=f"{item.kind}-{digest}", project=alma.config.project, agent=agent, **fields
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()[:3])
        raise Rejected(f"{item.source}: {problems}") from None


def held_keys(alma: "ALMA", agent: str, user_id: str) -> set[str]:
    """The wording of everything the agent holds (archived too: an archived memory stays out of
    service when its text comes back) and of the user's preferences, in every exported form."""
    keys: set[str] = set()
    for kind in MEMORY_TYPES:
        if kind == "outcome":
            continue
        for memory in alma.store.list(kind, None if kind == "preference" else agent, include_archived=True):
            if isinstance(memory, UserPreference) and memory.user_id != user_id:
                continue
            keys.add(wording_key(digest_line(memory)))
            if isinstance(memory, DomainKnowledge):  # as the memory server's export words a fact: under its domain
                keys.add(wording_key(f"{memory.domain}: {memory.fact}"))
    return keys


def import_from(alma: "ALMA", fmt: str, path: Path, agent: str, user_id: str = "default") -> ImportReport:
    """Import one source for `agent`; nothing the agent already holds is stored twice."""
    started = time.perf_counter()
    if fmt not in IMPORT_FORMATS:
        raise InvalidInput(f"unknown import format {fmt!r}: use one of {list(IMPORT_FORMATS)}")
    agent = alma._agent(agent)  # noqa: SLF001 - the service's own check of the name
    from ..service import _user, _validated

    user_id = _validated(_user, user_id, "user")
    if not path.exists() and not path.is_symlink():
        raise InvalidInput(f"{path} does not exist")
    report = ImportReport(path=str(path), lines=0)
    try:
        if fmt == "claude-code":
            items = list(_folder_items(path, CLAUDE_FILES, "", report.rejected))
        elif fmt == "memory-dir":
            items = list(_folder_items(path, None, "/memories/", report.rejected))
        elif fmt == "mcp-memory":
            items = list(_graph_items(path, report.rejected))
        else:
            items = list(_text_items(path, report.rejected))
    except Rejected as exc:
        raise InvalidInput(str(exc)) from None
    except (json.JSONDecodeError, AttributeError) as exc:
        raise InvalidInput(f"{path}: not a memory-server graph: {exc}") from None
    held = held_keys(alma, agent, user_id)
    pending: list[tuple[int, MemoryBase, np.ndarray | None, np.ndarray | None]] = []
    for item in items:
        report.lines += 1
        if not item.key or item.key in held:
            report.unchanged += 1
            continue
        try:
            memory = _memory(alma, item, agent, user_id)
        except Rejected as exc:
            report.rejected.append(RejectedLine(line=item.line, error=str(exc)))
            continue
        held.add(item.key)
        pending.append((item.line, memory, None, None))
    for start in range(0, len(pending), 256):
        _import_batch(alma, pending[start : start + 256], report)
    if report.added or report.updated:
        with alma.write_lock:
            alma.audit.append([AuditEntry(
                action="import", call=f"import-from {fmt}", reason=f"imported from {path}", agent=agent,
                details={"added": report.added, "unchanged": report.unchanged, "rejected": len(report.rejected)},
            )])
    report.seconds = round(time.perf_counter() - started, 3)
    return report
