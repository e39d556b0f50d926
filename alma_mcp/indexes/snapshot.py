"""Saved index snapshots: retrieval answered from files beside the store, before Chroma is imported.

Importing chromadb takes about 1.3 s on a small machine, as long as the MCP SDK, and on two cores
the two imports cannot overlap (both hold the GIL). A retrieval needs none of Chroma when the
collections it reads are searched in memory (`vector_search: auto`): only their active records
(metadata and vector), which is what a snapshot holds, one file per collection, with the
collection's shared write count (`writelock.ChangeCounters.of`) at the moment it was read.

A snapshot is used only while that count is still the store's: the counter file is memory-mapped
and read without Chroma, and any process's write to the collection moves it, so a stale snapshot
is never served; the normal path answers instead. Snapshots are a cache: a file that cannot be
read (truncated, altered, another format) is logged, removed and ignored, and written again
from the store.

Scope and privacy are the store's: one file per collection, readable by its owner only (0600 in
the data directory's 0700 folder), and searched by the same retrieval code with the same scope
checks (ranking/quick.py runs a `ranking.retriever.Retriever` over a `SnapshotStore`), so a
snapshot serves exactly what the store would.

Format: MAGIC, one line of JSON (collection, model, write count, rows, dimension, body length
and CRC-32), then the body: the vectors (float32, little-endian, rows x dimension) followed by
the records' metadata as one JSON list. The CRC-32 covers the header's other fields and the body.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..models import MEMORY_TYPES
from ..storage.files import write_whole
from ..storage.store import Hit, Record, collection_name

log = logging.getLogger("alma_mcp")

LIMIT = 20_000
"""Collections of more records than this (archived ones included) get no snapshot (their retrievals wait for
Chroma, as without snapshots): reading one parses every record, which grows with the collection,
and a collection searched by Chroma (past follower.IN_MEMORY_LIMIT) could not be served from one
at all. Where reading a snapshot stops paying is not measured yet: bench/perf.py measures 400."""

FOLDER = "snapshots"
"""The snapshots' folder, in the data directory."""
SUFFIX = ".snap"
MAGIC = b"ALMA-SNAPSHOT 1\n"


@dataclass
class Snapshot:
    """A collection's active records as read at write count `generation`."""

    name: str
    model: str
    generation: int
    metas: list[dict[str, Any]]
    vectors: np.ndarray


class Corrupt(ValueError):
    """A snapshot file that is not a whole, well-formed snapshot of the collection it is named for."""


def path_of(folder: Path, name: str) -> Path:
    return folder / f"{name}{SUFFIX}"


def encode(snapshot: Snapshot) -> bytes:
    vectors = np.ascontiguousarray(snapshot.vectors, dtype="<f4")
    if vectors.ndim != 2 or vectors.shape[0] != len(snapshot.metas):
        raise ValueError("a snapshot needs one vector per record")
    body = vectors.tobytes() + json.dumps(snapshot.metas, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    header = {
        "collection": snapshot.name,
        "model": snapshot.model,
        "generation": snapshot.generation,
        "rows": vectors.shape[0],
        "dimension": vectors.shape[1],
        "length": len(body),
    }
    header["crc32"] = _checksum(header, body)
    return MAGIC + json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n" + body


def _checksum(header: dict[str, Any], body: bytes | memoryview) -> int:
    """CRC-32 of the header's fields and the body: a change to either is found."""
    fields = json.dumps({k: v for k, v in header.items() if k != "crc32"}, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(body, zlib.crc32(fields.encode("utf-8")))


def decode(data: bytes, name: str) -> Snapshot:
    """The snapshot in `data`, which must be of collection `name`; Corrupt otherwise."""
    if not data.startswith(MAGIC):
        raise Corrupt("not a snapshot of this format")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise Corrupt("no header")
    try:
        header = json.loads(data[len(MAGIC) : end])
        rows, dimension, length = int(header["rows"]), int(header["dimension"]), int(header["length"])
        generation, model, crc = int(header["generation"]), str(header["model"]), int(header["crc32"])
        collection = header["collection"]
    except (ValueError, KeyError, TypeError) as exc:
        raise Corrupt(f"bad header ({exc})") from None
    if collection != name:
        raise Corrupt(f"it holds collection {collection!r}")
    body = memoryview(data)[end + 1 :]
    if len(body) != length or _checksum(header, body) != crc:
        raise Corrupt("it is incomplete or altered (its length or CRC-32 differs)")
    size = rows * dimension * 4
    if rows < 0 or dimension < 0 or size > length:
        raise Corrupt("bad dimensions")
    vectors = np.frombuffer(body[:size], dtype="<f4").reshape(rows, dimension).astype(np.float32)
    try:
        metas = json.loads(bytes(body[size:]))
    except ValueError as exc:
        raise Corrupt(f"bad records ({exc})") from None
    if not isinstance(metas, list) or len(metas) != rows or not all(isinstance(m, dict) and "json" in m for m in metas):
        raise Corrupt("bad records")
    return Snapshot(name, model, generation, metas, vectors)


def write(folder: Path, snapshot: Snapshot) -> None:
    """Save `snapshot` atomically (a temporary file renamed over the old one), readable by its
    owner only. A crash leaves the old file or the new one, never half of one."""
    write_whole(path_of(folder, snapshot.name), encode(snapshot))


def read(folder: Path, name: str, model: str) -> Snapshot | None:
    """The saved snapshot of collection `name` if there is a readable one made with `model`;
    a corrupt file is logged and removed."""
    path = path_of(folder, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("index snapshot %s cannot be read (%s): ignored", path, exc)
        return None
    try:
        snapshot = decode(data, name)
    except Corrupt as exc:
        log.warning("index snapshot %s is corrupt (%s): removed; it is written again from the store", path, exc)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    if snapshot.model != model:  # vectors of another model: of no use to this one
        return None
    return snapshot


def saved_generation(folder: Path, name: str, model: str) -> int | None:
    """The write count of the saved snapshot of `name` made with `model`, from its header alone
    (None when there is none; a damaged body is found when the snapshot is read)."""
    try:
        with open(path_of(folder, name), "rb") as file:
            head = file.read(len(MAGIC) + 4096)
    except OSError:
        return None
    end = head.find(b"\n", len(MAGIC))
    if not head.startswith(MAGIC) or end < 0:
        return None
    try:
        header = json.loads(head[len(MAGIC) : end])
        return int(header["generation"]) if header.get("model") == model and header.get("collection") == name else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def saved_agents(folder: Path, project: str) -> list[str]:
    """The agents that have a snapshot of some collection of `project` in `folder`."""
    agents: set[str] = set()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for entry in names:
        parts = entry.removesuffix(SUFFIX).split(".")
        if entry.endswith(SUFFIX) and len(parts) == 4 and parts[0] == "alma" and parts[1] == project and parts[3] in MEMORY_TYPES:
            if parts[2] != "_":
                agents.add(parts[2])
    return sorted(agents)


class SnapshotStore:
    """The read side of `storage.store.MemoryStore` that retrieval uses, over snapshots: a
    retriever built on it searches every collection in memory and never reaches Chroma."""

    def __init__(self, project: str, snapshots: dict[str, Snapshot]) -> None:
        self.project = project
        self.generations = {name: s.generation for name, s in snapshots.items()}
        self._records: dict[str, dict[str, Record]] = {}
        for name, snapshot in snapshots.items():
            records: dict[str, Record] = {}
            for meta, vector in zip(snapshot.metas, snapshot.vectors):
                record = Record(meta, vector)
                records[record.shared().memory.id] = record
            self._records[name] = records

    def _of(self, memory_type: str, agent: str | None) -> dict[str, Record]:
        return self._records[collection_name(self.project, memory_type, agent)]

    def generation(self, memory_type: str, agent: str | None) -> int:
        return self.generations[collection_name(self.project, memory_type, agent)]

    def count(self, memory_type: str, agent: str | None, include_archived: bool = True) -> int:
        return len(self._of(memory_type, agent))

    def read_collection(
        self, memory_type: str, agent: str | None, archived: set[str] | None = None
    ) -> Iterator[tuple[Any, np.ndarray]]:
        for record in self._of(memory_type, agent).values():
            yield record.shared().memory, record.vector

    def fetch_hits(self, memory_type: str, agent: str | None, ids: Sequence[str], shared: bool = False) -> dict[str, Hit]:
        records = self._of(memory_type, agent)
        return {doc: records[doc].shared() if shared else records[doc].hit() for doc in ids if doc in records}

    def query_and_read(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a snapshot is searched in memory only")  # QuickSearch never builds one otherwise
