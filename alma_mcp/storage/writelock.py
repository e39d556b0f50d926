"""Several processes on one embedded Chroma store: a readers-writer lock and shared change counters.

Claude Desktop and Claude Code may both launch alma-mcp on the same data directory. What
Chroma's embedded store (chromadb 1.5, Rust bindings, SQLite + HNSW files) tolerates,
measured with bench-style scripts (README, "Several processes on one embedded store"):

- SQLite is shared: `count()` and `get()` in process B see process A's committed writes.
- The HNSW vector index is loaded into each process's memory: B's `query()` keeps answering
  from its old copy and misses A's writes until B reopens its client.
- Two processes writing with stale in-memory indexes corrupt the files on disk, even when a
  lock serialises their writes: a fresh process then segfaults opening the store.

So every process follows one protocol, implemented by `DirectoryLock` and `MemoryStore`:

1. Writes take an exclusive lock (threads of this process and other processes); reads take a
   shared one, so no process loads index files while another rewrites them.
2. A counter in a small memory-mapped file counts writes to the directory. Before touching
   Chroma, a process whose client was opened at an older count closes and reopens it (under
   the exclusive lock), so it never reads or writes from a stale index.
3. Each write bumps the counter (and a per-collection slot) before it starts, so a write cut
   short by a crash still makes every other process reopen.

The per-collection slots are what `MemoryStore.generation()` returns: a number that changes
whenever any process writes to that collection, which is what result caches are keyed on.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterator

from ..errors import StorageError

log = logging.getLogger("alma_mcp")

try:  # POSIX: flock gives shared and exclusive locks, released by the kernel if a process dies.
    import fcntl
except ImportError:  # Windows: fall back to one exclusive lock for reads and writes.
    fcntl = None  # type: ignore[assignment]  # the module, or None where the platform has no flock

LOCK_FILE = "write.lock"
COUNTER_FILE = "generations.bin"
SLOTS = 1024
"""Per-collection counters, hashed by collection name; a collision only costs a spurious cache miss."""
_WORD = struct.Struct("<Q")


def collection_missing(exc: BaseException) -> bool:
    """Whether the backend raised `exc` because the collection does not exist (and for no other
    reason: a lock timeout or a broken database must surface as an error, not read as an empty store)."""
    from .backend import CollectionNotFound

    if isinstance(exc, CollectionNotFound):
        return True
    errors = sys.modules.get("chromadb.errors")  # not loaded: the error cannot be Chroma's
    return errors is not None and isinstance(exc, errors.NotFoundError)


class LockTimeout(StorageError):
    """Another process held the store for longer than the lock timeout."""


class _ProcessRWLock:
    """A readers-writer lock for the threads of this process, re-entrant, preferring writers.

    A thread that holds the write lock may take either lock again; a thread that holds a read
    lock may take more reads but not the write lock (that upgrade could deadlock).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._writers_waiting = 0
        self._local = threading.local()

    def _depths(self) -> tuple[int, int]:
        return getattr(self._local, "reads", 0), getattr(self._local, "writes", 0)

    def holds_write(self) -> bool:
        return self._depths()[1] > 0

    def holds_any(self) -> bool:
        reads, writes = self._depths()
        return reads > 0 or writes > 0

    def acquire_read(self, deadline: float) -> bool:
        """True when this call took the lock (the outermost acquisition), False when nested."""
        reads, writes = self._depths()
        if reads or writes:
            self._local.reads = reads + 1
            return False
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise LockTimeout("timed out waiting for a writer in this process to finish")
            self._readers += 1
        self._local.reads = 1
        return True

    def release_read(self) -> bool:
        """True when this released the outermost acquisition."""
        self._local.reads -= 1
        if self._local.reads or self._depths()[1]:
            return False
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()
        return True

    def acquire_write(self, deadline: float) -> bool:
        reads, writes = self._depths()
        if writes:
            self._local.writes = writes + 1
            return False
        if reads:
            raise RuntimeError("a thread holding the store's read lock asked for the write lock (would deadlock)")
        me = threading.get_ident()
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise LockTimeout("timed out waiting for other threads of this process to finish with the store")
            finally:
                self._writers_waiting -= 1
            self._writer = me
        self._local.writes = 1
        return True

    def release_write(self) -> bool:
        self._local.writes -= 1
        if self._local.writes:
            return False
        with self._cond:
            self._writer = None
            self._cond.notify_all()
        return True


class _FileLock:
    """flock on a fresh file descriptor per acquisition: shared and exclusive locks that other
    processes (and other descriptors of this one) respect, dropped by the kernel on a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def acquire(self, exclusive: bool, deadline: float) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is None:  # pragma: no cover - Windows
            return self._acquire_windows(fd, deadline)
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, mode)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(
                        f"another alma-mcp process has held the store lock {self.path} for too long; "
                        "is one of them stuck?"
                    ) from None
                time.sleep(pause)  # polling keeps the wait bounded; flock itself cannot time out
                pause = min(pause * 2, 0.02)
            except BaseException:
                os.close(fd)
                raise

    def _acquire_windows(self, fd: int, deadline: float) -> int:  # pragma: no cover - Windows
        if sys.platform != "win32":  # no flock and no msvcrt: no file lock to take
            os.close(fd)
            raise StorageError(f"this platform offers no file locks for {self.path}")
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return fd
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(f"another alma-mcp process holds the store lock {self.path}") from None
                time.sleep(0.01)

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)  # closing the descriptor drops its flock


class ChangeCounters:
    """A memory-mapped file of 64-bit counters shared by every process on the directory.

    Word 0 counts all writes; word 1 + hash(collection) % SLOTS holds the count at the last
    write to that collection. Words are only changed under the exclusive lock; reads are plain
    memory loads, so checking for other processes' writes costs nanoseconds.

    The file is mapped on first use and unmapped by `close`; a use after `close` maps it again
    (a stale holder keeps working, it only pays for the mapping).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._map_lock = threading.Lock()
        self._mapped()  # a directory that cannot hold the file fails here, at open, not at a first read

    def _mapped(self) -> mmap.mmap:
        mapping = self._map
        if mapping is None:
            with self._map_lock:
                if self._map is None:
                    size = _WORD.size * (SLOTS + 1)
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                    try:
                        if os.fstat(fd).st_size < size:
                            os.ftruncate(fd, size)
                        self._map = mmap.mmap(fd, size)
                    finally:
                        os.close(fd)
                mapping = self._map
        return mapping

    def _read(self, index: int) -> int:
        value: int = _WORD.unpack_from(self._mapped(), index * _WORD.size)[0]
        return value

    @staticmethod
    def _slot(name: str) -> int:
        return 1 + zlib.crc32(name.encode()) % SLOTS

    def total(self) -> int:
        return self._read(0)

    def of(self, name: str) -> int:
        return self._read(self._slot(name))

    def bump(self, names: list[str]) -> int:
        """Count one write touching these collections; call with the exclusive lock held."""
        mapping = self._mapped()
        value = self._read(0) + 1
        for name in names:
            _WORD.pack_into(mapping, self._slot(name) * _WORD.size, value)
        _WORD.pack_into(mapping, 0, value)
        return value

    def close(self) -> None:
        with self._map_lock:
            mapping, self._map = self._map, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # a reader still holds a view of it: the mapping goes with that view
                pass


class DirectoryLock:
    """The lock and change counters of one data directory, shared by all users in this process."""

    def __init__(self, directory: Path, timeout: float = 60.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.timeout = timeout
        self._threads = _ProcessRWLock()
        self._file = _FileLock(directory / LOCK_FILE)
        self._fds = threading.local()
        self.counters = ChangeCounters(directory / COUNTER_FILE)

    def holds_write(self) -> bool:
        return self._threads.holds_write()

    def holds_any(self) -> bool:
        return self._threads.holds_any()

    def acquire(self, exclusive: bool) -> None:
        deadline = time.monotonic() + self.timeout
        outermost = (
            self._threads.acquire_write(deadline) if exclusive else self._threads.acquire_read(deadline)
        )
        if not outermost:
            return
        try:
            # Exclusive when this platform has no shared file locks.
            self._fds.fd = self._file.acquire(exclusive or fcntl is None, deadline)
        except BaseException:
            self._threads.release_write() if exclusive else self._threads.release_read()
            raise

    def release(self, exclusive: bool) -> None:
        outermost = self._threads.release_write() if exclusive else self._threads.release_read()
        if outermost:
            fd, self._fds.fd = self._fds.fd, None
            self._file.release(fd)

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire(exclusive=False)
        try:
            yield
        finally:
            self.release(exclusive=False)

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire(exclusive=True)
        try:
            yield
        finally:
            self.release(exclusive=True)


# One DirectoryLock and one SharedClient per directory in this process, each with the number of
# holders: the last `release_*` closes it (unmaps the counters, closes Chroma's client) and
# drops it from the registry, so a process that opens and closes services leaks nothing.
_registry: dict[Path, DirectoryLock] = {}
_holders: dict[Path, int] = {}
_registry_lock = threading.Lock()


def directory_lock(directory: Path, timeout: float = 60.0) -> DirectoryLock:
    """The one `DirectoryLock` of this process for `directory` (the service and the store share
    it). Each call is a hold: give it back with `release_directory_lock`."""
    key = Path(os.path.realpath(directory))
    with _registry_lock:
        lock = _registry.get(key)
        if lock is None:
            lock = _registry[key] = DirectoryLock(key, timeout)
        _holders[key] = _holders.get(key, 0) + 1
        return lock


def release_directory_lock(lock: DirectoryLock) -> None:
    """Give back one hold of `lock`; the last one unmaps its counters and forgets it."""
    with _registry_lock:
        key = lock.directory
        if _registry.get(key) is not lock:
            return  # already forgotten (released more often than taken): nothing of ours to close
        _holders[key] -= 1
        if _holders[key] > 0:
            return
        del _registry[key], _holders[key]
    lock.counters.close()


def open_directories() -> list[Path]:
    """The directories whose lock this process holds (what a closed service must not leave behind)."""
    with _registry_lock:
        return sorted(_registry)


class WriteLock:
    """The exclusive lock the service holds around each write (and each read-modify-write).

    With a directory (the embedded store) it is that directory's `DirectoryLock`, shared with
    the store's reads and with other processes; without one (a Chroma server) it only orders
    the threads of this process. The directory lock is taken on first use and given back by
    `close`; a use after `close` takes it again.
    """

    def __init__(self, directory: Path | None, timeout: float = 60.0) -> None:
        self.directory = directory
        self.timeout = timeout
        self._directory_lock: DirectoryLock | None = None
        self._open_lock = threading.Lock()
        self._thread_lock = threading.RLock()

    @property
    def directory_lock(self) -> DirectoryLock | None:
        if self.directory is None:
            return None
        with self._open_lock:
            if self._directory_lock is None:
                self._directory_lock = directory_lock(self.directory, self.timeout)
            return self._directory_lock

    def __enter__(self) -> "WriteLock":
        lock = self.directory_lock
        if lock is not None:
            lock.acquire(exclusive=True)
        else:
            self._thread_lock.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lock = self._directory_lock
        if lock is not None:
            lock.release(exclusive=True)
        else:
            self._thread_lock.release()

    def close(self) -> None:
        """Give back this lock's hold of the directory lock (see `release_directory_lock`). Not
        to be called inside a `with` block of this lock."""
        with self._open_lock:
            lock, self._directory_lock = self._directory_lock, None
        if lock is not None:
            release_directory_lock(lock)


class SharedCollection:
    """A Chroma collection whose every call follows the protocol: shared lock to read, exclusive
    lock (and a counter bump) to write, a fresh client whenever another process has written."""

    _READS = frozenset({"get", "query", "count", "peek"})

    def __init__(self, client: "SharedClient", name: str) -> None:
        self._client = client
        self.name = name

    def _read(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._client.reading() as raw:
            return getattr(self._client.raw_collection(raw, self.name), method)(*args, **kwargs)

    def _write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._client.writing([self.name]) as raw:
            return getattr(self._client.raw_collection(raw, self.name), method)(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._read("get", *args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self._read("query", *args, **kwargs)

    def count(self) -> int:
        return int(self._read("count"))

    def peek(self, *args: Any, **kwargs: Any) -> Any:
        return self._read("peek", *args, **kwargs)

    @property
    def metadata(self) -> Any:
        with self._client.reading() as raw:
            return self._client.raw_collection(raw, self.name).metadata

    @property
    def id(self) -> Any:
        with self._client.reading() as raw:
            return self._client.raw_collection(raw, self.name).id

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._write("add", *args, **kwargs)

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        return self._write("upsert", *args, **kwargs)

    def update(self, *args: Any, **kwargs: Any) -> Any:
        return self._write("update", *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._write("delete", *args, **kwargs)

    def modify(self, name: str | None = None, **kwargs: Any) -> Any:
        names = [self.name] + ([name] if name else [])
        with self._client.writing(names) as raw:
            result = self._client.raw_collection(raw, self.name).modify(name=name, **kwargs)
            if name:
                self._client.forget(self.name)
                self.name = name
            return result

    def __getattr__(self, attribute: str) -> Any:
        # Anything not listed above may change the collection: run it as a write.
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return lambda *args, **kwargs: self._write(attribute, *args, **kwargs)

    def __repr__(self) -> str:
        return f"SharedCollection({self.name!r})"


def _close_quietly(raw: Any) -> None:
    try:
        raw.close()
    except Exception as exc:  # noqa: BLE001 - chromadb names no error for close; the client is dropped all the same
        log.debug("closing a Chroma client failed (dropped all the same): %s", exc)


class SharedClient:
    """A Chroma `PersistentClient` that several processes can use on one directory at once.

    It reopens the underlying client when another process has written since it was opened,
    takes the directory's shared lock to read and its exclusive lock to write, and counts
    each write in the shared counters. There is one per directory per process (`shared_client`),
    because Chroma itself shares one engine among all clients of a path in a process.
    """

    def __init__(self, path: Path, lock: DirectoryLock, open_client: Callable[[], Any]) -> None:
        self.path = path
        self.lock = lock
        self._open = open_client
        self._raw: Any = None
        self._seen = -1
        self._collections: dict[str, Any] = {}
        self.reopened = 0
        self.journal: Any = None  # the write journal in front of this client (journal.journaled)

    # -- the protocol ----------------------------------------------------------------
    def _fresh(self) -> Any:
        """The underlying client, reopened if another process wrote. Needs this process's threads excluded."""
        total = self.lock.counters.total()
        if self._raw is None or total != self._seen:
            if self._raw is not None:
                self._collections.clear()
                _close_quietly(self._raw)
                self._raw = None
                self.reopened += 1
            self._raw = self._open()
            self._seen = total
        return self._raw

    def _stale(self) -> bool:
        return self._raw is None or self.lock.counters.total() != self._seen

    @contextmanager
    def reading(self) -> Iterator[Any]:
        lock = self.lock
        if lock.holds_write():
            yield self._fresh()
            return
        if lock.holds_any():  # nested in a read of this thread, which made the client fresh
            yield self._raw
            return
        while True:
            if self._stale():
                with lock.write():
                    self._fresh()
            lock.acquire(exclusive=False)
            # Checked again under the lock: a write counted before this read began must be seen,
            # or a cache keyed by the new generation would keep a result that misses it.
            if not self._stale():
                break
            lock.release(exclusive=False)
        try:
            yield self._raw
        finally:
            lock.release(exclusive=False)

    @contextmanager
    def writing(self, names: list[str]) -> Iterator[Any]:
        with self.lock.write():
            raw = self._fresh()
            # Counted before the write starts: if this process dies half way, the others still reopen.
            value = self.lock.counters.bump(names)
            yield raw
            self._seen = value  # only after success: a failed write leaves us reopening next time

    def count_write(self, names: list[str]) -> None:
        """Count a write that other processes must notice though Chroma's files did not change
        (one the write journal holds); this process's client stays open. Call with the exclusive
        lock held."""
        fresh = not self._stale()
        value = self.lock.counters.bump(names)
        if fresh:
            self._seen = value

    def raw_collection(self, raw: Any, name: str) -> Any:
        col = self._collections.get(name)
        if col is None:
            col = self._collections[name] = raw.get_collection(name, embedding_function=None)
        return col

    def forget(self, name: str) -> None:
        self._collections.pop(name, None)

    # -- the chromadb Client API that alma-mcp uses --------------------------------------
    def get_collection(self, name: str, **kwargs: Any) -> SharedCollection:
        with self.reading() as raw:
            self.raw_collection(raw, name)  # raises when it does not exist, as chromadb does
        return SharedCollection(self, name)

    def get_or_create_collection(self, name: str, **kwargs: Any) -> SharedCollection:
        try:
            return self.get_collection(name)
        except Exception as exc:
            if not collection_missing(exc):
                raise
        with self.writing([name]) as raw:
            self._collections[name] = raw.get_or_create_collection(name, **kwargs)
        return SharedCollection(self, name)

    def create_collection(self, name: str, **kwargs: Any) -> SharedCollection:
        with self.writing([name]) as raw:
            self._collections[name] = raw.create_collection(name, **kwargs)
        return SharedCollection(self, name)

    def delete_collection(self, name: str) -> None:
        with self.writing([name]) as raw:
            self.forget(name)
            raw.delete_collection(name)

    def list_collections(self, *args: Any, **kwargs: Any) -> Any:
        with self.reading() as raw:
            return raw.list_collections(*args, **kwargs)

    def heartbeat(self) -> Any:
        with self.reading() as raw:
            return raw.heartbeat()

    def close(self) -> None:
        """Close Chroma's client (a later call opens it again, as after another process's write),
        after applying what the write journal holds."""
        journal, self.journal = self.journal, None
        if journal is not None:
            journal.close()
        with self.lock.write():
            raw, self._raw = self._raw, None
            self._collections.clear()
            self._seen = -1
            if raw is not None:
                _close_quietly(raw)

    def reopen(self) -> None:
        """Drop the open client now (e.g. after the files were replaced); the next call reopens."""
        with self.lock.write():
            self.lock.counters.bump([])
            self._fresh()

    def __getattr__(self, attribute: str) -> Any:
        # Any other client call is rare (admin); run it as a write to be safe.
        if attribute.startswith("_"):
            raise AttributeError(attribute)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.writing([]) as raw:
                self._collections.clear()
                return getattr(raw, attribute)(*args, **kwargs)

        return call


_clients: dict[Path, SharedClient] = {}
_client_holders: dict[Path, int] = {}


def shared_client(path: Path, open_client: Callable[[Path], Any], lock_dir: Path | None = None) -> SharedClient:
    """The one `SharedClient` of this process for the Chroma folder `path`. Each call is a hold:
    give it back with `release_shared_client`.

    The lock and counters live in `lock_dir` (default: the folder above, the data directory,
    which is where the service's `WriteLock` lives too).
    """
    key = Path(os.path.realpath(path))
    with _registry_lock:
        client = _clients.get(key)
        if client is not None:
            _client_holders[key] += 1
            return client
    lock = directory_lock(lock_dir or key.parent)  # outside _registry_lock, which it takes
    with _registry_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = SharedClient(key, lock, lambda: open_client(key))
            _client_holders[key] = 1
            return client
        _client_holders[key] += 1
    release_directory_lock(lock)  # another thread made the client meanwhile, with its own hold
    return client


def release_shared_client(client: SharedClient) -> None:
    """Give back one hold of `client`; the last one closes Chroma's client and the directory lock."""
    with _registry_lock:
        key = client.path
        if _clients.get(key) is not client:
            return
        _client_holders[key] -= 1
        if _client_holders[key] > 0:
            return
        del _clients[key], _client_holders[key]
    client.close()
    release_directory_lock(client.lock)


def open_clients() -> list[Path]:
    """The Chroma folders whose client this process holds open."""
    with _registry_lock:
        return sorted(_clients)
