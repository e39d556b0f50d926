"""One writer at a time per data directory: across threads of this process and across processes.

Claude Desktop and Claude Code may both launch alma-mcp on the same embedded store. Each write
(the read-modify-write of learning included) runs under this lock, so two processes never
interleave their updates to one memory.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

from filelock import FileLock


class WriteLock:
    """A re-entrant lock; with a directory, also an advisory file lock shared by processes."""

    def __init__(self, directory: Path | None, timeout: float = 60.0) -> None:
        self._thread_lock = threading.RLock()
        self._file_lock: FileLock | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._file_lock = FileLock(str(directory / "write.lock"), timeout=timeout, thread_local=False)

    def __enter__(self) -> "WriteLock":
        self._thread_lock.acquire()
        if self._file_lock is not None:
            try:
                self._file_lock.acquire()
            except BaseException:
                self._thread_lock.release()
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file_lock is not None:
            self._file_lock.release()
        self._thread_lock.release()

    def close(self) -> None:
        if self._file_lock is not None:
            self._file_lock.release(force=True)
