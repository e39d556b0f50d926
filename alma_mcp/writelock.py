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

import mmap
import os
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterator

from .errors import StorageError

try:  # POSIX: flock gives shared and exclusive locks, released by the kernel if a process dies.
    import fcntl
except ImportError:  # Windows: fall back to one exclusive lock for reads and writes.
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "write.lock"
COUNTER_FILE = "generations.bin"
SLOTS = 1024
"""Per-collection counters, hashed by collection name; a collision only costs a spurious cache miss."""
_WORD = struct.Struct("<Q")


def collection_missing(exc: BaseException) -> bool:
    """Whether Chroma raised `exc` because the collection does not exist (and for no other reason:
    a lock timeout or a broken database must surface as an error, not read as an empty store)."""
    from chromadb.errors import NotFoundError  # chromadb is imported by whoever opened the client

    return isinstance(exc, NotFoundError)


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
    """

    def __init__(self, path: Path) -> None:
        size = _WORD.size * (SLOTS + 1)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def _read(self, index: int) -> int:
        return _WORD.unpack_from(self._map, index * _WORD.size)[0]

    @staticmethod
    def _slot(name: str) -> int:
        return 1 + zlib.crc32(name.encode()) % SLOTS

    def total(self) -> int:
        return self._read(0)

    def of(self, name: str) -> int:
        return self._read(self._slot(name))

    def bump(self, names: list[str]) -> int:
        """Count one write touching these collections; call with the exclusive lock held."""
        value = self._read(0) + 1
        for name in names:
            _WORD.pack_into(self._map, self._slot(name) * _WORD.size, value)
        _WORD.pack_into(self._map, 0, value)
        return value

    def close(self) -> None:
        try:
            self._map.close()
        except (BufferError, ValueError):
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


_registry: dict[Path, DirectoryLock] = {}
_registry_lock = threading.Lock()


def directory_lock(directory: Path, timeout: float = 60.0) -> DirectoryLock:
    """The one `DirectoryLock` of this process for `directory` (the service and the store share it)."""
    key = Path(os.path.realpath(directory))
    with _registry_lock:
        lock = _registry.get(key)
        if lock is None:
            lock = _registry[key] = DirectoryLock(key, timeout)
        return lock


class WriteLock:
    """The exclusive lock the service holds around each write (and each read-modify-write).

    With a directory (the embedded store) it is that directory's `DirectoryLock`, shared with
    the store's reads and with other processes; without one (a Chroma server) it only orders
    the threads of this process.
    """

    def __init__(self, directory: Path | None, timeout: float = 60.0) -> None:
        self.directory_lock = directory_lock(directory, timeout) if directory is not None else None
        self._thread_lock = threading.RLock()

    def __enter__(self) -> "WriteLock":
        if self.directory_lock is not None:
            self.directory_lock.acquire(exclusive=True)
        else:
            self._thread_lock.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.directory_lock is not None:
            self.directory_lock.release(exclusive=True)
        else:
            self._thread_lock.release()

    def close(self) -> None:
        """Nothing to release: locks are held only for the length of a `with` block."""


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

    # -- the protocol ----------------------------------------------------------------
    def _fresh(self) -> Any:
        """The underlying client, reopened if another process wrote. Needs this process's threads excluded."""
        total = self.lock.counters.total()
        if self._raw is None or total != self._seen:
            if self._raw is not None:
                self._collections.clear()
                try:
                    self._raw.close()
                except Exception:  # a client that cannot close cleanly is dropped all the same
                    pass
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


def shared_client(path: Path, open_client: Callable[[Path], Any], lock_dir: Path | None = None) -> SharedClient:
    """The one `SharedClient` of this process for the Chroma folder `path`.

    The lock and counters live in `lock_dir` (default: the folder above, the data directory,
    which is where the service's `WriteLock` lives too).
    """
    key = Path(os.path.realpath(path))
    with _registry_lock:
        client = _clients.get(key)
    if client is None:
        lock = directory_lock(lock_dir or key.parent)
        with _registry_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = SharedClient(key, lock, lambda: open_client(key))
    return client
