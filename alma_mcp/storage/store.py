"""Memories in Chroma: one collection per (project, agent, memory type); preferences per project.

The store knows nothing of ranking or learning. It turns memories into Chroma records
(our own embedding, the memory's text as the document, its JSON plus filterable fields
as metadata) and back, and it keeps a write generation per collection so that callers
can cache reads and drop the cache when that collection changes, whichever process wrote.

Two backends: the embedded store (a folder, shared safely by several processes through
`writelock.SharedClient`) and a Chroma server (`storage: chroma-http`, Chroma's own HTTP
client), where other processes' writes are noticed through tokens kept on the server.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
import builtins
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .backend import InMemoryBackend
from .journal import JournaledClient, journaled
from ..embedding.embedder import Embedder
from ..errors import NotFound, StorageError
from ..models import MEMORY_TYPES, AnyMemory, Outcome, key_text, memory_type_of, parse_memory, strategy_key
from .writelock import SharedClient, collection_missing, release_shared_client, shared_client

log = logging.getLogger("alma_mcp")

PREFERENCES = "preference"
_PAGE = 2000
_RECORDS_PER_COLLECTION = 5000
"""Stored records (metadata and vector) a process keeps per collection for searches (RecordCache)."""

KEY_VECTOR = "key_vec"
"""Metadata field: the embedding of the memory's key field (models.key_text), float16, base64."""
KEY_CHECK = "key_crc"
"""Metadata field: CRC-32 of the key text that KEY_VECTOR embeds. Chroma merges metadata on update,
so a key vector can outlive its text on paths that rewrite a memory without one; the check tells."""
_KEY_CACHE_SIZE = 4096
WRITTEN = "written_ts"
"""Metadata field: when the record was last written (Unix time, the writer's clock). Another
process's writes are found by it (`changes_since`), so an index can follow them without reading
the whole collection again."""


def collection_name(project: str, memory_type: str, agent: str | None) -> str:
    """`alma.<project>.<agent>.<type>`; preferences are per user, so per project: `alma.<project>._.preference`."""
    if memory_type == PREFERENCES:
        return f"alma.{project}._.{memory_type}"
    return f"alma.{project}.{agent}.{memory_type}"


def _parse_collection_name(name: str) -> tuple[str, str, str] | None:
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "alma" or parts[3] not in MEMORY_TYPES:
        return None
    return parts[1], parts[2], parts[3]


WriteListener = Callable[[str, Sequence[AnyMemory], bool, int, int, "np.ndarray | None"], None]
"""(collection name, the memories written, True when they were deleted, the collection's
generation just before and just after this write, and the memories' text vectors when the write
stored them, else None). A listener whose view was at `before` may apply the write and move to
`after`; any other view missed a write by another process. Listeners are called with the
write lock held and must never wait for a lock that a reader may hold while it waits for the
store."""


@dataclass
class Hit:
    memory: AnyMemory
    similarity: float
    vector: np.ndarray | None = None
    key_vector: np.ndarray | None = None
    """The stored embedding of the memory's key field; None for a memory stored without one."""

    def at(self, similarity: float) -> "Hit":
        """The same hit with another similarity (dataclasses.replace costs ten times as much)."""
        return Hit(self.memory, similarity, self.vector, self.key_vector)


def key_check(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def encode_key_vector(vector: np.ndarray) -> str:
    # float16 halves the metadata (1 KB for 384 dimensions); the error it adds to a cosine
    # similarity is about 1e-4, below what ranking or the floors can resolve.
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def key_metadata(memory: AnyMemory, vector: np.ndarray) -> dict[str, Any]:
    return {KEY_VECTOR: encode_key_vector(vector), KEY_CHECK: key_check(key_text(memory))}


def stored_key_vector(memory: AnyMemory, meta: dict[str, Any]) -> np.ndarray | None:
    """The key vector kept in `meta`, if it was made from the memory's current key text."""
    encoded = meta.get(KEY_VECTOR)
    if not isinstance(encoded, str) or meta.get(KEY_CHECK) != key_check(key_text(memory)):
        return None
    try:
        return np.frombuffer(base64.b64decode(encoded), dtype="<f2").astype(np.float32)
    except (ValueError, TypeError):
        return None


def _metadata(memory: AnyMemory) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "agent": memory.agent,
        "type": memory.type,
        "archived": memory.archived,
        "created_ts": memory.created_at.timestamp(),
        "updated_ts": memory.updated_at.timestamp(),
        WRITTEN: time.time(),
        "json": memory.model_dump_json(),
    }
    for key in ("user_id", "task_type", "domain", "category", "outcome", "strategy_key"):
        value = getattr(memory, key, None)
        if value is not None:
            meta[key] = value
    if isinstance(memory, Outcome):
        meta["strategy_key"] = strategy_key(memory.strategy_used)
    return meta


def _from_metadata(meta: dict[str, Any]) -> AnyMemory:
    return parse_memory(meta["json"])


def _hit(meta: dict[str, Any], similarity: float, vector: Any) -> "Hit":
    """A hit of its own: a fresh memory and arrays no one else holds."""
    memory = _from_metadata(meta)
    return Hit(memory, similarity, np.array(vector, dtype=np.float32), stored_key_vector(memory, meta))


class Record:
    """One record as read from Chroma (metadata and vector). A record is never changed: a write
    that changes it makes a new one.

    `hit()` parses it anew every time, for callers that may change what they get (learning,
    lifecycle, backup). `shared()` parses it once and hands every caller the same memory and
    arrays: for retrieval alone, which only reads them and gives its caller copies. Parsing a
    memory's JSON and decoding its key vector was about a third of a warm retrieval's own time
    (about a hundred records a call at 10,000 memories)."""

    __slots__ = ("meta", "vector", "_parsed")

    def __init__(self, meta: dict[str, Any], vector: Any) -> None:
        self.meta = meta
        # Chroma reads vectors as float64: float32, as they were written, takes half the memory.
        self.vector = np.asarray(vector, dtype=np.float32)
        self._parsed: Hit | None = None

    def hit(self, similarity: float = 0.0) -> "Hit":
        return _hit(self.meta, similarity, self.vector)

    def shared(self, similarity: float = 0.0) -> "Hit":
        parsed = self._parsed
        if parsed is None:  # two threads may both parse it once: the same result, no harm
            parsed = self._parsed = self.hit()
        return parsed.at(similarity)


def chroma_filter(clauses: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Chroma's `where` for these clauses, all of which must hold (None for none)."""
    return None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": list(clauses)}


def _chroma_error(action: str, exc: Exception) -> StorageError:
    return StorageError(f"could not {action} in Chroma: {exc}")


class RecordCache:
    """Records (metadata and vector) recently read from each collection, valid for one write generation.

    A nearest-neighbour search that asks Chroma for ids and distances only takes about a quarter
    of the time of one that also reads every hit's metadata and vector, and a warm server meets
    the same memories again and again. Each collection's entries are tagged with the write
    generation they were read at (which counts every process's writes). A write of this process
    is applied to the entries in place (`follow`); when the collection's generation has moved any
    other way (another process wrote), its entries are dropped before any is served, so no write
    is ever hidden. Entries are Records: raw rows, parsed anew for every caller that may change
    what it gets (see Record).
    """

    def __init__(self, per_collection: int = _RECORDS_PER_COLLECTION) -> None:
        self.per_collection = per_collection
        self._rows: dict[str, OrderedDict[str, Record]] = {}
        self._generations: dict[str, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, name: str, generation: int, ids: Sequence[str]) -> dict[str, Record]:
        with self._lock:
            rows = self._rows.get(name)
            if rows is None or self._generations.get(name) != generation:
                rows = self._rows[name] = OrderedDict()
                self._generations[name] = generation
            found = {}
            for doc in ids:
                row = rows.get(doc)
                if row is not None:
                    rows.move_to_end(doc)
                    found[doc] = row
            self.hits += len(found)
            self.misses += len(ids) - len(found)
            return found

    def follow(
        self,
        name: str,
        before: int,
        after: int,
        ids: Sequence[str],
        deleted: bool = False,
        metas: Sequence[dict[str, Any]] | None = None,
        vectors: Any = None,
    ) -> None:
        """Apply a write of this process to the kept rows, so the next search reads none of them
        from Chroma again: deleted rows go, written rows (`metas` and `vectors`: the whole
        record) are kept, and a metadata-only write (`metas` alone) is merged into rows kept,
        as Chroma merges it. Kept rows that were not at `before` are left to be dropped."""
        with self._lock:
            rows = self._rows.get(name)
            if rows is None or self._generations.get(name) != before:
                return
            if deleted:
                for doc in ids:
                    rows.pop(doc, None)
            elif metas is not None and vectors is not None:
                for doc, meta, vector in zip(ids, metas, vectors):
                    rows[doc] = Record(meta, vector)
                    rows.move_to_end(doc)
                while len(rows) > self.per_collection:
                    rows.popitem(last=False)
            elif metas is not None:
                for doc, meta in zip(ids, metas):
                    row = rows.get(doc)
                    if row is not None:
                        rows[doc] = Record(row.meta | meta, row.vector)
            else:
                rows.clear()
            self._generations[name] = after

    def add(self, name: str, generation: int, rows: dict[str, Record]) -> None:
        """Keep rows read at `generation` (the generation read before they were fetched)."""
        with self._lock:
            if name not in self._generations:  # nothing kept yet: start at the generation they were read at
                self._generations[name] = generation
            if self._generations.get(name) != generation:
                return  # the collection moved on while they were read: they may be stale
            kept = self._rows.setdefault(name, OrderedDict())
            kept.update(rows)
            while len(kept) > self.per_collection:
                kept.popitem(last=False)


def _marked_override(method: Any = None, **_checks: Any) -> Any:
    """`overrides.override` without its checks: marks the method, as EnforceOverrides expects."""
    if method is None:
        return _marked_override
    method.__override__ = True
    return method


_IMPORTING = threading.Lock()  # one window at a time: a second would save the first's stand-in


@contextmanager
def _unchecked_overrides() -> Iterator[None]:
    """While chromadb's modules are imported, their `@override` decorators only mark the methods.

    The `overrides` package checks, at import, each decorated method against its base classes by
    inspecting the caller's frame and comparing signatures: 0.3-0.4 s of CPU here in every process
    that opens the store (a third of importing chromadb; bench/perf_breakdown.py), spent checking
    a released chromadb against itself. The package's own decorators are put back after: modules
    imported later, anyone's, get the checks as usual."""
    with _IMPORTING:
        try:
            import overrides
        except ImportError:
            yield
            return
        saved = overrides.override, overrides.overrides
        overrides.override = overrides.overrides = _marked_override
        try:
            yield
        finally:
            overrides.override, overrides.overrides = saved


def _import_chromadb(embedded: bool = False) -> Any:
    try:
        with _unchecked_overrides():
            import chromadb

            if embedded:  # else imported by the first client, after the window
                import chromadb.api.rust  # noqa: F401
                import chromadb.telemetry.product.posthog  # noqa: F401
    except ImportError as exc:
        if exc.name != "chromadb":
            raise
        raise StorageError(
            'chromadb is not installed: pip install --no-deps "chromadb>=1.0,<2" (as the README\'s set-up does), '
            "or install alma-mcp[chroma]"
        ) from None
    return chromadb


# Databases this process has handed to Chroma: Python's sqlite3 must not open them again (below).
_opened_by_chroma: set[Path] = set()
_opened_lock = threading.Lock()


def _in_wal_mode(database: Path) -> bool:
    """Whether the file's header says write-ahead log (bytes 18 and 19 both 2, SQLite's file format)."""
    try:
        with open(database, "rb") as file:
            header = file.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def _write_ahead_log(database: Path) -> None:
    """Put Chroma's SQLite database in write-ahead-log mode (a setting stored in the file).

    Chroma leaves it in rollback-journal mode with full sync: every transaction fsyncs the journal,
    the folder, the journal again and the database, and an upsert is two transactions, so a
    one-memory write spent about 35 ms of its 50 in fsync on this kind of disk. In WAL mode a
    commit is one fsync of the log and just as durable at full sync (SQLite's default, which
    Chroma keeps). If another process has the database open the switch waits for the next start.

    Python's sqlite3 and Chroma's own SQLite are two copies of the library in one process, and
    POSIX locks do not tell them apart: once Chroma has had the file open here, a sqlite3
    connection can take itself for the last one and truncate the shared-memory file under
    Chroma's mapping (a bus error). So sqlite3 opens the file only when its header is not in WAL
    mode already, and never after this process has given it to Chroma."""
    database = database.resolve()
    with _opened_lock:
        first = database not in _opened_by_chroma
        _opened_by_chroma.add(database)
    if not first or not database.is_file() or _in_wal_mode(database):
        return
    import sqlite3

    try:
        connection = sqlite3.connect(str(database), timeout=0.2)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.Error as exc:
        log.debug("chroma.sqlite3 stays in its journal mode: %s", exc)


class MemoryStore:
    """CRUD and vector search over Chroma for one project."""

    def __init__(
        self,
        client: Any,
        project: str,
        embedder: Embedder,
        description: str = "chroma",
        change_check_seconds: float | None = None,
    ) -> None:
        self.client = client
        self.project = project
        self.embedder = embedder
        self.description = description
        self._collections: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._generations: dict[str, int] = {}
        # Whose writes generation() can see: the embedded store's shared counters see every
        # process's; a server's change tokens are read at most every `change_check_seconds`.
        self._journal = client if isinstance(client, JournaledClient) else None
        self._shared = self._journal.shared if self._journal is not None else client if isinstance(client, SharedClient) else None
        self._remote = (
            _RemoteChanges(client, project, change_check_seconds) if change_check_seconds is not None else None
        )
        self._write_listeners: list[WriteListener] = []
        # Shared counter values taken by this process's own journal applies, and the values they
        # stand for (see _applying).
        self._aliases: dict[str, tuple[int, int]] = {}
        self.records = RecordCache()
        # Key vectors embedded recently, by key text: embed() fills it for the put() that follows,
        # and a lesson rewritten with the same condition is not embedded again.
        self._key_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._apply_listener = self._applying
        if self._journal is not None:
            self._journal.add_apply_listener(self._apply_listener)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def embedded(cls, path: Path, project: str, embedder: Embedder, lock_dir: Path | None = None) -> "MemoryStore":
        """The embedded store in folder `path`. Processes sharing it coordinate through a lock and
        counters in `lock_dir` (default: the folder above, i.e. the data directory)."""
        chromadb = _import_chromadb(embedded=True)
        from chromadb.config import Settings

        path.mkdir(parents=True, exist_ok=True)

        def open_client(folder: Path) -> Any:
            _write_ahead_log(folder / "chroma.sqlite3")
            return chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))

        shared = shared_client(path, open_client, lock_dir)
        try:
            client = journaled(shared, shared.path)
        except BaseException:
            release_shared_client(shared)
            raise
        return cls(client, project, embedder, description=f"chroma (embedded, {path})")

    @classmethod
    def in_memory(cls, project: str, embedder: Embedder, backend: InMemoryBackend | None = None) -> "MemoryStore":
        """A store held in this process's memory (`backend.InMemoryBackend`): nothing persists.
        For the fast test tier, and wherever nothing may be written to disk."""
        return cls(backend or InMemoryBackend(), project, embedder, description="in memory")

    @classmethod
    def http(cls, settings: Any, project: str, embedder: Embedder) -> "MemoryStore":
        chromadb = _import_chromadb()
        from chromadb.config import Settings

        try:
            client = chromadb.HttpClient(
                host=settings.host,
                port=settings.port,
                ssl=settings.ssl,
                headers=settings.headers or None,
                tenant=settings.tenant,
                database=settings.database,
                settings=Settings(anonymized_telemetry=False),
            )
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise StorageError(
                f"cannot reach the Chroma server at {settings.host}:{settings.port}: {exc}"
            ) from None
        scheme = "https" if settings.ssl else "http"
        return cls(
            client,
            project,
            embedder,
            description=f"chroma-http ({scheme}://{settings.host}:{settings.port}, {settings.tenant}/{settings.database})",
            change_check_seconds=getattr(settings, "change_check_seconds", 1.0),
        )

    # -- collections -------------------------------------------------------------------
    def _collection(self, memory_type: str, agent: str | None, create: bool) -> Any:
        """The collection's handle; with `create` False, None when it was never written to (any
        other failure to open it raises StorageError)."""
        name = collection_name(self.project, memory_type, agent)
        col = self._collections.get(name)
        if col is not None:
            return col
        # No store lock around these calls: they take the directory lock, and a reader holding a
        # store lock while it waits for a writer that needs the same store lock would deadlock.
        # Opening a collection twice at once is harmless (get_or_create is idempotent).
        try:
            if create:
                col = self.client.get_or_create_collection(
                    name,
                    embedding_function=None,
                    metadata={"hnsw:space": "cosine", "embedding_model": self.embedder.name},
                )
            else:
                try:
                    col = self.client.get_collection(name, embedding_function=None)
                except Exception as exc:
                    if collection_missing(exc):
                        return None  # never written to: no memories
                    raise  # any other failure is an error, never "no memories"
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error(f"open collection {name}", exc) from None
        return self._collections.setdefault(name, col)

    def generation(self, memory_type: str, agent: str | None) -> int:
        """A number that changes whenever any process writes to the collection.

        Embedded: exact, from counters shared by every process on the data directory. Chroma
        server: this process's writes at once, other processes' within `change_check_seconds`.
        """
        return self._generation_of(collection_name(self.project, memory_type, agent))

    def _generation_of(self, name: str) -> int:
        local = self._generations.get(name, 0)
        if self._shared is not None:
            return (self._slot_of(name) << 20) + local
        if self._remote is not None:
            return (self._remote.token(name) << 20) + local
        return local

    def _bump(self, name: str) -> None:
        self._generations[name] = self._generations.get(name, 0) + 1
        if self._remote is not None:
            self._remote.changed([name])

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write, possibly to several collections: exclusive across processes when embedded."""
        if self._shared is not None:
            with self._shared.lock.write():
                yield
        else:
            with self._lock:
                yield

    def remove_write_listeners(self) -> None:
        """Forget every listener (the service that made them is closing; it makes new ones)."""
        self._write_listeners.clear()

    def add_write_listener(self, listener: "WriteListener") -> None:
        """Call `listener` (see WriteListener) after every write this process makes, so
        indexes derived from the store (retrieval's search indexes) follow it without re-reading it."""
        self._write_listeners.append(listener)

    def _notify(
        self,
        name: str,
        memories: Sequence[AnyMemory],
        deleted: bool,
        before: int,
        vectors: np.ndarray | None = None,
        metas: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Tell the record cache and the listeners about a write; call with the write lock held,
        after `_bump`. `vectors`: the memories' text vectors, when the write stored them (put);
        `metas`: the metadata written."""
        after = self._generation_of(name)  # under the lock: no other process wrote in between
        self.records.follow(name, before, after, [m.id for m in memories], deleted, metas, vectors)
        # Inside the write lock, so a search the writer makes next (learning's grouping) sees its
        # own write. A listener must never wait for a lock that a reader can hold while it waits
        # for the store (retrieval.SearchIndexes._on_write), or the two would deadlock.
        for listener in self._write_listeners:
            try:
                listener(name, memories, deleted, before, after, vectors)
            except Exception:  # a follower's failure must not undo or hide a finished write
                log.exception("a write listener failed")

    def _applying(self, names: list[str], own: bool) -> None:
        """The write journal is about to apply to these collections writes that, when `own`, this
        store already told its caches and listeners about (journal.py). The apply moves their
        shared counters as any Chroma write does; for this process's caches that move is no
        change, so the counter value it will take is read as the one before (`_generation_of`),
        from before it is taken: a search reading the counter during the apply sees no change
        either. Another process's entries applied here are changes, and read as such."""
        if not own or self._shared is None:
            return
        counters = self._shared.lock.counters
        upcoming = counters.total() + 1  # under the exclusive lock: the apply's own bump is the next
        for name in names:
            self._aliases[name] = (upcoming, self._slot_of(name))

    def _slot_of(self, name: str) -> int:
        assert self._shared is not None
        slot = self._shared.lock.counters.of(name)
        alias = self._aliases.get(name)
        return alias[1] if alias is not None and alias[0] == slot else slot

    def journal_status(self) -> dict[str, Any] | None:
        """The write journal's state (journal.JournaledClient.status); None without one."""
        return self._journal.status() if self._journal is not None else None

    def flush_journal(self) -> None:
        """Apply every write the journal holds to Chroma now (StorageError if Chroma refuses)."""
        if self._journal is not None:
            self._journal.flush()

    def scopes(self) -> list[tuple[str, str]]:
        """(agent, memory_type) of every collection of this project; agent '_' for preferences."""
        try:
            names = [c if isinstance(c, str) else c.name for c in self.client.list_collections()]
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error("list collections", exc) from None
        found = []
        for name in names:
            parsed = _parse_collection_name(name)
            if parsed and parsed[0] == self.project:
                found.append((parsed[1], parsed[2]))
        return sorted(found)

    def agents(self) -> list[str]:
        return sorted({agent for agent, _ in self.scopes() if agent != "_"})

    # -- embedding -----------------------------------------------------------------------
    def embed(self, memories: Sequence[AnyMemory]) -> np.ndarray:
        """The text vectors of memories, embedded in one batch together with their key fields,
        whose vectors are kept for the put() that stores them. Each distinct text is embedded
        once: a text two memories share, or a key field that is the memory's whole text."""
        texts = [m.text() for m in memories]
        with self._lock:
            keys = [k for k in dict.fromkeys(key_text(m) for m in memories) if k not in self._key_cache]
        row = {text: i for i, text in enumerate(dict.fromkeys(texts + keys))}
        vectors = self.embedder.embed(list(row))
        self.remember_keys(keys, vectors[[row[k] for k in keys]])
        return vectors[[row[t] for t in texts]]

    def key_vectors(self, memories: Sequence[AnyMemory]) -> np.ndarray:
        """The embeddings of memories' key fields (models.key_text): recent ones from a cache,
        the rest embedded in one batch."""
        keys = [key_text(m) for m in memories]
        with self._lock:
            cached = {k: self._key_cache.get(k) for k in dict.fromkeys(keys)}
        found = {k: v for k, v in cached.items() if v is not None}
        missing = [k for k in cached if k not in found]
        if missing:
            fresh = self.embedder.embed(missing)
            found.update(zip(missing, fresh))
            self.remember_keys(missing, fresh)
        return np.stack([found[k] for k in keys])

    def remember_keys(self, keys: Sequence[str], vectors: Sequence[np.ndarray] | np.ndarray) -> None:
        """Keep key fields' vectors embedded elsewhere (`learning.memory_vectors`) for the put() or
        `key_vectors` call that follows."""
        with self._lock:
            for key, vector in zip(keys, vectors):
                self._key_cache[key] = vector
                self._key_cache.move_to_end(key)
            while len(self._key_cache) > _KEY_CACHE_SIZE:
                self._key_cache.popitem(last=False)

    # -- writes ------------------------------------------------------------------------
    def put(
        self,
        memories: Sequence[AnyMemory],
        embeddings: np.ndarray | None = None,
        key_embeddings: np.ndarray | None = None,
    ) -> None:
        """Insert or replace memories (upsert by id). Embeds their text unless vectors are given,
        and their key fields unless key vectors are given: every memory is stored with both."""
        if not memories:
            return
        if embeddings is None:
            embeddings = self.embed(memories)
        if key_embeddings is None:
            key_embeddings = self.key_vectors(memories)
        groups: dict[str, list[int]] = {}
        for i, memory in enumerate(memories):
            name = collection_name(self.project, memory.type, memory.agent)
            groups.setdefault(name, []).append(i)
        with self._writing():
            for name, indexes in groups.items():
                first = memories[indexes[0]]
                col = self._collection(first.type, first.agent, create=True)
                before = self._generation_of(name)
                metas = [_metadata(memories[i]) | key_metadata(memories[i], key_embeddings[i]) for i in indexes]
                vectors = np.asarray(embeddings[indexes], dtype=np.float32)
                try:
                    col.upsert(
                        ids=[memories[i].id for i in indexes],
                        embeddings=vectors,
                        documents=[memories[i].text() for i in indexes],
                        metadatas=metas,
                    )
                except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
                    raise _chroma_error(f"write {len(indexes)} memories", exc) from None
                finally:
                    self._bump(name)
                self._notify(name, [memories[i] for i in indexes], False, before, vectors, metas)

    def update_metadata(self, memories: Sequence[AnyMemory]) -> None:
        """Rewrite memories whose text did not change (counters, flags): no re-embedding."""
        groups: dict[str, list[AnyMemory]] = {}
        for memory in memories:
            groups.setdefault(collection_name(self.project, memory.type, memory.agent), []).append(memory)
        with self._writing():
            for name, items in groups.items():
                col = self._collection(items[0].type, items[0].agent, create=True)
                before = self._generation_of(name)
                metas = [_metadata(m) for m in items]
                try:
                    col.update(ids=[m.id for m in items], metadatas=metas)
                except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
                    raise _chroma_error(f"update {len(items)} memories", exc) from None
                finally:
                    self._bump(name)
                self._notify(name, items, False, before, metas=metas)

    def delete(self, memories: Iterable[AnyMemory]) -> int:
        groups: dict[str, list[AnyMemory]] = {}
        for memory in memories:
            groups.setdefault(collection_name(self.project, memory.type, memory.agent), []).append(memory)
        deleted = 0
        with self._writing():
            for name, items in groups.items():
                col = self._collection(items[0].type, items[0].agent, create=False)
                if col is None:
                    continue
                before = self._generation_of(name)
                try:
                    col.delete(ids=[m.id for m in items])
                except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
                    raise _chroma_error(f"delete {len(items)} memories", exc) from None
                finally:
                    self._bump(name)
                self._notify(name, items, True, before)
                deleted += len(items)
        return deleted

    # -- reads -------------------------------------------------------------------------
    def get(self, memory_id: str) -> AnyMemory:
        memory_type = memory_type_of(memory_id)
        if memory_type not in MEMORY_TYPES:
            raise NotFound(f"no memory with id {memory_id!r}")
        for agent, kind in self.scopes():
            if kind != memory_type:
                continue
            col = self._collection(kind, agent, create=False)
            if col is None:
                continue
            try:
                got = col.get(ids=[memory_id], include=["metadatas"])
            except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
                raise _chroma_error("read a memory", exc) from None
            if got["ids"]:
                return _from_metadata(got["metadatas"][0])
        raise NotFound(f"no memory with id {memory_id!r} in project {self.project!r}")

    def fetch_with_vectors(
        self, memory_type: str, agent: str | None, ids: Sequence[str]
    ) -> dict[str, tuple[AnyMemory, np.ndarray]]:
        """Memories of one collection by id, with their stored vectors."""
        hits = self.fetch_hits(memory_type, agent, ids)
        return {doc: (hit.memory, hit.vector) for doc, hit in hits.items() if hit.vector is not None}

    def fetch_hits(
        self, memory_type: str, agent: str | None, ids: Sequence[str], shared: bool = False
    ) -> dict[str, Hit]:
        """Memories of one collection by id, with their stored vectors and key vectors (similarity 0).
        `shared`: the memories may be the objects other shared reads get (see Record): only for a
        caller that never changes them."""
        col = self._collection(memory_type, agent, create=False)
        if col is None or not ids:
            return {}
        name = collection_name(self.project, memory_type, agent)
        rows = self._rows(col, name, self._generation_of(name), ids)
        return {doc: row.shared() if shared else row.hit() for doc, row in rows.items()}

    def iter_hits(self, memory_type: str, agent: str | None, include_archived: bool = False) -> Iterator[Hit]:
        """Every memory of a collection with its vector and key vector (similarity 0), page by page."""
        for meta, vector in self._pages(memory_type, agent, None, include_archived, with_embeddings=True):
            yield _hit(meta, 0.0, vector)

    def iter_memories(
        self,
        memory_type: str,
        agent: str | None,
        where: dict[str, Any] | None = None,
        include_archived: bool = False,
        with_embeddings: bool = False,
    ) -> Iterator[tuple[AnyMemory, np.ndarray | None]]:
        for meta, vector in self._pages(memory_type, agent, where, include_archived, with_embeddings):
            yield _from_metadata(meta), (np.asarray(vector, dtype=np.float32) if vector is not None else None)

    def read_collection(
        self, memory_type: str, agent: str | None, archived: set[str] | None = None
    ) -> Iterator[tuple[AnyMemory, np.ndarray]]:
        """Every active memory of a collection with its vector, for an index built from the store.
        The records read also fill the record cache (up to its size per collection), so the
        searches that follow read none of them again. `archived`: filled with the ids of the
        archived records, which are not yielded."""
        name = collection_name(self.project, memory_type, agent)
        generation = self._generation_of(name)  # before reading: see RecordCache.add
        page: dict[str, Record] = {}
        for meta, vector in self._pages(memory_type, agent, None, archived is not None, with_embeddings=True):
            if archived is not None and meta.get("archived"):
                archived.add(_from_metadata(meta).id)
                continue
            memory = _from_metadata(meta)
            page[memory.id] = Record(meta, vector)
            yield memory, np.asarray(vector, dtype=np.float32)
            if len(page) >= _PAGE:
                self.records.add(name, generation, page)
                page = {}
        self.records.add(name, generation, page)

    def consistent_read(self, memory_type: str, agent: str | None) -> tuple[int, list[tuple[dict[str, Any], np.ndarray]]] | None:
        """Every active record of a collection (metadata and vector) with the shared write count
        they reflect (`writelock.ChangeCounters.of`), both read under the store's read lock so that
        no write falls between them: what an index snapshot is made of (indexes/snapshot.py).
        None where other processes' writes are not counted in shared counters (a Chroma server)."""
        if self._shared is None:
            return None
        name = collection_name(self.project, memory_type, agent)
        while True:
            # Another process's journaled writes are counted but not in Chroma, and cannot be
            # applied under a read lock: applied first, and again if one came in meanwhile.
            self.flush_journal()
            with self._shared.reading():
                if self._journal is not None and self._journal.others_waiting():
                    continue
                count = self._shared.lock.counters.of(name)
                rows = [
                    (meta, np.asarray(vector, dtype=np.float32))
                    for meta, vector in self._pages(memory_type, agent, None, False, with_embeddings=True)
                ]
            return count, rows

    def changes_since(
        self, memory_type: str, agent: str | None, since: float, limit: int
    ) -> list[tuple[AnyMemory, np.ndarray]] | None:
        """The records of a collection written at or after `since` (Unix time, see WRITTEN),
        archived ones included, with their vectors; None when there are more than `limit` (reading
        the whole collection is cheaper then). Records written before WRITTEN existed have no
        time and are never among them."""
        col = self._collection(memory_type, agent, create=False)
        if col is None:
            return []
        name = collection_name(self.project, memory_type, agent)
        generation = self._generation_of(name)  # before reading: see RecordCache.add
        try:
            ids = col.get(where={WRITTEN: {"$gte": since}}, include=[], limit=limit + 1)["ids"]
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error("list recent writes", exc) from None
        if len(ids) > limit:
            return None
        rows: dict[str, Record] = {}
        for start in range(0, len(ids), _PAGE):
            rows.update(self._rows(col, name, generation, ids[start : start + _PAGE]))
        return [(_from_metadata(row.meta), row.vector) for row in rows.values()]

    def _pages(
        self,
        memory_type: str,
        agent: str | None,
        where: dict[str, Any] | None,
        include_archived: bool,
        with_embeddings: bool,
    ) -> Iterator[tuple[dict[str, Any], Any]]:
        """(metadata, vector or None) of every record of a collection matching `where`, page by page."""
        col = self._collection(memory_type, agent, create=False)
        if col is None:
            return
        # A metadata filter makes Chroma scan every record for every page (four times slower than
        # reading them all at 3,000 memories, and worse as the offset grows), so "active only"
        # alone is applied here; other filters go to Chroma.
        clauses = [{k: v} for k, v in (where or {}).items()]
        skip_archived = not include_archived and not clauses
        if not include_archived and clauses:
            clauses.insert(0, {"archived": False})
        flt = chroma_filter(clauses)
        include = ["metadatas", "embeddings"] if with_embeddings else ["metadatas"]
        offset = 0
        while True:
            try:
                got = col.get(where=flt, include=include, limit=_PAGE, offset=offset)
            except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
                raise _chroma_error("list memories", exc) from None
            metas = got["metadatas"] or []
            vectors = got.get("embeddings") if with_embeddings and len(metas) else None
            for i, meta in enumerate(metas):
                if skip_archived and meta.get("archived"):
                    continue
                yield meta, (vectors[i] if vectors is not None else None)
            if len(metas) < _PAGE:
                return
            offset += _PAGE

    def list(self, memory_type: str, agent: str | None, **kwargs: Any) -> list[AnyMemory]:
        return [m for m, _ in self.iter_memories(memory_type, agent, **kwargs)]

    def query(
        self,
        memory_type: str,
        agent: str | None,
        vector: np.ndarray,
        n: int,
        where: dict[str, Any] | None = None,
    ) -> builtins.list[Hit]:
        """The n nearest active memories, with cosine similarity (1 - Chroma's cosine distance)."""
        return self.query_and_read(memory_type, agent, vector, n, where)[0]

    def query_and_read(
        self,
        memory_type: str,
        agent: str | None,
        vector: np.ndarray,
        n: int,
        where: dict[str, Any] | None = None,
        also: Callable[[builtins.list[str], builtins.list[float], bool], Sequence[str]] | None = None,
        shared: bool = False,
    ) -> tuple[builtins.list[Hit], dict[str, Hit]]:
        """query(), plus other records of the collection read in the same call to Chroma: those
        `also(ids, similarities, complete)` names once the nearest ids are known (all the search
        found, nearest first, archived ones too, which may be more than the n returned), as hits
        with similarity 0 like fetch_hits, less those already among the n returned. `complete` is
        true when the search saw every record the filter allows. Reading by id costs a round trip
        of its own (about 2-4 ms), so retrieval uses this to read the lexical hits the dense
        search did not return with the dense hits. `shared` as for fetch_hits."""
        col = self._collection(memory_type, agent, create=False)
        if col is None:
            return [], {}
        name = collection_name(self.project, memory_type, agent)
        # "Active only" as a Chroma filter is slow: on its own it makes Chroma check every record
        # (about 0.5 s at 100,000 memories), and combined with another clause ({"user_id": ...})
        # it costs about 80 ms even on a collection of 34. So it is applied here, to a widened
        # search; the search filtered by it too is the fallback for when archived memories crowd
        # the nearest ones out.
        clauses: builtins.list[dict[str, Any]] = [{k: v} for k, v in (where or {}).items()]
        wide = n + max(4, n // 4)
        rows, extra = self._search(col, name, vector, wide, chroma_filter(clauses), also)
        active = [(row, similarity) for row, similarity in rows if not row.meta.get("archived")]
        if len(active) < n and len(rows) >= wide:
            flt = chroma_filter([{"archived": False}, *clauses])
            active = self._search(col, name, vector, n, flt)[0]
        hits = [row.shared(similarity) if shared else row.hit(similarity) for row, similarity in active[:n]]
        # Records `also` named that are among the hits are not parsed a second time.
        returned = {hit.memory.id for hit in hits}
        return hits, {doc: row.shared() if shared else row.hit() for doc, row in extra.items() if doc not in returned}

    def _search(
        self,
        col: Any,
        name: str,
        vector: np.ndarray,
        n: int,
        flt: dict[str, Any] | None,
        also: Callable[[builtins.list[str], builtins.list[float], bool], Sequence[str]] | None = None,
    ) -> tuple[builtins.list[tuple[Record, float]], dict[str, Record]]:
        """The n nearest records with their cosine similarity, nearest first, and the records
        `also` names (see query_and_read).

        Chroma is asked for ids and distances only; the records come from the RecordCache, and
        those it lacks are read by id in one call."""
        generation = self._generation_of(name)  # before reading: see RecordCache.add
        try:
            got = col.query(query_embeddings=[vector], n_results=n, where=flt, include=["distances"])
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error("search memories", exc) from None
        ids, distances = got["ids"][0], got["distances"][0]
        extra_ids = list(dict.fromkeys(also(ids, [1.0 - float(d) for d in distances], len(ids) < n))) if also else []
        rows = self._rows(col, name, generation, list(dict.fromkeys([*ids, *extra_ids])))
        # A record deleted by another process between the search and the read is skipped.
        extra = {doc: rows[doc] for doc in extra_ids if doc in rows}
        return [(rows[doc], 1.0 - float(distance)) for doc, distance in zip(ids, distances) if doc in rows], extra

    def _rows(self, col: Any, name: str, generation: int, ids: Sequence[str]) -> dict[str, Record]:
        """These records: from the RecordCache, the rest read by id in one call and kept.
        `generation` must have been read before the ids were found."""
        rows = self.records.get(name, generation, ids)
        missing = [doc for doc in ids if doc not in rows]
        if missing:
            try:
                got = col.get(ids=missing, include=["metadatas", "embeddings"])
            except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
                raise _chroma_error("read memories", exc) from None
            read = {doc: Record(meta, vec) for doc, meta, vec in zip(got["ids"], got["metadatas"], got["embeddings"])}
            self.records.add(name, generation, read)
            rows.update(read)
        return rows

    def count(self, memory_type: str, agent: str | None, include_archived: bool = True) -> int:
        col = self._collection(memory_type, agent, create=False)
        if col is None:
            return 0
        try:
            if include_archived:
                return int(col.count())
            return len(col.get(where={"archived": False}, include=[])["ids"])
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error("count memories", exc) from None

    # -- whole collections, by name (reindex) ---------------------------------------------
    # Backup re-embeds a collection by copying it into a staging collection and swapping the
    # names; these are the operations it needs, so that Chroma stays inside this module.
    def collection_names(self) -> set[str]:
        """The names of every collection on the backend (any project, staging ones included)."""
        try:
            return {c if isinstance(c, str) else c.name for c in self.client.list_collections()}
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error("list collections", exc) from None

    def _named(self, name: str) -> Any:
        try:
            return self.client.get_collection(name, embedding_function=None)
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error(f"open collection {name}", exc) from None

    def _run(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the caller gets a StorageError saying what failed
            raise _chroma_error(what, exc) from None

    def collection_model(self, name: str) -> str | None:
        """The embedding model the collection's vectors were made with (None: not recorded)."""
        metadata = self._run(f"read {name}", lambda: self._named(name).metadata) or {}
        model = metadata.get("embedding_model")
        return str(model) if model is not None else None

    def collection_size(self, name: str) -> int:
        return int(self._run(f"count {name}", lambda: self._named(name).count()))

    def raw_page(self, name: str, offset: int, limit: int, documents: bool = False) -> dict[str, Any]:
        """A page of the collection's records as stored: ids, metadatas (and documents)."""
        include = ["metadatas", "documents"] if documents else ["metadatas"]
        return dict(self._run(f"read {name}", lambda: self._named(name).get(include=include, limit=limit, offset=offset)))

    def raw_records(self, name: str, ids: Sequence[str], documents: bool = False) -> dict[str, Any]:
        include = ["metadatas", "documents"] if documents else ["metadatas"]
        if not ids:
            return {"ids": [], "metadatas": [], "documents": []}
        return dict(self._run(f"read {name}", lambda: self._named(name).get(ids=list(ids), include=include)))

    def staging_collection(self, name: str, model: str) -> None:
        """Make sure `name` exists for vectors of `model`: one left with another model's is replaced."""

        def make() -> Any:
            return self.client.get_or_create_collection(
                name, embedding_function=None, metadata={"hnsw:space": "cosine", "embedding_model": model}
            )

        made = self._run(f"create {name}", make)
        if (made.metadata or {}).get("embedding_model") != model:
            self._run(f"delete {name}", lambda: self.client.delete_collection(name))
            self._run(f"create {name}", make)

    def write_staged(
        self, name: str, ids: Sequence[str], embeddings: Any, documents: Sequence[str], metadatas: Sequence[dict[str, Any]]
    ) -> None:
        """Upsert records into a staging collection (not searched: no cache follows it)."""
        self._run(
            f"write {len(ids)} records to {name}",
            lambda: self._named(name).upsert(ids=list(ids), embeddings=embeddings, documents=list(documents), metadatas=list(metadatas)),
        )

    def delete_staged(self, name: str, ids: Sequence[str]) -> None:
        self._run(f"delete {len(ids)} records from {name}", lambda: self._named(name).delete(ids=list(ids)))

    def merge_metadata(self, name: str, ids: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        """Merge these fields into the records' metadata (Chroma merges on update: the other
        fields stay as they are); caches of the collection see the change."""
        try:
            self._run(f"update {len(ids)} records of {name}", lambda: self._named(name).update(ids=list(ids), metadatas=list(metadatas)))
        finally:
            self.collection_replaced(name)

    def rename_collection(self, name: str, new_name: str) -> None:
        self._run(f"rename {name} to {new_name}", lambda: self._named(name).modify(name=new_name))
        self.collection_replaced(name)
        self.collection_replaced(new_name)

    def drop_collection(self, name: str) -> None:
        self._run(f"delete {name}", lambda: self.client.delete_collection(name))
        self.collection_replaced(name)

    def collection_replaced(self, name: str) -> None:
        """The collection under `name` changed behind the store's back (renamed, swapped or
        rewritten): drop its handle, and let every generation-keyed cache see the change."""
        self._collections.pop(name, None)
        self._bump(name)

    def heartbeat(self) -> bool:
        try:
            self.client.heartbeat()
            return True
        except Exception:  # noqa: BLE001 - any failure means unreachable: health reports it, never raises
            return False

    def close(self) -> None:
        """Let go of the collections and, for the embedded store, this store's hold of the shared
        client (the last holder closes Chroma's client and unmaps the counters). A store is not
        used after `close`; the service opens a new one."""
        self._collections.clear()
        if self._journal is not None:
            self._journal.remove_apply_listener(self._apply_listener)
        if self._shared is not None:
            release_shared_client(self._shared)


class _RemoteChanges:
    """Change tokens in a small collection on the Chroma server (`alma.<project>.changes`), one
    record per memory collection, replaced by a random token on every write. Every process
    sharing the server reads them (at most every `interval` seconds) to drop stale caches."""

    def __init__(self, client: Any, project: str, interval: float) -> None:
        self.client = client
        self.name = f"alma.{project}.changes"
        self.interval = interval
        self._tokens: dict[str, int] = {}
        self._read_at = float("-inf")
        self._col: Any = None
        self._lock = threading.Lock()

    def _collection(self) -> Any:
        if self._col is None:
            # A one-dimensional dummy vector: Chroma wants one per record; these are never searched.
            self._col = self.client.get_or_create_collection(
                self.name, embedding_function=None, metadata={"alma_changes": True}
            )
        return self._col

    def token(self, name: str) -> int:
        now = time.monotonic()
        if now - self._read_at >= self.interval:
            with self._lock:
                if now - self._read_at >= self.interval:
                    try:
                        got = self._collection().get(include=["metadatas"])
                        self._tokens = {
                            i: zlib.crc32(str((m or {}).get("token", "")).encode())
                            for i, m in zip(got["ids"], got["metadatas"])
                        }
                    except Exception as exc:  # noqa: BLE001 - a cache may be a little stale; the call itself must not fail
                        log.warning("could not read change tokens from the Chroma server: %s", exc)
                    self._read_at = time.monotonic()
        return self._tokens.get(name, 0)

    def changed(self, names: list[str]) -> None:
        try:
            self._collection().upsert(
                ids=names,
                embeddings=[[1.0] for _ in names],
                metadatas=[{"token": uuid.uuid4().hex} for _ in names],
            )
        except Exception as exc:  # noqa: BLE001 - the write itself is done; a lost change token only delays other processes' caches
            log.warning("could not record a change on the Chroma server (other processes' caches may lag): %s", exc)


def dump_json(memory: AnyMemory) -> dict[str, Any]:
    return json.loads(memory.model_dump_json())
