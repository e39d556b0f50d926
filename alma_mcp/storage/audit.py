"""The audit log: every memory that leaves active service (and every restore) is written here,
and every correction made by hand (an edit of its wording, a "wrong" mark with its reason).

An entry says what (memory id, type, agent, title), why (the reason), when (UTC time),
and by which call (forget, decay sweep, cap, merge, consolidate, learning, import...).
Entries are written *before* the store changes, so a crash can leave an entry for a
change that did not happen, never a change without an entry. A purge (hard delete)
is an erasure: its entry keeps the id, type, agent and reason but not the text, and the
entries written earlier about that memory lose their title and copy too (`erase`).

Reads are scoped like the memories (`audit_visible`): an agent sees the entries about memories
it may read, and preference entries only of the users its connection serves.

Two homes, chosen by the storage backend:
- embedded Chroma: `audit.<project>.jsonl` in the data directory, appended under the write lock
  and fsynced; a torn last line (a crash mid-append) is skipped when reading.
- chroma-http: a collection `alma.<project>._.audit` on the Chroma server, so every
  process and machine sharing the memory sees one log. Its name has the shape of a memory
  collection but not one of the five types, so `MemoryStore.scopes()` ignores it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from ..errors import StorageError
from ..models import MemoryBase, utcnow
from .store import chroma_filter

log = logging.getLogger("alma_mcp")

AuditAction = Literal["archive", "purge", "merge", "restore", "import", "reindex", "edit", "feedback"]


def audit_file(data_dir: Path, project: str) -> Path:
    """`audit.<project>.jsonl` in the data directory (one data directory may hold several projects)."""
    return data_dir / f"audit.{project}.jsonl"


class AuditEntry(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    at: datetime = Field(default_factory=utcnow)
    action: AuditAction
    call: str = Field(description="The call that did it: forget, decay sweep, cap, merge on write, consolidate, ...")
    reason: str
    memory_id: str | None = None
    memory_type: str | None = None
    agent: str | None = None
    title: str | None = None
    user_id: str | None = Field(None, description="The user a preference belongs to.")
    details: dict[str, Any] = Field(default_factory=dict)
    snapshot: dict[str, Any] | None = Field(
        None, description="The whole memory (written by earlier versions for purges; erased since)."
    )
    pid: int = Field(default_factory=os.getpid)


def entry_for(
    memory: MemoryBase,
    action: AuditAction,
    call: str,
    reason: str,
    details: dict[str, Any] | None = None,
    keep_snapshot: bool = False,
) -> AuditEntry:
    return AuditEntry(
        action=action,
        call=call,
        reason=reason,
        memory_id=memory.id,
        memory_type=memory.type,  # type: ignore[attr-defined]
        agent=memory.agent,
        title=memory.title(),
        user_id=getattr(memory, "user_id", None) if memory.type == "preference" else None,  # type: ignore[attr-defined]
        details=details or {},
        snapshot=json.loads(memory.model_dump_json()) if keep_snapshot else None,
    )


def erased(entry: AuditEntry) -> AuditEntry:
    """The entry without the memory's words: what a purge leaves of it."""
    return entry.model_copy(update={"title": None, "snapshot": None})


def audit_visible(config: Any, entry: AuditEntry, reader: str | None, users: frozenset[str] | None) -> bool:
    """Whether `reader` (serving `users`) may see an entry: the rule of `scope.visible` for its memory."""
    if entry.memory_type == "preference":
        owner = entry.user_id or (entry.snapshot or {}).get("user_id")
        return users is None or owner in users
    if reader is None:
        return True
    if entry.agent is None:
        return False
    return entry.agent in config.readable_agents(reader, entry.memory_type)


def _matches(entry: AuditEntry, memory_id: str | None, action: str | None, agent: str | None) -> bool:
    return (
        (memory_id is None or entry.memory_id == memory_id)
        and (action is None or entry.action == action)
        and (agent is None or entry.agent == agent)
    )


class AuditLog(Protocol):
    description: str

    def append(self, entries: list[AuditEntry]) -> None: ...

    def read(
        self,
        limit: int = 100,
        memory_id: str | None = None,
        action: str | None = None,
        agent: str | None = None,
        keep: Callable[[AuditEntry], bool] | None = None,
    ) -> list[AuditEntry]:
        """The newest `limit` entries matching the filters (and `keep`), newest first."""
        ...

    def erase(self, memory_ids: set[str]) -> None:
        """Take the words of these memories out of every entry about them."""
        ...


class JsonlAuditLog:
    """One JSON object per line in a file; appends are single writes with O_APPEND, then fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"
        self._lock = threading.Lock()

    def append(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        payload = "".join(entry.model_dump_json() + "\n" for entry in entries).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    # A torn line left by a crash must not swallow the next entry.
                    if os.fstat(fd).st_size and not self._ends_with_newline():
                        payload = b"\n" + payload
                    os.write(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise StorageError(f"could not write the audit log {self.path}: {exc}; nothing was changed") from None

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def read(
        self,
        limit: int = 100,
        memory_id: str | None = None,
        action: str | None = None,
        agent: str | None = None,
        keep: Callable[[AuditEntry], bool] | None = None,
    ) -> list[AuditEntry]:
        # From the end backwards, stopping at `limit` matches: a read of the newest entries costs
        # the same in a log of any size, and holds no more than `limit` of them.
        found: list[AuditEntry] = []
        for line in self._lines_newest_first():
            if memory_id is not None and memory_id.encode() not in line:
                continue  # most lines of a big log are skipped without parsing
            try:
                entry = AuditEntry.model_validate_json(line)
            except ValidationError:
                log.warning("audit log %s: an unreadable line (torn by a crash?) was skipped", self.path)
                continue
            if _matches(entry, memory_id, action, agent) and (keep is None or keep(entry)):
                found.append(entry)
                if len(found) >= limit:
                    break
        return found

    def _lines_newest_first(self, block: int = 1 << 16) -> Iterator[bytes]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return
        with handle:
            position = handle.seek(0, os.SEEK_END)
            tail = b""
            while position > 0:
                step = min(block, position)
                position -= step
                handle.seek(position)
                chunk = handle.read(step) + tail
                lines = chunk.split(b"\n")
                tail = lines[0]  # may continue in the block before
                for line in reversed(lines[1:]):
                    if line.strip():
                        yield line
            if tail.strip():
                yield tail

    def erase(self, memory_ids: set[str]) -> None:
        """Rewrite the log with these memories' titles and copies removed: to a temporary file,
        fsynced, then renamed over the log, so a crash leaves the old log or the new one."""
        if not memory_ids or not self.path.exists():
            return
        temporary = self.path.with_name(self.path.name + ".erase")
        try:
            with self._lock:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with open(fd, "wb") as out, open(self.path, "rb") as source:
                    for line in source:
                        if any(i.encode() in line for i in memory_ids):
                            try:
                                entry = AuditEntry.model_validate_json(line)
                            except ValidationError:
                                continue  # a torn line that names the memory: dropped, not kept
                            if entry.memory_id in memory_ids or (entry.snapshot or {}).get("id") in memory_ids:
                                line = erased(entry).model_dump_json().encode() + b"\n"
                        out.write(line)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
        except OSError as exc:
            raise StorageError(f"could not erase from the audit log {self.path}: {exc}") from None


class ChromaAuditLog:
    """Entries as records of one Chroma collection, visible to every process using the server."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.name = f"alma.{project}._.audit"
        self.description = f"chroma collection {self.name}"
        self._collection: Any = None

    def _col(self) -> Any:
        if self._collection is None:
            try:
                self._collection = self.client.get_or_create_collection(
                    self.name, embedding_function=None, metadata={"alma_audit": True}
                )
            except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
                raise StorageError(f"could not open the audit collection {self.name}: {exc}") from None
        return self._collection

    def append(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        try:
            self._col().add(
                # Ids sort by time, so the newest entries are easy to pick.
                ids=[f"{int(e.at.timestamp() * 1e6):018d}-{e.id}" for e in entries],
                # Chroma wants a vector per record; the log is never searched by similarity.
                embeddings=[[1.0] for _ in entries],
                documents=[e.model_dump_json() for e in entries],
                metadatas=[
                    {"ts": e.at.timestamp(), "action": e.action, "memory_id": e.memory_id or "", "agent": e.agent or ""}
                    for e in entries
                ],
            )
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise StorageError(f"could not write the audit log ({self.name}): {exc}; nothing was changed") from None

    def read(
        self,
        limit: int = 100,
        memory_id: str | None = None,
        action: str | None = None,
        agent: str | None = None,
        keep: Callable[[AuditEntry], bool] | None = None,
    ) -> list[AuditEntry]:
        clauses = [{k: v} for k, v in (("memory_id", memory_id), ("action", action), ("agent", agent)) if v is not None]
        where = chroma_filter(clauses)
        try:
            got = self._col().get(where=where, include=["documents"])
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise StorageError(f"could not read the audit log ({self.name}): {exc}") from None
        found: list[AuditEntry] = []
        for _, doc in sorted(zip(got["ids"], got["documents"]), reverse=True):
            entry = AuditEntry.model_validate_json(doc)
            if keep is None or keep(entry):
                found.append(entry)
                if len(found) >= limit:
                    break
        return found

    def erase(self, memory_ids: set[str]) -> None:
        try:
            for memory_id in memory_ids:
                got = self._col().get(where={"memory_id": memory_id}, include=["documents"])
                if got["ids"]:
                    documents = [erased(AuditEntry.model_validate_json(d)).model_dump_json() for d in got["documents"]]
                    self._col().update(ids=got["ids"], documents=documents)
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise StorageError(f"could not erase from the audit log ({self.name}): {exc}") from None


def open_audit_log(storage: str, data_dir: Path, client: Any, project: str) -> AuditLog:
    if storage == "chroma-http":
        return ChromaAuditLog(client, project)
    return JsonlAuditLog(audit_file(data_dir, project))
