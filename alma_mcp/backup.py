"""Backup and moving: export to JSONL, import it back, and re-embed after a model change.

Every command here can be interrupted and run again without damage:

- export writes `FILE.partial` and renames it to `FILE` only when complete;
- import upserts by memory id in batches, and a memory already present and identical is
  skipped, so a second run adds nothing;
- reindex builds each collection's new vectors in a side collection (`alma-reindex.…`),
  then, under the write lock, catches up with writes made meanwhile and swaps the names;
  a run interrupted anywhere resumes or finishes the swap on the next run.

The export format, version 2: the first line is a header object
`{"format": "alma-mcp-export", "version": 2, "project", "exported_at", "embedding_model",
"count"}`; each following line is `{"memory": {...}}` with the memory exactly as the
models define it (all fields, archived ones included: counters, confidence, provenance
such as `supporting_outcomes`), plus `"embedding_b64"` (float32, base64) when exported
with vectors, and `"key_embedding_b64"` (the key field's vector, float32, base64) when the
memory has one. Version 1 files (no key vectors) are read too; their keys are embedded on import.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from .storage.audit import AuditEntry, AuditLog
from .config import AlmaConfig
from .embedding.embedder import Embedder
from .errors import InvalidInput, NotFound
from .learning.learner import memory_vectors
from .models import MemoryBase, MemoryId, key_text, memory_type_of, parse_memory, utcnow
from .storage.store import PREFERENCES, WRITTEN, MemoryStore, collection_name, key_metadata, stored_key_vector
from .storage.writelock import WriteLock



class Service(Protocol):
    """What backup needs of the service (`service.ALMA`), which calls it: backup never imports it."""

    config: AlmaConfig
    embedder: Embedder
    write_lock: WriteLock

    @property
    def store(self) -> MemoryStore: ...

    @property
    def audit(self) -> AuditLog: ...

log = logging.getLogger("alma_mcp")

FORMAT = "alma-mcp-export"
VERSION = 2
BATCH = 512
_NEW_PREFIX = "alma-reindex."
_OLD_PREFIX = "alma-retired."
_memory_id = TypeAdapter(MemoryId)


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    # stderr always: in stdio mode stdout belongs to the protocol.
    return tqdm(total=total, desc=desc, unit="mem", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


# -- export ----------------------------------------------------------------------------
class ExportReport(BaseModel):
    path: str
    count: int
    by_type: dict[str, int]
    with_embeddings: bool
    seconds: float


def _scopes(alma: Service) -> list[tuple[str, str | None]]:
    """Each agent's outcomes before its lessons, so an import without vectors has a learned
    lesson's outcomes at hand when it embeds the lesson (`learning.memory_vectors`)."""
    scopes = [(kind, None if agent == "_" else agent) for agent, kind in alma.store.scopes()]
    return sorted(scopes, key=lambda s: (s[1] or "", s[0] != "outcome", s[0]))


def export_memories(alma: Service, path: Path, with_embeddings: bool = False, progress: bool = False) -> ExportReport:
    started = time.perf_counter()
    store = alma.store
    scopes = _scopes(alma)
    total = sum(store.count(kind, agent) for kind, agent in scopes)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "project": store.project,
        "exported_at": utcnow().isoformat(),
        "embedding_model": alma.embedder.name,
        "count": total,
        "with_embeddings": with_embeddings,
    }
    partial = path.with_name(path.name + ".partial")
    by_type: dict[str, int] = defaultdict(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Only the owner reads a backup: it holds every memory in plain text.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as out, _progress(total, "export", progress) as bar:
            out.write(json.dumps(header) + "\n")
            for kind, agent in scopes:
                if with_embeddings:
                    rows = ((h.memory, h.vector, h.key_vector) for h in store.iter_hits(kind, agent, include_archived=True))
                else:
                    rows = ((m, None, None) for m, _ in store.iter_memories(kind, agent, include_archived=True))
                for memory, vector, key_vector in rows:
                    line = '{"memory": ' + memory.model_dump_json()
                    if vector is not None:
                        line += ', "embedding_b64": "' + _b64(vector) + '"'
                    if key_vector is not None:
                        line += ', "key_embedding_b64": "' + _b64(key_vector) + '"'
                    out.write(line + "}\n")
                    by_type[kind] += 1
                    bar.update(1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # never leave a half file that looks like a backup
        raise
    return ExportReport(
        path=str(path),
        count=sum(by_type.values()),
        by_type=dict(by_type),
        with_embeddings=with_embeddings,
        seconds=round(time.perf_counter() - started, 3),
    )


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


# -- import ----------------------------------------------------------------------------
class RejectedLine(BaseModel):
    line: int
    error: str


class ImportReport(BaseModel):
    path: str
    lines: int = Field(description="Memory lines read (the header not counted).")
    added: int = 0
    updated: int = Field(0, description="Present with an older updated_at: replaced by the file's version.")
    unchanged: int = Field(0, description="Present and identical: skipped (this is what makes import idempotent).")
    kept_newer: int = Field(0, description="Present with a newer or equal updated_at: the store's version kept.")
    rejected: list[RejectedLine] = Field(default_factory=list)
    re_embedded: int = 0
    project_rewritten: bool = Field(False, description="The file came from another project; memories were moved into this one.")
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.rejected


def _read_header(first: str, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InvalidInput(f"{path}: line 1 is not an alma-mcp export header (write one with `alma-mcp export`)")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise InvalidInput(f"{path}: export format version {version!r} is newer than this alma-mcp reads ({VERSION}); upgrade alma-mcp")
    return header


def _vector(data: dict[str, Any], name: str) -> np.ndarray | None:
    if name not in data:
        return None
    try:
        vector = np.frombuffer(base64.b64decode(data[name], validate=True), dtype="<f4").astype(np.float32)
    except (ValueError, TypeError):
        raise ValueError(f"{name} is not valid base64 float32 data") from None
    if vector.size == 0 or not np.all(np.isfinite(vector)):
        raise ValueError(f"{name} holds no usable vector")
    return vector


MAX_SOURCE_CHARS = 200
"""As the tools allow for a fact's or a preference's source."""
MAX_SUPPORTING_OUTCOMES = 10_000
"""Outcome ids a lesson may carry in a file: far above what learning gathers, far below what
makes a memory too big to read back."""
CLOCK_SKEW = timedelta(days=1)
"""How far in the future a file's timestamps may be: a later one would pin the memory against
every later import (the newer updated_at wins)."""


def _check_limits(memory: MemoryBase, config: Any) -> None:
    """What the tools refuse, refused in a file too: undeclared agents, oversized fields, dates
    from the future."""
    try:
        if memory.type != PREFERENCES or memory.agent != "user":  # type: ignore[attr-defined]
            config.agent(memory.agent)
    except NotFound:
        raise ValueError(f"agent {memory.agent!r} is not declared under alma.agents (and allow_undeclared_agents is off)") from None
    source = getattr(memory, "source", None)
    if isinstance(source, str) and len(source) > MAX_SOURCE_CHARS:
        raise ValueError(f"source is {len(source)} characters long; the limit is {MAX_SOURCE_CHARS}")
    supporting = getattr(memory, "supporting_outcomes", None) or []
    if len(supporting) > MAX_SUPPORTING_OUTCOMES:
        raise ValueError(f"supporting_outcomes lists {len(supporting)} ids; the limit is {MAX_SUPPORTING_OUTCOMES}")
    for outcome_id in supporting:
        if not isinstance(outcome_id, str) or not outcome_id.startswith("outcome-"):
            raise ValueError(f"supporting_outcomes holds {str(outcome_id)[:80]!r}, which is not an outcome id")
        _memory_id.validate_python(outcome_id)
    latest = utcnow() + CLOCK_SKEW
    for field, value in memory:
        if isinstance(value, datetime) and value > latest:
            raise ValueError(f"{field} is {value.isoformat()}, in the future")


def _parse_line(
    text: str, project: str, config: Any = None
) -> tuple[MemoryBase, np.ndarray | None, np.ndarray | None]:
    """One memory line -> (memory, vector or None, key vector or None); raises ValueError with a
    readable reason."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (truncated or corrupted?): {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("memory"), dict):
        raise ValueError('not a memory line: expected {"memory": {...}}')
    extra = set(data) - {"memory", "embedding_b64", "key_embedding_b64"}
    if extra:
        raise ValueError(f"unexpected keys {sorted(extra)}")
    try:
        memory = parse_memory(data["memory"])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'memory'}: {e['msg']}" for e in exc.errors()[:3])
        raise ValueError(f"invalid memory: {problems}") from None
    try:
        _memory_id.validate_python(memory.id)
    except ValidationError:
        raise ValueError(f"invalid memory id {memory.id!r}: ids look like 'heuristic-<32 hex digits>'") from None
    if memory_type_of(memory.id) != memory.type:
        raise ValueError(f"memory id {memory.id!r} does not match its type {memory.type!r}")
    if config is not None:
        try:
            _check_limits(memory, config)
        except ValidationError:
            raise ValueError("supporting_outcomes holds an invalid outcome id") from None
    if memory.project != project:
        memory.project = project
    return memory, _vector(data, "embedding_b64"), _vector(data, "key_embedding_b64")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            yield number, line


def import_memories(alma: Service, path: Path, progress: bool = False, batch: int = BATCH) -> ImportReport:
    started = time.perf_counter()
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist or is not a file")
    lines = _numbered_lines(path)
    first = next(lines, None)
    if first is None:
        raise InvalidInput(f"{path} is empty: an export starts with a header line")
    header = _read_header(first[1], path)
    store = alma.store
    report = ImportReport(path=str(path), lines=0, project_rewritten=header.get("project") not in (None, store.project))
    # Vectors in the file are only usable when they come from the model in use now.
    same_model = header.get("embedding_model") == alma.embedder.name
    pending: list[tuple[int, MemoryBase, np.ndarray | None, np.ndarray | None]] = []
    with _progress(header.get("count") if isinstance(header.get("count"), int) else None, "import", progress) as bar:
        for number, text in lines:
            if not text.strip():
                continue
            report.lines += 1
            try:
                memory, vector, key_vector = _parse_line(text, store.project, alma.config)
            except ValueError as exc:
                report.rejected.append(RejectedLine(line=number, error=str(exc)))
                log.warning("%s line %d rejected: %s", path, number, exc)
                bar.update(1)
                continue
            pending.append((number, memory, vector if same_model else None, key_vector if same_model else None))
            if len(pending) >= batch:
                _import_batch(alma, pending, report)
                bar.update(len(pending))
                pending = []
        if pending:
            _import_batch(alma, pending, report)
            bar.update(len(pending))
    if report.added or report.updated:
        with alma.write_lock:  # the audit log is appended under the write lock, like every entry
            alma.audit.append(
                [
                    AuditEntry(
                        action="import",
                        call="import",
                        reason=f"imported from {path}",
                        details={"added": report.added, "updated": report.updated, "rejected": len(report.rejected)},
                    )
                ]
            )
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _import_batch(
    alma: Service, items: list[tuple[int, MemoryBase, np.ndarray | None, np.ndarray | None]], report: ImportReport
) -> None:
    store = alma.store
    dim = _dim(alma)
    # The last line for an id wins within a file, as a later upsert would.
    latest: dict[str, tuple[MemoryBase, np.ndarray | None, np.ndarray | None]] = {}
    for _, memory, vector, key_vector in items:
        latest[memory.id] = (memory, vector, key_vector)
    by_scope: dict[tuple[str, str | None], list[tuple[MemoryBase, np.ndarray | None, np.ndarray | None]]] = defaultdict(list)
    for memory, vector, key_vector in latest.values():
        kind = memory.type  # type: ignore[attr-defined]
        by_scope[(kind, None if kind == PREFERENCES else memory.agent)].append((memory, vector, key_vector))
    # Decide and embed without the write lock (embedding is slow; servers keep writing), then
    # write under it, dropping any memory a server changed in the meantime.
    to_write: list[MemoryBase] = []
    vectors: list[np.ndarray | None] = []
    key_vectors: list[np.ndarray | None] = []
    added: set[str] = set()
    lines = {memory.id: number for number, memory, _, _ in items}
    for (kind, agent), group in by_scope.items():
        existing = store.fetch_hits(kind, agent, [m.id for m, _, _ in group])
        # An id stored under another agent is that agent's memory: a copy elsewhere would shadow it.
        taken = _held_elsewhere(store, kind, agent, [m.id for m, _, _ in group if m.id not in existing])
        for memory, vector, key_vector in group:
            if memory.id in taken:
                error = f"memory id {memory.id!r} already belongs to agent {taken[memory.id]!r} (this line names {memory.agent!r})"
                report.rejected.append(RejectedLine(line=lines[memory.id], error=error))
                continue
            found = existing.get(memory.id)
            if found is not None:
                old = found.memory
                if old.model_dump() == memory.model_dump():
                    report.unchanged += 1
                    continue
                if old.updated_at >= memory.updated_at:
                    report.kept_newer += 1
                    continue
                report.updated += 1
                if vector is None and old.text() == memory.text():
                    vector = found.vector  # same text, same model: no need to embed again
                if key_vector is None and key_text(old) == key_text(memory):
                    key_vector = found.key_vector  # None when the store has none for it
            else:
                report.added += 1
                added.add(memory.id)
            to_write.append(memory)
            vectors.append(vector)
            key_vectors.append(key_vector)
    if not to_write:
        return
    missing = [i for i, v in enumerate(vectors) if v is None or v.shape[0] != dim]
    if missing:
        # One call for the whole batch (texts and key fields): the model is fastest on full batches.
        # A learned lesson is stored under its outcomes' tasks: those of this batch count too.
        batch_outcomes = {m.id: m for m in to_write if m.type == "outcome"}  # type: ignore[attr-defined]
        fresh = memory_vectors(store, [to_write[i] for i in missing], batch_outcomes)
        for i, row in zip(missing, fresh):
            vectors[i] = row
        report.re_embedded += len(missing)
    keyless = [i for i, v in enumerate(key_vectors) if v is None or v.shape[0] != dim]
    if keyless:
        for i, row in zip(keyless, store.key_vectors([to_write[i] for i in keyless])):
            key_vectors[i] = row
    with alma.write_lock:
        keep = _still_newer(store, to_write, added, report)
        if keep:
            store.put(
                [to_write[i] for i in keep],
                np.stack([vectors[i] for i in keep]),  # type: ignore[misc]
                key_embeddings=np.stack([key_vectors[i] for i in keep]),  # type: ignore[misc]
            )


def _held_elsewhere(store: Any, kind: str, agent: str | None, ids: list[str]) -> dict[str, str]:
    """Which of `ids` are stored in another agent's collection of the same type, and whose."""
    if not ids or kind == PREFERENCES:
        return {}
    found: dict[str, str] = {}
    for owner, stored_kind in store.scopes():
        if stored_kind == kind and owner != agent:
            found.update({doc: owner for doc in store.fetch_hits(kind, owner, ids)})
    return found


def _still_newer(store: Any, memories: list[MemoryBase], added: set[str], report: ImportReport) -> list[int]:
    """Indexes of `memories` still newer than what the store holds now."""
    by_scope: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for i, memory in enumerate(memories):
        kind = memory.type  # type: ignore[attr-defined]
        by_scope[(kind, None if kind == PREFERENCES else memory.agent)].append(i)
    keep: list[int] = []
    for (kind, agent), indexes in by_scope.items():
        current = store.fetch_with_vectors(kind, agent, [memories[i].id for i in indexes])
        for i in indexes:
            now = current.get(memories[i].id)
            if now is not None and now[0].updated_at >= memories[i].updated_at and now[0].model_dump() != memories[i].model_dump():
                report.kept_newer += 1  # changed by a server since we looked: its version stays
                if memories[i].id in added:
                    report.added -= 1
                else:
                    report.updated -= 1
                continue
            keep.append(i)
    return keep


def _dim(alma: Service) -> int:
    return int(alma.embedder.dim)


# -- reindex ---------------------------------------------------------------------------
class ReindexedCollection(BaseModel):
    name: str
    count: int
    status: str = Field(description="reindexed, current (already on this model), or recovered")
    previous_model: str | None = None


class ReindexReport(BaseModel):
    model: str
    collections: list[ReindexedCollection]
    re_embedded: int
    keys_filled: int = Field(
        0, description="Memories of current collections that had no key vector (stored by an older alma-mcp): embedded now."
    )
    seconds: float


def _recover(alma: Service, live: str, names: set[str]) -> bool:
    """Finish a swap an earlier run left half done. Returns whether anything was recovered."""
    store = alma.store
    old, new = _OLD_PREFIX + live[len("alma.") :], _NEW_PREFIX + live[len("alma.") :]
    if old not in names:
        return False
    if live not in names:
        if new in names:
            store.rename_collection(new, live)
        else:
            store.rename_collection(old, live)
            return True
    store.drop_collection(old)
    store.collection_replaced(live)
    return True


def _all_metadata(store: MemoryStore, name: str) -> dict[str, str]:
    """id -> the memory JSON, for every record of a collection."""
    out: dict[str, str] = {}
    offset = 0
    while True:
        got = store.raw_page(name, offset, 5000)
        out.update({i: m.get("json", "") for i, m in zip(got["ids"], got["metadatas"])})
        if len(got["ids"]) < 5000:
            return out
        offset += 5000


def reindex(alma: Service, force: bool = False, progress: bool = False, batch: int = BATCH) -> ReindexReport:
    started = time.perf_counter()
    store = alma.store
    model = alma.embedder.name
    names = store.collection_names()
    recovered = set()
    for name in sorted(names):
        for side in (_OLD_PREFIX, _NEW_PREFIX):
            if name.startswith(side + store.project + "."):
                live = "alma." + name[len(side) :]
                if _recover(alma, live, names):
                    recovered.add(live)
                names = store.collection_names()
    lives = sorted(
        collection_name(store.project, kind, None if agent == "_" else agent) for agent, kind in store.scopes()
    )
    todo: list[tuple[str, str | None]] = []
    report = ReindexReport(model=model, collections=[], re_embedded=0, seconds=0.0)
    for live in lives:
        previous = store.collection_model(live)
        if previous == model and not force:
            status = "recovered" if live in recovered else "current"
            count = store.collection_size(live)
            report.collections.append(ReindexedCollection(name=live, count=count, status=status, previous_model=previous))
            report.keys_filled += _fill_key_vectors(alma, live, batch)
        else:
            todo.append((live, previous))
    total = sum(store.collection_size(live) for live, _ in todo)
    with _progress(total, "reindex", progress) as bar:
        for live, previous in todo:
            count = _reindex_collection(alma, live, batch, bar, report)
            report.collections.append(ReindexedCollection(name=live, count=count, status="reindexed", previous_model=previous))
    if report.re_embedded:
        with alma.write_lock:
            alma.audit.append(
                [
                    AuditEntry(
                        action="reindex",
                        call="reindex",
                        reason=f"re-embedded {report.re_embedded} memories with {model}",
                        details={"collections": [c.name for c in report.collections if c.status == "reindexed"]},
                    )
                ]
            )
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _fill_key_vectors(alma: Service, live: str, batch: int) -> int:
    """Give every memory of a current collection that lacks one (stored before key vectors
    were kept) its key vector, so retrieval need not embed it. Only those fields are written."""
    store = alma.store
    todo: list[tuple[str, MemoryBase]] = []
    offset = 0
    while True:
        got = store.raw_page(live, offset, 5000)
        for i, meta in zip(got["ids"], got["metadatas"]):
            memory = parse_memory((meta or {}).get("json", ""))
            if stored_key_vector(memory, meta) is None:
                todo.append((i, memory))
        if len(got["ids"]) < 5000:
            break
        offset += 5000
    for start in range(0, len(todo), batch):
        part = todo[start : start + batch]
        vectors = alma.embedder.embed([key_text(m) for _, m in part])
        with alma.write_lock:
            # Merged: the memory's other fields stay as a server left them.
            store.merge_metadata(live, [i for i, _ in part], [key_metadata(m, v) for (_, m), v in zip(part, vectors)])
    return len(todo)


def _reindex_collection(alma: Service, live: str, batch: int, bar: Any, report: ReindexReport) -> int:
    store = alma.store
    model = alma.embedder.name
    suffix = live[len("alma.") :]
    new_name, old_name = _NEW_PREFIX + suffix, _OLD_PREFIX + suffix
    store.staging_collection(new_name, model)  # one left by a run with yet another model is replaced

    def copy(ids: list[str], documents: list[str], metadatas: list[dict[str, Any]]) -> None:
        if not ids:
            return
        # Each memory under the vector its write path gives it (an outcome under its task, a learned
        # lesson under its tasks and strategy), and its key field's, both from the new model.
        memories = [parse_memory(m["json"]) for m in metadatas]
        vectors = memory_vectors(store, memories)
        keys = store.key_vectors(memories)  # embedded in the same batch, kept by the store
        # Written now: a process following the collection by write time sees every vector change.
        metadatas = [m | key_metadata(memory, key) | {WRITTEN: time.time()} for m, memory, key in zip(metadatas, memories, keys)]
        store.write_staged(new_name, ids, vectors, documents, metadatas)
        report.re_embedded += len(ids)

    # 1. Copy without the lock: the server keeps working meanwhile. A rerun skips what is done.
    offset = 0
    while True:
        got = store.raw_page(live, offset, batch, documents=True)
        ids, docs, metas = got["ids"], got["documents"], got["metadatas"]
        done = store.raw_records(new_name, ids)
        have = {i: (m or {}).get("json") for i, m in zip(done["ids"], done["metadatas"])}
        keep = [k for k, i in enumerate(ids) if have.get(i) != metas[k].get("json")]
        copy([ids[k] for k in keep], [docs[k] for k in keep], [metas[k] for k in keep])
        bar.update(len(ids))
        if len(ids) < batch:
            break
        offset += batch

    # 2. Under the write lock: catch up with writes made meanwhile, then swap the names.
    with alma.write_lock:
        source, target = _all_metadata(store, live), _all_metadata(store, new_name)
        stale = [i for i, doc in source.items() if target.get(i) != doc]
        for start in range(0, len(stale), batch):
            got = store.raw_records(live, stale[start : start + batch], documents=True)
            copy(got["ids"], got["documents"], got["metadatas"])
        gone = [i for i in target if i not in source]
        if gone:
            store.delete_staged(new_name, gone)
        store.rename_collection(live, old_name)
        store.rename_collection(new_name, live)
        store.drop_collection(old_name)
    return len(source)
