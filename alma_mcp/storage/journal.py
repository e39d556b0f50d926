"""The write journal in front of the embedded Chroma store: a write is durable once its entry is,
and reaches Chroma a moment later, from a background thread, several entries at a time.

Chroma's upsert of one record took 13-35 ms here (two SQLite commits, each fsynced, and some two
hundred page reads), most of an `alma_learn`. Appending one entry to a file of our own and
fsyncing it takes a small write and one `fdatasync`; applying entries in groups makes one Chroma
call of many writes. Chroma's Rust bindings hold the GIL for the whole call, so the applier waits
for a quiet moment (QUIET_SECONDS without a write, or twice the spacing of the writes coming in
when that is longer; at most MAX_DELAY_SECONDS after the first entry waiting) rather than stalling
the calls of a busy session one by one.

Files, in the Chroma folder (the data directory's `chroma/`), readable by their owner only:
- `write-journal.log`: the entries, appended under the store's exclusive lock (writelock.py), so
  their order is the order of the writes of every process on the directory.
- `write-journal.state`: five memory-mapped 64-bit words shared by those processes: the last
  sequence number written, the last applied, the offset of the first entry not applied, the end of
  the last whole entry, and how many damaged entries were skipped so far.

An entry is MAGIC, the payload's length and CRC-32 (uint32, little-endian), then the payload:
JSON with the entry's sequence number, collection, operation (upsert, update or delete), ids,
metadatas, documents and vectors (float32, little-endian, base64: exactly as given).

Who sees a write when:
- this process, at once: the store's caches and indexes follow the write when it is journaled, and
  every read of Chroma through `JournaledCollection` lays the entries not applied yet over what
  Chroma returns (get, query, count), with Chroma's semantics (an upsert merges metadata, an
  update of a missing id does nothing).
- other processes, at once too: a journaled write moves the directory's change counters as a
  Chroma write does, so their caches and index snapshots see the change, and a process that reads
  Chroma while another's entries are waiting applies them first (`flush`), under the exclusive lock.
- after a crash: the next process to open the store (or to read or write it) replays the entries
  not applied, in order within each collection (collections are independent: the entries waiting
  are applied collection by collection, one Chroma call per run of one operation). Applying is idempotent (an upsert of the same record, a delete), so an
  entry applied just before a crash that kept the state from saying so does no harm when replayed.

A damaged entry (CRC mismatch, unreadable) is skipped, logged, counted in the state file (health
reports the count) and dropped with the rest once applied; an entry cut short at the end of the
file was never acknowledged (its fsync did not return) and is cut off. A failing apply leaves
every entry in place: it is retried with a growing pause, health reports it, and reads keep
seeing the entries through the overlay.

Only the embedded store has a journal: a Chroma server is written synchronously, as before (its
data lives elsewhere, where no file of ours can make a write durable).
"""

from __future__ import annotations

import base64
import json
import logging
import mmap
import os
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import StorageError
from .backend import matches

log = logging.getLogger("alma_mcp")

LOG_FILE = "write-journal.log"
STATE_FILE = "write-journal.state"
MAGIC = b"\xffAJ\x01"  # no byte of it can occur in the payload (ASCII JSON)
_HEADER = struct.Struct("<4sII")
_WORD = struct.Struct("<Q")
WRITTEN, APPLIED, APPLIED_AT, END, DAMAGED = range(5)

QUIET_SECONDS = 0.05
"""The applier waits this long without a new entry before applying (see the module's docstring)..."""
STREAM_FACTOR = 2.0
"""...or this many times the time between the last two entries, when that is longer: writes that
come every 60-100 ms (a session's calls on a busy machine, each embedding its texts first) are one
stream, applied together, not one apply between each two of them that the next call waits for
(Chroma holds the GIL while it applies: `alma_add_knowledge` p50 went to 120-240 ms that way at
load 8-10)."""
MAX_DELAY_SECONDS = 0.5
"""...but never longer than this after the oldest entry waiting."""
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses between attempts to apply after a failure (the last one repeats)."""


class JournalState:
    """The five shared words (see the module's docstring), memory-mapped; changed only under the
    store's exclusive lock."""

    SIZE = _WORD.size * 8

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)
            self._map: mmap.mmap | None = mmap.mmap(fd, self.SIZE)
        finally:
            os.close(fd)

    def __getitem__(self, word: int) -> int:
        assert self._map is not None
        value: int = _WORD.unpack_from(self._map, word * _WORD.size)[0]
        return value

    def __setitem__(self, word: int, value: int) -> None:
        assert self._map is not None
        _WORD.pack_into(self._map, word * _WORD.size, value)

    def close(self) -> None:
        mapping, self._map = self._map, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass


@dataclass
class Entry:
    seq: int
    collection: str
    op: str  # upsert, update or delete
    ids: list[str]
    metadatas: list[dict[str, Any]] | None = None
    documents: list[str] | None = None
    embeddings: np.ndarray | None = None


def encode(entry: Entry) -> bytes:
    payload: dict[str, Any] = {"seq": entry.seq, "c": entry.collection, "op": entry.op, "ids": entry.ids}
    if entry.metadatas is not None:
        payload["m"] = entry.metadatas
    if entry.documents is not None:
        payload["d"] = entry.documents
    if entry.embeddings is not None:
        vectors = np.ascontiguousarray(entry.embeddings, dtype="<f4")
        payload["e"] = base64.b64encode(vectors.tobytes()).decode("ascii")
        payload["dim"] = int(vectors.shape[1])
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("ascii")
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def _decode_payload(body: bytes) -> Entry:
    payload = json.loads(body)
    embeddings = None
    if "e" in payload:
        flat = np.frombuffer(base64.b64decode(payload["e"]), dtype="<f4").astype(np.float32)
        embeddings = flat.reshape(-1, int(payload["dim"]))
    return Entry(int(payload["seq"]), str(payload["c"]), str(payload["op"]), list(payload["ids"]),
                 payload.get("m"), payload.get("d"), embeddings)


@dataclass
class Parsed:
    entries: list[tuple[int, Entry]] = field(default_factory=list)
    """(offset just after the entry, the entry), in file order."""
    damaged: int = 0
    whole_end: int = 0
    """Where the last whole entry (or damaged stretch) ends; bytes after it are a cut-off tail."""


def parse(data: bytes, start: int) -> Parsed:
    """The entries in `data`, which was read from file offset `start`."""
    out = Parsed(whole_end=start)
    pos = 0
    while pos + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            found = data.find(MAGIC, pos + 1)
            out.damaged += 1
            pos = found if found >= 0 else len(data)
            out.whole_end = start + pos
            continue
        end = pos + _HEADER.size + length
        if end > len(data):
            break  # cut short by a crash while it was written: never acknowledged
        body = data[pos + _HEADER.size : end]
        try:
            if zlib.crc32(body) != crc:
                raise ValueError("CRC mismatch")
            entry = _decode_payload(body)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("write journal: a damaged entry at offset %d is skipped (%s)", start + pos, exc)
            out.damaged += 1
        else:
            out.entries.append((start + end, entry))
        pos = end
        out.whole_end = start + pos
    return out


@dataclass
class _Pending:
    """What the entries not applied yet make of one record (see `JournaledClient.view`)."""

    seq: int
    base: bool = True
    """Whether Chroma's copy of the record (if any) lies under these changes: False once deleted."""
    deleted: bool = False
    vector: np.ndarray | None = None
    document: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def over(self, stored: tuple[dict[str, Any], str | None, np.ndarray] | None) -> tuple[dict[str, Any], str | None, np.ndarray] | None:
        """The record as Chroma will hold it once these changes are applied over `stored`."""
        if self.deleted:
            return None
        below = stored if self.base else None
        vector = self.vector if self.vector is not None else (below[2] if below else None)
        if vector is None:
            return None  # an update of a record Chroma does not have: Chroma skips it
        meta = {**(below[0] if below else {}), **self.meta}
        document = self.document if self.document is not None else (below[1] if below else None)
        return meta, document, vector


def _compose(pending: dict[str, _Pending], entry: Entry) -> None:
    for k, doc in enumerate(entry.ids):
        now = pending.get(doc)
        if entry.op == "delete":
            pending[doc] = _Pending(entry.seq, base=False, deleted=True)
            continue
        if now is None:
            now = pending[doc] = _Pending(entry.seq)
        elif now.deleted:
            if entry.op == "update":
                now.seq = entry.seq
                continue  # Chroma skips an update of a record it does not have
            now = pending[doc] = _Pending(entry.seq, base=False)
        now.seq = entry.seq
        if entry.embeddings is not None:
            now.vector = entry.embeddings[k]
        if entry.documents is not None:
            now.document = entry.documents[k]
        if entry.metadatas is not None:
            now.meta = {**now.meta, **entry.metadatas[k]}


ApplyListener = Callable[[list[str], bool], None]
"""Called with the collections an apply is about to write, under the exclusive lock, and whether
the entries are all this process's (whose caches already hold them); see MemoryStore._applying."""


class JournaledClient:
    """The embedded store's client (`writelock.SharedClient`) with writes going through the journal.

    One per SharedClient (`journaled`), like it shared by every store of the process on that
    folder. Collections are created, renamed and deleted directly (after applying what waits)."""

    def __init__(self, shared: Any, directory: Path) -> None:
        self.shared = shared
        self.lock = shared.lock
        self.path = directory / LOG_FILE
        self.state = JournalState(directory / STATE_FILE)
        self._mutex = threading.Condition(threading.Lock())
        self._own: dict[int, Entry] = {}  # this process's entries not applied yet, by sequence number
        self._overlay: dict[str, dict[str, _Pending]] = {}
        self._fd: int | None = None
        self._first_waiting: float | None = None
        self._last_write = 0.0
        self._spacing = 0.0  # between the last two entries, when they came within MAX_DELAY_SECONDS
        self._listeners: list[ApplyListener] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._retry = False  # set when a replay at open failed: the applier retries it
        self.failures = 0
        self.last_error: str | None = None
        self.applied = 0
        self.applied_event = threading.Event()
        """Set whenever an apply brought entries to Chroma (for tests and benchmarks to wait on)."""
        if self._size() or self.state[WRITTEN] != self.state[APPLIED]:
            self.recover()

    # -- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """For alma_health: entries waiting, damaged ones skipped, the last apply error."""
        waiting = self.state[WRITTEN] - self.state[APPLIED]
        return {
            "waiting": max(0, waiting),
            "applied_by_this_process": self.applied,
            "damaged_entries_skipped": self.state[DAMAGED],
            "apply_error": self.last_error,
        }

    def add_apply_listener(self, listener: ApplyListener) -> None:
        with self._mutex:
            self._listeners.append(listener)

    def remove_apply_listener(self, listener: ApplyListener) -> None:
        with self._mutex:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- the file -------------------------------------------------------------------------
    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _file(self) -> int:
        if self._fd is None:
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if created and os.name == "posix":  # the file's name must be as durable as its first entry
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        return self._fd

    # -- writing -------------------------------------------------------------------------
    def append(self, collection: str, op: str, ids: list[str], embeddings: np.ndarray | None,
               documents: list[str] | None, metadatas: list[dict[str, Any]] | None) -> None:
        """Journal one write and return once it is durable; it reaches Chroma in the background."""
        with self.lock.write():
            self._settle()  # another process's entries first: this process's reads must not see ours without theirs
            seq = self.state[WRITTEN] + 1
            entry = Entry(seq, collection, op, ids, metadatas, documents, embeddings)
            data = encode(entry)
            fd = self._file()
            end = self.state[END]
            try:
                self._write_entry(fd, data, end)
            except OSError as exc:
                raise StorageError(f"could not write to the write journal {self.path}: {exc}") from None
            self.state[END] = end + len(data)
            self.state[WRITTEN] = seq
            # Other processes' caches and index snapshots must see the write now, as they would a
            # Chroma write; this process's client stays open (Chroma's files did not change).
            self.shared.count_write([collection])
            with self._mutex:
                self._own[seq] = entry
                _compose(self._overlay.setdefault(collection, {}), entry)
                now = time.monotonic()
                gap = now - self._last_write
                self._spacing = gap if gap < MAX_DELAY_SECONDS else 0.0
                self._last_write = now
                if self._first_waiting is None:
                    self._first_waiting = now
                self._start_applier()
                self._mutex.notify_all()

    @staticmethod
    def _write_entry(fd: int, data: bytes, end: int) -> None:
        """Write `data` at `end` and make it durable; what lies past `end` is a tail cut short by
        a crash (never acknowledged) and goes."""
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
        if hasattr(os, "pwrite"):
            os.pwrite(fd, data, end)
        else:  # Windows
            os.lseek(fd, end, os.SEEK_SET)
            os.write(fd, data)
        _sync(fd)

    # -- reading -------------------------------------------------------------------------
    def view(self, collection: str) -> dict[str, _Pending] | None:
        """This process's changes to `collection` not in Chroma yet (None: none), after applying
        any other process's entries waiting (a read must see them; they are not in this overlay)."""
        self._settle()
        with self._mutex:
            pending = self._overlay.get(collection)
            return dict(pending) if pending else None

    def others_waiting(self) -> bool:
        """Whether entries of other processes wait to be applied (forgetting own ones they applied)."""
        written, applied = self.state[WRITTEN], self.state[APPLIED]
        with self._mutex:
            if any(seq <= applied for seq in self._own):
                self._forget_applied(applied)
            return written - applied > len(self._own)

    def _settle(self) -> None:
        """Forget own entries another process applied; apply other processes' entries waiting."""
        if self.others_waiting():
            if self.lock.holds_any() and not self.lock.holds_write():
                return  # inside a read: whoever took it flushed first (see MemoryStore.consistent_read)
            self.flush()

    def _forget_applied(self, applied: int) -> None:
        """Drop entries up to `applied` from the overlay; call with _mutex held."""
        for seq in [s for s in self._own if s <= applied]:
            del self._own[seq]
        overlay: dict[str, dict[str, _Pending]] = {}
        for seq in sorted(self._own):
            entry = self._own[seq]
            _compose(overlay.setdefault(entry.collection, {}), entry)
        self._overlay = overlay
        if not self._own:
            self._first_waiting = None

    # -- applying ------------------------------------------------------------------------
    def flush(self) -> None:
        """Apply every entry waiting (this process's and any other's) to Chroma, in order; raises
        StorageError when Chroma refuses (the entries stay, to be retried)."""
        with self.up_to_date():
            pass

    @contextmanager
    def up_to_date(self) -> Iterator[None]:
        """Hold the exclusive lock with every entry waiting applied (see `flush`): for what acts on
        Chroma as it is, and must not be overtaken by entries applied later."""
        with self.lock.write():
            self._apply_waiting()
            yield

    def recover(self) -> None:
        """At open: replay what a process that died left waiting. A failure is reported, not raised:
        the entries stay in the journal, reads see them once this process's applier retries."""
        try:
            self.flush()
        except StorageError as exc:
            log.error("write journal: replaying %s failed (retried in the background): %s", self.path, exc)
            with self._mutex:
                self._retry = True
                self._start_applier()

    def _apply_waiting(self) -> None:
        state = self.state
        start = state[APPLIED_AT]
        size = self._size()
        if state[WRITTEN] == state[APPLIED] and size == start:
            self._truncate()
            return
        with open(self.path, "rb") as file:
            file.seek(start)
            data = file.read()
        parsed = parse(data, start)
        applied = state[APPLIED]
        if parsed.damaged:
            state[DAMAGED] = state[DAMAGED] + parsed.damaged
            log.error("write journal: %d damaged entries skipped in %s", parsed.damaged, self.path)
        todo = [(end, entry) for end, entry in parsed.entries if entry.seq > applied]
        try:
            # The state moves only once all are applied: a failure or a crash half way replays them
            # all, which is idempotent, in the same order within each collection.
            for group in _groups([entry for _, entry in todo]):
                self._apply_group(group)
            self.applied += len(todo)
        except Exception as exc:  # noqa: BLE001 - whatever Chroma raises, the entries stay and the caller gets a StorageError
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise StorageError(f"could not apply the write journal to Chroma (it is kept and retried): {exc}") from None
        seen = max([state[WRITTEN], *(entry.seq for _, entry in parsed.entries)])
        state[WRITTEN] = seen
        state[APPLIED] = seen  # damaged entries are passed over with the rest
        state[APPLIED_AT] = parsed.whole_end
        state[END] = parsed.whole_end
        self._truncate()
        self.last_error = None
        with self._mutex:
            self._forget_applied(seen)
        if todo:
            self.applied_event.set()

    def _truncate(self) -> None:
        """Empty the journal once every entry is applied (under the exclusive lock)."""
        if self._size():
            os.truncate(self.path, 0)
        self.state[APPLIED_AT] = 0
        self.state[END] = 0

    def _apply_group(self, entries: list[Entry]) -> None:
        """Apply the entries of one collection: their net effect, in at most a few Chroma calls."""
        name = entries[0].collection
        with self._mutex:
            listeners = list(self._listeners)
            own = all(entry.seq in self._own for entry in entries)
        col = self.shared.get_collection(name)
        for listener in listeners:
            listener([name], own)
        for op, ids, vectors, documents, metas in _calls(entries):
            if op == "delete":
                col.delete(ids=ids)
            elif op == "update":
                col.update(ids=ids, documents=documents, metadatas=metas)
            else:
                col.upsert(ids=ids, embeddings=vectors, documents=documents, metadatas=metas)

    # -- the applier thread --------------------------------------------------------------
    def _start_applier(self) -> None:
        """Start the background applier if it is not running; call with _mutex held."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="alma-journal", daemon=True)
            self._thread.start()

    def _due(self) -> float | None:
        """Seconds until the entries waiting should be applied (0: now; None: nothing waits)."""
        if self._retry:
            return 0.0
        if self._first_waiting is None:
            return None
        now = time.monotonic()
        quiet = max(QUIET_SECONDS, STREAM_FACTOR * self._spacing)
        return max(0.0, min(self._last_write + quiet, self._first_waiting + MAX_DELAY_SECONDS) - now)

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._mutex:
                while not self._closed:
                    due = self._due()
                    if due == 0.0:
                        break
                    self._mutex.wait(timeout=due)
                if self._closed:
                    self._thread = None
                    return
            try:
                self.flush()
                attempt = 0
                self._retry = False
            except StorageError as exc:
                log.error("write journal: %s", exc)
                pause = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                attempt += 1
                with self._mutex:
                    self._mutex.wait_for(lambda: self._closed, timeout=pause)
            except Exception:  # noqa: BLE001 - the applier must outlive any one failure
                log.exception("write journal: the applier failed")
                attempt += 1
                with self._mutex:
                    self._mutex.wait_for(lambda: self._closed, timeout=RETRY_SECONDS[-1])

    def close(self) -> None:
        """Apply what waits (what cannot be applied stays for the next open), stop the applier."""
        with self._mutex:
            self._closed = True
            thread = self._thread
            self._mutex.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._mutex:
            self._thread = None
        try:
            if self._size() or self.state[WRITTEN] != self.state[APPLIED]:
                self.flush()
        except StorageError as exc:
            log.error("write journal: kept for the next open: %s", exc)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.state.close()

    # -- the Chroma client API the store uses ---------------------------------------------
    def get_collection(self, name: str, **kwargs: Any) -> "JournaledCollection":
        return JournaledCollection(self, self.shared.get_collection(name, **kwargs))

    def get_or_create_collection(self, name: str, **kwargs: Any) -> "JournaledCollection":
        return JournaledCollection(self, self.shared.get_or_create_collection(name, **kwargs))

    def create_collection(self, name: str, **kwargs: Any) -> "JournaledCollection":
        return JournaledCollection(self, self.shared.create_collection(name, **kwargs))

    def delete_collection(self, name: str) -> None:
        with self.up_to_date():
            self.shared.delete_collection(name)

    def list_collections(self, *args: Any, **kwargs: Any) -> Any:
        return self.shared.list_collections(*args, **kwargs)

    def heartbeat(self) -> Any:
        return self.shared.heartbeat()

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.up_to_date():
                return getattr(self.shared, attribute)(*args, **kwargs)

        return call


def _sync(fd: int) -> None:
    """Make what was written to `fd` durable: fdatasync where there is one; on macOS, whose fsync
    leaves the data in the drive's cache, F_FULLFSYNC."""
    if sys.platform == "darwin":
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def _groups(entries: list[Entry]) -> Iterator[list[Entry]]:
    """The entries by collection, in their order within each. Collections are independent of each
    other, so a stream of learns (an outcome, then a lesson, an outcome...) is applied in a few
    calls per collection instead of one per entry."""
    by_collection: dict[str, list[Entry]] = {}
    for entry in entries:
        by_collection.setdefault(entry.collection, []).append(entry)
    yield from by_collection.values()


def _calls(entries: list[Entry]) -> list[tuple[str, list[str], Any, Any, Any]]:
    """Chroma calls with the net effect of these entries of one collection, record by record (the
    overlay's rules, `_compose`): first the deletes (of records deleted, or deleted and written
    again), then one upsert of every record written whole, then one update of those whose metadata
    or document alone changed. Each record is in at most one upsert or update; records are
    independent of each other, so only each one's own order matters."""
    net: dict[str, _Pending] = {}
    for entry in entries:
        _compose(net, entry)
    calls: list[tuple[str, list[str], Any, Any, Any]] = []
    gone = [doc for doc, p in net.items() if not p.base]
    if gone:
        calls.append(("delete", gone, None, None, None))
    written = [doc for doc, p in net.items() if not p.deleted and p.vector is not None]
    changed = [doc for doc, p in net.items() if not p.deleted and p.vector is None and p.base]
    for op, chosen in (("upsert", written), ("update", changed)):
        # A call gives documents for all its records or for none.
        for with_document in (True, False):
            ids = [doc for doc in chosen if (net[doc].document is not None) == with_document]
            if not ids:
                continue
            vectors = np.stack([v for v in (net[doc].vector for doc in ids) if v is not None]) if op == "upsert" else None
            documents = [net[doc].document for doc in ids] if with_document else None
            calls.append((op, ids, vectors, documents, [dict(net[doc].meta) for doc in ids]))
    return calls


_METADATA_TYPES = (str, int, float, bool)


class JournaledCollection:
    """A collection whose upserts, updates and deletes by id go through the journal, and whose
    reads see the entries not applied yet. Anything else applies what waits, then runs as is."""

    def __init__(self, client: JournaledClient, collection: Any) -> None:
        self._client = client
        self._col = collection
        self._dimension: int | None = None

    @property
    def name(self) -> str:
        return str(self._col.name)

    @property
    def metadata(self) -> Any:
        return self._col.metadata

    # -- writes -----------------------------------------------------------------------------
    def _check(self, ids: Sequence[str], embeddings: Any, documents: Any, metadatas: Any) -> np.ndarray | None:
        """What Chroma would refuse is refused now: a journaled write must apply later."""
        ids = list(ids)
        if not ids or len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
            raise ValueError("ids must be distinct, non-empty strings")
        for values, what in ((documents, "documents"), (metadatas, "metadatas")):
            if values is not None and len(values) != len(ids):
                raise ValueError(f"{len(values)} {what} for {len(ids)} ids")
        for meta in metadatas or []:
            for key, value in meta.items():
                if not isinstance(key, str) or not isinstance(value, _METADATA_TYPES):
                    raise ValueError(f"metadata {key!r} has a value Chroma cannot store: {value!r}")
                if isinstance(value, float) and not np.isfinite(value):
                    raise ValueError(f"metadata {key!r} is not a finite number")
        if embeddings is None:
            return None
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids) or not np.isfinite(vectors).all():
            raise ValueError(f"embeddings of shape {vectors.shape} for {len(ids)} ids")
        dimension = self._stored_dimension()
        if dimension is not None and vectors.shape[1] != dimension:
            raise ValueError(f"Collection expecting embedding with dimension of {dimension}, got {vectors.shape[1]}")
        return vectors

    def _stored_dimension(self) -> int | None:
        if self._dimension is None:
            pending = self._client.view(self.name) or {}
            for record in pending.values():
                if record.vector is not None:
                    self._dimension = int(record.vector.shape[0])
                    return self._dimension
            got = self._col.get(limit=1, include=["embeddings"])
            vectors = got.get("embeddings")
            if vectors is not None and len(vectors):
                self._dimension = int(np.asarray(vectors[0]).shape[0])
        return self._dimension

    def upsert(self, ids: Sequence[str], embeddings: Any = None, documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> None:
        if embeddings is None or kwargs or _removes_keys(metadatas):  # Chroma would embed, or drop keys: done directly
            return self._direct("upsert", ids=ids, embeddings=embeddings, documents=documents, metadatas=metadatas, **kwargs)
        vectors = self._check(ids, embeddings, documents, metadatas)
        self._client.append(self.name, "upsert", list(ids), vectors, _list(documents), _dicts(metadatas))
        return None

    def update(self, ids: Sequence[str], embeddings: Any = None, documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> None:
        if kwargs or (embeddings is None and documents is None and metadatas is None) or _removes_keys(metadatas):
            return self._direct("update", ids=ids, embeddings=embeddings, documents=documents, metadatas=metadatas, **kwargs)
        vectors = self._check(ids, embeddings, documents, metadatas)
        self._client.append(self.name, "update", list(ids), vectors, _list(documents), _dicts(metadatas))
        return None

    def delete(self, ids: Sequence[str] | None = None, where: Any = None, **kwargs: Any) -> None:
        if ids is None or where is not None or kwargs:
            return self._direct("delete", ids=ids, where=where, **kwargs)
        ids = list(dict.fromkeys(ids))
        if ids:
            self._client.append(self.name, "delete", ids, None, None, None)
        return None

    def _direct(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._client.up_to_date():
            self._dimension = None
            return getattr(self._col, method)(*args, **kwargs)

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("add", *args, **kwargs)

    def modify(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct("modify", *args, **kwargs)

    # -- reads ------------------------------------------------------------------------------
    def _under(self, pending: dict[str, _Pending], ids: list[str]) -> dict[str, tuple[dict[str, Any], str | None, np.ndarray] | None]:
        """What Chroma holds of these ids, as (metadata, document, vector), and how the waiting
        changes leave each of them."""
        read = [doc for doc in ids if pending[doc].base]
        stored: dict[str, tuple[dict[str, Any], str | None, np.ndarray]] = {}
        if read:
            got = self._col.get(ids=read, include=["metadatas", "documents", "embeddings"])
            for k, doc in enumerate(got["ids"]):
                stored[doc] = (got["metadatas"][k] or {}, got["documents"][k] if got.get("documents") else None,
                               np.asarray(got["embeddings"][k], dtype=np.float32))
        return {doc: pending[doc].over(stored.get(doc)) for doc in ids}

    def get(self, ids: Sequence[str] | None = None, where: Any = None, limit: int | None = None,
            offset: int | None = None, include: Sequence[str] = ("metadatas", "documents"), **kwargs: Any) -> dict[str, Any]:
        pending = self._client.view(self.name)
        if not pending or kwargs:
            return dict(self._col.get(ids=ids, where=where, limit=limit, offset=offset, include=include, **kwargs))
        include = list(include)
        wanted = None if ids is None else list(dict.fromkeys(ids))
        rows: list[tuple[str, Any, Any, Any]] = []
        untouched = None if wanted is None else [doc for doc in wanted if doc not in pending]
        if untouched is None or untouched:
            # Every page at once: the waiting changes move records in and out of the pages.
            got = self._col.get(ids=untouched, where=where, include=include)
            for k, doc in enumerate(got["ids"]):
                if doc not in pending:
                    rows.append((doc, _at(got, "metadatas", k), _at(got, "documents", k), _at(got, "embeddings", k)))
        touched = [doc for doc in (pending if wanted is None else [d for d in wanted if d in pending])]
        for doc, record in self._under(pending, touched).items():
            if record is not None and matches(record[0], where):
                rows.append((doc, record[0], record[1], record[2]))
        rows = rows[offset or 0 :]
        if limit is not None:
            rows = rows[:limit]
        return _result(rows, include)

    def query(self, query_embeddings: Any, n_results: int = 10, where: Any = None,
              include: Sequence[str] = ("metadatas", "documents", "distances"), **kwargs: Any) -> dict[str, Any]:
        pending = self._client.view(self.name)
        if not pending or kwargs:
            return dict(self._col.query(query_embeddings=query_embeddings, n_results=n_results, where=where, include=include, **kwargs))
        include = list(include)
        asked = list(dict.fromkeys([*include, "distances"]))
        got = self._col.query(query_embeddings=query_embeddings, n_results=n_results + len(pending), where=where, include=asked)
        changed = {doc: r for doc, r in self._under(pending, list(pending)).items() if r is not None and matches(r[0], where)}
        out: dict[str, list[Any]] = {"ids": [], "distances": [], "metadatas": [], "documents": [], "embeddings": []}
        for q, query in enumerate(np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))):
            rows = [
                (float(got["distances"][q][k]), doc, _at(got, "metadatas", k, q), _at(got, "documents", k, q), _at(got, "embeddings", k, q))
                for k, doc in enumerate(got["ids"][q])
                if doc not in pending
            ]
            norm = float(np.linalg.norm(query)) or 1.0
            for doc, (meta, document, vector) in changed.items():
                similarity = float(np.dot(query, vector)) / (norm * (float(np.linalg.norm(vector)) or 1.0))
                rows.append((1.0 - similarity, doc, meta, document, vector))
            rows.sort(key=lambda row: row[0])
            rows = rows[:n_results]
            out["ids"].append([r[1] for r in rows])
            out["distances"].append([r[0] for r in rows])
            out["metadatas"].append([r[2] for r in rows])
            out["documents"].append([r[3] for r in rows])
            out["embeddings"].append([r[4] for r in rows])
        return {key: (value if key == "ids" or key in include else None) for key, value in out.items()}

    def count(self) -> int:
        pending = self._client.view(self.name)
        if not pending:
            return int(self._col.count())
        # Chroma's total and which waiting ids it already holds, from one read: the applier may
        # apply between two reads, and a memory would then be counted twice or not at all.
        present = set(self._col.get(include=[])["ids"])
        after = self._under(pending, list(pending))
        return len(present) + sum(int(after[doc] is not None) - int(doc in present) for doc in pending)

    def peek(self, limit: int = 10) -> dict[str, Any]:
        return self.get(limit=limit, include=["metadatas", "documents", "embeddings"])

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return lambda *args, **kwargs: self._direct(attribute, *args, **kwargs)

    def __repr__(self) -> str:
        return f"JournaledCollection({self.name!r})"


def _removes_keys(metadatas: Sequence[Mapping[str, Any]] | None) -> bool:
    """Whether a write sets a metadata key to None, which Chroma takes as "remove the key": rare
    (tests, repairs), and done directly rather than mirrored in the overlay."""
    return any(value is None for meta in metadatas or [] for value in meta.values())


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else [str(v) for v in values]


def _dicts(values: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if values is None else [dict(v) for v in values]


def _at(got: Mapping[str, Any], key: str, k: int, q: int | None = None) -> Any:
    column = got.get(key)
    if column is None:
        return None
    if q is not None:
        column = column[q]
        if column is None:
            return None
    return column[k]


def _result(rows: list[tuple[str, Any, Any, Any]], include: list[str]) -> dict[str, Any]:
    return {
        "ids": [r[0] for r in rows],
        "metadatas": [r[1] for r in rows] if "metadatas" in include else None,
        "documents": [r[2] for r in rows] if "documents" in include else None,
        "embeddings": (np.stack([np.asarray(r[3], dtype=np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32))
        if "embeddings" in include
        else None,
    }


def journaled(shared: Any, directory: Path) -> JournaledClient:
    """The journal of this SharedClient (made on first use, closed with it)."""
    with _made:
        client = getattr(shared, "journal", None)
        if client is None:
            client = shared.journal = JournaledClient(shared, directory)
        return client


_made = threading.Lock()
