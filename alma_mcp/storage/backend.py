"""The storage backend `MemoryStore` runs on, and an in-memory implementation of it.

`Backend` and `BackendCollection` are the part of Chroma's client API the store uses (and only
the store: nothing else in alma-mcp talks to a backend). Two implementations:

- Chroma: `chromadb.PersistentClient` wrapped by `writelock.SharedClient` (embedded), or
  `chromadb.HttpClient` (a Chroma server). See `MemoryStore.embedded` and `MemoryStore.http`.
- `InMemoryBackend` below: exact cosine search in numpy over plain dicts, with Chroma's
  semantics where the store relies on them (upsert replaces, update merges metadata, a missing
  collection raises, `where` filters, paging by offset). It exists for the fast test tier and
  for embedding alma-mcp where nothing may be written to disk; nothing is persisted.

`fault` lets a test make any operation fail the way a broken database would.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np


class BackendCollection(Protocol):
    name: str

    @property
    def metadata(self) -> Mapping[str, Any] | None: ...

    def get(self, ids: Sequence[str] | None = ..., where: Mapping[str, Any] | None = ..., limit: int | None = ...,
            offset: int | None = ..., include: Sequence[str] = ...) -> Mapping[str, Any]: ...

    def query(self, query_embeddings: Any, n_results: int = ..., where: Mapping[str, Any] | None = ...,
              include: Sequence[str] = ...) -> Mapping[str, Any]: ...

    def count(self) -> int: ...

    def add(self, ids: Sequence[str], embeddings: Any = ..., documents: Sequence[str] | None = ...,
            metadatas: Sequence[Mapping[str, Any]] | None = ...) -> Any: ...

    def upsert(self, ids: Sequence[str], embeddings: Any = ..., documents: Sequence[str] | None = ...,
               metadatas: Sequence[Mapping[str, Any]] | None = ...) -> Any: ...

    def update(self, ids: Sequence[str], embeddings: Any = ..., documents: Sequence[str] | None = ...,
               metadatas: Sequence[Mapping[str, Any]] | None = ...) -> Any: ...

    def delete(self, ids: Sequence[str] | None = ...) -> Any: ...

    def modify(self, name: str | None = ..., metadata: Mapping[str, Any] | None = ...) -> Any: ...


class Backend(Protocol):
    def get_collection(self, name: str, **kwargs: Any) -> BackendCollection: ...

    def get_or_create_collection(self, name: str, **kwargs: Any) -> BackendCollection: ...

    def create_collection(self, name: str, **kwargs: Any) -> BackendCollection: ...

    def delete_collection(self, name: str) -> None: ...

    def list_collections(self) -> Sequence[Any]: ...

    def heartbeat(self) -> int: ...


class CollectionNotFound(LookupError):
    """The in-memory backend's "no such collection" (Chroma's is `chromadb.errors.NotFoundError`)."""


class CollectionExists(ValueError):
    """create_collection of a name already taken."""


Fault = Callable[[str, str], BaseException | None]
"""(operation, collection name or '') -> an exception to raise instead of doing it, or None."""


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def matches(meta: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """Chroma's metadata filter: {"field": value}, {"field": {"$op": value}}, "$and", "$or"."""
    if not where:
        return True
    for key, condition in where.items():
        if key == "$and":
            if not all(matches(meta, part) for part in condition):
                return False
        elif key == "$or":
            if not any(matches(meta, part) for part in condition):
                return False
        elif isinstance(condition, Mapping):
            for op, value in condition.items():
                if op not in _OPERATORS:
                    raise ValueError(f"unsupported where operator {op!r}")
                # Chroma: a record without the field never matches a comparison on it.
                if key not in meta or not _OPERATORS[op](meta[key], value):
                    return False
        elif key not in meta or meta[key] != condition:
            return False
    return True


class InMemoryCollection:
    def __init__(self, backend: "InMemoryBackend", name: str, metadata: Mapping[str, Any] | None) -> None:
        self._backend = backend
        self.name = name
        self._metadata = dict(metadata) if metadata else None
        # id -> (vector, document, metadata), in insertion order as Chroma returns them.
        self._records: dict[str, tuple[np.ndarray, str | None, dict[str, Any]]] = {}

    @property
    def metadata(self) -> dict[str, Any] | None:
        return dict(self._metadata) if self._metadata is not None else None

    def _check(self, operation: str) -> None:
        self._backend._check(operation, self.name)
        if self._backend._collections.get(self.name) is not self:
            raise CollectionNotFound(f"Collection [{self.name}] does not exist")

    # -- reads ---------------------------------------------------------------------------
    def get(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, limit: int | None = None,
            offset: int | None = None, include: Sequence[str] = ("metadatas", "documents")) -> dict[str, Any]:
        with self._backend._lock:
            self._check("get")
            keys: Iterable[str] = self._records if ids is None else [i for i in dict.fromkeys(ids) if i in self._records]
            chosen = [i for i in keys if matches(self._records[i][2], where)]
            chosen = chosen[offset or 0 :]
            if limit is not None:
                chosen = chosen[:limit]
            return self._rows(chosen, include)

    def _rows(self, ids: list[str], include: Sequence[str]) -> dict[str, Any]:
        rows: dict[str, Any] = {"ids": ids, "metadatas": None, "documents": None, "embeddings": None}
        if "metadatas" in include:
            rows["metadatas"] = [dict(self._records[i][2]) for i in ids]
        if "documents" in include:
            rows["documents"] = [self._records[i][1] for i in ids]
        if "embeddings" in include:
            dim = next(iter(self._records.values()))[0].shape[0] if self._records else 0
            rows["embeddings"] = np.stack([self._records[i][0] for i in ids]) if ids else np.zeros((0, dim), np.float32)
        return rows

    def query(self, query_embeddings: Any, n_results: int = 10, where: Mapping[str, Any] | None = None,
              include: Sequence[str] = ("metadatas", "documents", "distances")) -> dict[str, Any]:
        with self._backend._lock:
            self._check("query")
            candidates = [i for i, record in self._records.items() if matches(record[2], where)]
            out: dict[str, list[Any]] = {"ids": [], "distances": [], "metadatas": [], "documents": []}
            for query in np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32)):
                if candidates:
                    matrix = np.stack([self._records[i][0] for i in candidates])
                    norms = np.linalg.norm(matrix, axis=1) * (float(np.linalg.norm(query)) or 1.0)
                    distances = 1.0 - (matrix @ query) / np.where(norms == 0, 1.0, norms)
                    order = np.argsort(distances, kind="stable")[:n_results]
                else:
                    distances, order = np.zeros(0), np.zeros(0, dtype=int)
                ids = [candidates[k] for k in order]
                out["ids"].append(ids)
                out["distances"].append([float(distances[k]) for k in order])
                rows = self._rows(ids, include)
                out["metadatas"].append(rows["metadatas"])
                out["documents"].append(rows["documents"])
            return out

    def count(self) -> int:
        with self._backend._lock:
            self._check("count")
            return len(self._records)

    def peek(self, limit: int = 10) -> dict[str, Any]:
        return self.get(limit=limit, include=["metadatas", "documents", "embeddings"])

    # -- writes --------------------------------------------------------------------------
    def _write(self, operation: str, ids: Sequence[str], embeddings: Any, documents: Sequence[str] | None,
               metadatas: Sequence[Mapping[str, Any]] | None) -> None:
        ids = list(ids)
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate ids in one {operation}")
        vectors = None if embeddings is None else np.asarray(embeddings, dtype=np.float32).reshape(len(ids), -1)
        for field, values in (("documents", documents), ("metadatas", metadatas)):
            if values is not None and len(values) != len(ids):
                raise ValueError(f"{len(values)} {field} for {len(ids)} ids")
        with self._backend._lock:
            self._check(operation)
            vector: np.ndarray
            document: str | None
            meta: dict[str, Any]
            for k, doc_id in enumerate(ids):
                present = self._records.get(doc_id)
                if present is None:
                    if operation == "update":
                        continue  # Chroma logs and skips an id it does not have
                    if vectors is None:
                        raise ValueError(f"{operation} needs embeddings: this backend embeds nothing itself")
                    vector, document, meta = vectors[k], None, {}
                else:
                    if operation == "add":
                        continue  # Chroma ignores an id it already has
                    vector, document, meta = present
                # As Chroma: an upsert or update of a record merges its metadata and keeps what is not given.
                meta = {**meta, **(metadatas[k] if metadatas is not None else {})}
                if vectors is not None:
                    vector = vectors[k].copy()
                if documents is not None:
                    document = documents[k]
                self._records[doc_id] = (vector, document, meta)

    def add(self, ids: Sequence[str], embeddings: Any = None, documents: Sequence[str] | None = None,
            metadatas: Sequence[Mapping[str, Any]] | None = None) -> None:
        self._write("add", ids, embeddings, documents, metadatas)

    def upsert(self, ids: Sequence[str], embeddings: Any = None, documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any]] | None = None) -> None:
        self._write("upsert", ids, embeddings, documents, metadatas)

    def update(self, ids: Sequence[str], embeddings: Any = None, documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any]] | None = None) -> None:
        self._write("update", ids, embeddings, documents, metadatas)

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> None:
        with self._backend._lock:
            self._check("delete")
            doomed = [i for i in (ids if ids is not None else list(self._records)) if i in self._records]
            for doc_id in doomed:
                if matches(self._records[doc_id][2], where):
                    del self._records[doc_id]

    def modify(self, name: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        with self._backend._lock:
            self._check("modify")
            if name is not None and name != self.name:
                if name in self._backend._collections:
                    raise CollectionExists(f"Collection [{name}] already exists")
                del self._backend._collections[self.name]
                self.name = name
                self._backend._collections[name] = self
            if metadata is not None:
                self._metadata = dict(metadata)


class InMemoryBackend:
    """Collections held in this process's memory (see the module's docstring)."""

    def __init__(self, fault: Fault | None = None) -> None:
        self._collections: dict[str, InMemoryCollection] = {}
        self._lock = threading.RLock()
        self.fault = fault

    def _check(self, operation: str, name: str) -> None:
        if self.fault is not None:
            error = self.fault(operation, name)
            if error is not None:
                raise error

    def get_collection(self, name: str, **kwargs: Any) -> InMemoryCollection:
        with self._lock:
            self._check("get_collection", name)
            col = self._collections.get(name)
            if col is None:
                raise CollectionNotFound(f"Collection [{name}] does not exist")
            return col

    def get_or_create_collection(self, name: str, metadata: Mapping[str, Any] | None = None, **kwargs: Any) -> InMemoryCollection:
        with self._lock:
            self._check("get_or_create_collection", name)
            col = self._collections.get(name)
            if col is None:
                col = self._collections[name] = InMemoryCollection(self, name, metadata)
            return col

    def create_collection(self, name: str, metadata: Mapping[str, Any] | None = None, **kwargs: Any) -> InMemoryCollection:
        with self._lock:
            self._check("create_collection", name)
            if name in self._collections:
                raise CollectionExists(f"Collection [{name}] already exists")
            col = self._collections[name] = InMemoryCollection(self, name, metadata)
            return col

    def delete_collection(self, name: str) -> None:
        with self._lock:
            self._check("delete_collection", name)
            if self._collections.pop(name, None) is None:
                raise CollectionNotFound(f"Collection [{name}] does not exist")

    def list_collections(self) -> list[InMemoryCollection]:
        with self._lock:
            self._check("list_collections", "")
            return list(self._collections.values())

    def heartbeat(self) -> int:
        self._check("heartbeat", "")
        return time.time_ns()
